#!/usr/bin/env python3
"""Print the syswatch event stream: seed-style lines, or one JSON object per line.

    python subscribers/tail.py --help
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.protocol import EVENT_PREFIX, TOPIC_COUNTS, TOPIC_STATUS
from subscribers.common import Subscription, add_endpoint_flag

EPILOG = """\
examples:
  python subscribers/tail.py                           every read/write event, seed-style lines
  python subscribers/tail.py --json --count 100        100 events as JSON lines, then exit
  python subscribers/tail.py --topic syscall.write --comm nginx
  python subscribers/tail.py --pid 1234 --timeout 10   stop after 10 s
  python subscribers/tail.py --topic status --json     the collector's counters every second
  python subscribers/tail.py --topic counts            counts mode totals

Exit status: 0 on Ctrl-C or when --count events were printed; 1 when --timeout expired
before --count was reached.
"""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tail.py", description="Print the syswatch event stream.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_endpoint_flag(p)
    p.add_argument("--topic", action="append", default=None,
                   help="topic prefix to subscribe to, repeatable: syscall. syscall.read syscall.write "
                        "counts status (default: syscall.)")
    p.add_argument("--pid", type=int, action="append", default=[], help="only this PID; repeatable (default: all)")
    p.add_argument("--comm", action="append", default=[], help="only this process name; repeatable (default: all)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (default: text)")
    p.add_argument("--count", type=int, default=0, metavar="N",
                   help="exit after N events (counts rows and status messages count too); 0 = never (default: 0)")
    p.add_argument("--timeout", type=float, default=0, metavar="SECONDS",
                   help="exit after this many seconds; 0 = never (default: 0)")
    return p.parse_args(argv)


def wanted(item: dict, pids: set, comms: set) -> bool:
    return (not pids or item.get("pid") in pids) and (not comms or item.get("comm") in comms)


def text_line(topic: str, item: dict) -> str:
    if topic.startswith(EVENT_PREFIX):
        return (f"{item['pid']} - hello sys_{item['syscall']} was called "
                f"(tid={item['tid']} uid={item['uid']} comm={json.dumps(item['comm'])} "
                f"fd={item['fd']} count={item['count']})")
    if topic == TOPIC_COUNTS:
        return (f"counts: pid={item['pid']} comm={json.dumps(item['comm'])} {item['syscall']} "
                f"calls={item['calls']} bytes={item['bytes']}")
    return f"{topic}: " + " ".join(f"{k}={v}" for k, v in item.items() if k != "v")


def items(msg):
    """(topic, item) pairs: each event, each counts row, or the status payload itself."""
    if msg.topic.startswith(EVENT_PREFIX):
        return msg.events
    if msg.topic == TOPIC_COUNTS:
        return msg.payload.get("rows", [])
    return [msg.payload]


def main(argv=None) -> int:
    args = parse_args(argv)
    topics = args.topic or [EVENT_PREFIX]
    pids, comms = set(args.pid), set(args.comm)
    sub = Subscription(args.endpoint, topics)
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    printed = 0
    out = sys.stdout
    try:
        for msg in sub.messages(deadline):
            for item in items(msg):
                if msg.topic != TOPIC_STATUS and not wanted(item, pids, comms):
                    continue
                if args.json:
                    out.write(json.dumps(item) + "\n")   # an EVENT, a counts row, or a status payload
                else:
                    out.write(text_line(msg.topic, item) + "\n")
                printed += 1
                if args.count and printed >= args.count:
                    out.flush()
                    return 0
            out.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:                      # e.g. | head
        sys.stderr.close()
        return 0
    finally:
        sub.close()
    if args.count:
        print(f"tail.py: timeout after {args.timeout:g} s with {printed} of {args.count} events "
              f"(is the collector running on {args.endpoint}?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
