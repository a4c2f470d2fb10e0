"""Device side of the registry's hosted TUF repository: is this bundle released, and is that news fresh?

Before an HTTP install the installer calls :meth:`ReleaseCheck.check`. It refreshes
timestamp → snapshot → targets (→ the delegated ``released`` role) from ``<registry>/tuf/`` with
python-tuf's ``ngclient.Updater`` (bootstrap = the factory root; every step verified: signatures
against the root, expiry, versions never lower than what this device saw before, snapshot
hashes), then looks up ``model/version/profile.bundle`` and requires the notice's SHA-256 and length.
Refusals: :class:`NotReleasedError` (not listed: withdrawn or never released),
:class:`TrustMetadataExpiredError` (a frozen/stopped registry, checked with the device's clock
*and* its persisted time floor), :class:`TrustMetadataRollbackError` (older than seen),
:class:`TrustRepositoryError` (anything else that does not verify).

Roots: the agent keeps ONE trusted history (``data/trust/N.root.json``, ADR 0006). Roots it
learned from bundles/notices are copied into the ngclient cache before a refresh (ngclient
re-verifies them from the factory root), and roots ngclient learned from the registry are fed
back through :func:`edgekit.core.trust.update_root`.

Modes (``[install] freshness``): ``off`` (as before ADR 0010), ``require`` (every HTTP notice
install needs a verifying repository) and ``auto`` (default): like ``require`` once this device
has verified the repository once; before that a registry that answers 404 for
``timestamp.json`` (it hosts no trust metadata) is skipped and the event says so. MQTT-only
transfers fetch the same metadata through the broker (agent/trust_mqtt.py); bench installs are
not checked (documented gap: no network). tuf loads lazily (first install).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from edgekit.core.errors import (NotReleasedError, SlowRetrievalError, StorageError, TransportError,
                                 TrustMetadataExpiredError, TrustMetadataRollbackError, TrustRepositoryError,
                                 UsageError)

MODES = ("auto", "require", "off")
CACHE = "tuf"                     # ngclient's metadata cache under the data dir
ROLES = ("timestamp", "snapshot", "targets", "released")
TIMEOUT_S = 10                    # per blocking read, and never past the check's deadline


def repository_url(bundle_url: str) -> str:
    """The hosted repository next to the bundle: ``scheme://host:port/tuf/``."""
    parts = urlsplit(bundle_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(f"cannot derive the trust repository from bundle URL {bundle_url!r}")
    return f"{parts.scheme}://{parts.netloc}/tuf/"


class ReleaseCheck:
    def __init__(self, data_dir: Path, factory_root: Path, root_history: Path,
                 reference_time: Callable[[], float], mode: str = "auto", deadline_s: float = 30.0) -> None:
        if mode not in MODES:
            raise UsageError(f"unknown freshness mode {mode!r}; known: {', '.join(MODES)}")
        self.cache = Path(data_dir) / CACHE
        self.factory_root, self.root_history = Path(factory_root), Path(root_history)
        self.reference_time, self.mode = reference_time, mode
        self.deadline_s = deadline_s  # the whole refresh (slow retrieval of metadata); lengths are capped by ngclient

    @property
    def seen_before(self) -> bool:
        return (self.cache / "timestamp.json").exists()

    def check(self, bundle_url: str, *, model: str, version: str, profile: str, sha256: str, length: int,
              fetcher: Callable[[float], object] | None = None) -> dict:
        """Details for the install event; raises a :class:`TrustRepositoryError` subclass to refuse.
        ``fetcher``: a factory (deadline -> ngclient fetcher) for another way to the registry than
        HTTP next to the bundle: the broker (agent/trust_mqtt.py), for MQTT-only transfers."""
        if self.mode == "off":
            return {"freshness": "off"}
        from edgekit.core import trust

        path = trust.released_target_path(model, version, profile)
        if fetcher is None:
            url = repository_url(bundle_url)
            fetcher = _deadline_fetcher
            hosts = lambda: _hosts_metadata(url, self.deadline_s)  # noqa: E731
        else:
            from . import trust_mqtt

            url = trust_mqtt.REPOSITORY
            hosts = lambda: trust_mqtt.hosts_metadata(fetcher(time.monotonic() + self.deadline_s))  # noqa: E731
        if self.mode == "auto" and not self.seen_before and not hosts():
            return {"freshness": "unavailable", "repository": url}
        updater = self._refresh(url, fetcher)
        if updater is None:
            return {"freshness": "unavailable", "repository": url}
        tf = self._lookup(updater, path)  # after it the cache holds the trusted current version of each role
        info = self._cached()
        floor = dt.datetime.fromtimestamp(self.reference_time(), tz=dt.timezone.utc)
        for role, md in info.items():  # ngclient used the wall clock; the persisted floor may be later
            if md.signed.is_expired(floor):
                raise TrustMetadataExpiredError(f"the registry's {role} metadata expired on "
                                                f"{md.signed.expires.isoformat()} (device time floor)", role=role)
        if tf is None:
            raise NotReleasedError(f"{model}@{version} for {profile} is not in the registry's signed list of "
                                   "released bundles (withdrawn or never released); nothing was downloaded",
                                   target=path, sha256=sha256)
        if tf.length != length or tf.hashes.get("sha256") != sha256:
            raise NotReleasedError(f"the registry's signed release of {path} is another bundle (sha256 "
                                   f"{str(tf.hashes.get('sha256'))[:12]}…, {tf.length} bytes) than the notice names "
                                   f"({sha256[:12]}…, {length} bytes)", target=path, sha256=sha256)
        self._follow_roots()
        return {"freshness": "verified", "target": path,
                **{f"{role}_version": md.signed.version for role, md in info.items()},
                "timestamp_expires": info["timestamp"].signed.expires.isoformat()}

    # -- steps ---------------------------------------------------------------------------------
    def _refresh(self, url: str, fetcher: Callable[[float], object]):
        from tuf.api import exceptions as tuf_exc
        from tuf.ngclient import Updater

        first_time = not self.seen_before
        try:
            self._seed_roots()
            updater = Updater(str(self.cache), url, fetcher=fetcher(time.monotonic() + self.deadline_s),
                              bootstrap=self.factory_root.read_bytes())
            updater.refresh()
            return updater
        except tuf_exc.DownloadHTTPError as exc:
            if exc.status_code == 404 and first_time and not self.seen_before and self.mode == "auto":
                return None  # this registry hosts no trust metadata, and this device never saw any
            raise TrustRepositoryError(f"the registry's trust metadata is missing: HTTP {exc.status_code} "
                                       f"({url})") from None
        except tuf_exc.SlowRetrievalError:
            raise _slow(url, self.deadline_s) from None
        except tuf_exc.DownloadError as exc:
            raise TransportError(f"cannot fetch the registry's trust metadata from {url}: {exc!r}") from None
        except OSError as exc:
            raise StorageError(f"cannot write the trust metadata cache {self.cache}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - mapped below (tuf, urllib3, ValueError)
            raise _mapped(exc, url) from None

    def _lookup(self, updater, path: str):
        from tuf.api import exceptions as tuf_exc

        try:
            return updater.get_targetinfo(path)
        except tuf_exc.SlowRetrievalError:
            raise _slow("the delegated role 'released'", self.deadline_s) from None
        except Exception as exc:  # noqa: BLE001 - delegated role download/verification
            raise _mapped(exc, "the delegated role 'released'") from None

    def _cached(self) -> dict:
        from tuf.api.metadata import Metadata

        return {role: Metadata.from_bytes((self.cache / f"{role}.json").read_bytes())
                for role in ROLES if (self.cache / f"{role}.json").exists()}

    def _seed_roots(self) -> None:
        """Roots this device followed from bundles/notices join ngclient's cache (it re-verifies them)."""
        history = self.cache / "root_history"
        history.mkdir(parents=True, exist_ok=True)
        for src in self.root_history.glob("*.root.json") if self.root_history.exists() else ():
            if not (history / src.name).exists():
                shutil.copyfile(src, history / src.name)

    def _follow_roots(self) -> None:
        """Roots ngclient verified from the registry join the agent's one trusted history."""
        from edgekit.core import trust

        mine = trust.load_trusted_root(self.factory_root.read_bytes(), self.root_history)
        candidates = [p.read_bytes() for p in (self.cache / "root_history").glob("*.root.json")
                      if int(p.name.split(".")[0]) > mine.signed.version]
        if candidates:
            trust.update_root(mine, candidates, self.root_history)


def _hosts_metadata(url: str, timeout_s: float) -> bool:
    """Auto mode, device never saw a repository: one plain GET of ``timestamp.json`` (< 1 kB) tells whether this
    registry hosts trust metadata at all (404: no), before paying for an ngclient refresh (root probe,
    new connection pool). Anything but a clean 404 goes on to the full, verified refresh."""
    import http.client

    parts = urlsplit(url)
    conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_cls(parts.netloc, timeout=min(TIMEOUT_S, timeout_s))
    try:
        conn.request("GET", parts.path + "timestamp.json")
        resp = conn.getresponse()
        resp.read(4096)
        return resp.status != 404
    except (OSError, http.client.HTTPException):
        return True  # let the verified refresh report what is wrong
    finally:
        conn.close()


def _slow(where: str, deadline_s: float) -> SlowRetrievalError:
    return SlowRetrievalError(f"trust metadata from {where} did not arrive within {deadline_s:g} s "
                              "([install] download_grace_s); nothing was downloaded", deadline_s=deadline_s)


def _deadline_fetcher(end: float):
    """ngclient's urllib3 fetcher with one deadline for the whole refresh: every request's timeout is
    at most what is left, and the body is read with ``read1`` (whatever arrived) so a trickling server
    is cut once the deadline passes (slow retrieval), not after a whole 400 kB chunk."""
    import urllib3
    from tuf.api import exceptions as tuf_exc
    from tuf.ngclient import Urllib3Fetcher

    class DeadlineFetcher(Urllib3Fetcher):
        def _fetch(self, url: str):
            left = end - time.monotonic()
            if left <= 0:
                raise tuf_exc.SlowRetrievalError(f"deadline passed before {url}")
            self.socket_timeout = max(min(TIMEOUT_S, left), 0.05)
            return super()._fetch(url)

        def _chunks(self, response):
            try:
                while chunk := response.read1(self.chunk_size):
                    if time.monotonic() > end:
                        raise tuf_exc.SlowRetrievalError("deadline passed while reading trust metadata")
                    yield chunk
            except urllib3.exceptions.TimeoutError as exc:
                raise tuf_exc.SlowRetrievalError from exc
            finally:
                response.release_conn()

    return DeadlineFetcher(socket_timeout=TIMEOUT_S)


def _mapped(exc: Exception, where: str) -> Exception:
    from tuf.api import exceptions as tuf_exc

    if isinstance(exc, tuf_exc.ExpiredMetadataError):
        return TrustMetadataExpiredError(f"{where}: {exc} (a frozen registry, or its re-signer stopped)")
    if isinstance(exc, tuf_exc.BadVersionNumberError):
        return TrustMetadataRollbackError(f"{where}: {exc} (older than this device already verified)")
    if isinstance(exc, tuf_exc.DownloadError):
        return TransportError(f"cannot fetch trust metadata from {where}: {exc!r}")
    if isinstance(exc, (tuf_exc.RepositoryError, ValueError, KeyError, TypeError)):
        return TrustRepositoryError(f"{where}: trust metadata does not verify: {exc}")
    import urllib3

    if isinstance(exc, urllib3.exceptions.HTTPError):
        return TransportError(f"cannot reach the trust repository {where}: {exc}")
    return TrustRepositoryError(f"{where}: unexpected error while checking trust metadata: {exc!r}")
