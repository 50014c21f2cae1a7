"""syswatch wire protocol v2 (ZeroMQ PUB/SUB), implemented once for every peer.

Every message is two frames: ``[topic, payload]``. The topic is ASCII, the payload one
UTF-8 JSON object carrying ``"v": 2``. Subscribers pick topics by prefix (``syscall.`` =
every event). The protocol is documented for users in docs/PROTOCOL.md.

    frames = encode("status", {...})          # -> [b"status", b'{"v":2,...}']
    msg = decode(frames)                      # -> Message(topic, payload), validated
    for event in msg.events: ...              # syscall.* batches

``decode`` is the one validator of the stream (collector output, API, subscriber scripts):
it never lets a foreign payload through. It raises ProtocolError, with a message that says
what was wrong, for a wrong frame count, encoding, JSON (NaN and Infinity included), version
or shape, and for any number outside its range (u64 at most, non-negative where it must be)
or string or list over its bound. Fields it does not know are dropped, so what a peer keeps
is bounded by the limits below whatever a publisher sends.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Iterable, NamedTuple, Sequence

from syswatch.shared import errnos, latency, record

VERSION = 2
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"

TOPIC_COUNTS = "counts"
TOPIC_STATUS = "status"
EVENT_PREFIX = "syscall."
# Every syscall the collector can trace (the calls that move a file's bytes), spelled as strace
# spells them (the kernel's sendfile64 is "sendfile"); read and write by default (the seed's).
# The last four take two descriptors (EVENT fd = the source, fd_out = the destination).
SYSCALLS = ("read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2",
            "pwritev2", "copy_file_range", "sendfile", "splice", "tee")
DEFAULT_SYSCALLS = ("read", "write")
TWO_FD_SYSCALLS = ("copy_file_range", "sendfile", "splice", "tee")
ALL_SYSCALLS_WORD = "all"             # --syscalls all: every one of SYSCALLS
EVENT_TOPICS = {s: EVENT_PREFIX + s for s in SYSCALLS}
MODES = ("events", "counts")
PROBES = ("kprobe", "tracepoint")

# A subscriber announces itself by subscribing to ANNOUNCE_PREFIX + "<pid>:<pid namespace inode>";
# the collector then leaves that process's own I/O out of the stream (no feedback loop). No
# published topic starts with "~", so the subscription never matches a message.
ANNOUNCE_PREFIX = "~subscriber:"

# --- bounds of every value the protocol carries -------------------------------------------------
U64, U32, I64_MIN, I64_MAX = record.U64, record.U32, record.I64_MIN, record.I64_MAX
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  # decode refuses more; subscribers set ZMQ_MAXMSGSIZE to it
MAX_BATCH = 65_536                    # events in one syscall.* message / rows in one counts message
MAX_HOST = 255                        # characters of a host name (DNS limit)
MAX_COMM = record.MAX_COMM
MAX_CONTAINER_NAME = record.MAX_CONTAINER_NAME
MAX_EXCLUDED_PIDS = 1024
MAX_EXCLUDED_WHAT = 64                # status "excluded": descriptions per PID...
MAX_WHAT = 64                         # ...of at most this many characters each
EXCLUSION_KINDS = ("self", "subscriber", "peer")

# EVENT: declared in shared/record.py (FIELDS); the required ones first, then those a collector
# sends when it knows them (lat_ns with --latency, the file fields).
EVENT_INTS = {name: bounds for name, bounds in record.EVENT_INTS.items() if record.FIELD[name].required}
EVENT_OPTIONAL_INTS = {name: bounds for name, bounds in record.EVENT_INTS.items()
                       if not record.FIELD[name].required}
EVENT_STRS = ("comm", "syscall", "container_id", "container_name")
EVENT_OPTIONAL_STRS = {name: bounds for name, bounds in record.EVENT_STRS.items()
                       if not record.FIELD[name].required}
EVENT_FIELDS = tuple(f.name for f in record.FIELDS)
ROW_INTS = {"pid": (0, U32), "calls": (0, U64), "bytes": (0, U64), "errors": (0, U64)}
ROW_FIELDS = ("pid", "comm", "container_id", "container_name", "syscall", "calls", "bytes", "errors",
              "lat_ns_sum", "lat_hist",   # lat_ns_sum, lat_hist: only when the collector measures latency
              "errnos")                   # only in a row with errors
# counts mode, per file: the interval's top files and the rest (files + rest = the interval's rows)
FILE_ROW_INTS = {"ino": (0, U64), "dev": (0, U64), "calls": (0, U64), "bytes": (0, U64), "errors": (0, U64)}
FILES_REST_INTS = {"files": (0, U64), "calls": (0, U64), "bytes": (0, U64), "errors": (0, U64)}
STATUS_INTS = {"ts_ns": (0, U64), "events_total": (0, U64), "lost_total": (0, U64),
               "dropped_total": (0, U64), "malformed_total": (0, U64)}
STATUS_FIELDS = ("host", "ts_ns", "mode", "probe", "syscalls", "excluded_pids", "events_total",
                 "lost_total", "dropped_total", "malformed_total", "uptime_s")
_CONTAINER_ID = re.compile(r"(?:[0-9a-f]{12})?")


class ProtocolError(ValueError):
    """A message that is not syswatch wire protocol v2; the text says why."""


class Message(NamedTuple):
    topic: str
    payload: dict

    @property
    def events(self) -> list:
        """The events of a ``syscall.*`` batch (empty for other topics)."""
        return self.payload.get("events", []) if self.topic.startswith(EVENT_PREFIX) else []


def topic_for(syscall: str) -> str:
    """``read`` -> ``syscall.read``; ProtocolError for a syscall the protocol does not know."""
    try:
        return EVENT_TOPICS[syscall]
    except KeyError:
        raise ProtocolError(f"unknown syscall {syscall!r}; known: {', '.join(SYSCALLS)}") from None


def encode(topic: str, payload: dict) -> list[bytes]:
    """Two frames for ``topic``/``payload``; ``"v": 2`` is added (a different ``v`` is an error)."""
    if not isinstance(topic, str) or not topic.isascii() or not topic:
        raise ProtocolError(f"topic must be a non-empty ASCII string, got {topic!r}")
    if not isinstance(payload, dict):
        raise ProtocolError(f"payload must be a dict, got {type(payload).__name__}")
    if payload.get("v", VERSION) != VERSION:
        raise ProtocolError(f"payload has v={payload['v']!r}; this is protocol v{VERSION}")
    try:
        body = json.dumps({"v": VERSION, **payload}, separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise ProtocolError(f"payload of {topic!r} is not strict JSON: {exc}") from None
    return [topic.encode("ascii"), body.encode("utf-8")]


def encode_event_batch(topic: str, host_json: bytes, events_json: Iterable[bytes]) -> list[bytes]:
    """The collector's fast path: frames for a batch of events already serialised as JSON.

    ``host_json`` is the host name as a JSON string (``json_string(host)``), each item of
    ``events_json`` one EVENT object as JSON bytes. Nothing is re-parsed.
    """
    return [topic.encode("ascii"),
            _BATCH_HEAD + host_json + b',"events":[' + b",".join(events_json) + b"]}"]


_BATCH_HEAD = b'{"v":%d,"host":' % VERSION


def json_string(text: str) -> bytes:
    """``text`` as a JSON string literal (ASCII-only, so it is valid whatever it holds)."""
    return json.dumps(text).encode("ascii")


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def _int(obj: dict, key: str, bounds: tuple[int, int], what: str) -> int:
    val = obj.get(key)
    if type(val) is not int or not bounds[0] <= val <= bounds[1]:
        if key not in obj:
            raise ProtocolError(f"{what} lacks field {key!r}")
        raise ProtocolError(f"{what} field {key!r} must be an integer in {bounds[0]}..{bounds[1]}, "
                            f"got {_short(val)}")
    return val


def _str(obj: dict, key: str, limit: int, what: str, default: str | None = None) -> str:
    val = obj.get(key, default)
    if type(val) is not str or len(val) > limit:
        if val is None:
            raise ProtocolError(f"{what} lacks field {key!r}")
        raise ProtocolError(f"{what} field {key!r} must be a string of at most {limit} characters, "
                            f"got {_short(val)}")
    return val


def _short(val) -> str:
    text = repr(val) if not isinstance(val, (str, list, dict)) else json.dumps(val)[:60]
    return text[:60] + ("..." if len(text) > 60 else "")


def _container_id(obj: dict, what: str) -> str:
    val = _str(obj, "container_id", 12, what)
    if not _CONTAINER_ID.fullmatch(val):
        raise ProtocolError(f"{what} field 'container_id' must be 12 hex digits or \"\", got {_short(val)}")
    return val


def clean_event(e: object, syscall: str) -> dict:
    """A new EVENT dict holding only the protocol's fields, each checked; ProtocolError otherwise.

    The API's hot path: plain type and range checks, no regex unless a container is named. The
    optional fields (shared/record.py) are kept when present and valid, and refused when present
    and out of range; an event without them is complete.
    """
    if type(e) is not dict:
        raise ProtocolError(f"an event must be a JSON object, got {_short(e)}")
    out: dict[str, Any] = {}
    for key, (lo, hi) in EVENT_INTS.items():
        val = e.get(key)
        if type(val) is not int or not lo <= val <= hi:
            _int(e, key, (lo, hi), f"syscall.{syscall} event")
        out[key] = val
    comm = e.get("comm")
    if type(comm) is not str or len(comm) > MAX_COMM:
        _str(e, "comm", MAX_COMM, f"syscall.{syscall} event")
    if e.get("syscall") != syscall:
        raise ProtocolError(f"an event of topic syscall.{syscall} has syscall {_short(e.get('syscall'))}")
    cid = e.get("container_id")
    if cid != "":
        cid = _container_id(e, f"syscall.{syscall} event")
    name = e.get("container_name")
    if type(name) is not str or len(name) > MAX_CONTAINER_NAME:
        _str(e, "container_name", MAX_CONTAINER_NAME, f"syscall.{syscall} event")
    out["comm"], out["syscall"], out["container_id"], out["container_name"] = comm, syscall, cid, name
    if len(e) > len(out):                     # optional fields: only when the publisher sent some
        for key, (lo, hi) in EVENT_OPTIONAL_INTS.items():
            if key in e:
                val = e[key]
                if type(val) is not int or not lo <= val <= hi:
                    _int(e, key, (lo, hi), f"syscall.{syscall} event")
                out[key] = val
        for key, limit in EVENT_OPTIONAL_STRS.items():
            if key in e:
                val = e[key]
                if type(val) is not str or len(val) > limit:
                    _str(e, key, limit, f"syscall.{syscall} event")
                out[key] = val
        for key in ("file_type", "file_type_out"):
            if key in out and out[key] not in record.FILE_TYPES:
                raise ProtocolError(f"syscall.{syscall} event field {key!r} must be one of "
                                    f"{', '.join(record.FILE_TYPES)}, got {_short(out[key])}")
    return out


def clean_row(r: object) -> dict:
    """A counts ROW with only the protocol's fields, each checked; ProtocolError otherwise."""
    if type(r) is not dict:
        raise ProtocolError(f"a counts row must be a JSON object, got {_short(r)}")
    out: dict[str, Any] = {key: _int(r, key, bounds, "counts row") for key, bounds in ROW_INTS.items()}
    if "lat_ns_sum" in r:
        out["lat_ns_sum"] = _int(r, "lat_ns_sum", (0, U64), "counts row")
    if "lat_hist" in r:
        try:
            out["lat_hist"] = latency.check_buckets(r["lat_hist"])
        except ValueError as e:
            raise ProtocolError(f"counts row field 'lat_hist': {e}") from None
    if "errnos" in r:
        out["errnos"] = _errnos(r["errnos"])
    out["comm"] = _str(r, "comm", MAX_COMM, "counts row")
    out["container_id"] = _container_id(r, "counts row")
    out["container_name"] = _str(r, "container_name", MAX_CONTAINER_NAME, "counts row", default="")
    out["syscall"] = _syscall(r, "counts row")
    return out


def _errnos(e: object) -> dict:
    """A counts row's ``errnos``: {errno name (shared/errnos.py, or "other"): calls}, bounded by the table."""
    if type(e) is not dict or any(k not in errnos.LABELS or type(n) is not int or not 0 <= n <= U64
                                  for k, n in e.items()):
        raise ProtocolError("counts row field 'errnos' must map errno names (shared/errnos.py, or "
                            f"{errnos.OTHER!r}) to call counts, got {_short(e)}")
    return e


def _syscall(r: dict, what: str) -> str:
    if r.get("syscall") not in EVENT_TOPICS:
        raise ProtocolError(f"{what} has unknown syscall {_short(r.get('syscall'))}; "
                            f"known: {', '.join(SYSCALLS)}")
    return r["syscall"]


def clean_file_row(r: object) -> dict:
    """One of a counts message's ``files`` rows (a file's calls in the interval), checked."""
    what = "counts file row"
    if type(r) is not dict:
        raise ProtocolError(f"a {what} must be a JSON object, got {_short(r)}")
    out: dict[str, Any] = {key: _int(r, key, bounds, what) for key, bounds in FILE_ROW_INTS.items()}
    if "lat_ns_sum" in r:
        out["lat_ns_sum"] = _int(r, "lat_ns_sum", (0, U64), what)
    out["syscall"] = _syscall(r, what)
    out["path"] = _str(r, "path", record.MAX_PATH, what)
    out["file_type"] = _str(r, "file_type", 7, what)
    if out["file_type"] not in record.FILE_TYPES:
        raise ProtocolError(f"{what} field 'file_type' must be one of {', '.join(record.FILE_TYPES)}")
    if "sock" in r:
        out["sock"] = _str(r, "sock", record.MAX_SOCK, what)
    return out


def clean_files_rest(r: object) -> dict:
    """A counts message's ``files_rest``: the interval's calls on files not in its ``files`` rows."""
    what = "counts files_rest"
    if type(r) is not dict:
        raise ProtocolError(f"{what} must be a JSON object, got {_short(r)}")
    out = {key: _int(r, key, bounds, what) for key, bounds in FILES_REST_INTS.items()}
    if "lat_ns_sum" in r:
        out["lat_ns_sum"] = _int(r, "lat_ns_sum", (0, U64), what)
    return out


OVERLOAD_POLICIES = ("drop", "buffer")     # the collector's --on-overload
MAX_CPUS = 8192                            # stale_cpus: the kernel's NR_CPUS limit


def _seconds(p: dict, what: str) -> float:
    up: Any = p.get("uptime_s")
    if type(up) not in (int, float) or not math.isfinite(up) or not 0 <= up <= 1e10:
        raise ProtocolError(f"{what} field 'uptime_s' must be a finite number of seconds, got {_short(up)}")
    return up


def clean_status(p: dict) -> dict:
    what = "status payload"
    out: dict[str, Any] = {key: _int(p, key, bounds, what) for key, bounds in STATUS_INTS.items()}
    out["host"] = _host(p, what)
    if p.get("mode") not in MODES:
        raise ProtocolError(f"{what} field 'mode' must be one of {', '.join(MODES)}, got {_short(p.get('mode'))}")
    if p.get("probe") not in PROBES:
        raise ProtocolError(f"{what} field 'probe' must be one of {', '.join(PROBES)}, got {_short(p.get('probe'))}")
    out["mode"], out["probe"] = p["mode"], p["probe"]
    syscalls = p.get("syscalls")
    if type(syscalls) is not list or not syscalls or len(syscalls) > len(SYSCALLS) \
            or any(s not in EVENT_TOPICS for s in syscalls):
        raise ProtocolError(f"{what} field 'syscalls' must list known syscalls ({', '.join(SYSCALLS)}), "
                            f"got {_short(syscalls)}")
    out["syscalls"] = list(syscalls)
    pids = p.get("excluded_pids")
    if type(pids) is not list or len(pids) > MAX_EXCLUDED_PIDS \
            or any(type(x) is not int or not 0 <= x <= U32 for x in pids):
        raise ProtocolError(f"{what} field 'excluded_pids' must be a list of at most {MAX_EXCLUDED_PIDS} "
                            f"PIDs, got {_short(pids)}")
    out["excluded_pids"] = list(pids)
    out["uptime_s"] = _seconds(p, what)
    # optional: which bpftrace runs, its output path and the overload policy (a collector of this
    # version sends them; an unknown value is left out, not an error, so older/newer peers mix)
    if type(p.get("bpftrace")) is str and len(p["bpftrace"]) <= 32:
        out["bpftrace"] = p["bpftrace"]
    if p.get("output") in ("perf", "ringbuf"):
        out["output"] = p["output"]
    if p.get("overload") in OVERLOAD_POLICIES:
        out["overload"] = p["overload"]
    # optional: CPUs whose loss count stopped updating (collector/parser.py stale_cpus)
    cpus = p.get("stale_cpus")
    if cpus is not None:
        if type(cpus) is not list or len(cpus) > MAX_CPUS or any(type(c) is not int or not 0 <= c <= U32 for c in cpus):
            raise ProtocolError(f"{what} field 'stale_cpus' must be a list of at most {MAX_CPUS} CPU numbers, "
                                f"got {_short(cpus)}")
        out["stale_cpus"] = list(cpus)
    # optional: whether latency is measured and paths are sent, calls whose arguments could not be read
    for key in ("latency", "paths"):
        if type(p.get(key)) is bool:
            out[key] = p[key]
    if "unreadable_total" in p:
        out["unreadable_total"] = _int(p, "unreadable_total", (0, U64), what)
    # optional counters of refusals: announces the collector did not verify, CurveZMQ handshakes
    for key in ("announces_refused_total", "curve_refused_total"):
        val = p.get(key)
        if type(val) is int and 0 <= val <= U64:
            out[key] = val
    # optional: what of each excluded PID is left out (collector/exclusions.py); dropped whole if malformed
    excluded = p.get("excluded")
    if type(excluded) is list and len(excluded) <= MAX_EXCLUDED_PIDS:
        clean = [_exclusion(e) for e in excluded]
        if None not in clean:
            out["excluded"] = clean
    return out


def _exclusion(e: object) -> dict | None:
    """One entry of status "excluded", checked, or None."""
    if type(e) is not dict:
        return None
    pid, kind, comm, what = e.get("pid"), e.get("kind"), e.get("comm"), e.get("what")
    if type(pid) is not int or not 0 <= pid <= U32 or kind not in EXCLUSION_KINDS \
            or type(comm) is not str or len(comm) > MAX_COMM or type(what) is not list \
            or len(what) > MAX_EXCLUDED_WHAT or any(type(w) is not str or len(w) > MAX_WHAT for w in what):
        return None
    return {"pid": pid, "kind": kind, "comm": comm, "what": list(what)}


# The NATS bridge's own status (topic "bridge", subject syswatch.<host>.bridge; NATS only, never on
# ZeroMQ): what it published to JetStream and what it could not, by reason, in events and messages.
TOPIC_BRIDGE = "bridge"
BRIDGE_LOSS_REASONS = ("queue_full", "stream_full", "rejected", "ack_timeout", "too_large")
BRIDGE_INTS = ("ts_ns", "published_messages", "published_events", "unpublished_messages", "unpublished_events",
               "queued_messages", "queued_bytes", "reconnects", "malformed_total", "received_events",
               "events_not_received")


def clean_bridge(p: dict) -> dict:
    what = "bridge payload"
    out: dict[str, Any] = {key: _int(p, key, (0, U64), what) for key in BRIDGE_INTS}
    out["host"] = _host(p, what)
    if type(p.get("nats_connected")) is not bool:
        raise ProtocolError(f"{what} field 'nats_connected' must be true or false, "
                            f"got {_short(p.get('nats_connected'))}")
    out["nats_connected"] = p["nats_connected"]
    out["uptime_s"] = _seconds(p, what)
    reasons = p.get("unpublished_by_reason")
    if type(reasons) is not dict or set(reasons) - set(BRIDGE_LOSS_REASONS):
        raise ProtocolError(f"{what} field 'unpublished_by_reason' must map {', '.join(BRIDGE_LOSS_REASONS)} "
                            f"to event counts, got {_short(reasons)}")
    out["unpublished_by_reason"] = {r: _int(reasons, r, (0, U64), what) for r in BRIDGE_LOSS_REASONS if r in reasons}
    return out


def _host(p: dict, what: str) -> str:
    host = _str(p, "host", MAX_HOST, what)
    if not host.isprintable():
        raise ProtocolError(f"{what} field 'host' must be printable, got {_short(host)}")
    return host


def _batch(p: dict, key: str, what: str) -> list:
    items = p.get(key)
    if type(items) is not list or len(items) > MAX_BATCH:
        raise ProtocolError(f"{what} field {key!r} must be a list of at most {MAX_BATCH} items, "
                            f"got {_short(items) if type(items) is not list else f'{len(items)} items'}")
    return items


def decode(frames: Sequence[bytes]) -> Message:
    """Parse and validate ``[topic, payload]`` frames into a Message, or raise ProtocolError.

    Known topics come back cleaned (only the protocol's fields, every value in range).
    Unknown topics are accepted if their payload is a v2 object (forward compatibility).
    """
    if not isinstance(frames, (list, tuple)) or len(frames) != 2:
        n = len(frames) if isinstance(frames, (list, tuple)) else "?"
        raise ProtocolError(f"expected 2 frames [topic, payload], got {n}")
    raw_topic, raw_payload = frames
    if not isinstance(raw_topic, (bytes, bytearray, memoryview)) \
            or not isinstance(raw_payload, (bytes, bytearray, memoryview)):
        raise ProtocolError("frames must be bytes")
    if len(raw_topic) > 64:
        raise ProtocolError(f"topic frame of {len(raw_topic)} bytes: topics are short names")
    try:
        topic = bytes(raw_topic).decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("topic frame is not ASCII") from None
    if not topic:
        raise ProtocolError("topic frame is empty")
    if len(raw_payload) > MAX_PAYLOAD_BYTES:
        raise ProtocolError(f"payload of {len(raw_payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        payload = json.loads(bytes(raw_payload), parse_constant=_no_constants)
    except UnicodeDecodeError:
        raise ProtocolError(f"payload of topic {topic!r} is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"payload of topic {topic!r} is not JSON: {str(exc)[:200]}") from None
    if not isinstance(payload, dict):
        raise ProtocolError(f"payload of topic {topic!r} must be a JSON object, got {type(payload).__name__}")
    version = payload.get("v")
    if version != VERSION or type(version) is not int:
        hint = ("upgrade the older side (the collector speaks v1: it predates event model v2)"
                if version == 1 else "upgrade the older side")
        raise ProtocolError(f"payload of topic {topic!r} has protocol version v={_short(version)}; "
                            f"this peer speaks v{VERSION}: {hint}")
    what = f"{topic} payload"
    if topic.startswith(EVENT_PREFIX):
        syscall = topic[len(EVENT_PREFIX):]
        if syscall not in EVENT_TOPICS:
            raise ProtocolError(f"unknown event topic {topic!r}; known syscalls: {', '.join(SYSCALLS)}")
        host = _host(payload, what)
        events = [clean_event(e, syscall) for e in _batch(payload, "events", what)]
        return Message(topic, {"v": VERSION, "host": host, "events": events})
    if topic == TOPIC_COUNTS:
        out = {"v": VERSION, "host": _host(payload, what),
               "ts_ns": _int(payload, "ts_ns", (0, U64), what),
               "interval_ns": _int(payload, "interval_ns", (1, U64), what),
               "rows": [clean_row(r) for r in _batch(payload, "rows", what)]}
        if "files" in payload:
            out["files"] = [clean_file_row(r) for r in _batch(payload, "files", what)]
        if "files_rest" in payload:
            out["files_rest"] = clean_files_rest(payload["files_rest"])
        return Message(topic, out)
    if topic == TOPIC_STATUS:
        return Message(topic, {"v": VERSION, **clean_status(payload)})
    if topic == TOPIC_BRIDGE:
        return Message(topic, {"v": VERSION, **clean_bridge(payload)})
    return Message(topic, payload)


def announce_topic(pid: int, pid_ns: int) -> str:
    """The subscription by which a subscriber asks the collector to leave its own I/O out."""
    return f"{ANNOUNCE_PREFIX}{pid}:{pid_ns}"


def parse_announce(topic: bytes) -> tuple[int, int] | None:
    """(pid, pid namespace inode) of an announce subscription, or None if it is not a valid one."""
    m = re.fullmatch(rb"~subscriber:([1-9]\d{0,9}):([1-9]\d{0,19})", topic)
    if not m:
        return None
    pid, ns = int(m.group(1)), int(m.group(2))
    return (pid, ns) if pid <= U32 and ns <= U64 else None


def valid_subscription(topic: bytes) -> bool:
    """A subscription the collector applies: a prefix of a topic it publishes (bounded set)."""
    try:
        text = topic.decode("ascii")
    except UnicodeDecodeError:
        return False
    return any(t.startswith(text) for t in (*EVENT_TOPICS.values(), TOPIC_COUNTS, TOPIC_STATUS))
