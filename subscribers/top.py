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

from shared.protocol import EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS
from subscribers.common import Subscription, add_endpoint_flag

EPILOG = """\
examples:
  python subscribers/top.py                        refresh every second, busiest first by calls/s
  python subscribers/top.py --sort bytes --rows 10
  python subscribers/top.py --once                 one 1-second sample as plain text, then exit
  python subscribers/top.py --iterations 5 --delay 2 --json   5 samples of 2 s as JSON lines
"""
CLEAR = "\x1b[H\x1b[2J"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="top.py", description="Busiest processes by read/write calls and bytes.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_endpoint_flag(p)
    p.add_argument("--delay", type=float, default=1.0, metavar="SECONDS",
                   help="refresh interval (default: %(default)s)")
    p.add_argument("--rows", type=int, default=0,
                   help="processes shown; 0 = as many as fit the terminal (default: 0)")
    p.add_argument("--sort", choices=("calls", "bytes"), default="calls", help="sort key (default: %(default)s)")
    p.add_argument("--iterations", type=int, default=0, metavar="N",
                   help="exit after N refreshes, printing plain text (no screen clearing); 0 = run until "
                        "Ctrl-C (default: 0)")
    p.add_argument("--once", action="store_true", help="same as --iterations 1")
    p.add_argument("--json", action="store_true",
                   help="print each sample as one JSON object instead of a table (default: table)")
    return p.parse_args(argv)


class Sample:
    """Calls and bytes per (pid, comm) and syscall over one refresh interval."""

    def __init__(self):
        self.started = time.monotonic()
        self.rows: dict[tuple[int, str], dict[str, int]] = defaultdict(
            lambda: {"read_calls": 0, "read_bytes": 0, "write_calls": 0, "write_bytes": 0})
        self.counts_seconds = 0.0              # counts mode: how many seconds the rows cover
        self.status: dict | None = None

    def add_event(self, ev: dict) -> None:
        row = self.rows[(ev["pid"], ev["comm"])]
        row[ev["syscall"] + "_calls"] += 1
        row[ev["syscall"] + "_bytes"] += ev["count"]

    def add_counts(self, payload: dict) -> None:
        self.counts_seconds += payload["interval_ns"] / 1e9
        for r in payload["rows"]:
            row = self.rows[(r["pid"], r["comm"])]
            row[r["syscall"] + "_calls"] += r["calls"]
            row[r["syscall"] + "_bytes"] += r["bytes"]

    def table(self, sort: str) -> list[dict]:
        seconds = self.counts_seconds or max(time.monotonic() - self.started, 1e-3)
        out = []
        for (pid, comm), r in self.rows.items():
            out.append({"pid": pid, "comm": comm,
                        **{k.replace("_calls", "_calls_s").replace("_bytes", "_bytes_s"): round(v / seconds, 1)
                           for k, v in r.items()}})
        key = (lambda r: r["read_calls_s"] + r["write_calls_s"]) if sort == "calls" else \
              (lambda r: r["read_bytes_s"] + r["write_bytes_s"])
        return sorted(out, key=key, reverse=True)


def human(n: float) -> str:
    for unit in ("", "K", "M", "G"):
        if abs(n) < 1000:
            return f"{n:.0f}{unit}" if unit == "" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}T"


def render(sample: Sample, sort: str, rows: int) -> str:
    table = sample.table(sort)
    st = sample.status
    head = (f"syswatch top - {time.strftime('%H:%M:%S')}  " +
            (f"collector {st['host']} mode={st['mode']} probe={st['probe']} events={st['events_total']} "
             f"lost={st['lost_total']} dropped={st['dropped_total']} malformed={st['malformed_total']}"
             if st else "waiting for the collector's status..."))
    lines = [head, "",
             f"{'PID':>8} {'COMM':<18} {'READ/s':>8} {'RBYTES/s':>9} {'WRITE/s':>8} {'WBYTES/s':>9}"]
    for r in table[:rows]:
        comm = json.dumps(r["comm"])[1:-1][:18]      # escaped: a name cannot move the cursor
        lines.append(f"{r['pid']:>8} {comm:<18} {human(r['read_calls_s']):>8} {human(r['read_bytes_s']):>9} "
                     f"{human(r['write_calls_s']):>8} {human(r['write_bytes_s']):>9}")
    if not table:
        lines.append("(no read/write calls in this interval)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    iterations = 1 if args.once else args.iterations
    interactive = iterations == 0 and sys.stdout.isatty() and not args.json
    sub = Subscription(args.endpoint, [EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS])
    done = 0
    sample = Sample()
    last_status = None
    last_counts = None
    next_refresh = time.monotonic() + args.delay
    try:
        for msg in sub.messages(tick=0.1):
            if msg is not None:
                if msg.topic.startswith(EVENT_PREFIX):
                    for ev in msg.events:
                        sample.add_event(ev)
                elif msg.topic == TOPIC_COUNTS:
                    sample.add_counts(msg.payload)
                    last_counts = msg.payload
                elif msg.topic == TOPIC_STATUS:
                    sample.status = last_status = msg.payload
            if time.monotonic() < next_refresh:
                continue
            if not sample.rows and last_counts is not None:
                sample.add_counts(last_counts)   # counts mode with --delay < --interval: repeat the last totals
            if args.json:
                print(json.dumps({"status": sample.status, "processes": sample.table(args.sort)[:args.rows or None]}))
            else:
                height = shutil.get_terminal_size((100, 24)).lines - 4
                text = render(sample, args.sort, args.rows or (max(height, 5) if interactive else 20))
                print((CLEAR if interactive else "") + text + ("" if interactive else "\n"), flush=True)
            sys.stdout.flush()
            done += 1
            if iterations and done >= iterations:
                return 0
            sample = Sample()
            sample.status = last_status
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
