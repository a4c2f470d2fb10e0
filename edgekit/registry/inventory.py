"""Device inventory beyond what devices report: tags, groups, and selectors over both.

Selector grammar (terms joined by ``,`` must all match)::

    all | *                    every known device
    profile=raspberry-pi-4     a reported field: profile, fleet, model, version, agent_version, online, id
    tag=kitchen                a tag set with ``edgekit fleet tag``
    group:canary               a member of a group set with ``edgekit fleet group``

Devices appear in the inventory when they first report; tags and groups are kept by the registry.
"""

from __future__ import annotations

from sqlalchemy import String, delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgekit.core import topics
from edgekit.core.errors import UsageError

from .db import Base, Device, device_dict

FIELDS = ("id", "fleet", "profile", "model", "version", "agent_version", "online")


class DeviceTag(Base):
    __tablename__ = "device_tags"
    device: Mapped[str] = mapped_column(String(64), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)


class GroupMember(Base):
    __tablename__ = "group_members"
    group: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(64), primary_key=True)


def parse_selector(text: str) -> list[tuple[str, str, str]]:
    """``[(kind, key, value)]`` with kind field|tag|group; raises UsageError naming the bad term."""
    text = (text or "").strip()
    if text in ("all", "*"):
        return []
    terms = []
    for term in text.split(","):
        term = term.strip()
        if term.startswith("group:"):
            terms.append(("group", "group", topics.check_name(term[6:], "group name")))
            continue
        key, eq, value = term.partition("=")
        if not eq or not value or key not in FIELDS + ("tag",):
            raise UsageError(f"bad selector term {term!r}",
                             hint=f"Use KEY=VALUE with KEY in {', '.join(FIELDS + ('tag',))}, group:NAME, or 'all'; "
                                  "join terms with ',' (e.g. profile=raspberry-pi-4,tag=kitchen).")
        terms.append(("tag" if key == "tag" else "field", key, value))
    return terms


def select_devices(engine: Engine, selector: str) -> list[dict]:
    terms = parse_selector(selector)
    with Session(engine) as s:
        q = select(Device).order_by(Device.id)
        for kind, key, value in terms:
            if kind == "group":
                q = q.where(Device.id.in_(select(GroupMember.device).where(GroupMember.group == value)))
            elif kind == "tag":
                q = q.where(Device.id.in_(select(DeviceTag.device).where(DeviceTag.tag == value)))
            elif key == "online":
                q = q.where(Device.online.is_(value.lower() in ("1", "true", "yes")))
            else:
                q = q.where(getattr(Device, key) == value)
        devices = [device_dict(d) for d in s.scalars(q)]
        return _with_labels(s, devices)


def _with_labels(s: Session, devices: list[dict]) -> list[dict]:
    ids = [d["id"] for d in devices]
    tags: dict[str, list[str]] = {}
    groups: dict[str, list[str]] = {}
    for t in s.scalars(select(DeviceTag).where(DeviceTag.device.in_(ids)).order_by(DeviceTag.tag)):
        tags.setdefault(t.device, []).append(t.tag)
    for g in s.scalars(select(GroupMember).where(GroupMember.device.in_(ids)).order_by(GroupMember.group)):
        groups.setdefault(g.device, []).append(g.group)
    for d in devices:
        d["tags"], d["groups"] = tags.get(d["id"], []), groups.get(d["id"], [])
    return devices


def _known(s: Session, devices: list[str]) -> None:
    missing = sorted(set(devices) - set(s.scalars(select(Device.id).where(Device.id.in_(devices)))))
    if missing:
        raise UsageError(f"unknown device(s): {', '.join(missing)}",
                         hint="Devices appear once they report over MQTT; `edgekit fleet ls` lists them.")


def set_tags(engine: Engine, devices: list[str], add: list[str], remove: list[str]) -> None:
    for t in add + remove:
        topics.check_name(t, "tag")
    with Session(engine) as s, s.begin():
        _known(s, devices)
        if remove:
            s.execute(delete(DeviceTag).where(DeviceTag.device.in_(devices), DeviceTag.tag.in_(remove)))
        for d in devices:
            for t in add:
                if s.get(DeviceTag, (d, t)) is None:
                    s.add(DeviceTag(device=d, tag=t))


def set_group(engine: Engine, group: str, add: list[str], remove: list[str]) -> list[str]:
    topics.check_name(group, "group name")
    with Session(engine) as s, s.begin():
        _known(s, add)
        if remove:
            s.execute(delete(GroupMember).where(GroupMember.group == group, GroupMember.device.in_(remove)))
        for d in add:
            if s.get(GroupMember, (group, d)) is None:
                s.add(GroupMember(group=group, device=d))
        s.flush()
        return list(s.scalars(select(GroupMember.device).where(GroupMember.group == group).order_by(GroupMember.device)))


def list_groups(engine: Engine) -> dict[str, list[str]]:
    with Session(engine) as s:
        out: dict[str, list[str]] = {}
        for g in s.scalars(select(GroupMember).order_by(GroupMember.group, GroupMember.device)):
            out.setdefault(g.group, []).append(g.device)
        return out
