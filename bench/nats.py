"""NATS JetStream on this machine (issue 27): events/s through Debian's nats-server, and what the bridge
and the API's NATS ingest cost per event.

    python3 -m bench.nats [--quick] [--json FILE]

Stages (each with its own nats-server on a free port, JetStream on a temporary store):
  publishers  1, then 4 synthetic publisher processes, each publishing collector-sized batches
              (protocol v2 syscall.write messages) with acknowledgements, 256 in flight, like the
              bridge: events/s stored, and CPU per event of nats-server and of the publishers
  bridge      a ZeroMQ publisher standing in for the collector -> syswatch-nats-bridge -> NATS:
              events/s and the bridge's CPU per event (from /proc, the whole process)
  api         syswatch-api --nats consuming that stream's backlog: events/s and its CPU per event
  collector   (root and bpftrace only) a real collector tracing dd bs=1 -> bridge -> NATS -> API

CPU per event is a process's utime+stime over the stage divided by the events; the ratios between
stages come from one run. Needs nats-server (apt-get install -y nats-server).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.procs import cpu_seconds, free_port

REPO = Path(__file__).resolve().parent.parent
EVENTS_PER_MESSAGE = 500          # the collector's batches: one read of bpftrace output, ~1,000 events at most


def batch_payload(n: int, pid: int = 4242) -> bytes:
    from syswatch.shared import protocol
    now = time.time_ns()
    events = [{"ts_ns": now + k, "pid": pid, "tid": pid, "uid": 1000, "comm": "dd", "syscall": "write", "fd": 1,
               "count": 1, "ret": 1, "lat_ns": 900 + k % 100, "cgroup_id": 1, "container_id": "",
               "container_name": ""} for k in range(n)]
    return protocol.encode("syscall.write", {"host": "bench", "events": events})[1]


def publisher_main(url: str, host: str, messages: int, per_message: int) -> None:
    """One synthetic publisher (a child process): ``messages`` acknowledged publishes, then prints the time."""
    import queue as q

    from syswatch.shared import jetstream, natsclient
    conn = natsclient.Connection(natsclient.Options(servers=(url,))).connect()
    data = batch_payload(per_message)
    subject = jetstream.subject(host, "syscall.write")
    acks: q.SimpleQueue = q.SimpleQueue()
    inflight = 0
    start = time.monotonic()
    for i in range(messages):
        while inflight >= 256:
            msg = acks.get(timeout=30)
            assert jetstream.pub_ack(msg)[0] is not None, jetstream.pub_ack(msg)
            inflight -= 1
        inbox = conn.new_inbox()
        conn.expect(inbox, acks.put)
        conn.publish(subject, data, inbox, {jetstream.MSG_ID_HEADER: f"{host}-{i}"})
        inflight += 1
    while inflight:
        assert jetstream.pub_ack(acks.get(timeout=30))[0] is not None
        inflight -= 1
    print(json.dumps({"seconds": time.monotonic() - start}), flush=True)
    conn.close()


class Server:
    def __init__(self, tmp: Path):
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        conf = tmp / "nats.conf"
        conf.write_text(f"listen: 127.0.0.1:{self.port}\nmax_payload: 8MB\n"
                        f"jetstream {{ store_dir: {json.dumps(str(tmp / 'js'))}, max_file_store: 8GB }}\n")
        binary = shutil.which("nats-server")
        if binary is None:
            raise SystemExit("bench.nats: install nats-server (apt-get install -y nats-server)")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        from syswatch.shared import jetstream, natsclient
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = natsclient.Connection(natsclient.Options(servers=(self.url,))).connect()
                try:
                    jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits(max_bytes=6 << 30))
                finally:
                    conn.close()
                break
            except natsclient.NatsError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stored(self) -> dict:
        from syswatch.shared import jetstream, natsclient
        conn = natsclient.Connection(natsclient.Options(servers=(self.url,))).connect()
        try:
            return jetstream.stream_info(conn, "SYSWATCH")["state"]
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)


def stage_publishers(tmp: Path, n: int, messages: int, per_message: int = EVENTS_PER_MESSAGE) -> dict:
    srv = Server(tmp)
    try:
        cpu0 = cpu_seconds(srv.proc.pid)
        before = os.times()
        start = time.monotonic()
        procs = [subprocess.Popen([sys.executable, "-m", "bench.nats", "--publisher", srv.url, f"h{i}",
                                   str(messages), str(per_message)], cwd=REPO, stdout=subprocess.PIPE, text=True)
                 for i in range(n)]
        for p in procs:
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, out
        wall = time.monotonic() - start
        events = n * messages * per_message
        state = srv.stored()
        assert state["messages"] == n * messages, state
        server_cpu = cpu_seconds(srv.proc.pid) - cpu0
        after = os.times()        # the publishers were reaped: their CPU is in the children's times
        pub_cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        return {"publishers": n, "events_per_message": per_message, "events": events, "messages": n * messages,
                "messages_per_s": round(n * messages / wall), "seconds": round(wall, 2),
                "events_per_s": round(events / wall), "mb_per_s": round(state["bytes"] / wall / 1e6, 1),
                "nats_cpu_us_per_event": round(server_cpu / events * 1e6, 3),
                "publisher_cpu_us_per_event": round(pub_cpu / events * 1e6, 3)}
    finally:
        srv.stop()


def stage_bridge_and_api(tmp: Path, messages: int, api_too: bool = True) -> tuple[dict, dict | None]:
    import zmq

    from syswatch.shared import protocol, zmqsock
    srv = Server(tmp)
    ctx = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = zmqsock.make_publisher(ctx, endpoint, sndhwm=1_000_000)
    bridge = subprocess.Popen([sys.executable, "-m", "subscribers.nats_bridge", "-e", endpoint, "--nats", srv.url,
                               "--stream-max-bytes", "6GiB", "--queue-mb", "512", "--log-level", "warning"],
                              cwd=REPO, stderr=subprocess.DEVNULL)
    api = None
    try:
        status = protocol.encode("status", {"host": "bench", "ts_ns": time.time_ns(), "mode": "events",
                                            "probe": "tracepoint", "syscalls": ["read", "write"],
                                            "excluded_pids": [], "events_total": 0, "lost_total": 0,
                                            "dropped_total": 0, "malformed_total": 0, "uptime_s": 1.0})
        deadline = time.monotonic() + 30
        while srv.stored()["messages"] == 0:            # the bridge subscribed and published a status
            pub.send_multipart(status)
            time.sleep(0.1)
            assert time.monotonic() < deadline and bridge.poll() is None, "the bridge did not start"
        base = srv.stored()["messages"]
        data = batch_payload(EVENTS_PER_MESSAGE)
        cpu0 = cpu_seconds(bridge.pid)
        start = time.monotonic()
        for _ in range(messages):
            pub.send_multipart([b"syscall.write", data])
        while srv.stored()["messages"] < base + messages:
            assert bridge.poll() is None and time.monotonic() - start < 600, "the bridge stopped"
            time.sleep(0.05)
        wall = time.monotonic() - start
        events = messages * EVENTS_PER_MESSAGE
        bridge_row = {"events": events, "seconds": round(wall, 2), "events_per_s": round(events / wall),
                      "bridge_cpu_us_per_event": round((cpu_seconds(bridge.pid) - cpu0) / events * 1e6, 3)}
        bridge.terminate()
        bridge.wait(15)
        if not api_too:
            return bridge_row, None
        # the API catches up on the stored backlog
        port = free_port()
        api = subprocess.Popen([sys.executable, "-m", "api.server", "--port", str(port), "--db",
                                str(tmp / "ips.sqlite3"), "--nats", srv.url], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import urllib.request
        start = time.monotonic()
        got = 0
        while got < events:
            assert api.poll() is None and time.monotonic() - start < 600, f"the API stopped at {got}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
                    got = json.loads(r.read())["events_received"]
            except OSError:
                pass
            time.sleep(0.1)
        wall = time.monotonic() - start
        api_row = {"events": events, "seconds": round(wall, 2), "events_per_s": round(events / wall),
                   "api_cpu_us_per_event": round(cpu_seconds(api.pid) / events * 1e6, 3)}
        return bridge_row, api_row
    finally:
        for p in (bridge, api):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(15)
        pub.close(0)
        ctx.term()
        srv.stop()


def stage_collector(tmp: Path, dd_count: int) -> dict:
    """A real collector (root, bpftrace) tracing ``dd bs=1`` (only dd, filtered in the kernel) -> the
    bridge -> NATS: events/s from dd's start until the bridge has published every event the collector
    read, and each process's CPU per event over that time."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from harness.workloads import dd_argv
    srv = Server(tmp)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    out = open(tmp / "collector.out", "w")
    col = subprocess.Popen([sys.executable, "-m", "collector.collector", "--bind", endpoint, "-n", "dd",
                            "--echo-rate", "0", "--hostname", "bench-collector"], cwd=REPO, stdout=out,
                           stderr=subprocess.STDOUT)
    mport = free_port()
    bridge = None

    def bridge_metrics() -> dict:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict = {}
        for f in text_string_to_metric_families(text):
            for sample in f.samples:               # summed over labels (reason)
                if sample.name.startswith("syswatch_bridge_"):
                    out[sample.name] = out.get(sample.name, 0) + sample.value
        return out
    try:
        deadline = time.monotonic() + 120
        while "Monitoring sys_read" not in (tmp / "collector.out").read_text():
            assert col.poll() is None and time.monotonic() < deadline, (tmp / "collector.out").read_text()[-2000:]
            time.sleep(0.1)
        bridge = subprocess.Popen([sys.executable, "-m", "subscribers.nats_bridge", "-e", endpoint, "--nats", srv.url,
                                   "--stream-max-bytes", "6GiB", "--metrics", f"127.0.0.1:{mport}",
                                   "--log-level", "warning"], cwd=REPO, stderr=subprocess.DEVNULL)
        while bridge_metrics().get("syswatch_bridge_published_messages_total", 0) == 0:   # a status went through
            assert bridge.poll() is None and time.monotonic() < deadline, "the bridge did not publish"
            time.sleep(0.1)
        import zmq

        from syswatch.shared import protocol, zmqsock
        ctx = zmq.Context()
        status_sock = zmqsock.make_subscriber(ctx, endpoint, [protocol.TOPIC_STATUS])

        def collector_status() -> dict:
            st = None
            while status_sock.poll(1500 if st is None else 0):
                st = protocol.decode(status_sock.recv_multipart()).payload
            return st
        first = collector_status()
        before = bridge_metrics()
        cpu0 = {name: cpu_seconds(p.pid) for name, p in (("collector", col), ("bridge", bridge), ("nats", srv.proc))}
        start = time.monotonic()
        subprocess.run(dd_argv(dd_count), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        dd_done = time.monotonic()
        last, still = -1.0, time.monotonic()
        while True:                      # until the bridge has published all it received, and it stops growing
            m = bridge_metrics()
            got = m["syswatch_bridge_published_events_total"] - before["syswatch_bridge_published_events_total"]
            if got != last:
                last, still = got, time.monotonic()
            elif m["syswatch_bridge_queued_messages"] == 0 and time.monotonic() - still > 3:
                break
            time.sleep(0.05)
        wall = still - start
        st = collector_status()
        status_sock.close(0)
        ctx.term()
        cpu = {name: round((cpu_seconds(p.pid) - cpu0[name]) / max(got, 1) * 1e6, 3)
               for name, p in (("collector", col), ("bridge", bridge), ("nats", srv.proc))}

        def delta(key: str) -> int:
            return int(m[key] - before[key])
        return {"events": int(got), "seconds": round(wall, 2), "dd_seconds": round(dd_done - start, 2),
                "events_per_s": round(got / wall), "cpu_us_per_event": cpu,
                "collector_events": st["events_total"] - first["events_total"],
                "collector_lost": st["lost_total"] - first["lost_total"],
                "collector_dropped": st["dropped_total"] - first["dropped_total"],
                "bridge_received": delta("syswatch_bridge_received_events_total"),
                "bridge_not_received": delta("syswatch_bridge_events_not_received"),
                "bridge_unpublished": delta("syswatch_bridge_unpublished_events_total")}
    finally:
        for p in (bridge, col):
            if p is not None and p.poll() is None:
                p.terminate()
                p.wait(15)
        srv.stop()


def stage_api_zeromq(tmp: Path, messages: int) -> dict:
    """The same messages into syswatch-api over ZeroMQ (--collector): the yardstick for the NATS ingest."""
    import urllib.request

    import zmq

    from syswatch.shared import zmqsock
    ctx = zmq.Context()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = zmqsock.make_publisher(ctx, endpoint, sndhwm=1_000_000)
    port = free_port()
    api = subprocess.Popen([sys.executable, "-m", "api.server", "--port", str(port), "--db",
                            str(tmp / "ips.sqlite3"), "--collector", endpoint], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def received() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
                return json.loads(r.read())["events_received"]
        except OSError:
            return -1
    try:
        data = batch_payload(EVENTS_PER_MESSAGE)
        deadline = time.monotonic() + 30
        while received() < 1:                  # subscribed (ZeroMQ's slow joiner): one message arrived
            pub.send_multipart([b"syscall.write", batch_payload(1)])
            time.sleep(0.1)
            assert api.poll() is None and time.monotonic() < deadline, "the API did not start"
        base, cpu0 = received(), cpu_seconds(api.pid)
        start = time.monotonic()
        for _ in range(messages):
            pub.send_multipart([b"syscall.write", data])
        events = messages * EVENTS_PER_MESSAGE
        while received() < base + events:
            assert api.poll() is None and time.monotonic() - start < 600, "the API stopped"
            time.sleep(0.05)
        wall = time.monotonic() - start
        return {"events": events, "seconds": round(wall, 2), "events_per_s": round(events / wall),
                "api_cpu_us_per_event": round((cpu_seconds(api.pid) - cpu0) / events * 1e6, 3)}
    finally:
        if api.poll() is None:
            api.terminate()
            api.wait(15)
        pub.close(0)
        ctx.term()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.nats", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    ap.add_argument("--json", type=Path, default=None, help="write the results here too")
    ap.add_argument("--docs", type=Path, default=None,
                    help="splice the report into this markdown file (e.g. docs/BENCHMARKS.md, section bench:nats)")
    ap.add_argument("--only", default="publishers,bridge,api,collector",
                    help="comma-separated stages (default: all; collector needs root and bpftrace)")
    ap.add_argument("--publisher", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.publisher:
        url, host, messages, per = args.publisher
        publisher_main(url, host, int(messages), int(per))
        return 0
    messages = 200 if args.quick else 2000
    results = {"date": time.strftime("%Y-%m-%d"), "events_per_message": EVENTS_PER_MESSAGE, "publishers": []}
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="syswatch-bench-nats-") as tmp:
        # collector-sized batches, then small ones (a node at ~100 calls/s sends one or two events a message)
        for n, per in ((1, EVENTS_PER_MESSAGE), (4, EVENTS_PER_MESSAGE), (4, 5)) if "publishers" in only else ():
            d = Path(tmp) / f"pub{n}-{per}"
            d.mkdir()
            count = messages // n if per == EVENTS_PER_MESSAGE else 20 * messages // n
            results["publishers"].append(stage_publishers(d, n, count, per))
        if only & {"bridge", "api"}:
            d = Path(tmp) / "bridge"
            d.mkdir()
            results["bridge"], results["api"] = stage_bridge_and_api(d, messages, "api" in only)
        if "api" in only:
            d = Path(tmp) / "api-zeromq"
            d.mkdir()
            results["api_zeromq"] = stage_api_zeromq(d, messages)
        if "collector" in only and os.geteuid() == 0 and shutil.which("bpftrace"):
            d = Path(tmp) / "collector"
            d.mkdir()
            results["collector"] = stage_collector(d, 100_000 if args.quick else 500_000)
    text = report(results)
    print(text)
    if args.docs:
        from bench.report import splice
        splice(args.docs, "nats", "## NATS JetStream\n\n`python3 -m bench.nats` (generated; DEPLOY.md reads "
                                  "its numbers for the 1,000-node estimate)\n\n" + text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def report(r: dict) -> str:
    lines = [f"Run of {r['date']} on this machine: Debian's nats-server, JetStream file storage, every publish "
             "acknowledged (256 in flight); the bridge and API stages send messages of "
             f"{r['events_per_message']} events.", "",
             "| stage | events | events/s | messages/s | MB/s | CPU µs/event |", "|---|---:|---:|---:|---:|---|"]
    for p in r["publishers"]:
        lines.append(f"| {p['publishers']} synthetic publisher(s), {p['events_per_message']} events/message -> "
                     f"nats-server | {p['events']:,} | {p['events_per_s']:,} | {p['messages_per_s']:,} | "
                     f"{p['mb_per_s']} | "
                     f"nats-server {p['nats_cpu_us_per_event']}, publishers {p['publisher_cpu_us_per_event']} |")
    b, a = r.get("bridge"), r.get("api")
    if b:
        lines.append(f"| ZeroMQ -> syswatch-nats-bridge -> nats-server | {b['events']:,} | {b['events_per_s']:,} | | | "
                     f"bridge {b['bridge_cpu_us_per_event']} |")
    if a:
        lines.append(f"| nats-server -> syswatch-api --nats (backlog) | {a['events']:,} | {a['events_per_s']:,} | | | "
                     f"API {a['api_cpu_us_per_event']} |")
    z = r.get("api_zeromq")
    if z:
        lines.append(f"| the same messages -> syswatch-api --collector (ZeroMQ, the yardstick) | {z['events']:,} | "
                     f"{z['events_per_s']:,} | | | API {z['api_cpu_us_per_event']} |")
    c = r.get("collector")
    if c:
        cpu = c["cpu_us_per_event"]
        lines.append(f"| real collector (dd bs=1) -> bridge -> nats-server | {c['events']:,} | "
                     f"{c['events_per_s']:,} | | | "
                     f"collector {cpu['collector']}, bridge {cpu['bridge']}, nats-server {cpu['nats']} |")
        lines += ["", f"Real collector stage: the collector read {c['collector_events']:,} events (bpftrace lost "
                      f"{c['collector_lost']:,}, dropped {c['collector_dropped']:,}); the bridge received "
                      f"{c['bridge_received']:,}, did not receive {c['bridge_not_received']:,} (ZeroMQ, from the "
                      f"collector's status), published {c['events']:,}, could not publish {c['bridge_unpublished']:,}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
