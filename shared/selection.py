"""Which events a reader wants: the one event filter of the API (/events, /events/stream) and of the
subscriber scripts (syswatch-tail, syswatch-top).

A ``Selection`` holds, per field, the values any of which an event may have (empty: any value):
PIDs, thread ids, uids, process names, syscalls, containers (an id prefix as ``docker ps`` shows it,
a full id, or a name), hosts, path prefixes, file types; and two bounds: ``failed`` (only calls that
returned an error, ret < 0) and ``min_latency_ns`` (only calls that took at least that long). The
API gives one value per field (``?pid=7``), the scripts take repeated flags (``-p 7 -p 8``).

``matches`` checks only the fields that were given (the checks are chosen once, when the selection
is made), so an unused filter costs nothing, and ``empty`` lets a caller skip matching altogether.

A path prefix matches whole path components: ``/var/log`` selects ``/var/log`` and
``/var/log/syslog``, not ``/var/logs``; a prefix ending in ``/`` selects what is below it, one ending
in ``:`` every kernel name of that kind (``pipe:`` selects ``pipe:[123]``). Calls
with two descriptors (sendfile, splice, copy_file_range, tee) match on either end (``path`` or
``path_out``, ``file_type`` or ``file_type_out``). An event without latency (not measured) never
passes ``min_latency``; one without a path never passes a path filter.

Counts-mode rows have no per-call fields (tid, uid, ret, latency): ``matches_row`` applies the
fields a row has (pid, comm, container, syscall, host, path).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from syswatch.shared.config import add_option
from syswatch.shared.units import parse_duration

# The fields of a selection that pick by value, and the event key each one reads.
BY_VALUE = {"pids": "pid", "tids": "tid", "uids": "uid", "comms": "comm", "syscalls": "syscall", "hosts": "host"}
ALWAYS = ("pid", "tid", "uid", "comm", "syscall")   # keys every EVENT has (rows are never checked on tid, uid)


def path_matches(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or below it (whole components; see the module doc)."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith(("/", ":")) or path[len(prefix)] == "/"


def container_matches(ref: str, cid: str, name: str) -> bool:
    """``ref`` (an id prefix, a full 64-digit id, or a name) names the container ``cid``/``name``."""
    if cid and (cid.startswith(ref) if len(ref) <= len(cid) else ref.startswith(cid)):
        return True
    return bool(name) and name == ref


def _one_of(key: str, wanted: frozenset) -> Callable[[dict], bool]:
    if len(wanted) == 1 and key in ALWAYS:  # the API's case (one value per parameter): one comparison
        (only,) = wanted

        def check_one(e: dict) -> bool:
            return e[key] == only
        return check_one

    def check(e: dict) -> bool:
        return e.get(key) in wanted
    return check


def _in_container(refs: tuple) -> Callable[[dict], bool]:
    def check(e: dict) -> bool:
        return any(container_matches(r, e.get("container_id", ""), e.get("container_name", "")) for r in refs)
    return check


def _below(prefixes: tuple) -> Callable[[dict], bool]:
    def check(e: dict) -> bool:
        return any(path_matches(p, r) for p in (e.get("path"), e.get("path_out")) if p for r in prefixes)
    return check


def _of_type(types: frozenset) -> Callable[[dict], bool]:
    def check(e: dict) -> bool:
        return e.get("file_type") in types or e.get("file_type_out") in types
    return check


def _failed(e: dict) -> bool:
    return e["ret"] < 0


def _slower(bound: int) -> Callable[[dict], bool]:
    def check(e: dict) -> bool:
        return e.get("lat_ns", -1) >= bound
    return check


def _all(checks: list) -> Callable[[dict], bool]:
    """One function checking every one of ``checks`` (the common cases without a loop)."""
    if not checks:
        return _any
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks

        def both(e: dict) -> bool:
            return a(e) and b(e)
        return both
    fixed = tuple(checks)

    def every(e: dict) -> bool:
        for check in fixed:
            if not check(e):
                return False
        return True
    return every


def _any(e: dict) -> bool:
    return True


@dataclass(frozen=True)
class Selection:
    pids: tuple = ()
    tids: tuple = ()
    uids: tuple = ()
    comms: tuple = ()
    syscalls: tuple = ()
    hosts: tuple = ()
    containers: tuple = ()
    paths: tuple = ()
    file_types: tuple = ()
    failed: bool = False
    min_latency_ns: int = 0
    _checks: tuple = field(default=(), init=False, repr=False, compare=False)
    _row_checks: tuple = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self):
        checks: list[Callable[[dict], bool]] = []
        row_checks: list[Callable[[dict], bool]] = []
        for name, key in BY_VALUE.items():
            values = getattr(self, name)
            if values:
                check = _one_of(key, frozenset(values))
                checks.append(check)
                if name not in ("tids", "uids"):
                    row_checks.append(check)
        if self.containers:
            checks.append(_in_container(self.containers))
            row_checks.append(checks[-1])
        if self.paths:
            checks.append(_below(self.paths))
            row_checks.append(checks[-1])
        if self.file_types:
            checks.append(_of_type(frozenset(self.file_types)))
        if self.failed:
            checks.append(_failed)
        if self.min_latency_ns:
            checks.append(_slower(self.min_latency_ns))
        object.__setattr__(self, "_checks", tuple(checks))
        object.__setattr__(self, "_row_checks", tuple(row_checks))
        object.__setattr__(self, "matches", _all(checks))           # one call per event, whatever is given
        object.__setattr__(self, "matches_row", _all(row_checks))

    @property
    def empty(self) -> bool:
        """True when every event matches."""
        return not self._checks

    def matches(self, event: dict) -> bool:       # replaced per instance by _all(its checks)
        raise NotImplementedError

    def matches_row(self, row: dict) -> bool:      # for a counts-mode row: the fields a row has
        raise NotImplementedError

    def per_call_only(self) -> list[str]:
        """The filters given that a counts row cannot answer (tid, uid, failed, min_latency, file_type)."""
        return [name for name, given in (("tid", self.tids), ("uid", self.uids), ("failed", self.failed),
                                         ("min_latency", self.min_latency_ns), ("file_type", self.file_types))
                if given]

    def shown(self) -> str:
        """The filters given, as ``name=value`` pairs (the SSE banner, logs); ``none`` when empty."""
        parts = []
        for name in ("pids", "tids", "uids", "comms", "syscalls", "hosts", "containers", "paths", "file_types"):
            for value in getattr(self, name):
                parts.append(f"{name.rstrip('s') if name != 'file_types' else 'file_type'}={value}")
        if self.failed:
            parts.append("failed=1")
        if self.min_latency_ns:
            parts.append(f"min_latency={self.min_latency_ns}ns")
        return ", ".join(parts) or "none"


# --- the filters as command-line flags ----------------------------------------------------------
# One table for the collector (which applies them in the kernel where it can) and the subscriber
# scripts (which apply them to what arrives): the letters are BCC's (opensnoop: -p, -t, -u, -n, -x)
# and Inspektor Gadget's -c; docs/COLLECTOR.md compares them with bpftrace, strace and top.

def uid(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 2**32 - 1:
        raise ValueError(f"{text!r}: a uid is a number 0..4294967295 (id -u NAME gives it)")
    return value


def path_prefix(text: str) -> str:
    if not text or len(text) > 4096 or "\n" in text or "\0" in text:
        raise ValueError(f"{text!r}: a path prefix is 1 to 4096 characters without newlines")
    return text


# (flags, variable, parser, metavar, dest, what it keeps): each repeatable, the variable comma separated
VALUE_FLAGS: tuple[tuple[tuple[str, ...], str, Callable, str, str, str], ...] = (
    (("-p", "--pid"), "SYSWATCH_PID", int, "PID", "pid", "calls of this process id"),
    (("-t", "--tid"), "SYSWATCH_TID", int, "TID", "tid", "calls made by this thread id"),
    (("-u", "--uid"), "SYSWATCH_UID", uid, "UID", "uid", "calls made by this user id (a number)"),
    (("-n", "--comm"), "SYSWATCH_COMM", str, "NAME", "comm", "processes with this name (15 bytes at most)"),
    (("-c", "--container"), "SYSWATCH_CONTAINER", str, "ID|NAME", "container",
     "this container (id prefix or name)"),
    (("--path",), "SYSWATCH_PATH", path_prefix, "PREFIX", "path",
     "calls on a file at or below PREFIX by whole components, as the process sees it (/var/log: "
     "/var/log/syslog, not /var/logs), or every kernel name of a kind (pipe:, socket:)"),
)


def add_filter_flags(p, where: dict[str, str] | None = None) -> None:
    """The filter flags on argparse parser ``p``; ``where`` adds to a flag's help (by dest) where and how
    it is applied. Sets ``pid tid uid comm container path`` (lists), ``failed``, ``min_latency`` (ns)."""
    where = where or {}
    for flags, env, parse, metavar, dest, what in VALUE_FLAGS:
        add_option(p, *flags, env=env, default=[], type=parse, repeatable=True, metavar=metavar, dest=dest,
                   help=f"only {what}{where.get(dest, '')}; repeatable")
    add_option(p, "-x", "--failed", env="SYSWATCH_FAILED", flag=True, default=False, dest="failed",
               help=f"only calls that failed (ret < 0, shown by errno name){where.get('failed', '')}")
    add_option(p, "--min-latency", env="SYSWATCH_MIN_LATENCY", default=0, type=parse_duration, metavar="DURATION",
               dest="min_latency", help="only calls that took at least this long: a number and a unit, 500us, "
                                        f"20ms, 1s{where.get('min_latency', '')} (default: none)")
