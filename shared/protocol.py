"""syswatch wire protocol v1 (ZeroMQ PUB/SUB), implemented once for every peer.

Every message is two frames: ``[topic, payload]``. The topic is ASCII, the payload
one UTF-8 JSON object carrying ``"v": 1``. Subscribers pick topics by prefix
(``syscall.`` = every event). See ../shared/CONTRACT.md (the interface contract).

    frames = encode("status", {"host": "h", ...})      # -> [b"status", b'{"v":1,...}']
    msg = decode(frames)                                 # -> Message(topic, payload)
    for event in msg.events: ...                         # syscall.* batches

``decode`` never lets a foreign payload through silently: it raises ProtocolError
with a message that says what was wrong (frame count, encoding, JSON, version, shape).
"""
from __future__ import annotations

import json
from typing import Any, Iterable, NamedTuple, Sequence

VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"

TOPIC_READ = "syscall.read"
TOPIC_WRITE = "syscall.write"
TOPIC_COUNTS = "counts"
TOPIC_STATUS = "status"
EVENT_PREFIX = "syscall."
EVENT_TOPICS = {"read": TOPIC_READ, "write": TOPIC_WRITE}
TOPICS = (TOPIC_READ, TOPIC_WRITE, TOPIC_COUNTS, TOPIC_STATUS)
SYSCALLS = ("read", "write")

# EVENT fields and their JSON types (bool is excluded from int below).
EVENT_FIELDS = {"ts_ns": int, "pid": int, "tid": int, "uid": int, "comm": str,
                "syscall": str, "fd": int, "count": int}
COUNTS_ROW_FIELDS = {"pid": int, "comm": str, "syscall": str, "calls": int, "bytes": int}
# Required payload keys per topic (beyond "v").
REQUIRED = {
    TOPIC_READ: {"host": str, "events": list},
    TOPIC_WRITE: {"host": str, "events": list},
    TOPIC_COUNTS: {"host": str, "ts_ns": int, "interval_ns": int, "rows": list},
    TOPIC_STATUS: {"host": str, "ts_ns": int, "mode": str, "probe": str,
                   "excluded_pids": list, "events_total": int, "lost_total": int,
                   "dropped_total": int, "malformed_total": int, "uptime_s": (int, float)},
}
# A payload larger than this is refused by decode (and by subscribers' ZMQ_MAXMSGSIZE).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A message that is not syswatch wire protocol v1; the text says why."""


class Message(NamedTuple):
    topic: str
    payload: dict

    @property
    def events(self) -> list:
        """The events of a ``syscall.*`` batch (empty for other topics)."""
        return self.payload.get("events", []) if self.topic.startswith(EVENT_PREFIX) else []


def encode(topic: str, payload: dict) -> list[bytes]:
    """Two frames for ``topic``/``payload``; ``"v": 1`` is added (a different ``v`` is an error)."""
    if not isinstance(topic, str) or not topic.isascii() or not topic:
        raise ProtocolError(f"topic must be a non-empty ASCII string, got {topic!r}")
    if not isinstance(payload, dict):
        raise ProtocolError(f"payload must be a dict, got {type(payload).__name__}")
    if payload.get("v", VERSION) != VERSION:
        raise ProtocolError(f"payload has v={payload['v']!r}; this is protocol v{VERSION}")
    body = {"v": VERSION, **payload}
    return [topic.encode("ascii"), json.dumps(body, separators=(",", ":")).encode("utf-8")]


def encode_event_batch(topic: str, host_json: bytes, events_json: Iterable[bytes]) -> list[bytes]:
    """Fast path for the collector: frames for a batch of events already serialised as JSON.

    ``host_json`` is the host name as a JSON string (``json_string(host)``), each item of
    ``events_json`` one EVENT object as JSON bytes. Nothing is re-parsed.
    """
    return [topic.encode("ascii"),
            b'{"v":1,"host":' + host_json + b',"events":[' + b",".join(events_json) + b"]}"]


def json_string(text: str) -> bytes:
    """``text`` as a JSON string literal (ASCII-only, so it is valid whatever it holds)."""
    return json.dumps(text).encode("ascii")


def _check_fields(obj: Any, fields: dict, what: str) -> None:
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    for key, typ in fields.items():
        if key not in obj:
            raise ProtocolError(f"{what} lacks field {key!r}")
        val = obj[key]
        if isinstance(val, bool) or not isinstance(val, typ):
            want = typ.__name__ if isinstance(typ, type) else "number"
            raise ProtocolError(f"{what} field {key!r} must be {want}, got {val!r:.60}")


def decode(frames: Sequence[bytes], *, strict: bool = False) -> Message:
    """Parse ``[topic, payload]`` frames into a Message, or raise ProtocolError.

    The envelope of every known topic is checked (required keys and types); with
    ``strict=True`` every event and counts row is checked too. Unknown topics are
    accepted if their payload is a v1 object (forward compatibility).
    """
    if not isinstance(frames, (list, tuple)) or len(frames) != 2:
        n = len(frames) if isinstance(frames, (list, tuple)) else "?"
        raise ProtocolError(f"expected 2 frames [topic, payload], got {n}")
    raw_topic, raw_payload = frames
    if not isinstance(raw_topic, (bytes, bytearray, memoryview)) or not isinstance(raw_payload, (bytes, bytearray, memoryview)):
        raise ProtocolError("frames must be bytes")
    try:
        topic = bytes(raw_topic).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("topic frame is not ASCII") from None
    if not topic:
        raise ProtocolError("topic frame is empty")
    if len(raw_payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(raw_payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        payload = json.loads(bytes(raw_payload))
    except UnicodeDecodeError:
        raise ProtocolError(f"payload of topic {topic!r} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"payload of topic {topic!r} is not JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"payload of topic {topic!r} must be a JSON object, got {type(payload).__name__}")
    version = payload.get("v")
    if version != VERSION or isinstance(version, bool):
        raise ProtocolError(f"payload of topic {topic!r} has protocol version v={version!r}; "
                            f"this peer speaks v{VERSION}: upgrade the older side")
    if topic in REQUIRED:
        _check_fields(payload, REQUIRED[topic], f"{topic} payload")
    if strict:
        if topic.startswith(EVENT_PREFIX):
            for event in payload.get("events", []):
                _check_fields(event, EVENT_FIELDS, f"{topic} event")
        elif topic == TOPIC_COUNTS:
            for row in payload["rows"]:
                _check_fields(row, COUNTS_ROW_FIELDS, "counts row")
    return Message(topic, payload)


def topic_for(syscall: str) -> str:
    """``read`` -> ``syscall.read``; raises ProtocolError for an unknown syscall."""
    try:
        return EVENT_TOPICS[syscall]
    except KeyError:
        raise ProtocolError(f"unknown syscall {syscall!r}; known: {', '.join(SYSCALLS)}") from None
