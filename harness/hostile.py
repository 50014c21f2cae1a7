"""Messages no collector should send: malformed, oversized, out of every bound. The API's tests
feed them one by one (each must be counted and skipped) and the soak (bench/soak.py) sends them
at a steady rate through a real publisher the API subscribes to."""
from __future__ import annotations

import json

from harness.api import event


def status(**over) -> dict:
    base = {"v": 2, "host": "h", "ts_ns": 1, "mode": "events", "probe": "tracepoint", "syscalls": ["read"],
            "excluded_pids": [], "events_total": 0, "lost_total": 0, "dropped_total": 0, "malformed_total": 0,
            "uptime_s": 1.0}
    return {**base, **over}


def batch(topic: bytes, *events, raw: bytes | None = None) -> list:
    body = raw if raw is not None else json.dumps({"v": 2, "host": "h", "events": list(events)}).encode()
    return [topic, body]


MALFORMED = [
    [b"garbage"],                                                        # one frame
    [b"syscall.write", b"{}", b"third"],                                 # three frames
    [b"syscall.write", b"\x00\xff not json"],                            # not UTF-8
    [b"syscall.write", b"[1, 2, 3]"],                                    # not an object
    [b"syscall.write", b'{"v": 1, "host": "h", "events": []}'],          # another version
    [b"syscall.write", b'{"v": true, "host": "h", "events": []}'],       # v is not the integer 2
    [b"syscall.write", b'{"v": 2, "host": "h"}'],                        # no events
    batch(b"syscall.write", {"pid": "1"}),
    batch(b"syscall.read", event(syscall="write")),                     # the topic and the event disagree
    batch(b"syscall.read", dict(event(syscall="read"), count=1.5)),
    batch(b"syscall.open", event()),                                    # not a syscall of the protocol
    [b"status", b'{"v": 2, "host": "h"}'],
    [b"counts", b'{"v": 2, "host": "h", "ts_ns": 1, "interval_ns": 1, "rows": [{"pid": 1}]}'],
    [b"\xff\xfe", b'{"v": 2}'],                                          # topic not ASCII
    [b"syscall.write", b"[" * 100_000 + b"]" * 100_000],                 # deep nesting
    [b"syscall.write", b'{"v":2,"host":"h","events":["' + b"A" * 8_000_000 + b'"]}'],  # 8 MB frame
    # issue 12: numbers out of the protocol's ranges, NaN/Infinity, oversized strings and lists
    batch(b"syscall.write", raw=b'{"v":2,"host":"h","events":[' + json.dumps(event()).encode()[:-1]
           + b',"count":' + b"9" * 4299 + b"}]}"),                      # past Python's int-string limit
    batch(b"syscall.write", dict(event(), count=2**64)),                # more than u64
    batch(b"syscall.write", dict(event(), lat_ns=-1)),                  # negative where it cannot be
    batch(b"syscall.write",
           raw=json.dumps({"v": 2, "host": "h", "events": [dict(event(), ret=float("nan"))]}).encode()),
    [b"status", json.dumps(status(uptime_s=float("inf"))).encode()],   # Infinity
    [b"status", json.dumps(status(uptime_s=float("nan"))).encode()],   # NaN
    [b"status", json.dumps(status(excluded_pids=list(range(3_000)))).encode()],  # list over its bound
    [b"status", json.dumps(status(events_total=-5)).encode()],
    batch(b"syscall.write", dict(event(), comm="x" * 1000)),            # string over its bound
    batch(b"syscall.write", dict(event(), container_id="../../etc")),
    [b"syscall.write", json.dumps({"v": 2, "host": "h" * 300, "events": [event()]}).encode()],
]
