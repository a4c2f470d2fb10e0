"""A/B model slots on the device's data directory, with an atomic switch.

::

    data_dir/slots/a/  data_dir/slots/b/   verified, extracted bundles
    data_dir/current -> slots/a            the serving slot (symlink, replaced atomically)
    data_dir/installed.json                what ``current`` holds (model, version, release)

A slot is written only while it is *not* ``current``, so the serving model is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edgekit.core.atomic import atomic_symlink, atomic_write_json, fsync_dir, read_json, remove_tree

SLOTS = ("a", "b")


class Slots:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "slots"
        self.root.mkdir(parents=True, exist_ok=True)
        self.current_link = self.data_dir / "current"

    def current(self) -> str | None:
        try:
            name = Path(os.readlink(self.current_link)).name
        except OSError:
            return None
        return name if name in SLOTS and (self.root / name / "manifest.json").exists() else None

    def inactive(self) -> str:
        cur = self.current()
        return "b" if cur == "a" else "a"

    def path(self, slot: str) -> Path:
        return self.root / slot

    def fill(self, slot: str, extracted: Path) -> Path:
        """Move a verified, extracted bundle into ``slot`` (which must not be current)."""
        if slot == self.current():
            raise RuntimeError("refusing to overwrite the serving slot")
        target = self.path(slot)
        remove_tree(target)
        os.replace(extracted, target)
        fsync_dir(self.root)
        return target

    def sync(self, slot: str) -> None:
        """fsync every file of ``slot`` and the directory (cheap when already clean): a slot must be
        durable before ``current`` may point at it, or a power cut could expose a torn model."""
        target = self.path(slot)
        for path in target.iterdir():
            if path.is_file():
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(target)

    def switch(self, slot: str, installed: dict, durable: bool = True) -> None:
        """Point ``current`` at ``slot`` then record what it holds (both atomic). ``durable=False``:
        the caller fsyncs ``data_dir`` afterwards (the installer's final state record lives there);
        a lost or torn ``installed.json`` is harmless, :meth:`installed` then trusts the slot."""
        atomic_symlink(f"slots/{slot}", self.current_link, durable)
        atomic_write_json(self.data_dir / "installed.json", {**installed, "slot": slot}, durable)

    def installed(self) -> dict | None:
        try:
            info = read_json(self.data_dir / "installed.json")
        except ValueError:  # torn by a power cut (it is written non-durably): trust the slot, as below
            info = None
        cur = self.current()
        if cur is None:
            return None
        if not info or info.get("slot") != cur:  # crash between switch and record: trust the slot
            manifest = json.loads((self.path(cur) / "manifest.json").read_text())
            info = {"model": manifest["model"]["name"], "version": manifest["model"]["version"],
                    "release": manifest["model"]["release"], "slot": cur}
        return info

    def manifest(self, slot: str) -> dict:
        return json.loads((self.path(slot) / "manifest.json").read_text())
