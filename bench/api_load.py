"""API load: requests/s and latency per endpoint at 1 and 16 clients, and the API
subscriber's sustained events/s.

The load generator is wrk (Debian package ``wrk``; a Lua script makes each POST /add_ips
body unique) when it is installed, else a small threaded keep-alive client of our own
(reported as such: on 2 vCPUs a Python client competes with the server for CPU, so its
numbers are a lower bound). Everything runs on loopback against an API on a free port
with its own temporary database.

The subscriber figure: a ZeroMQ PUB of our own (bound on a free port, which the API is
told is the collector) sends synthetic ``syscall.*`` batches built with
shared.protocol.encode_event_batch; the API's ``/stats`` ``events_received`` says how many
it took in, and the time until it has taken in all of them gives its processing rate.
"""
from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import zmq

from bench import api_cost, stats
from bench.plan import Plan
from harness import ROOT, procs
from harness.procs import free_port
from syswatch.shared import protocol
from syswatch.shared.zmqsock import make_publisher

ENDPOINTS = ("add_ips", "print_all_ips", "stats")
CONCURRENCY = (1, 16)


class BenchApi:
    """``python3 -m api.server`` on a free port with a temporary database."""

    def __init__(self, collector: str, extra: list[str] | None = None):
        self.port = free_port()
        self.collector = collector
        self.dir = Path(tempfile.mkdtemp(prefix="syswatch-bench-api-"))
        self.log = self.dir / "api.log"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> "BenchApi":
        argv = [sys.executable, "-m", "api.server", "--port", str(self.port),
                "--collector", self.collector, "--db", str(self.dir / "ips.sqlite3"), *self.extra]
        env = {k: v for k, v in os.environ.items() if k != "SYSWATCH_TOKEN"}
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = self.request("GET", "/healthz")
                if status == 200:
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the API did not answer /healthz: {self.log_tail()}")
            time.sleep(0.1)

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stats(self) -> dict:
        status, body = self.request("GET", "/stats")
        if status != 200:
            raise RuntimeError(f"GET /stats answered {status}: {body}")
        return body

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc:
            procs.stop(self.proc, timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# --- load generators ------------------------------------------------------------------------------
WRK_LUA = r"""
-- bench/api_load.py: one request kind per run; add_ips bodies are unique per request.
local kind = os.getenv("SYSWATCH_BENCH_KIND")
local base = tonumber(os.getenv("SYSWATCH_BENCH_BASE"))
local threads, next_id = {}, 0
function setup(thread)
  thread:set("tid", next_id); next_id = next_id + 1; table.insert(threads, thread)
end
local n = 0
local hdr = {["Content-Type"] = "application/json"}
function request()
  if kind == "add_ips" then
    n = n + 1
    return wrk.format("POST", "/add_ips", hdr, '{"add_ips":[' .. (base + tid * 10000000 + n) .. ']}')
  elseif kind == "print_all_ips" then
    return wrk.format("POST", "/print_all_ips", hdr, '{"print_all_ips":true}')
  else
    return wrk.format("GET", "/stats")
  end
end
function done(summary, latency, requests)
  io.write(string.format('SYSWATCH {"requests":%d,"duration_us":%d,"non2xx":%d,"errors":%d,' ..
    '"p50_us":%d,"p99_us":%d}\n', summary.requests, summary.duration, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def wrk_load(port: int, kind: str, clients: int, seconds: float, base: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA)
    try:
        env = dict(os.environ, SYSWATCH_BENCH_KIND=kind, SYSWATCH_BENCH_BASE=str(base))
        out = subprocess.run(["wrk", "-t", str(min(clients, 2)), "-c", str(clients),
                              "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", f.name,
                              f"http://127.0.0.1:{port}/"], env=env, capture_output=True, text=True,
                             timeout=seconds + 60)
    finally:
        os.unlink(f.name)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("SYSWATCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {out.returncode}): {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line.split(" ", 1)[1])
    secs = r["duration_us"] / 1e6
    return {"requests": r["requests"], "rps": r["requests"] / secs, "p50_ms": r["p50_us"] / 1000,
            "p99_ms": r["p99_us"] / 1000, "non2xx": r["non2xx"], "errors": r["errors"]}


def python_load(port: int, kind: str, clients: int, seconds: float, base: int) -> dict:
    """Fallback: ``clients`` threads, each a keep-alive connection sending requests back to back."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    bad = [0] * clients
    start_evt = threading.Event()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        n = 0
        start_evt.wait()
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            n += 1
            if kind == "add_ips":
                method, path, body = "POST", "/add_ips", b'{"add_ips":[%d]}' % (base + i * 10_000_000 + n)
            elif kind == "print_all_ips":
                method, path, body = "POST", "/print_all_ips", b'{"print_all_ips":true}'
            else:
                method, path, body = "GET", "/stats", None
            t0 = time.perf_counter()
            try:
                conn.request(method, path, body=body,
                             headers={"Content-Type": "application/json"} if body else {})
                resp = conn.getresponse()
                resp.read()
                if resp.status // 100 != 2:
                    bad[i] += 1
            except OSError:
                bad[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            lat[i].append((time.perf_counter() - t0) * 1000)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    t0 = time.perf_counter()
    start_evt.set()
    for t in threads:
        t.join()
    secs = time.perf_counter() - t0
    all_lat = [x for xs in lat for x in xs]
    return {"requests": len(all_lat), "rps": len(all_lat) / secs, "p50_ms": stats.percentile(all_lat, 50),
            "p99_ms": stats.percentile(all_lat, 99), "non2xx": sum(bad), "errors": 0}


def loader_name() -> str:
    return "wrk" if shutil.which("wrk") else "python-threads"


# --- the API subscriber's sustained rate ------------------------------------------------------------
def _batches(n_pids: int = 50, per_batch: int = 256) -> list[list[bytes]]:
    host = protocol.json_string("bench")
    out = []
    for syscall in protocol.DEFAULT_SYSCALLS:
        events = [json.dumps({"ts_ns": time.time_ns(), "pid": 100_000 + i % n_pids, "tid": 100_000 + i % n_pids,
                              "uid": 0, "comm": f"bench{i % n_pids}", "syscall": syscall, "fd": 1,
                              "count": 100 + i, "ret": 100 + i, "lat_ns": 1000 + i, "cgroup_id": 1,
                              "container_id": "", "container_name": ""},
                             separators=(",", ":")).encode() for i in range(per_batch)]
        out.append(protocol.encode_event_batch(protocol.topic_for(syscall), host, events))
    return out


def subscriber_rate(api: BenchApi, pub: zmq.Socket, rate: int, seconds: float) -> dict:
    """Offer ``rate`` events/s for ``seconds``; how fast the API took them in."""
    batches, per_batch = _batches(), 256
    before = api.stats()["events_received"]
    total_msgs = int(rate * seconds / per_batch)
    offered = total_msgs * per_batch
    period = per_batch / rate
    t0 = time.perf_counter()
    sent = 0
    for i in range(total_msgs):
        due = t0 + i * period
        delay = due - time.perf_counter()
        if delay > 0.001:
            time.sleep(delay)
        try:
            pub.send_multipart(batches[i & 1], zmq.NOBLOCK)
            sent += per_batch
        except zmq.Again:
            pass
    send_s = time.perf_counter() - t0
    last, last_change = before, time.perf_counter()
    while True:  # until the API has everything, or makes no progress for 2 s
        got = api.stats()["events_received"]
        now = time.perf_counter()
        if got != last:
            last, last_change = got, now
        if got - before >= sent or now - last_change > 2:
            break
        time.sleep(0.05)
    received = last - before
    took = (last_change if received < sent else now) - t0
    return {"offered_rate": rate, "offered": offered, "sent": sent, "received": received,
            "send_s": send_s, "seconds": took, "rate": received / took if took else None}


def run(plan: Plan, log: Callable[[str], None]) -> dict:
    load = wrk_load if loader_name() == "wrk" else python_load
    ctx = zmq.Context.instance()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = make_publisher(ctx, endpoint, sndhwm=100_000)
    rows = []
    try:
        with BenchApi(endpoint) as api:
            base = 1
            for kind in ENDPOINTS:
                if kind == "print_all_ips":  # a list of plan.api_ips addresses
                    time.sleep(1)  # requests wrk left queued at its deadline are still being answered
                    api.request("POST", "/clear_ip_list", {"clear_ip_list": True})
                    for lo in range(0, plan.api_ips, 5000):
                        chunk = list(range(lo + 1, min(plan.api_ips, lo + 5000) + 1))
                        status, body = api.request("POST", "/add_ips", {"add_ips": chunk})
                        if status != 200:
                            raise RuntimeError(f"filling the IP list failed: {status} {body}")
                for clients in CONCURRENCY:
                    if kind == "add_ips":
                        time.sleep(0.5)
                        api.request("POST", "/clear_ip_list", {"clear_ip_list": True})
                    r = load(api.port, kind, clients, plan.api_seconds, base)
                    base += 100_000_000
                    r.update(endpoint=kind, clients=clients)
                    if kind == "print_all_ips":
                        _, body = api.request("POST", "/print_all_ips", {"print_all_ips": True})
                        r["list_size"] = body["total_ips"]
                    rows.append(r)
                    log(f"api {kind:14} {clients:2} clients: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:.2f} ms"
                        f"  p99 {r['p99_ms']:.2f} ms  non-2xx {r['non2xx']}")
            time.sleep(0.3)  # let the SUB connection settle before offering events
            sub = subscriber_rate(api, pub, plan.api_sub_rate, plan.api_sub_s)
            log(f"api subscriber: offered {sub['offered_rate']}/s, took in {sub['received']}/{sub['sent']} "
                f"at {sub['rate']:.0f} events/s")
    finally:
        pub.close(0)
    cost = api_cost.run(repeat=plan.rounds + 2)
    log("api cost: " + ", ".join(f"{r['what']} {r['ratio']:.2f}x" for r in cost["ingest"]["rows"][1:]))
    return {"loader": loader_name(), "seconds": plan.api_seconds, "rows": rows, "subscriber": sub, "cost": cost}
