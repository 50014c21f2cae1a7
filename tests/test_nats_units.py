"""In-process checks of the NATS pieces: subject spelling, nkeys, headers, ack subjects, the bridge's
splitting of oversized messages, its flag parsers and the bridge-status validator."""
from __future__ import annotations

import json
import os
import secrets

import pytest

from harness.api import event
from syswatch.shared import jetstream, natsclient, protocol
from syswatch.shared.metricsserver import check_listen
from syswatch.subscribers import nats_bridge

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("host, token", [
    ("node1", "node1"), ("ip-10-0-0-1.ec2.internal", "ip-10-0-0-1_ec2_internal"), ("a b", "a%20b"),
    ("x*>", "x%2A%3E"), ("%", "%25"), ("é", "%C3%A9"), ("", "%"), ("$SYS", "%24SYS")])
def test_host_token_is_one_subject_token(host, token):
    assert jetstream.host_token(host) == token
    subj = jetstream.subject(host, "syscall.read")
    assert subj == f"syswatch.{token}.syscall.read"
    assert jetstream.split_subject(subj) == (token, "syscall.read")
    assert not any(c in token for c in " \t\r\n.*>")


@pytest.mark.parametrize("subj", ["syswatch", "syswatch.host", "other.h.status", "syswatch..status", ""])
def test_split_subject_refuses_other_subjects(subj):
    assert jetstream.split_subject(subj) is None


def test_nkey_seed_round_trip_and_checks():
    raw = secrets.token_bytes(32)
    seed = natsclient.nkey_encode_seed(raw)
    assert seed.startswith("SU") and natsclient.nkey_seed_bytes(seed) == raw
    public = natsclient.nkey_public(seed)
    assert public.startswith("U") and len(public) == 56
    broken = seed[:-3] + ("A" if seed[-3] != "A" else "B") + seed[-2:]
    with pytest.raises(ValueError, match="checksum"):
        natsclient.nkey_seed_bytes(broken)
    with pytest.raises(ValueError):
        natsclient.nkey_seed_bytes(public)          # a public key is not a seed


def test_headers_round_trip_and_status_line():
    raw = natsclient.encode_headers({"Nats-Msg-Id": "abc-1"})
    assert raw == b"NATS/1.0\r\nNats-Msg-Id: abc-1\r\n\r\n"
    assert natsclient.parse_headers(raw) == ({"Nats-Msg-Id": "abc-1"}, None, "")
    assert natsclient.parse_headers(b"NATS/1.0 408 Request Timeout\r\n\r\n")[1:] == (408, "Request Timeout")
    with pytest.raises(ValueError):
        natsclient.encode_headers({"a": "b\r\nX: y"})


def test_ack_subjects_old_and_new_form():
    assert jetstream.ack_info("$JS.ACK.S.c.2.17.9.1700000000000000000.4") == jetstream.AckInfo(17, 9, 2, 4)
    v2 = "$JS.ACK.dom.acchash.S.c.1.5.5.1700000000000000000.0.rnd"
    assert jetstream.ack_info(v2) == jetstream.AckInfo(5, 5, 1, 0)
    assert jetstream.ack_info("_INBOX.x") is None and jetstream.ack_info("$JS.ACK.a.b.c.d.e.f.g") is None


def test_urls_are_checked_and_credentials_never_shown():
    assert natsclient.check_url("nats://a:4222,tls://b:4443") == "nats://a:4222,tls://b:4443"
    for bad in ("http://x:4222", "nats://", "tcp://127.0.0.1:4222", "nats://h:99999"):
        with pytest.raises(ValueError):
            natsclient.check_url(bad)
    assert natsclient.redact("nats://bridge:s3cret@10.0.0.1:4222") == "nats://***@10.0.0.1:4222"
    assert "s3cret" not in natsclient.Options(servers=("nats://u:s3cret@h:1", "nats://tok@h:2")).display()


def test_stream_config_is_what_the_docs_say():
    cfg = jetstream.StreamLimits(max_bytes=8 << 30, max_age_s=6 * 3600).config("SYSWATCH")
    assert cfg["subjects"] == ["syswatch.>"] and cfg["retention"] == "limits" and cfg["discard"] == "new"
    assert cfg["max_bytes"] == 8 << 30 and cfg["max_age"] == 6 * 3600 * 10**9 and cfg["storage"] == "file"
    assert cfg["duplicate_window"] == 120 * 10**9
    short = jetstream.StreamLimits(max_age_s=60).config("S")
    assert short["duplicate_window"] == 60 * 10**9, "the duplicate window cannot exceed the age"


@pytest.mark.parametrize("text, value", [("1GiB", 1 << 30), ("512MiB", 512 << 20), ("8gb", 8 * 10**9),
                                         ("1000000000", 10**9)])
def test_sizes(text, value):
    assert nats_bridge.size(text) == value


@pytest.mark.parametrize("text", ["1", "1KiB", "-5GiB", "lots", "1PiB"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        nats_bridge.size(text)


def test_ages():
    assert nats_bridge.age("90s") == 90 and nats_bridge.age("6h") == 21600 and nats_bridge.age("7d") == 7 * 86400
    for bad in ("10s", "400d", "1w", ""):
        with pytest.raises(ValueError):
            nats_bridge.age(bad)


def test_listen_addresses():
    assert check_listen("9101") == ("127.0.0.1", 9101)
    assert check_listen("0.0.0.0:9101") == ("0.0.0.0", 9101)
    assert check_listen("[::1]:9101") == ("::1", 9101)
    for bad in ("host:", "host:70000", "x:y"):
        with pytest.raises(ValueError):
            check_listen(bad)


def test_an_oversized_batch_is_split_into_valid_messages_with_every_event():
    events = [event(count=i, comm="c" * 15) for i in range(3000)]
    data = protocol.encode("syscall.write", {"host": "h1", "events": events})[1]
    item = nats_bridge.Item("syswatch.h1.syscall.write", data, len(events), "p-1")
    parts = nats_bridge.split(item, 100_000)
    assert parts and len(parts) > 1 and all(len(p.data) <= 100_000 for p in parts)
    got = []
    for p in parts:
        msg = protocol.decode([b"syscall.write", p.data])
        assert msg.payload["host"] == "h1" and p.events == len(msg.events)
        got += [e["count"] for e in msg.events]
    assert got == list(range(3000)), "every event once, in order"
    assert len({p.msg_id for p in parts}) == len(parts)
    one = protocol.encode("syscall.write", {"host": "h1", "events": [event(comm="x" * 60)]})[1]
    assert nats_bridge.split(nats_bridge.Item("syswatch.h1.syscall.write", one, 1, "p-2"), 100) is None


def test_bridge_status_validator():
    counters = nats_bridge.Counters()
    counters.host = "node.one"
    counters.lost("stream_full", 7)
    st = counters.status((3, 1000))
    msg = protocol.decode(protocol.encode(protocol.TOPIC_BRIDGE, st))
    assert msg.payload["unpublished_events"] == 7 and msg.payload["unpublished_by_reason"]["stream_full"] == 7
    for bad in ({**st, "unpublished_by_reason": {"made_up": 1}}, {**st, "nats_connected": 1},
                {**st, "published_events": -1}, {**st, "uptime_s": float("inf")}):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode([b"bridge", json.dumps({"v": 2, **bad}).encode()])


# --- the API's NATS side, in process (no server: the ingest's handling of a delivered message) ------
def _api(tmp_path, *args):
    from harness.api import ApiInProcess
    return ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--nats", "nats://127.0.0.1:4222", *args)


def _delivered(subject: str, data: bytes, seq: int, delivered: int = 1) -> natsclient.Msg:
    return natsclient.Msg(subject, f"$JS.ACK.SYSWATCH.syswatch-api.{delivered}.{seq}.{seq}.1700000000000000000.0",
                          data)


def test_nats_alone_reads_no_zeromq_and_shows_the_bridge_per_host(tmp_path):
    api = _api(tmp_path)
    assert api.config.collectors == () and api.app.nats is not None
    ingest = api.app.nats
    batch = protocol.encode("syscall.write", {"host": "node.1", "events": [event(pid=7, count=3)]})[1]
    counters = nats_bridge.Counters()
    counters.host = "node.1"
    counters.lost("queue_full", 5)
    bridge = protocol.encode("bridge", counters.status((0, 0)))[1]
    ingest.handle(_delivered("syswatch.node_1.syscall.write", batch, 1))
    ingest.handle(_delivered("syswatch.node_1.bridge", bridge, 2))
    ingest.handle(_delivered("syswatch.node_1.syscall.write", batch, 1, delivered=2))   # applied here already
    stats = api.get("/stats").json()
    (entry,) = stats["collectors"]
    assert entry["host"] == "node.1" and \
        entry["endpoint"] == "nats://127.0.0.1:4222 (SYSWATCH/syswatch-api) syswatch.node_1"
    assert entry["bridge"]["unpublished_by_reason"]["queue_full"] == 5 and stats["events_received"] == 1
    assert stats["api"]["nats_messages_received"] == 3 and stats["api"]["nats_redelivered"] == 1
    text = api.get("/metrics").text
    assert 'syswatch_bridge_unpublished_events_total{host="node.1",reason="queue_full"} 5.0' in text


@pytest.mark.parametrize("subject, data, reason", [
    ("syswatch.node_1.status", b"{", "not JSON"),
    ("syswatch.other.syscall.write", protocol.encode("syscall.write", {"host": "node.1", "events": []})[1],
     "on the subject of host"),
    ("syswatch.node_1", b"{}", "is not syswatch.<host>.<topic>"),
    ("syswatch.node_1.syscall.write", b" " * (9 << 20), "over"),
])
def test_nats_messages_that_are_refused_change_nothing(tmp_path, subject, data, reason):
    api = _api(tmp_path)
    before = api.get("/stats").json()
    api.app.nats.handle(_delivered(subject, data, 1))
    after = api.get("/stats").json()
    assert after["api"]["malformed_messages"] == 1 and reason in after["api"]["last_malformed_reason"]
    assert after["hosts"] == before["hosts"] == [] and after["totals"] == before["totals"]


def test_api_nats_flags_are_checked(tmp_path):
    from syswatch.api.server import parse_args
    with pytest.raises(SystemExit) as exc:
        parse_args(["--nats", "nats://h:4222", "--nats-ca", str(tmp_path / "missing.pem")])
    assert exc.value.code == 2
    both = parse_args(["--nats", "nats://h:4222", "--collector", "tcp://127.0.0.1:5556"])
    assert both.collectors == ("tcp://127.0.0.1:5556",) and both.nats.servers == ("nats://h:4222",)


def test_nats_only_api_keeps_no_thread_spinning(tmp_path):
    """With --nats and no --collector the ZeroMQ thread has no socket; a poll of none returns at once, so it
    must wait instead (the bench found a whole core burnt). Its CPU over a second of running: near none."""
    import threading
    import time
    api = _api(tmp_path)
    sub = api.app.subscriber
    sub.start()
    try:
        deadline = time.monotonic() + 5
        while sub.native_id is None and time.monotonic() < deadline:
            time.sleep(0.01)
        stat = f"/proc/self/task/{sub.native_id}/stat"

        def cpu() -> float:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        before = cpu()
        threading.Event().wait(1.0)
        assert cpu() - before < 0.2, "the ZeroMQ thread of a NATS-only API is spinning"
    finally:
        sub.stop()
        sub.join(5)
