#!/usr/bin/env python3
"""Print the syswatch event stream: one strace-like line per call, or one JSON object per line.

    python subscribers/tail.py --help
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syswatch.shared.deps import require  # noqa: E402  (stdlib only)

require("syswatch-tail", "zmq")              # a missing package: one line, exit 2

from syswatch.shared.config import add_option  # noqa: E402
from syswatch.shared.protocol import EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS  # noqa: E402
from syswatch.subscribers import lines  # noqa: E402
from syswatch.subscribers.common import Subscription, add_common_flags, selection  # noqa: E402

EPILOG = """\
examples:
  syswatch-tail                                         every read/write call, one strace-like line each
  syswatch-tail -x                                      only failed calls (shown by errno name)
  syswatch-tail --min-latency 20ms                      only calls that took 20 ms or more
  syswatch-tail -u 1000 -t 4242                         one user's calls, one thread's calls
  syswatch-tail --path /var/lib/postgresql              calls on files below that directory
  syswatch-tail --json --count 100                      100 events as JSON lines, then exit
  syswatch-tail --topic syscall.write -n nginx
  syswatch-tail -p 1234 -d 10                           PID 1234 only, stop after 10 s
  syswatch-tail -c web                                  container "web" only (name or id prefix)
  syswatch-tail -e tcp://node1:5556 -e tcp://node2:5556  several collectors
  syswatch-tail --topic status --json                   the collector's counters every second
  syswatch-tail --topic counts                          counts mode totals

Each line, in strace's shape (-tt -T -y):
  12:01:02.123456 postgres[812] pread64(7</var/lib/postgresql/base/1/1259>, 8192) = 8192 <0.000041> host=db1
the call's start (local time), process name[pid] ([pid/tid] for another thread), the syscall with
its descriptor (and the file, when the collector sends paths) and the bytes asked for, what it
returned (bytes moved, or -1 and the errno name), the seconds in the call, then container= (for a
process in a container) and host=. Names are shown with control characters escaped (\\x1b).
Filters combine (all must match); -x, --min-latency, -u and -t need per-call fields, so counts-mode
rows are not printed when one of them is given.
Output is written at most 5 times a second on a terminal, once a second otherwise: each write
is a syscall the collector traces, and a tail that wrote per event would feed the stream (and
every other tail) with its own output. Its own writes to standard output are not printed.
Exit status: 0 on Ctrl-C, at the end of -d, or when --count items were printed; 1 when -d
expired before --count was reached; 2 for a usage error.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="syswatch-tail", description="Print the syswatch event stream.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_flags(p)
    add_option(p, "--topic", env="SYSWATCH_TOPIC", default=[], repeatable=True, metavar="PREFIX",
               help="topic prefix to subscribe to, repeatable: syscall. syscall.read syscall.write "
                    "syscall.pread64 ... counts status (default: syscall.)")
    add_option(p, "--json", env="SYSWATCH_JSON", flag=True, help="one JSON object per line (default: off, text)")
    add_option(p, "--count", env="SYSWATCH_COUNT", default=0, type=int, metavar="N",
               help="exit after N items (events, counts rows, status messages); 0 = never")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="same as -d (an older name)")
    args = p.parse_args(argv)
    if args.timeout is not None:
        args.duration = args.timeout
    return args


def text_line(topic: str, item: dict, host: str) -> str:
    if topic.startswith(EVENT_PREFIX):
        return lines.event_line(item, host)
    if topic == TOPIC_COUNTS:
        return lines.counts_line(item, host)
    return lines.status_line(topic, item)


def items(msg):
    """Each event, each counts row, or the status payload itself."""
    if msg.topic.startswith(EVENT_PREFIX):
        return msg.events
    if msg.topic == TOPIC_COUNTS:
        return msg.payload.get("rows", [])
    return [msg.payload]


FLUSH_TTY_S = 0.2                # how often output is written, on a terminal...
FLUSH_S = 1.0                    # ...and to a pipe or file
FLUSH_BYTES = 1 << 16            # or as soon as this much waits


class Output:
    """Lines for standard output, written in one write() at most every ``period`` seconds."""

    def __init__(self, stream, period: float):
        self.stream, self.period = stream, period
        self.lines: list[str] = []
        self.size = 0
        self.last = time.monotonic()

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES or time.monotonic() - self.last >= self.period:
            self.flush()

    def tick(self) -> None:
        if self.lines and time.monotonic() - self.last >= self.period:
            self.flush()

    def flush(self) -> None:
        self.last = time.monotonic()
        if self.lines:
            text, self.lines, self.size = "".join(self.lines), [], 0
            self.stream.write(text)
        self.stream.flush()


def own_output(item: dict, me: int) -> bool:
    """An event of this process writing its output (to fd 1): printing it would print more."""
    return item.get("pid") == me and item.get("fd") == 1 and item.get("syscall", "").startswith(("write", "pwrite"))


def main(argv=None) -> int:
    args = parse_args(argv)
    topics = args.topic or [EVENT_PREFIX]
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    printed = 0
    out = Output(sys.stdout, FLUSH_TTY_S if sys.stdout.isatty() else FLUSH_S)
    me = os.getpid()
    flt = selection(args)
    per_call = flt.per_call_only()
    warned = False
    try:
        sub = Subscription(args.endpoint, topics)
    except KeyboardInterrupt:                    # Ctrl-C while connecting: it closed itself
        return 0
    try:
        for msg in sub.messages(deadline, tick=out.period):
            if msg is None:                       # idle for a period: write what waits
                out.tick()
                continue
            host = msg.payload.get("host", "")
            topic = msg.topic
            if topic == TOPIC_COUNTS and per_call:
                if not warned:
                    print(f"syswatch-tail: counts rows have no per-call fields: not printed with "
                          f"{', '.join(per_call)} (use events mode)", file=sys.stderr)
                    warned = True
                continue
            for item in items(msg):
                if topic.startswith(EVENT_PREFIX):
                    if (not flt.empty and not flt.matches(item)) or own_output(item, me):
                        continue
                elif topic == TOPIC_COUNTS and not flt.matches_row(item):
                    continue
                if args.json:          # an EVENT or counts row (with the collector's host), or a status
                    out.add(json.dumps(item if topic == TOPIC_STATUS else {**item, "host": host}) + "\n")
                else:
                    out.add(text_line(topic, item, host) + "\n")
                printed += 1
                if args.count and printed >= args.count:
                    out.flush()
                    return 0
            out.tick()
        out.flush()
    except KeyboardInterrupt:
        out.flush()
        return 0
    except BrokenPipeError:                      # e.g. | head
        sys.stderr.close()
        return 0
    finally:
        sub.close()
    if args.count:
        print(f"syswatch-tail: timeout after {args.duration:g} s with {printed} of {args.count} items "
              f"(is the collector running on {', '.join(args.endpoint)}?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
