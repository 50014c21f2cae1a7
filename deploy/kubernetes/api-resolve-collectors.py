"""Start the syswatch API subscribed to every collector behind a headless Service.

ZeroMQ connects an endpoint to one address, and the API takes a list of endpoints
(SYSWATCH_COLLECTOR, comma separated); it does not itself look up every address of a DNS name.
This wrapper does, once, at start-up:

    python3 api-resolve-collectors.py [-- COMMAND...]     (default COMMAND: python3 -m api.server)

With SYSWATCH_COLLECTOR_SERVICE set (e.g. "syswatch-collector", the headless Service), it resolves
that name's A records (one per collector pod; AAAA records on IPv6-only clusters), waiting up
to SYSWATCH_RESOLVE_TIMEOUT seconds (default 120) for at least one, sets SYSWATCH_COLLECTOR=tcp://IP:PORT,... (PORT from
SYSWATCH_COLLECTOR_PORT, default 5556), records the list in SYSWATCH_COLLECTORS_FILE (default
/tmp/syswatch-collectors) and replaces itself with COMMAND. Without SYSWATCH_COLLECTOR_SERVICE it
runs COMMAND unchanged (SYSWATCH_COLLECTOR as given: a list the operator wrote).

    python3 api-resolve-collectors.py --check

is the liveness probe: it fails (exit 1) when the API does not answer /healthz on
127.0.0.1:SYSWATCH_PORT, or when the Service now resolves to another non-empty set of addresses
than the recorded one (a collector pod was replaced or a node joined or left), so that the kubelet
restarts the API, which then subscribes to the new set. A failed lookup counts as "no change".
Standard library only: it runs on the API image's Debian python3.
"""
from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request

DEFAULT_COMMAND = ["python3", "-m", "api.server"]


def resolve(name: str, port: int) -> list[str]:
    """Every address of ``name`` as ZeroMQ endpoints, sorted; [] when the name does not resolve.

    IPv4 addresses only when there are any, else IPv6 ones: in a dual-stack cluster each pod has
    both, and subscribing to both would receive every event twice."""
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    by_family: dict[int, set[str]] = {}
    for family, _, _, _, sockaddr in infos:
        by_family.setdefault(family, set()).add(sockaddr[0])
    if socket.AF_INET in by_family:
        return sorted(f"tcp://{host}:{port}" for host in by_family[socket.AF_INET])
    return sorted(f"tcp://[{host}]:{port}" for host in by_family.get(socket.AF_INET6, ()))


def settings(environ) -> tuple[str, int, str]:
    name = environ.get("SYSWATCH_COLLECTOR_SERVICE", "").strip()
    port = int(environ.get("SYSWATCH_COLLECTOR_PORT", "5556"))
    record = environ.get("SYSWATCH_COLLECTORS_FILE", "/tmp/syswatch-collectors")
    return name, port, record


def start(command: list[str], environ=os.environ) -> int:
    name, port, record = settings(environ)
    env = dict(environ)
    if name:
        deadline = time.monotonic() + float(environ.get("SYSWATCH_RESOLVE_TIMEOUT", "120"))
        while not (endpoints := resolve(name, port)):
            if time.monotonic() >= deadline:
                print(f"resolve-collectors: error: {name} has no address (is the collector DaemonSet "
                      f"running, and SYSWATCH_COLLECTOR_SERVICE the name of its headless Service?)",
                      file=sys.stderr, flush=True)
                return 1
            time.sleep(2)
        env["SYSWATCH_COLLECTOR"] = ",".join(endpoints)
        with open(record, "w", encoding="ascii") as f:
            f.write(env["SYSWATCH_COLLECTOR"] + "\n")
        print(f"resolve-collectors: {name}: {len(endpoints)} collector(s): {env['SYSWATCH_COLLECTOR']}",
              flush=True)
    os.execvpe(command[0], command, env)
    return 127  # not reached


def check(environ=os.environ) -> int:
    name, port, record = settings(environ)
    url = f"http://127.0.0.1:{environ.get('SYSWATCH_PORT', '8080')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as reply:
            if reply.status != 200:
                print(f"{url} answered {reply.status}", file=sys.stderr)
                return 1
    except OSError as exc:
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    if not name:
        return 0
    try:
        with open(record, encoding="ascii") as f:
            recorded = f.read().strip()
    except OSError as exc:
        print(f"cannot read {record}: {exc}", file=sys.stderr)
        return 1
    now = resolve(name, port)
    if now and ",".join(now) != recorded:
        print(f"{name} now resolves to {','.join(now)}, the API subscribed to {recorded}: restart",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        return check()
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if argv and argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    return start(argv or DEFAULT_COMMAND)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
