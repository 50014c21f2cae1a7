#!/usr/bin/env python3
"""A live table of the busiest processes on the syswatch stream, like top(1).

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

from syswatch.shared.config import add_option  # noqa: E402
from syswatch.shared.protocol import EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS  # noqa: E402
from syswatch.subscribers.common import Subscription, add_common_flags, wanted  # noqa: E402

EPILOG = """\
examples:
  syswatch-top                                      refresh every second, busiest first by calls/s
  syswatch-top --sort bytes --rows 10
  syswatch-top --group container                    busiest containers ("-" is the host itself)
  syswatch-top --group file --sort bytes            busiest files (paths as each process sees them)
  syswatch-top --group file --path /var/lib/postgresql   the files under one directory
  syswatch-top --once                               one 1-second sample as plain text, then exit
  syswatch-top --iterations 5 --delay 2 --json      5 samples of 2 s as JSON lines
  syswatch-top -e tcp://node1:5556 -e tcp://node2:5556  several collectors (HOST column)

Columns: reads and writes per second (the read family: read, pread64, readv; the write family:
write, pwrite64, writev), bytes actually moved per second (the sum of positive ret), failed
calls per second (ret < 0) and the mean time in the call ("-" unless the collector measures
latency: --latency). With --group file, counts mode shows the collector's top files of each
interval and one row for the rest of them ("(other files)"). Exit status: 0, or 1 when no
collector answered within 3 s of a --once/--iterations run, 2 for a usage error.
"""
CLEAR = "\x1b[H\x1b[2J"
READS = {"read", "pread64", "readv"}
FIRST_MESSAGE_WAIT_S = 3.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="syswatch-top", description="Busiest processes or containers by "
                                "read/write calls, bytes moved, errors and latency.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    add_option(p, "--delay", env="SYSWATCH_DELAY", default=1.0, type=float, metavar="SECONDS",
               help="refresh interval")
    add_option(p, "--rows", env="SYSWATCH_ROWS", default=0, type=int, metavar="N",
               help="rows shown; 0 = as many as fit the terminal")
    add_option(p, "--sort", env="SYSWATCH_SORT", default="calls", choices=("calls", "bytes", "errors", "latency"),
               help="sort key")
    add_option(p, "--group", env="SYSWATCH_GROUP", default="process", choices=("process", "container", "file"),
               help="one row per process, per container or per file")
    add_option(p, "--iterations", env="SYSWATCH_ITERATIONS", default=0, type=int, metavar="N",
               help="exit after N refreshes, printing plain text (no screen clearing); 0 = run until Ctrl-C")
    add_option(p, "--once", env="SYSWATCH_ONCE", flag=True, help="same as --iterations 1")
    add_option(p, "--json", env="SYSWATCH_JSON", flag=True,
               help="print each sample as one JSON object instead of a table (default: off, a table)")
    return p.parse_args(argv)


def _zero() -> dict:
    return {"read_calls": 0, "read_bytes": 0, "write_calls": 0, "write_bytes": 0, "errors": 0, "lat_ns_sum": 0,
            "lat_calls": 0}


OTHER_FILES = "(other files)"


def file_name(item: dict) -> str:
    """A file's row name: its path, or its type, device and inode when the path is not known."""
    return item.get("path") or f"({item.get('file_type', 'unknown')} dev {item.get('dev', 0)} ino {item.get('ino', 0)})"


class Sample:
    """Calls, bytes moved, errors and latency per process (or container) over one refresh interval."""

    def __init__(self, group: str):
        self.group = group
        self.started = time.monotonic()
        self.rows: dict[tuple, dict[str, int]] = defaultdict(_zero)
        self.counts_seconds = 0.0              # counts mode: how many seconds the rows cover
        self.status: dict[str, dict] = {}      # host -> its collector's last status

    def _key(self, host: str, item: dict) -> tuple:
        if self.group == "container":
            return (host, item["container_id"], item["container_name"])
        if self.group == "file":
            return (host, file_name(item), item.get("file_type", ""))
        return (host, item["pid"], item["comm"], item["container_name"] or item["container_id"])

    def add_event(self, host: str, ev: dict) -> None:
        row = self.rows[self._key(host, ev)]
        side = "read" if ev["syscall"] in READS else "write"
        row[side + "_calls"] += 1
        if ev["ret"] > 0:
            row[side + "_bytes"] += ev["ret"]
        elif ev["ret"] < 0:
            row["errors"] += 1
        if "lat_ns" in ev:                     # measured only with the collector's --latency
            row["lat_ns_sum"] += ev["lat_ns"]
            row["lat_calls"] += 1

    def add_counts(self, payload: dict, rows: list) -> None:
        """A counts message: its process rows, or (--group file) its file rows and the rest."""
        self.counts_seconds += payload["interval_ns"] / 1e9
        for r in rows:
            row = self.rows[self._key(payload["host"], r)]
            side = "read" if r["syscall"] in READS else "write"
            row[side + "_calls"] += r["calls"]
            row[side + "_bytes"] += r["bytes"]
            row["errors"] += r["errors"]
            if "lat_ns_sum" in r:
                row["lat_ns_sum"] += r["lat_ns_sum"]
                row["lat_calls"] += r["calls"]

    def add_files_rest(self, host: str, rest: dict) -> None:
        """The calls on files beyond a counts message's top files: one row, reads and writes together."""
        if rest.get("calls"):
            row = self.rows[(host, OTHER_FILES, "")]
            row["read_calls"] += rest["calls"]
            row["read_bytes"] += rest["bytes"]
            row["errors"] += rest["errors"]

    def table(self, sort: str) -> list[dict]:
        seconds = self.counts_seconds or max(time.monotonic() - self.started, 1e-3)
        out = []
        for key, r in self.rows.items():
            if self.group == "container":
                head = {"host": key[0], "container_id": key[1], "container_name": key[2]}
            elif self.group == "file":
                head = {"host": key[0], "file": key[1], "file_type": key[2]}
            else:
                head = {"host": key[0], "pid": key[1], "comm": key[2], "container": key[3]}
            out.append({**head, **{f"{k}_s": round(v / seconds, 1) for k, v in r.items()
                                   if k not in ("lat_ns_sum", "lat_calls")},
                        "avg_lat_us": round(r["lat_ns_sum"] / r["lat_calls"] / 1e3, 1) if r["lat_calls"] else None})
        keys = {"calls": lambda r: r["read_calls_s"] + r["write_calls_s"],
                "bytes": lambda r: r["read_bytes_s"] + r["write_bytes_s"],
                "errors": lambda r: r["errors_s"], "latency": lambda r: r["avg_lat_us"] or 0.0}
        return sorted(out, key=keys[sort], reverse=True)


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def _esc(text: str, width: int) -> str:
    return json.dumps(text)[1:-1][:width]           # escaped: a name cannot move the cursor


def render(sample: Sample, sort: str, rows: int) -> str:
    table = sample.table(sort)
    head = [f"syswatch top - {time.strftime('%H:%M:%S')}"]
    for host, st in sorted(sample.status.items()):
        head.append(f"  collector {st['host']} mode={st['mode']} probe={st['probe']} events={st['events_total']} "
                    f"lost={st['lost_total']} dropped={st['dropped_total']} malformed={st['malformed_total']}")
    if not sample.status:
        head.append("  waiting for the collector's status...")
    hosts = len({r["host"] for r in table}) > 1
    hostcol = f"{'HOST':<12} " if hosts else ""
    if sample.group == "container":
        cols = f"{hostcol}{'CONTAINER':<12} {'NAME':<20}"
    elif sample.group == "file":
        cols = f"{hostcol}{'TYPE':<7} {'FILE':<40}"
    else:
        cols = f"{hostcol}{'PID':>8} {'COMM':<16} {'CONTAINER':<14}"
    lines = [*head, "", f"{cols} {'READ/s':>8} {'RBYTES/s':>9} {'WRITE/s':>8} {'WBYTES/s':>9} {'ERR/s':>7} {'LAT':>9}"]
    for r in table[:rows]:
        host = f"{_esc(r['host'], 12):<12} " if hosts else ""
        if sample.group == "container":
            who = f"{host}{r['container_id'] or '-':<12} {_esc(r['container_name'], 20):<20}"
        elif sample.group == "file":
            name = _esc(r["file"], 400)
            who = f"{host}{r['file_type'] or '-':<7} {name if len(name) <= 40 else '...' + name[-37:]:<40}"
        else:
            who = f"{host}{r['pid']:>8} {_esc(r['comm'], 16):<16} {_esc(r['container'], 14) or '-':<14}"
        lines.append(f"{who} {human(r['read_calls_s']):>8} {human(r['read_bytes_s']):>9} "
                     f"{human(r['write_calls_s']):>8} {human(r['write_bytes_s']):>9} {human(r['errors_s']):>7} "
                     + (f"{r['avg_lat_us']:>7.1f}us" if r["avg_lat_us"] is not None else f"{'-':>9}"))
    if not table:
        lines.append("(no calls in this interval)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    iterations = 1 if args.once else args.iterations
    interactive = iterations == 0 and sys.stdout.isatty() and not args.json
    heard = False
    done = 0
    sample = Sample(args.group)
    last_counts: dict[str, tuple] = {}
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
                        if wanted(ev, args):
                            sample.add_event(host, ev)
                elif msg.topic == TOPIC_COUNTS:
                    source = msg.payload.get("files", []) if args.group == "file" else msg.payload["rows"]
                    rows = [r for r in source if wanted(r, args)]
                    sample.add_counts(msg.payload, rows)
                    if args.group == "file" and not args.path:
                        sample.add_files_rest(host, msg.payload.get("files_rest", {}))
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
