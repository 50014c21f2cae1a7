"""Strict checks of what clients send: request bodies, IP list entries and query parameters.

Every function either returns clean values or raises ``BadRequest`` whose text names the bad
field or item, so the route can answer ``{"error": ...}`` with that status and change nothing.
"""
from __future__ import annotations

import ipaddress
import json
from typing import Any, NamedTuple

from syswatch.shared.protocol import MAX_COMM, MAX_CONTAINER_NAME, MAX_HOST, SYSCALLS
from syswatch.shared.record import FILE_TYPES
from syswatch.shared.selection import Selection
from syswatch.shared.units import parse_duration

MAX_IPV4_INT = 2**32 - 1
COMM_MAX_CHARS = MAX_COMM  # bpftrace's comm is 16 bytes; escaped non-UTF-8 bytes take 4 chars each
PID_MAX = 2**31 - 1

# Content types a POST body may have. curl's `-d` sends application/x-www-form-urlencoded by default,
# and the seed (Gin's ShouldBindJSON) ignored the header, so that one is accepted for its users' scripts.
ACCEPTED_CONTENT_TYPES = ("application/json", "application/x-www-form-urlencoded")


class BadRequest(Exception):
    """A client error: HTTP ``status`` and a message naming what is wrong."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status
        self.message = message


class Entry(NamedTuple):
    """One IP list entry: ``key`` identifies the address whatever its form, ``value`` is what is shown."""
    key: str          # canonical address text: "1.2.3.4" for both 16909060 and "1.2.3.4"
    value: Any        # as added: the int, or the canonical string


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 60 else text[:57] + "..."


def printable(text: str, limit: int = 120) -> str:
    """``text`` with control and non-ASCII characters escaped: safe to echo in an error or a log."""
    out = "".join(c if " " <= c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


def check_content_type(content_type: str | None) -> None:
    """415 unless the body is declared JSON (or not declared, or curl's default form type)."""
    if not content_type:
        return
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime in ACCEPTED_CONTENT_TYPES or (mime.startswith("application/") and mime.endswith("+json")):
        return
    raise BadRequest(f"unsupported Content-Type {_short(content_type)}: send the body as application/json", 415)


def parse_json_object(raw: bytes) -> dict:
    """The body as a JSON object, or BadRequest (empty, not UTF-8, not JSON, not an object)."""
    if not raw or not raw.strip():
        raise BadRequest("empty request body: send a JSON object, e.g. {\"add_ips\": [1, 2, 3]}")
    try:
        body = json.loads(raw.decode("utf-8"), object_pairs_hook=_object_without_duplicate_keys)
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {_json_type(body)}")
    return body


def _object_without_duplicate_keys(pairs: list) -> dict:
    """json's object_pairs_hook: a key given twice is an error (json.loads would keep the last one)."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise BadRequest(f"duplicate key {_short(key)} in the request body: give each field once")
        obj[key] = value
    return obj


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def only_field(body: dict, field: str) -> Any:
    """The value of ``field``, the body's one and only key."""
    if field not in body:
        raise BadRequest(f"missing field {field!r}")
    extra = sorted(k for k in body if k != field)
    if extra:
        raise BadRequest(f"unknown field {_short(extra[0])}: the body holds only {field!r}")
    return body[field]


def require_true(body: dict, field: str) -> None:
    """``{"<field>": true}`` and nothing else (the seed's confirmation flag)."""
    value = only_field(body, field)
    if value is not True:
        raise BadRequest(f"field {field!r} must be true, got {_short(value)}")


def entry(item: Any, index: int) -> Entry:
    """One add_ips item: an int 0..4294967295 (IPv4 as an integer) or an IPv4/IPv6 address string."""
    where = f"add_ips[{index}]"
    if isinstance(item, bool) or not isinstance(item, (int, str)):
        raise BadRequest(f"{where} = {_short(item)} is not an IP address: use an integer "
                         f"0..{MAX_IPV4_INT} or an IPv4/IPv6 address string")
    if isinstance(item, int):
        if not 0 <= item <= MAX_IPV4_INT:
            raise BadRequest(f"{where} = {item} is out of range: an integer IPv4 address is 0..{MAX_IPV4_INT}")
        return Entry(str(ipaddress.IPv4Address(item)), item)
    try:
        address = ipaddress.ip_address(item)
        if getattr(address, "scope_id", None):  # "fe80::1%eth0": the zone means something on one host only
            raise ValueError
    except ValueError:
        raise BadRequest(f"{where} = {_short(item)} is not a valid IPv4 or IPv6 address "
                         f"(no zone suffix, no prefix length, no spaces)") from None
    canonical = canonical_text(address)
    return Entry(canonical, canonical)


def canonical_text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The one spelling of ``address`` stored and shown, the same on every Python version.

    RFC 5952's form (lower case, longest run of zeros as ``::``), which ``str()`` gives, except for an
    IPv4-mapped IPv6 address: Python 3.11/3.12 print ``::ffff:102:304``, 3.13 ``::ffff:1.2.3.4``; we
    always spell it with the IPv4 address in dotted form, as RFC 5952 section 5 recommends. Such an
    address stays an IPv6 address: ``::ffff:1.2.3.4`` and ``1.2.3.4`` are two entries of the list.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def canonical_key(text: str) -> str | None:
    """The canonical spelling of a stored address text (``Entry.key``), None if it is no address."""
    try:
        return canonical_text(ipaddress.ip_address(text))
    except ValueError:
        return None


def entries(body: dict, max_items: int) -> list[Entry]:
    """The add_ips list, every item checked (the first bad one is named); at most ``max_items``."""
    items = only_field(body, "add_ips")
    if not isinstance(items, list):
        raise BadRequest(f"field 'add_ips' must be a list of IP addresses, got {_json_type(items)}")
    if len(items) > max_items:
        raise BadRequest(f"field 'add_ips' has {len(items)} items; at most {max_items} per request "
                         f"(server option --max-items)", 413)
    return [entry(item, i) for i, item in enumerate(items)]


def _int_param(query: dict, name: str, low: int, high: int, default: int | None) -> int | None:
    raw = query.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise BadRequest(f"query parameter {name!r} = {_short(raw)} must be an integer {low}..{high}")
    value = int(raw)
    if not low <= value <= high:
        raise BadRequest(f"query parameter {name!r} = {value} is out of range {low}..{high}")
    return value


# What /events and /events/stream filter on (shared/selection.py does the matching); each given once.
EVENT_FILTERS = ("pid", "tid", "uid", "comm", "syscall", "container", "host", "path", "file_type", "failed",
                 "min_latency")
MAX_PATH = 4096                    # a path prefix in a query: PATH_MAX


def _text_param(flat: dict, name: str, limit: int, what: str) -> str | None:
    value = flat.get(name)
    if value is not None and (not value or len(value) > limit or not value.isprintable()):
        raise BadRequest(f"query parameter {name!r} = {_short(value)} must be 1..{limit} printable characters "
                         f"({what})")
    return value


def event_query(query: dict, allowed_extra: tuple = (), max_limit: int | None = None,
                default_limit: int | None = None) -> tuple[Selection, int | None]:
    """(filter, limit) from /events query parameters; unknown or repeated parameters are errors."""
    known = EVENT_FILTERS + allowed_extra
    for name, values in query.items():
        if name not in known:
            raise BadRequest(f"unknown query parameter {_short(name)}; known: {', '.join(known)}")
        if len(values) > 1:
            raise BadRequest(f"query parameter {name!r} is given {len(values)} times; give it once")
    flat = {name: values[0] for name, values in query.items()}
    limit = None
    if "limit" in allowed_extra:
        assert max_limit is not None, "a query that takes limit needs its maximum"
        limit = _int_param(flat, "limit", 1, max_limit, default_limit)
    pid = _int_param(flat, "pid", 0, PID_MAX, None)
    tid = _int_param(flat, "tid", 0, PID_MAX, None)
    uid = _int_param(flat, "uid", 0, MAX_IPV4_INT, None)
    comm = _text_param(flat, "comm", COMM_MAX_CHARS, "a process name")
    syscall = flat.get("syscall")
    if syscall is not None and syscall not in SYSCALLS:
        raise BadRequest(f"query parameter 'syscall' = {_short(syscall)} must be one of {', '.join(SYSCALLS)}")
    container = _text_param(flat, "container", MAX_CONTAINER_NAME, "a container id prefix or name")
    path = _text_param(flat, "path", MAX_PATH, "a path prefix, e.g. /var/log")
    file_type = flat.get("file_type")
    if file_type is not None and file_type not in FILE_TYPES:
        raise BadRequest(f"query parameter 'file_type' = {_short(file_type)} must be one of {', '.join(FILE_TYPES)}")
    failed = flat.get("failed")
    if failed is not None and failed not in ("1", "0", "true", "false"):
        raise BadRequest(f"query parameter 'failed' = {_short(failed)} must be 1 (only calls that returned an "
                         f"error) or 0")
    min_latency = 0
    if flat.get("min_latency") is not None:
        try:
            min_latency = parse_duration(flat["min_latency"])
        except ValueError as exc:
            raise BadRequest(f"query parameter 'min_latency': {exc}") from None
    host = host_param(flat)

    def one(value) -> tuple:
        return () if value is None else (value,)
    return Selection(pids=one(pid), tids=one(tid), uids=one(uid), comms=one(comm), syscalls=one(syscall),
                     hosts=one(host), containers=one(container), paths=one(path), file_types=one(file_type),
                     failed=failed in ("1", "true"), min_latency_ns=min_latency), limit


def host_param(flat: dict) -> str | None:
    """The ``host`` query parameter (a collector's host name), or None."""
    host = flat.get("host")
    if host is not None and (not host or len(host) > MAX_HOST or not host.isprintable()):
        raise BadRequest(f"query parameter 'host' = {_short(host)} must be a host name (1..{MAX_HOST} "
                         f"printable characters)")
    return host
