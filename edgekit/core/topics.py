"""MQTT topic builders and parser for the ``edgekit/v1`` contract (the one place topics are spelled).

Layout (one subtree per device, so a broker ACL ``pattern readwrite edgekit/v1/+/devices/%u/#``
isolates devices)::

    edgekit/v1/{fleet}/devices/{device}/status              retained birth/death (LWT)
    edgekit/v1/{fleet}/devices/{device}/telemetry           periodic health + inference stats
    edgekit/v1/{fleet}/devices/{device}/events              deployment progress, errors
    edgekit/v1/{fleet}/devices/{device}/cmd/{command}       to the device: deploy, rollback, config
    edgekit/v1/{fleet}/devices/{device}/rpc/infer           inference requests (MQTT 5 response topic)
    edgekit/v1/{fleet}/devices/{device}/rpc/res/{client}    inference responses for one requester
    edgekit/v1/{fleet}/devices/{device}/rpc/chunk           bundle chunk requests (device -> registry)
    edgekit/v1/{fleet}/devices/{device}/rpc/chunk/res       bundle chunk answers (registry -> device)
    edgekit/v1/{fleet}/devices/{device}/sensors/{stream}    streaming mode: sensor samples to infer on
    edgekit/v1/{fleet}/devices/{device}/predictions/{stream} streaming mode: the agent's predictions

Does not open connections; see ``edgekit.core.mqtt`` for that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import MessageError, UsageError

ROOT = "edgekit/v1"
DEVICE_KINDS = ("status", "telemetry", "events")
COMMANDS = ("deploy", "rollback", "config")
STREAM_KINDS = ("sensors", "predictions")  # streaming mode: {kind}/{stream}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(value: str, what: str) -> str:
    """Fleet and device ids become topic levels: no wildcards, no slashes, bounded length."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise UsageError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    return value


def device_base(fleet: str, device: str) -> str:
    return f"{ROOT}/{check_name(fleet, 'fleet id')}/devices/{check_name(device, 'device id')}"


def status(fleet: str, device: str) -> str:
    return f"{device_base(fleet, device)}/status"


def telemetry(fleet: str, device: str) -> str:
    return f"{device_base(fleet, device)}/telemetry"


def events(fleet: str, device: str) -> str:
    return f"{device_base(fleet, device)}/events"


def command(fleet: str, device: str, name: str) -> str:
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}; known: {', '.join(COMMANDS)}")
    return f"{device_base(fleet, device)}/cmd/{name}"


def rpc_request(fleet: str, device: str, method: str = "infer") -> str:
    return f"{device_base(fleet, device)}/rpc/{check_name(method, 'rpc method')}"


def rpc_response(fleet: str, device: str, client: str) -> str:
    return f"{device_base(fleet, device)}/rpc/res/{check_name(client, 'client id')}"


def chunk_request(fleet: str, device: str) -> str:
    """Where a device asks for bundle bytes (MQTT transfer, ``edgekit.chunk.request/1``)."""
    return f"{device_base(fleet, device)}/rpc/chunk"


def chunk_response(fleet: str, device: str) -> str:
    """Where the registry answers a device's chunk requests (binary, :mod:`edgekit.core.chunks`).
    Always derived from the request topic, never from a requester-supplied response topic."""
    return f"{chunk_request(fleet, device)}/res"


def chunk_filter(fleet: str = "+", shared_group: str | None = None) -> str:
    """The chunk server's subscription: every device's chunk requests (optionally shared)."""
    if fleet != "+":
        check_name(fleet, "fleet id")
    flt = f"{ROOT}/{fleet}/devices/+/rpc/chunk"
    return f"$share/{check_name(shared_group, 'shared subscription group')}/{flt}" if shared_group else flt


def sensor(fleet: str, device: str, stream: str) -> str:
    """Where a sensor publishes samples (``edgekit.sensor/1``) for the device to infer on."""
    return f"{device_base(fleet, device)}/sensors/{check_name(stream, 'stream name')}"


def prediction(fleet: str, device: str, stream: str) -> str:
    """Where the agent publishes its predictions (``edgekit.prediction/1``) for a sensor stream."""
    return f"{device_base(fleet, device)}/predictions/{check_name(stream, 'stream name')}"


def device_filter(fleet: str, device: str) -> str:
    """Everything addressed to one device (what the agent subscribes to)."""
    return f"{device_base(fleet, device)}/#"


def fleet_filter(kind: str, fleet: str = "+", shared_group: str | None = None) -> str:
    """Subscription filter for one kind of device report across a fleet (or all fleets).

    ``shared_group`` makes it an MQTT 5 shared subscription so several workers split the load.
    """
    if kind not in DEVICE_KINDS:
        raise UsageError(f"unknown report kind {kind!r}; known: {', '.join(DEVICE_KINDS)}")
    if fleet != "+":
        check_name(fleet, "fleet id")
    flt = f"{ROOT}/{fleet}/devices/+/{kind}"
    return f"$share/{check_name(shared_group, 'shared subscription group')}/{flt}" if shared_group else flt


@dataclass(frozen=True)
class ParsedTopic:
    fleet: str
    device: str
    kind: str          # status | telemetry | events | cmd | rpc | sensors | predictions
    rest: tuple[str, ...] = ()


def parse(topic: str) -> ParsedTopic:
    """Split a concrete topic into its parts; raise :class:`MessageError` if it is not ours."""
    parts = topic.split("/")
    if len(parts) < 6 or "/".join(parts[:2]) != ROOT or parts[3] != "devices":
        raise MessageError(f"not an edgekit/v1 device topic: {topic!r}")
    fleet, device, kind, rest = parts[2], parts[4], parts[5], tuple(parts[6:])
    if kind not in DEVICE_KINDS + ("cmd", "rpc") + STREAM_KINDS or not NAME_RE.fullmatch(fleet) \
            or not NAME_RE.fullmatch(device) or (kind in ("cmd", "rpc") + STREAM_KINDS) != bool(rest):
        raise MessageError(f"not an edgekit/v1 device topic: {topic!r}")
    return ParsedTopic(fleet, device, kind, rest)
