"""shared/protocol.py: round trips, version mismatch, malformed frames, bounds, and a property test
that decode raises only ProtocolError whatever the frames hold."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syswatch.shared.protocol import (
    ProtocolError,
    announce_topic,
    decode,
    encode,
    encode_event_batch,
    json_string,
    parse_announce,
    topic_for,
    valid_subscription,
)

EVENT = {"ts_ns": 1, "pid": 2, "tid": 3, "uid": 0, "comm": 'we"ird\n\udcff'.encode("utf-8", "surrogateescape")
         .decode("utf-8", "backslashreplace"), "syscall": "read", "fd": 0, "count": 7, "ret": -9, "lat_ns": 5,
         "cgroup_id": 1, "container_id": "0123456789ab", "container_name": "web"}
STATUS = {"host": "h", "ts_ns": 1, "mode": "events", "probe": "tracepoint", "syscalls": ["read", "write"],
          "excluded_pids": [1, 2], "events_total": 0, "lost_total": 0, "dropped_total": 0, "malformed_total": 0,
          "uptime_s": 0.5}
ROW = {"pid": 1, "comm": "x", "container_id": "", "container_name": "", "syscall": "pread64", "calls": 1,
       "bytes": 2, "errors": 0, "lat_ns_sum": 9}
FAILED_ROW = {**ROW, "calls": 3, "errors": 2, "lat_hist": [0, 0, 0, 1, 2], "errnos": {"EBADF": 1, "other": 1}}


@pytest.mark.unit
def test_round_trips():
    for topic, payload in [("status", STATUS), ("syscall.read", {"host": "h", "events": [EVENT]}),
                           ("counts", {"host": "h", "ts_ns": 1, "interval_ns": 10**9, "rows": [ROW, FAILED_ROW]})]:
        msg = decode(encode(topic, payload))
        assert msg.topic == topic and msg.payload == {"v": 2, **payload}


@pytest.mark.unit
def test_fast_batch_equals_encode():
    events = [json.dumps(EVENT, separators=(",", ":")).encode()] * 3
    frames = encode_event_batch("syscall.read", json_string("h\u00e9"), events)
    msg = decode(frames)
    assert msg.events == [EVENT] * 3 and msg.payload["host"] == "h\u00e9"


@pytest.mark.unit
def test_unknown_fields_are_dropped():
    msg = decode(encode("syscall.read", {"host": "h", "events": [{**EVENT, "extra": "x" * 1000}], "more": 1}))
    assert set(msg.events[0]) == set(EVENT) and set(msg.payload) == {"v", "host", "events"}


@pytest.mark.unit
def test_version_mismatch_is_a_clear_error():
    frames = [b"status", json.dumps({**STATUS, "v": 1}).encode()]
    with pytest.raises(ProtocolError, match="version v=1.*v2.*predates event model v2"):
        decode(frames)
    with pytest.raises(ProtocolError, match="v=1"):
        encode("status", {**STATUS, "v": 1})


def _ev(**over):
    return json.dumps({"v": 2, "host": "h", "events": [{**EVENT, **over}]}).encode()


@pytest.mark.parametrize("frames, match", [
    ([b"status"], "2 frames"),
    ([b"a", b"{}", b"c"], "2 frames"),
    ([b"\xff", b"{}"], "ASCII"),
    ([b"status", b"\xff"], "UTF-8"),
    ([b"status", b"{"], "not JSON"),
    ([b"status", b"[1]"], "JSON object"),
    ([b"status", b'{"v":2}'], "lacks field"),
    ([b"syscall.read", b'{"v":2,"host":"h","events":[{"pid":"1"}]}'], "lacks field|must be"),
    ([b"status", json.dumps({**STATUS, "v": 2, "events_total": True}).encode()], "must be an integer"),
    ([b"syscall.read", _ev(count=2**64)], "count.*0..18446744073709551615"),
    ([b"syscall.read", _ev(lat_ns=-1)], "lat_ns"),
    ([b"syscall.read", _ev(ret=1.5)], "ret"),
    ([b"syscall.read", _ev(syscall="write")], "has syscall"),
    ([b"syscall.read", _ev(container_id="xyz")], "12 hex"),
    ([b"syscall.read", _ev(comm="c" * 65)], "at most 64"),
    ([b"syscall.open", _ev()], "unknown event topic"),
    ([b"syscall.read", b'{"v":2,"host":"h","events":[{"count":NaN}]}'], "not JSON"),
    ([b"status", json.dumps({**STATUS, "v": 2, "uptime_s": 1e400}).encode().replace(b"Infinity", b"1e400")],
     "finite"),
    ([b"status", json.dumps({**STATUS, "v": 2, "excluded_pids": list(range(2000))}).encode()], "at most 1024"),
    ([b"status", json.dumps({**STATUS, "v": 2, "syscalls": ["open"]}).encode()], "known syscalls"),
    ([b"counts", json.dumps({"v": 2, "host": "h", "ts_ns": 1, "interval_ns": 1,
                             "rows": [{**ROW, "bytes": -1}]}).encode()], "bytes"),
    ([b"counts", json.dumps({"v": 2, "host": "h", "ts_ns": 1, "interval_ns": 1,
                             "rows": [{**ROW, "lat_hist": [1] * 66}]}).encode()], "lat_hist.*at most 65"),
    ([b"counts", json.dumps({"v": 2, "host": "h", "ts_ns": 1, "interval_ns": 1,
                             "rows": [{**ROW, "lat_hist": [-1]}]}).encode()], "lat_hist"),
    ([b"counts", json.dumps({"v": 2, "host": "h", "ts_ns": 1, "interval_ns": 1,
                             "rows": [{**ROW, "errnos": {"x" * 99: 1}}]}).encode()], "errnos"),
    ([b"counts", json.dumps({"v": 2, "host": "h", "ts_ns": 1, "interval_ns": 1,
                             "rows": [{**ROW, "errnos": {"EBADF": -1}}]}).encode()], "errnos"),
])
@pytest.mark.unit
def test_malformed_frames(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode(frames)


@pytest.mark.unit
def test_topic_for():
    assert topic_for("write") == "syscall.write" and topic_for("pwrite64") == "syscall.pwrite64"
    with pytest.raises(ProtocolError, match="unknown syscall"):
        topic_for("open")


@pytest.mark.unit
def test_subscriptions_and_announces():
    assert parse_announce(announce_topic(42, 4026531836).encode()) == (42, 4026531836)
    for bad in (b"~subscriber:0:1", b"~subscriber:1", b"~subscriber:1:2:3", b"~subscriber:-1:2", b"x"):
        assert parse_announce(bad) is None
    for ok in (b"", b"s", b"syscall.", b"syscall.pread64", b"status", b"counts"):
        assert valid_subscription(ok)
    for bad in (b"syscall.read.more", b"x" * 100, b"\xff", b"statusX"):
        assert not valid_subscription(bad)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=4) |
       st.tuples(st.sampled_from([b"status", b"syscall.read", b"counts", b"x"]),
                 st.dictionaries(st.sampled_from(["v", "host", "events", "rows", "ts_ns", "mode"]), json_values)
                 .map(lambda d: json.dumps(d).encode())).map(list))
def test_decode_raises_only_protocol_error(frames):
    try:
        msg = decode(frames)
    except ProtocolError:
        return
    assert msg.payload["v"] == 2 and isinstance(msg.topic, str)


@pytest.mark.unit
def test_stale_cpus_is_optional_and_bounded():
    """status' stale_cpus (CPUs whose loss count stopped updating): kept when it is a bounded list
    of CPU numbers, refused otherwise, absent when not sent."""
    from syswatch.shared.protocol import MAX_CPUS, clean_status
    assert "stale_cpus" not in clean_status(dict(STATUS))
    assert clean_status(dict(STATUS, stale_cpus=[0, 3]))["stale_cpus"] == [0, 3]
    for bad in ([-1], ["0"], [1.5], list(range(MAX_CPUS + 1)), "0", {"0": 1}):
        with pytest.raises(ProtocolError, match="stale_cpus"):
            clean_status(dict(STATUS, stale_cpus=bad))


@pytest.mark.unit
def test_exclusions_and_refusal_counters_are_optional_and_bounded():
    """status' ``excluded`` (pid, kind, what of it is left out), ``announces_refused_total`` and
    ``curve_refused_total``: kept when well formed, left out (not an error) otherwise."""
    from syswatch.shared.protocol import MAX_EXCLUDED_PIDS, clean_status
    entry = {"pid": 7, "kind": "subscriber", "comm": "python3", "what": ["eventfd:5", "socket:[123]"]}
    got = clean_status(dict(STATUS, excluded=[entry, dict(entry, kind="peer", what=["all"], x=1)],
                            announces_refused_total=3, curve_refused_total=0))
    assert got["excluded"] == [entry, {"pid": 7, "kind": "peer", "comm": "python3", "what": ["all"]}]
    assert got["announces_refused_total"] == 3 and got["curve_refused_total"] == 0
    plain = clean_status(dict(STATUS))
    assert not {"excluded", "announces_refused_total", "curve_refused_total"} & set(plain)
    for bad in ([dict(entry, pid=-1)], [dict(entry, kind="friend")], [dict(entry, what="all")],
                [dict(entry, what=["x" * 65])], [dict(entry, what=["a"] * 65)], [dict(entry, comm=None)],
                [entry] * (MAX_EXCLUDED_PIDS + 1), "all", [1]):
        assert "excluded" not in clean_status(dict(STATUS, excluded=bad)), bad
    for bad in (-1, 2**64, 1.0, "3", True):
        assert "curve_refused_total" not in clean_status(dict(STATUS, curve_refused_total=bad))


@pytest.mark.unit
def test_a_counts_message_of_the_largest_rows_fits_the_api_s_limit():
    """The collector splits an interval's rows into messages of ROWS_PER_MESSAGE; the first also holds
    the interval's files. Every field at its largest (65 u64 latency buckets, every errno name, names of
    control characters at their length bounds, 4 KiB paths): the message still fits the API's 8 MiB, and
    decodes. Counts rows are per process, so an interval may hold thousands."""
    from syswatch.api.ingest import SUB_MAXMSGSIZE
    from syswatch.collector.loop import ROWS_PER_MESSAGE
    from syswatch.collector.parser import TOP_FILES
    from syswatch.shared import errnos, latency, record
    u64 = record.U64
    row = {"pid": 2**22, "comm": "\x01" * 15, "container_id": "0123456789ab",
           "container_name": "\x01" * record.MAX_CONTAINER_NAME, "syscall": "copy_file_range", "calls": u64,
           "bytes": u64, "errors": u64, "lat_ns_sum": u64, "lat_hist": [u64] * latency.NBUCKETS,
           "errnos": {name: u64 for name in errnos.LABELS}}
    file_row = {"path": "\x01" * 4096 + " (deleted)", "syscall": "copy_file_range", "file_type": "sock",
                "sock": "\x01" * 120, "ino": u64, "dev": u64, "calls": u64, "bytes": u64, "errors": u64,
                "lat_ns_sum": u64}
    payload = {"host": "h" * 255, "ts_ns": 1, "interval_ns": 1, "rows": [row] * ROWS_PER_MESSAGE,
               "files": [file_row] * TOP_FILES, "files_rest": {"files": 1, "calls": 1, "bytes": 1,
                                                                          "errors": 0}}
    frames = encode("counts", payload)
    size = sum(len(f) for f in frames)
    assert size < SUB_MAXMSGSIZE, f"{size:,} bytes"
    assert len(decode(frames)[1]["rows"]) == ROWS_PER_MESSAGE
