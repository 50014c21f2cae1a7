#!/usr/bin/env python3
"""Print the syswatch event stream: seed-style lines, or one JSON object per line.

    python subscribers/tail.py --help
"""
from __future__ import annotations

import argparse
import errno
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
from syswatch.subscribers.common import Subscription, add_common_flags, wanted  # noqa: E402

EPILOG = """\
examples:
  syswatch-tail                                         every read/write event, one strace-like line each
  syswatch-tail --json --count 100                      100 events as JSON lines, then exit
  syswatch-tail --topic syscall.write -n nginx
  syswatch-tail -p 1234 -d 10                           PID 1234 only, stop after 10 s
  syswatch-tail -c web                                  container "web" only (name or id prefix)
  syswatch-tail -e tcp://node1:5556 -e tcp://node2:5556  several collectors
  syswatch-tail --topic status --json                   the collector's counters every second
  syswatch-tail --topic counts                          counts mode totals
  syswatch-tail --path /var/lib/postgresql              only calls on files under that path

Each event line reads like strace -y: when the call started (or returned, without --latency on
the collector), the process name and PID, the call with its fd and the file it points to, the
bytes asked for, what it returned (bytes moved, or -1 and the error) and the time in the call:
  12:01:02.123456 postgres[812] pread64(7</var/lib/pg/base/1/1259>, 8192) = 8192 <0.000041>
A container's events end with [container NAME]; with several collectors, [host NAME].
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


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)} | {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r"}


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a name cannot break the line or move the cursor."""
    return text.translate(_CONTROL)


def strace_line(item: dict, host: str = "") -> str:
    """One event as strace -y prints a call: time, name[pid], the call, what it returned, <lat>."""
    ts = item["ts_ns"]
    when = time.strftime("%H:%M:%S", time.localtime(ts // 1_000_000_000)) + f".{ts // 1000 % 1_000_000:06d}"
    target = item.get("sock") or item.get("path")
    fd = f"{item['fd']}<{printable(target)}>" if target else str(item["fd"])
    ret = item["ret"]
    if ret < 0:
        err = -ret
        result = f"-1 {errno.errorcode.get(err, str(err))} ({os.strerror(err)})"
    else:
        result = str(ret)
    line = f"{when} {printable(item['comm'])}[{item['pid']}] {item['syscall']}({fd}, {item['count']}) = {result}"
    if "lat_ns" in item:
        line += f" <{item['lat_ns'] / 1e9:.6f}>"
    if item.get("container_id"):
        line += f" [container {printable(item['container_name'] or item['container_id'])}]"
    if host:
        line += f" [host {printable(host)}]"
    return line


def text_line(topic: str, item: dict, host: str) -> str:
    """An event (strace-like), a counts row or a status, as one line of text."""
    if topic.startswith(EVENT_PREFIX):
        return strace_line(item, host)
    if topic == TOPIC_COUNTS:
        where = f" container={item['container_name'] or item['container_id']}" if item["container_id"] else ""
        lat = f" lat_ns_sum={item['lat_ns_sum']}" if "lat_ns_sum" in item else ""
        return (f"counts: pid={item['pid']} comm={json.dumps(item['comm'])}{where} {item['syscall']} "
                f"calls={item['calls']} bytes={item['bytes']} errors={item['errors']}{lat} host={host}")
    return f"{topic}: " + " ".join(f"{k}={v}" for k, v in item.items() if k != "v")


def items(msg):
    """Each event, each counts row, or the status payload itself."""
    if msg.topic.startswith(EVENT_PREFIX):
        return msg.events
    if msg.topic == TOPIC_COUNTS:
        return msg.payload.get("rows", [])
    return [msg.payload]


def main(argv=None) -> int:
    args = parse_args(argv)
    topics = args.topic or [EVENT_PREFIX]
    deadline = time.monotonic() + args.duration if args.duration > 0 else None
    printed = 0
    out = sys.stdout
    many_hosts = len(args.endpoint) > 1
    try:
        sub = Subscription(args.endpoint, topics)
    except KeyboardInterrupt:                    # Ctrl-C while connecting: it closed itself
        return 0
    try:
        for msg in sub.messages(deadline):
            if msg is None:                       # only with a tick, which tail does not ask for
                continue
            host = msg.payload.get("host", "")
            for item in items(msg):
                if msg.topic != TOPIC_STATUS and not wanted(item, args):
                    continue
                if args.json:          # an EVENT or counts row (with the collector's host), or a status
                    out.write(json.dumps(item if msg.topic == TOPIC_STATUS else {**item, "host": host}) + "\n")
                else:
                    out.write(text_line(msg.topic, item, host if many_hosts else "") + "\n")
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
        print(f"syswatch-tail: timeout after {args.duration:g} s with {printed} of {args.count} items "
              f"(is the collector running on {', '.join(args.endpoint)}?)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
