"""shared/protocol.py: round trips, version mismatch, malformed frames, and a property test
that decode raises only ProtocolError whatever the frames hold."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from shared.protocol import ProtocolError, decode, encode, encode_event_batch, json_string, topic_for

EVENT = {"ts_ns": 1, "pid": 2, "tid": 3, "uid": 0, "comm": 'we"ird\n\udcff'.encode("utf-8", "surrogateescape")
         .decode("utf-8", "backslashreplace"), "syscall": "read", "fd": 0, "count": 7}
STATUS = {"host": "h", "ts_ns": 1, "mode": "events", "probe": "tracepoint", "excluded_pids": [1, 2],
          "events_total": 0, "lost_total": 0, "dropped_total": 0, "malformed_total": 0, "uptime_s": 0.5}


@pytest.mark.unit
def test_round_trips():
    for topic, payload in [("status", STATUS), ("syscall.read", {"host": "h", "events": [EVENT]}),
                           ("counts", {"host": "h", "ts_ns": 1, "interval_ns": 10**9,
                                       "rows": [{"pid": 1, "comm": "x", "syscall": "read", "calls": 1, "bytes": 2}]})]:
        msg = decode(encode(topic, payload), strict=True)
        assert msg.topic == topic and msg.payload == {"v": 1, **payload}


@pytest.mark.unit
def test_fast_batch_equals_encode():
    events = [json.dumps(EVENT, separators=(",", ":")).encode()] * 3
    frames = encode_event_batch("syscall.read", json_string("h\u00e9"), events)
    msg = decode(frames, strict=True)
    assert msg.events == [EVENT] * 3 and msg.payload["host"] == "h\u00e9"


@pytest.mark.unit
def test_version_mismatch_is_a_clear_error():
    frames = [b"status", json.dumps({**STATUS, "v": 2}).encode()]
    with pytest.raises(ProtocolError, match="version v=2.*v1"):
        decode(frames)
    with pytest.raises(ProtocolError, match="v=2"):
        encode("status", {**STATUS, "v": 2})


@pytest.mark.unit
@pytest.mark.parametrize("frames, match", [
    ([b"status"], "2 frames"),
    ([b"a", b"{}", b"c"], "2 frames"),
    ([b"\xff", b"{}"], "ASCII"),
    ([b"status", b"\xff"], "UTF-8"),
    ([b"status", b"{"], "not JSON"),
    ([b"status", b"[1]"], "JSON object"),
    ([b"status", b'{"v":1}'], "lacks field"),
    ([b"syscall.read", b'{"v":1,"host":"h","events":[{"pid":"1"}]}'], "lacks field|must be"),
    ([b"status", json.dumps({**STATUS, "v": 1, "events_total": True}).encode()], "must be int"),
])
def test_malformed_frames(frames, match):
    with pytest.raises(ProtocolError, match=match):
        decode(frames, strict=True)


@pytest.mark.unit
def test_topic_for():
    assert topic_for("write") == "syscall.write"
    with pytest.raises(ProtocolError, match="unknown syscall"):
        topic_for("open")


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=4) |
       st.tuples(st.sampled_from([b"status", b"syscall.read", b"counts", b"x"]),
                 st.dictionaries(st.sampled_from(["v", "host", "events", "rows", "ts_ns", "mode"]), json_values)
                 .map(lambda d: json.dumps(d).encode())).map(list),
       st.booleans())
def test_decode_raises_only_protocol_error(frames, strict):
    try:
        msg = decode(frames, strict=strict)
    except ProtocolError:
        return
    assert msg.payload["v"] == 1 and isinstance(msg.topic, str)
