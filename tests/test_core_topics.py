"""edgekit.core.topics: builders, id checks, parse round trip, subscription filters."""

from __future__ import annotations

import pytest

from edgekit.core import topics
from edgekit.core.errors import MessageError, UsageError

BASE = "edgekit/v1/fleet-1/devices/dev_01.a"


@pytest.mark.parametrize("build,expected", [
    (lambda: topics.status("fleet-1", "dev_01.a"), f"{BASE}/status"),
    (lambda: topics.telemetry("fleet-1", "dev_01.a"), f"{BASE}/telemetry"),
    (lambda: topics.events("fleet-1", "dev_01.a"), f"{BASE}/events"),
    (lambda: topics.command("fleet-1", "dev_01.a", "deploy"), f"{BASE}/cmd/deploy"),
    (lambda: topics.command("fleet-1", "dev_01.a", "rollback"), f"{BASE}/cmd/rollback"),
    (lambda: topics.rpc_request("fleet-1", "dev_01.a"), f"{BASE}/rpc/infer"),
    (lambda: topics.rpc_response("fleet-1", "dev_01.a", "cli-7"), f"{BASE}/rpc/res/cli-7"),
    (lambda: topics.device_filter("fleet-1", "dev_01.a"), f"{BASE}/#"),
])
def test_builders(build, expected):
    assert build() == expected


BAD_IDS = ["a/b", "+", "#", "", "x" * 65, "-lead", ".dot", "sp ace", "a+b", "a#", None, 7]


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_invalid_device_id(bad):
    with pytest.raises(UsageError):
        topics.status("fleet", bad)


@pytest.mark.parametrize("bad", BAD_IDS, ids=repr)
def test_invalid_fleet_id(bad):
    with pytest.raises(UsageError):
        topics.telemetry(bad, "dev")


@pytest.mark.parametrize("bad", ["a/b", "+", "#", ""])
def test_invalid_rpc_client_and_method(bad):
    with pytest.raises(UsageError):
        topics.rpc_response("f", "d", bad)
    with pytest.raises(UsageError):
        topics.rpc_request("f", "d", bad)


def test_max_length_id_is_accepted():
    assert topics.check_name("x" * 64, "device id") == "x" * 64


def test_unknown_command():
    with pytest.raises(UsageError, match="unknown command 'reboot'"):
        topics.command("f", "d", "reboot")


def test_id_with_trailing_newline_is_rejected():
    with pytest.raises(UsageError):
        topics.status("fleet", "dev\n")


@pytest.mark.parametrize("topic,kind,rest", [
    (topics.status("f", "d"), "status", ()),
    (topics.telemetry("f", "d"), "telemetry", ()),
    (topics.events("f", "d"), "events", ()),
    (topics.command("f", "d", "config"), "cmd", ("config",)),
    (topics.rpc_request("f", "d"), "rpc", ("infer",)),
    (topics.rpc_response("f", "d", "c1"), "rpc", ("res", "c1")),
])
def test_parse_round_trip(topic, kind, rest):
    parsed = topics.parse(topic)
    assert parsed == topics.ParsedTopic("f", "d", kind, rest)


@pytest.mark.parametrize("topic", [
    "other/v1/f/devices/d/status",
    "edgekit/v2/f/devices/d/status",
    "edgekit/v1/f/things/d/status",
    "edgekit/v1/f/devices/d/unknown",
    "edgekit/v1/f/devices/d",
    "edgekit/v1/+/devices/d/status",
    "edgekit/v1/f/devices/#/status",
    "edgekit/v1//devices/d/status",
    "",
])
def test_parse_rejects_foreign_topics(topic):
    with pytest.raises(MessageError):
        topics.parse(topic)


def test_fleet_filter():
    assert topics.fleet_filter("status") == "edgekit/v1/+/devices/+/status"
    assert topics.fleet_filter("telemetry", "f1") == "edgekit/v1/f1/devices/+/telemetry"
    assert topics.fleet_filter("events", "f1", shared_group="g") == "$share/g/edgekit/v1/f1/devices/+/events"
    with pytest.raises(UsageError):
        topics.fleet_filter("cmd")


@pytest.mark.parametrize("fleet,group", [("a/b", None), ("#", None), ("f", "g/h")])
def test_fleet_filter_rejects_bad_levels(fleet, group):
    with pytest.raises(UsageError):
        topics.fleet_filter("status", fleet, shared_group=group)


def test_parse_requires_a_command_name_and_rejects_one_on_reports():
    with pytest.raises(MessageError):
        topics.parse("edgekit/v1/f/devices/d/cmd")
    with pytest.raises(MessageError):
        topics.parse("edgekit/v1/f/devices/d/status/extra")
    assert topics.parse("edgekit/v1/f/devices/d/cmd/deploy").rest == ("deploy",)


def test_stream_topics_build_and_parse():
    from edgekit.core import topics as t

    s, p = t.sensor("f1", "d1", "cam0"), t.prediction("f1", "d1", "cam0")
    assert s == "edgekit/v1/f1/devices/d1/sensors/cam0" and p == "edgekit/v1/f1/devices/d1/predictions/cam0"
    assert t.parse(s) == t.ParsedTopic("f1", "d1", "sensors", ("cam0",))
    assert t.parse(p).kind == "predictions"
    with pytest.raises(MessageError):
        t.parse("edgekit/v1/f1/devices/d1/sensors")  # a stream name is required
    with pytest.raises(UsageError):
        t.sensor("f1", "d1", "cam/0")
