#!/usr/bin/env python3
"""A live table of the busiest processes (containers, files) on the syswatch stream, like top(1).

Works with both collector modes: in events mode it counts the events it receives, in
counts mode it shows the kernel's per-interval totals. Ctrl-C (or q + Enter) quits.

    python subscribers/top.py --help
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syswatch.shared.deps import require  # noqa: E402  (stdlib only)

require("syswatch-top", "zmq")              # a missing package: one line, exit 2

from syswatch.shared import errnos, units  # noqa: E402
from syswatch.shared.config import add_option  # noqa: E402
from syswatch.shared.escaping import visible  # noqa: E402
from syswatch.shared.latency import Histogram  # noqa: E402
from syswatch.shared.protocol import EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS  # noqa: E402
from syswatch.shared.selection import Selection  # noqa: E402
from syswatch.subscribers.common import Subscription, add_common_flags, selection  # noqa: E402

EPILOG = """\
examples:
  syswatch-top                                      refresh every second, busiest first by calls/s
  syswatch-top --sort bytes --rows 10
  syswatch-top --sort p99 -d 5                      slowest tails first, refreshed every 5 s (top's -d)
  syswatch-top --group container                    busiest containers ("-" is the host itself)
  syswatch-top --group file                         busiest files (needs a collector that sends paths)
  syswatch-top -x                                   failed calls only: who fails, and with which errno
  syswatch-top --once                               one 1-second sample as plain text, then exit
  syswatch-top --iterations 5 --delay 2 --json      5 samples of 2 s as JSON lines
  syswatch-top -e tcp://node1:5556 -e tcp://node2:5556  several collectors (HOST column)

Columns: reads and writes per second (the read family: read, pread64, readv, preadv, preadv2; the
write family: the rest, the copies too: copy_file_range, sendfile, splice, tee), bytes actually
moved per second (the sum of positive ret), failed calls per second (ret < 0), the mean and the
99th percentile of the time in a call (P99: from log2 buckets, so within a factor of 2; '-' without
a measured call), and the most frequent errno of the failed calls (+N: N more errno names). Names
are shown with control characters escaped.
-d is the delay between refreshes, as in top(1); --duration stops after that many seconds.
Exit status: 0, or 1 when no collector answered within 3 s of a --once/--iterations run, 2 for a
usage error.
"""
CLEAR = "\x1b[H\x1b[2J"
READS = {"read", "pread64", "readv", "preadv", "preadv2"}
FIRST_MESSAGE_WAIT_S = 3.0
GROUPS = ("process", "container", "file")
SORTS = ("calls", "bytes", "errors", "latency", "p99")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="syswatch-top", description="Busiest processes, containers or files by "
                                "read/write calls, bytes moved, errors and latency.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p, duration_letter=False)
    add_option(p, "-d", "--delay", env="SYSWATCH_DELAY", default=1.0, type=float, metavar="SECONDS",
               help="refresh interval, as top's -d")
    add_option(p, "--rows", env="SYSWATCH_ROWS", default=0, type=int, metavar="N",
               help="rows shown; 0 = as many as fit the terminal")
    add_option(p, "--sort", env="SYSWATCH_SORT", default="calls", choices=SORTS,
               help="sort key: calls, bytes, errors, latency (the mean) or p99")
    add_option(p, "--group", env="SYSWATCH_GROUP", default="process", choices=GROUPS,
               help="one row per process, container or file")
    add_option(p, "--iterations", env="SYSWATCH_ITERATIONS", default=0, type=int, metavar="N",
               help="exit after N refreshes, printing plain text (no screen clearing); 0 = run until Ctrl-C")
    add_option(p, "--once", env="SYSWATCH_ONCE", flag=True, help="same as --iterations 1")
    add_option(p, "--json", env="SYSWATCH_JSON", flag=True,
               help="print each sample as one JSON object instead of a table (default: off, a table)")
    return p.parse_args(argv)


class Row:
    """One process, container or file over one refresh interval."""
    __slots__ = ("read_calls", "read_bytes", "write_calls", "write_bytes", "errors", "lat_ns_sum", "lat_n",
                 "hist", "errnos", "path", "file_type")

    def __init__(self):
        self.read_calls = self.read_bytes = self.write_calls = self.write_bytes = 0
        self.errors = self.lat_ns_sum = self.lat_n = 0
        self.hist = Histogram()
        self.errnos: dict[str, int] = {}
        self.path = self.file_type = ""


class Sample:
    """Calls, bytes moved, errors and latency per process (container, file) over one refresh interval."""

    def __init__(self, group: str):
        self.group = group
        self.started = time.monotonic()
        self.rows: dict[tuple, Row] = defaultdict(Row)
        self.counts_seconds = 0.0              # counts mode: how many seconds the rows cover
        self.status: dict[str, dict] = {}      # host -> its collector's last status

    def _key(self, host: str, item: dict) -> tuple | None:
        if self.group == "container":
            return (host, item["container_id"], item["container_name"])
        if self.group == "file":
            if item.get("ino"):
                return (host, item.get("dev", 0), item["ino"])
            return (host, item["path"]) if item.get("path") else None
        return (host, item["pid"], item["comm"], item["container_name"] or item["container_id"])

    def _row(self, host: str, item: dict) -> Row | None:
        key = self._key(host, item)
        if key is None:
            return None
        row = self.rows[key]
        if item.get("path"):
            row.path, row.file_type = item["path"], item.get("file_type", "")
        return row

    def add_event(self, host: str, ev: dict) -> None:
        row = self._row(host, ev)
        if row is None:
            return
        ret, lat = ev["ret"], ev.get("lat_ns")
        if ev["syscall"] in READS:
            row.read_calls += 1
            row.read_bytes += max(ret, 0)
        else:
            row.write_calls += 1
            row.write_bytes += max(ret, 0)
        if ret < 0:
            row.errors += 1
            name = errnos.label(ret)
            row.errnos[name] = row.errnos.get(name, 0) + 1
        row.hist.add(lat)
        if lat is not None:
            row.lat_ns_sum += lat
            row.lat_n += 1

    def add_counts(self, payload: dict, rows: list) -> None:
        self.counts_seconds += payload["interval_ns"] / 1e9
        for r in rows:
            row = self._row(payload["host"], r)
            if row is None:
                continue
            if r["syscall"] in READS:
                row.read_calls += r["calls"]
                row.read_bytes += r["bytes"]
            else:
                row.write_calls += r["calls"]
                row.write_bytes += r["bytes"]
            row.errors += r["errors"]
            for name, n in (r.get("errnos") or ({"unknown": r["errors"]} if r["errors"] else {})).items():
                row.errnos[name] = row.errnos.get(name, 0) + n
            buckets = r.get("lat_hist")
            placed = sum(buckets) if buckets else 0
            lat = r.get("lat_ns_sum")                 # only when the collector measures latency
            if buckets:
                row.hist.add_buckets(buckets, lat or 0, r.get("lat_ns_max"))
            row.hist.unmeasured += r["calls"] - placed
            row.lat_ns_sum += lat or 0
            row.lat_n += placed if buckets else (r["calls"] if lat is not None else 0)

    def table(self, sort: str) -> list[dict]:
        seconds = self.counts_seconds or max(time.monotonic() - self.started, 1e-3)
        out = []
        for key, r in self.rows.items():
            if self.group == "container":
                head = {"host": key[0], "container_id": key[1], "container_name": key[2]}
            elif self.group == "file":
                head = {"host": key[0], "path": r.path, "file_type": r.file_type,
                        "dev": key[1] if len(key) == 3 else None, "ino": key[2] if len(key) == 3 else None}
            else:
                head = {"host": key[0], "pid": key[1], "comm": key[2], "container": key[3]}
            rates = {f"{k}_s": round(getattr(r, k) / seconds, 1)
                     for k in ("read_calls", "read_bytes", "write_calls", "write_bytes", "errors")}
            out.append({**head, **rates,
                        "avg_lat_us": round(r.lat_ns_sum / r.lat_n / 1e3, 1) if r.lat_n else 0.0,
                        "p99_ns": r.hist.quantile(0.99),
                        "errnos": dict(sorted(r.errnos.items(), key=lambda kv: (-kv[1], kv[0])))})
        keys = {"calls": lambda r: r["read_calls_s"] + r["write_calls_s"],
                "bytes": lambda r: r["read_bytes_s"] + r["write_bytes_s"],
                "errors": lambda r: r["errors_s"], "latency": lambda r: r["avg_lat_us"],
                "p99": lambda r: r["p99_ns"] or -1}
        return sorted(out, key=keys[sort], reverse=True)


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _esc(text: str, width: int) -> str:
    return visible(text, width)                     # escaped: a name cannot move the cursor


def top_errno(errs: dict) -> str:
    """The most frequent errno name, ``+N`` for the others: ``EAGAIN+1``; ``-`` without errors."""
    if not errs:
        return "-"
    first = next(iter(errs))
    return first + (f"+{len(errs) - 1}" if len(errs) > 1 else "")


def render(sample: Sample, sort: str, rows: int) -> str:
    table = sample.table(sort)
    head = [f"syswatch top - {time.strftime('%H:%M:%S')}"]
    for host, st in sorted(sample.status.items()):
        head.append(f"  collector {_esc(st['host'], 64)} mode={st['mode']} probe={st['probe']} "
                    f"events={st['events_total']} lost={st['lost_total']} dropped={st['dropped_total']} "
                    f"malformed={st['malformed_total']}")
    if not sample.status:
        head.append("  waiting for the collector's status...")
    hosts = len({r["host"] for r in table}) > 1
    hostcol = f"{'HOST':<12} " if hosts else ""
    if sample.group == "container":
        cols = f"{hostcol}{'CONTAINER':<12} {'NAME':<20}"
    elif sample.group == "file":
        cols = f"{hostcol}{'TYPE':<7} {'PATH':<36}"
    else:
        cols = f"{hostcol}{'PID':>8} {'COMM':<16} {'CONTAINER':<14}"
    out = [*head, "", f"{cols} {'READ/s':>8} {'RBYTES/s':>9} {'WRITE/s':>8} {'WBYTES/s':>9} {'ERR/s':>7} "
                      f"{'LAT':>9} {'P99':>9} {'ERRNO':<12}"]
    for r in table[:rows]:
        host = f"{_esc(r['host'], 12):<12} " if hosts else ""
        if sample.group == "container":
            who = f"{host}{r['container_id'] or '-':<12} {_esc(r['container_name'], 20):<20}"
        elif sample.group == "file":
            who = f"{host}{_esc(r['file_type'] or '-', 7):<7} {_esc_tail(r['path'], 36):<36}"
        else:
            who = f"{host}{r['pid']:>8} {_esc(r['comm'], 16):<16} {_esc(r['container'], 14) or '-':<14}"
        out.append(f"{who} {human(r['read_calls_s']):>8} {human(r['read_bytes_s']):>9} "
                   f"{human(r['write_calls_s']):>8} {human(r['write_bytes_s']):>9} {human(r['errors_s']):>7} "
                   f"{r['avg_lat_us']:>7.1f}us {units.shown(r['p99_ns']):>9} {top_errno(r['errnos']):<12}")
    if not table:
        out.append("(no calls in this interval)")
    return "\n".join(out)


def _esc_tail(path: str, width: int) -> str:
    """A path that fits ``width``: its end is what tells files apart (``...base/1/1259``)."""
    shown = visible(path)
    return shown if len(shown) <= width else "..." + shown[-(width - 3):]


def main(argv=None) -> int:
    args = parse_args(argv)
    iterations = 1 if args.once else args.iterations
    interactive = iterations == 0 and sys.stdout.isatty() and not args.json
    heard = False
    done = 0
    sample = Sample(args.group)
    last_counts: dict[str, tuple] = {}
    flt = selection(args)
    file_flt = Selection(paths=flt.paths, syscalls=flt.syscalls)   # a file row has no process fields
    per_call = flt.per_call_only()
    warned = False
    try:
        sub = Subscription(args.endpoint, [EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS])
    except KeyboardInterrupt:                    # Ctrl-C while connecting: it closed itself
        return 0
    started = time.monotonic()
    deadline = started + args.duration if args.duration > 0 else None
    next_refresh = started + args.delay
    try:
        for msg in sub.messages(deadline, tick=0.1):
            if msg is not None:
                heard = True
                host = msg.payload.get("host", "")
                if msg.topic.startswith(EVENT_PREFIX):
                    for ev in msg.events:
                        if flt.empty or flt.matches(ev):
                            sample.add_event(host, ev)
                elif msg.topic == TOPIC_COUNTS:
                    if per_call and not warned:
                        print(f"syswatch-top: counts rows have no per-call fields: {', '.join(per_call)} "
                              f"cannot be applied to them (use events mode)", file=sys.stderr)
                        warned = True
                    if args.group == "file" and "files" in msg.payload:   # the collector's top files
                        rows = [] if per_call else [r for r in msg.payload["files"] if file_flt.matches_row(r)]
                    else:
                        rows = [] if per_call else [r for r in msg.payload["rows"] if flt.matches_row(r)]
                    sample.add_counts(msg.payload, rows)
                    last_counts[host] = (msg.payload, rows)
                elif msg.topic == TOPIC_STATUS:
                    sample.status[host] = msg.payload
            now = time.monotonic()
            if now < next_refresh:
                continue
            if not heard:
                if iterations and now - started >= FIRST_MESSAGE_WAIT_S:
                    print(f"syswatch-top: no collector answered on {', '.join(args.endpoint)} within "
                          f"{FIRST_MESSAGE_WAIT_S:g} s: is it running (sudo syswatch-collector)?", file=sys.stderr)
                    return 1
                if iterations:
                    continue                    # a plain-text sample waits for the first message
            if not sample.rows and last_counts:
                for payload, rows in last_counts.values():
                    sample.add_counts(payload, rows)   # counts mode with --delay < --interval: repeat
            if args.json:
                key = {"container": "containers", "file": "files"}.get(args.group, "processes")
                print(json.dumps({"status": sample.status, key: sample.table(args.sort)[:args.rows or None]}))
            else:
                height = shutil.get_terminal_size((100, 24)).lines - 5
                text = render(sample, args.sort, args.rows or (max(height, 5) if interactive else 20))
                print((CLEAR if interactive else "") + text + ("" if interactive else "\n"), flush=True)
            sys.stdout.flush()
            done += 1
            if iterations and done >= iterations:
                return 0
            status = sample.status
            sample = Sample(args.group)
            sample.status = status
            next_refresh = time.monotonic() + args.delay
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
    finally:
        sub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
