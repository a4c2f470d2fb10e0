"""The registry's hosted TUF metadata over the broker, for devices that reach only the broker.

An ngclient fetcher (:class:`tuf.ngclient.FetcherInterface`) that asks the registry's chunk server
(:mod:`edgekit.registry.chunks`) for a metadata file by name on the device's own ``rpc/chunk``
topics, in chunks, under the release check's one deadline. ngclient verifies what arrives exactly
as over HTTP (agent/freshness.py): signatures, versions, expiry, lengths. A missing file comes back
as HTTP 404 does (ngclient's root walk stops on it; ``auto`` mode skips a registry hosting none).
"""

from __future__ import annotations

import time

from edgekit.core import chunks, messages, topics
from edgekit.core.errors import EdgekitError
from edgekit.core.mqtt import MqttConnection

from .fetch_mqtt import CHUNK_BYTES

REPOSITORY = "mqtt://registry/tuf/"  # ngclient needs a base URL: the file name is all the fetcher uses
TIMEOUT_S = 10  # per answer, and never past the deadline


def metadata_fetcher(conn: MqttConnection, fleet: str, device: str, end: float, *, chunk_bytes: int = CHUNK_BYTES):
    """A fetcher for one release check that must finish by ``end`` (``time.monotonic()``)."""
    from tuf.api import exceptions as tuf_exc
    from tuf.ngclient import FetcherInterface

    request_topic, response_topic = topics.chunk_request(fleet, device), topics.chunk_response(fleet, device)

    def ask(name: str, offset: int) -> tuple[dict, bytes]:
        left = end - time.monotonic()
        if left <= 0:
            raise tuf_exc.SlowRetrievalError(f"deadline passed while fetching {name} over the broker")
        req = messages.dumps(messages.build(messages.CHUNK_REQUEST, name=name, offset=offset, length=chunk_bytes))
        try:
            header, data = chunks.decode(conn.request(request_topic, req, response_topic,
                                                      timeout=max(min(TIMEOUT_S, left), 0.05)))
        except EdgekitError as exc:
            if exc.details.get("status") == 404:
                raise tuf_exc.DownloadHTTPError(exc.message, 404) from None
            if time.monotonic() >= end:
                raise tuf_exc.SlowRetrievalError(f"{name} did not arrive over the broker in time") from None
            raise tuf_exc.DownloadError(f"{name} over the broker: {exc.message}") from None
        if header.get("name") != name or header["offset"] != offset or (header["length"] == 0
                                                                          and offset < header["total"]):
            raise tuf_exc.DownloadError(f"chunk answer for {header.get('name')!r}@{header['offset']}, "
                                        f"asked for {name!r}@{offset}")
        return header, bytes(data)

    class MqttMetadataFetcher(FetcherInterface):
        def _fetch(self, url: str):
            name = url.rsplit("/", 1)[-1]
            header, first = ask(name, 0)  # errors (404) surface here, before ngclient reads

            def rest():
                yield first
                have = len(first)
                while have < header["total"]:  # ngclient stops reading past its own length cap
                    _, data = ask(name, have)
                    have += len(data)
                    yield data
            return rest()

    return MqttMetadataFetcher()


def hosts_metadata(fetcher) -> bool:
    """Auto mode, device never saw a repository: does the registry host trust metadata at all?
    Only a clean 404 for ``timestamp.json`` says no; anything else goes on to the verified refresh."""
    from tuf.api import exceptions as tuf_exc

    try:
        for _ in fetcher.fetch(REPOSITORY + "timestamp.json"):
            pass
        return True
    except tuf_exc.DownloadHTTPError as exc:
        return exc.status_code != 404
    except tuf_exc.DownloadError:
        return True
