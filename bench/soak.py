"""Soak: the collector and the API for a long time under load and abuse, both restarted on a
schedule; what went in is accounted for and the processes' memory must stay flat.

At once, for ``--duration`` seconds:
- load: one process writing ``--rate`` times a second (every write identifiable) and a bursty one
  (``--burst`` writes as fast as it can every ``--burst-every`` s);
- a subscriber running as uid nobody that connects, announces itself and reads a file once a
  second: every read must arrive (its ZeroMQ signalling must not: it is left out);
- hostile stream peers (bench/soak_abuse.py): a publisher the API subscribes to sending the
  malformed and oversized messages the tests know, peers of the collector sending junk and
  oversized subscriptions and announce floods;
- HTTP abuse of the API: normal traffic, bad bodies, slow clients, SSE streams opened and closed;
- the collector (with the systemd unit's capability set) restarted every ``--collector-every`` s,
  the API every ``--api-every`` s.

Judged (exit status 0 only if all hold): for every workload event made while a collector ran,
made = delivered + counted losses (lost_total, dropped_total); every read of the announced
subscriber arrived; no endpoint answered invalid JSON; after its warm-up, each process instance's
RSS floor (the lowest sample of the last third against that of the first third) rises by at most
``--rss-flat-mib``, and its fds and threads do not grow; nothing it started
outlives it. Timings are never judged.

    sudo python3 -m bench.soak --duration 120 --collector-every 45 --api-every 70   # the CI size
    sudo python3 -m bench.soak --duration 3600 --docs docs/BENCHMARKS.md           # the hour
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import zmq

from bench import machine, report
from bench.soak_abuse import BadBodies, HostilePeers, HostilePublisher, SlowClients, SseChurn, Traffic
from bench.svgplot import line_chart
from harness import ROOT, nobody, procs, workloads
from harness.api import ApiProcess
from harness.collector import CollectorProcess
from harness.unit import collector_capabilities_from_unit, setpriv
from syswatch.shared import protocol
from syswatch.shared.zmqsock import make_subscriber

READ_BASE = 910_000                 # the announced subscriber's reads ask READ_BASE + epoch * 10_000 + i bytes
BURST_COUNT = 650_001               # every write of the bursty process asks exactly this many bytes
DRAIN_S = 4.0                       # an epoch's load stops this long before the collector restarts

BURSTER = r"""
import os, sys, time
every, size, seconds, out = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
buf = bytes(int(sys.argv[5]))
fd = os.open("/dev/null", os.O_WRONLY)
made, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    for _ in range(size):
        os.write(fd, buf)
    made += size
    time.sleep(max(0.0, min(every, end - time.monotonic())))
open(out, "w").write(str(made))
"""


class Collector:
    """The collector at one endpoint through restarts: a harness.collector.CollectorProcess per life,
    with the unit's capability set unless told otherwise."""

    def __init__(self, endpoint: str, work: Path, caps: bool):
        self.endpoint, self.work, self.caps = endpoint, work, caps
        self.current: CollectorProcess | None = None
        self.lives = 0
        self.started_ns = 0
        self.bpftrace_pid: int | None = None
        self.orphans: list[int] = []

    @property
    def pid(self) -> int | None:
        return self.current.proc.pid if self.current else None

    def start(self) -> None:
        self.lives += 1
        tmp = self.work / f"collector-{self.lives}"
        tmp.mkdir()
        self.started_ns = time.time_ns()
        self.current = CollectorProcess(tmp, "--echo-rate", "0", bind=self.endpoint,
                                        wrap=setpriv(collector_capabilities_from_unit()) if self.caps else None)
        self.bpftrace_pid = self.current.bpftrace_pid()

    def stop(self) -> int:
        """SIGTERM; its exit status (0 expected). bpftrace must go with it."""
        if self.current is None or self.current.proc.poll() is not None:
            return self.current.proc.returncode if self.current else 0
        code = procs.stop(self.current.proc, signal.SIGTERM, timeout=15)
        if self.bpftrace_pid and procs.comm_of(self.bpftrace_pid) == "bpftrace":
            self.orphans.append(self.bpftrace_pid)
            procs.terminate_pid(self.bpftrace_pid)
        return code

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.current.stderr().splitlines()[-n:]) if self.current else ""


class Watcher(threading.Thread):
    """The soak's own subscriber (announced, so its ZeroMQ signalling stays out of the stream):
    counts the events of the watched processes and keeps the latest status."""

    def __init__(self, endpoint: str):
        super().__init__(daemon=True, name="soak-watcher")
        self.endpoint = endpoint
        self.halt = threading.Event()
        self.lock = threading.Lock()
        self.watch: dict[int, str] = {}          # pid -> role (writer, burster, reader)
        self.counts: dict[int, int] = {}         # pid -> matching events
        self.reads: set[int] = set()             # byte counts of the reader's reads seen
        self.reader_signalling = 0               # the reader's ZeroMQ eventfd calls published once known
        self._known_fds: dict[tuple[int, int], int] = {}   # (pid, fd) -> ts_ns of the first status listing it
        self.status: dict | None = None
        self.malformed = 0
        self.events_received = 0
        self.error: BaseException | None = None

    def watching(self, pids: dict[int, str]) -> None:
        with self.lock:
            self.watch = dict(pids)
            self.counts = {p: 0 for p in pids}

    def fresh_status(self, after_ns: int, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status
            if st and st["ts_ns"] > after_ns:
                return st
            time.sleep(0.05)
        raise RuntimeError(f"no status from the collector within {timeout:.0f} s")

    def run(self) -> None:
        ctx = zmq.Context()
        events = make_subscriber(ctx, self.endpoint, (protocol.EVENT_PREFIX,))
        status = make_subscriber(ctx, self.endpoint, (protocol.TOPIC_STATUS,))
        poller = zmq.Poller()
        poller.register(events, zmq.POLLIN)
        poller.register(status, zmq.POLLIN)
        try:
            while not self.halt.is_set():
                for sock, _ in poller.poll(100):
                    while True:
                        try:
                            frames = sock.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(frames)
        except BaseException as exc:            # noqa: BLE001 - reported by the main thread
            self.error = exc
        finally:
            events.close(0)
            status.close(0)
            ctx.term()

    def _handle(self, frames: list[bytes]) -> None:
        try:
            msg = protocol.decode(frames)
        except protocol.ProtocolError:
            self.malformed += 1
            return
        if msg.topic == protocol.TOPIC_STATUS:
            if self.status and msg.payload["uptime_s"] < self.status["uptime_s"]:
                self._known_fds = {}             # a new collector: it learns the descriptors anew
            self.status = msg.payload
            for e in msg.payload.get("excluded", []):
                for w in e["what"] if e["kind"] == "subscriber" else ():
                    if w.startswith("eventfd:"):
                        self._known_fds.setdefault((e["pid"], int(w[8:])), msg.payload["ts_ns"])
            return
        self.events_received += len(msg.events)
        with self.lock:
            watch = self.watch
            known = self._known_fds
            for ev in msg.events:
                role = watch.get(ev["pid"])
                if role is None:
                    continue
                if role == "writer" and workloads.is_writer_event(ev):
                    self.counts[ev["pid"]] += 1
                elif role == "burster" and ev["syscall"] == "write" and ev["count"] == BURST_COUNT:
                    self.counts[ev["pid"]] += 1
                elif role == "reader":
                    if ev["syscall"] == "read" and ev["count"] >= READ_BASE:
                        self.reads.add(ev["count"])
                    elif ev["count"] == 8 and ev["ts_ns"] > known.get((ev["pid"], ev["fd"]), 2**64):
                        self.reader_signalling += 1     # made after the collector said it leaves it out

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class Sampler(threading.Thread):
    """Every ``period`` s: RSS, open fds and threads of each role's current process."""

    def __init__(self, period: float, roles):
        super().__init__(daemon=True, name="soak-sampler")
        self.period, self.roles = period, roles       # roles() -> {role: pid or None}
        self.halt = threading.Event()
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, str, int, int, int, int]] = []   # t, role, pid, rss KiB, fds, threads

    def run(self) -> None:
        while not self.halt.wait(self.period):
            t = round(time.monotonic() - self.t0, 1)
            for role, pid in self.roles().items():
                if not pid:
                    continue
                rss = procs.rss_kib(pid, gone=0)
                if rss:
                    self.samples.append((t, role, pid, rss, _count(f"/proc/{pid}/fd"), _count(f"/proc/{pid}/task")))

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def _count(path: str) -> int:
    try:
        return len(os.listdir(path))
    except OSError:
        return 0


def soak(args, log) -> dict:
    work = Path(tempfile.mkdtemp(prefix="syswatch-soak-"))
    os.chmod(work, 0o755)                                       # the nobody subscriber reads a file here
    endpoint = f"tcp://127.0.0.1:{procs.free_port()}"
    hostile_endpoint = f"tcp://127.0.0.1:{procs.free_port()}"
    readme = work / "readme"
    readme.write_bytes(os.urandom(4096))
    os.chmod(readme, 0o644)
    result: dict = {"args": {k: v for k, v in vars(args).items() if k not in ("json", "docs", "figure")},
                    "errors": [], "epochs": [], "restarts": {"collector": 0, "api": 0}}
    coll = Collector(endpoint, work, caps=not args.full_root)
    api = ApiProcess(work / "ips.sqlite3", "--collector", hostile_endpoint, collector=endpoint)
    api_down = threading.Event()
    coll_down = threading.Event()
    hostile = HostilePublisher(hostile_endpoint, period=1.0 / args.hostile_rate)
    watcher = Watcher(endpoint)
    reader: nobody.Nobody | None = None
    workers = []
    sampler = None
    own_threads = threading.active_count()
    try:
        hostile.start()
        coll.start()
        api.start()
        watcher.start()
        reader = nobody.Nobody(endpoint, "self")
        watcher.fresh_status(time.time_ns())
        workers = [Traffic(api.port, 1.0 / args.api_rps, api_down.is_set),
                   BadBodies(api.port, 0.5, api_down.is_set),
                   SlowClients(api.port, 5.0, api_down.is_set),
                   SseChurn(api.port, 2.0, api_down.is_set),
                   HostilePeers(endpoint, 1.0, coll_down.is_set)]
        for w in workers:
            w.start()
        roles = lambda: {"collector": coll.pid, "bpftrace": coll.bpftrace_pid,  # noqa: E731
                         "api": api.proc.pid if api.proc else None, "subscriber (nobody)": reader.pid}
        sampler = Sampler(args.sample_every, roles)
        sampler.start()
        t0 = time.monotonic()
        next_api = t0 + args.api_every
        epoch = 0
        restarts: list[tuple[float, str]] = []
        while True:
            now = time.monotonic()
            left = args.duration - (now - t0)
            if left < DRAIN_S + 5:
                break
            length = min(args.collector_every, left)
            if args.duration - (now - t0 + length) < DRAIN_S + 10:
                length = left                    # too little left for another epoch: take it all
            next_api = run_epoch(epoch, length, args, coll, api, api_down, watcher, reader, readme, work, result,
                                 log, next_api, restarts, t0)
            epoch += 1
            if args.duration - (time.monotonic() - t0) >= DRAIN_S + 10:
                coll_down.set()
                code = coll.stop()
                if code != 0:
                    result["errors"].append(f"the collector exited with status {code} on SIGTERM")
                coll.start()
                coll_down.clear()
                result["restarts"]["collector"] += 1
                restarts.append((time.monotonic() - sampler.t0, "collector restart"))
                log(f"collector restarted (pid {coll.pid})")
        result["restart_marks"] = restarts
    except Exception as exc:                     # noqa: BLE001 - the run fails with the reason
        result["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"soak failed: {exc}\n{coll.tail()}")
    finally:
        for w in workers:
            w.stop()
        if sampler:
            sampler.stop()
        if reader:
            reader.close()
        watcher.stop()
        api_code = api.stop()
        coll_code = coll.stop()
        hostile.stop()
    result["exit_status"] = {"collector": coll_code, "api": api_code}
    judge(result, workers, watcher, sampler, coll, args, own_threads, [reader.pid] if reader else [])
    result["collector_log_tail"] = coll.tail(15)
    subprocess.run(["rm", "-rf", str(work)], check=False)
    return result


def run_epoch(epoch, length, args, coll, api, api_down, watcher, reader, readme, work, result, log,
              next_api, restarts, t0) -> float:
    """One collector's life: load for ``length - DRAIN_S`` s, then the accounting of what it made."""
    start = time.monotonic()
    st0 = watcher.fresh_status(coll.started_ns, timeout=30)
    st0 = watcher.fresh_status(time.time_ns())
    seconds = max(1.0, length - DRAIN_S - (time.monotonic() - start))
    out = work / f"writer-{epoch}"
    bout = work / f"burster-{epoch}"
    writer = procs.Gated(workloads.writer_argv(args.rate, seconds, out), cwd=ROOT)
    burster = procs.Gated([sys.executable, "-c", BURSTER, str(args.burst_every), str(args.burst), str(seconds),
                           str(bout), str(BURST_COUNT)], cwd=ROOT)
    watcher.watching({writer.pid: "writer", burster.pid: "burster", reader.pid: "reader"})
    base = READ_BASE + epoch * 10_000
    n_reads = max(1, int(seconds) - 1)
    answer: list[str] = []
    reading = threading.Thread(target=lambda: answer.extend(reader.command(f"read {readme} {n_reads} {base} 1.0")),
                               daemon=True)
    try:
        writer.release()
        burster.release()
        reading.start()
        log(f"epoch {epoch}: {seconds:.0f} s of load ({args.rate}/s steady, {args.burst} every "
            f"{args.burst_every:g} s), {n_reads} reads by the nobody subscriber (pid {reader.pid})")
        while not (writer.poll() and burster.poll()):
            if time.monotonic() >= next_api:
                api_down.set()
                api.stop()
                api.start()
                procs.wait_for(lambda: _answers(api), 30, 0.1, "the restarted API to answer")
                api_down.clear()
                result["restarts"]["api"] += 1
                restarts.append((time.monotonic() - t0, "api restart"))
                next_api += args.api_every
                log(f"API restarted (pid {api.proc.pid})")
            time.sleep(0.2)
        writer.wait()
        burster.wait()
        reading.join(seconds + 30)
    finally:
        for gated in (writer, burster):       # an epoch that failed leaves no load running
            if not gated.poll():
                gated.proc.kill()
                gated.proc.wait()
    made = {"writer": len(workloads.read_send_times(out)), "burster": int(bout.read_text())}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:           # until the stream is drained (or quiet)
        seen = sum(watcher.counts.values())
        time.sleep(1.0)
        if sum(watcher.counts.values()) == seen:
            break
    st1 = settled(watcher, st0, sum(made.values()))
    lost = st1["lost_total"] - st0["lost_total"]
    dropped = st1["dropped_total"] - st0["dropped_total"]
    seen = {"writer": watcher.counts.get(writer.pid, 0), "burster": watcher.counts.get(burster.pid, 0)}
    want_reads = {base + i for i in range(n_reads)}
    missing_reads = len(want_reads - watcher.reads)
    ep = {"epoch": epoch, "seconds": round(seconds, 1), "made": made, "seen": seen, "lost": lost, "dropped": dropped,
          "reads": n_reads, "reads_missing": missing_reads, "reads_answered": bool(answer)}
    result["epochs"].append(ep)
    log(f"epoch {epoch}: made {made}, seen {seen}, lost {lost}, dropped {dropped}, reads missing {missing_reads}")
    return next_api


def _answers(api: ApiProcess) -> bool:
    try:
        return api.get("/healthz", timeout=2).status_code == 200
    except OSError:
        return False


def settled(watcher: Watcher, st0: dict, made: int, timeout: float = 15) -> dict:
    """The status once the counters account for the epoch (losses are reported up to ~2 s late)."""
    st = watcher.fresh_status(time.time_ns())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counted = sum(watcher.counts.values()) + st["lost_total"] - st0["lost_total"] \
            + st["dropped_total"] - st0["dropped_total"]
        if counted >= made:
            return st
        st = watcher.fresh_status(st["ts_ns"])
    return st


def judge(result: dict, workers, watcher: Watcher, sampler: Sampler | None, coll: Collector, args,
          own_threads: int, pids: list[int]) -> None:
    errors = result["errors"]
    totals = {"made": 0, "seen": 0, "lost": 0, "dropped": 0, "reads": 0, "reads_missing": 0}
    for ep in result["epochs"]:
        made, seen = sum(ep["made"].values()), sum(ep["seen"].values())
        for k in ("made", "seen"):
            totals[k] += sum(ep[k].values())
        for k in ("lost", "dropped", "reads", "reads_missing"):
            totals[k] += ep[k]
        if seen > made:
            errors.append(f"epoch {ep['epoch']}: {seen - made} events seen twice")
        if seen + ep["lost"] + ep["dropped"] < made:
            errors.append(f"epoch {ep['epoch']}: {made - seen} of {made} events neither delivered nor counted lost")
        if ep["reads_missing"]:
            errors.append(f"epoch {ep['epoch']}: {ep['reads_missing']} of {ep['reads']} reads of the announced "
                          "subscriber did not arrive")
    result["totals"] = totals
    if not result["epochs"]:
        errors.append("no epoch completed")
    if watcher.reader_signalling:
        errors.append(f"{watcher.reader_signalling} ZeroMQ signalling calls of the verified subscriber were published")
    if watcher.malformed:
        errors.append(f"the soak's subscriber received {watcher.malformed} malformed messages from the collector")
    http = {w.name: {"done": w.done, "errors": w.error_count, "first_errors": w.errors[:5],
                     "invalid_json": getattr(w, "invalid_json", 0)} for w in workers}
    result["http"] = http
    for name, h in http.items():
        if h["errors"]:
            errors.append(f"{name}: {h['errors']} errors, e.g. {h['first_errors'][:2]}")
    sse = next((w for w in workers if isinstance(w, SseChurn)), None)
    result["sse"] = {"streams": sse.streams, "lines": sse.lines} if sse else {}
    if coll.orphans:
        errors.append(f"bpftrace outlived its collector: {coll.orphans}")
    # memory, fds and threads per process instance, after its warm-up
    inst: dict[tuple[str, int], list] = {}
    for t, role, pid, rss, fds, threads in (sampler.samples if sampler else []):
        inst.setdefault((role, pid), []).append((t, rss, fds, threads))
    rows = []
    for (role, pid), s in inst.items():
        life = s[-1][0] - s[0][0]
        warm = s[0][0] + max(args.warmup, 0.2 * life)
        after = [x for x in s if x[0] >= warm] or s[-1:]
        rss = [x[1] for x in after]
        fds = [x[2] for x in after]
        thr = [x[3] for x in after]
        row = {"role": role, "pid": pid, "life_s": round(life), "samples": len(s),
               "rss_start_mib": round(s[0][1] / 1024, 1), "rss_min_mib": round(min(rss) / 1024, 1),
               "rss_max_mib": round(max(rss) / 1024, 1), "rss_end_mib": round(s[-1][1] / 1024, 1),
               "fds": [min(fds), max(fds)], "threads": [min(thr), max(thr)]}
        # A leak raises the floor; one large message in flight (up to the API's 8 MiB limit) only
        # a peak, which is given back (api/memory.py). So the floors are judged, the peaks shown.
        third = max(len(rss) // 3, 1)
        rise = min(rss[-third:]) - min(rss[:third])
        row["rss_floor_rise_mib"] = round(rise / 1024, 1)
        rows.append(row)
        if len(after) >= 6 and rise / 1024 > args.rss_flat_mib:
            errors.append(f"{role} {pid}: RSS floor rose {rise / 1024:.1f} MiB after warm-up (lowest of the "
                          f"first third {min(rss[:third]) / 1024:.1f}, of the last {min(rss[-third:]) / 1024:.1f})")
        if len(after) >= 3 and (fds[-1] - fds[0] > 32 or thr[-1] - thr[0] > 8):
            errors.append(f"{role} {pid}: fds {fds[0]} -> {fds[-1]}, threads {thr[0]} -> {thr[-1]} after warm-up")
    result["processes"] = rows
    result["samples"] = sampler.samples if sampler else []
    # nothing outlives the soak
    time.sleep(1.0)
    left = [p for p in [*pids, *[r["pid"] for r in rows]] if procs.comm_of(p)]
    if left:
        errors.append(f"processes still running after the soak: {left}")
    deadline = time.monotonic() + 10
    while threading.active_count() > own_threads and time.monotonic() < deadline:
        time.sleep(0.2)
    if threading.active_count() > own_threads:
        errors.append(f"threads left in the soak process: {[t.name for t in threading.enumerate()]}")
    result["ok"] = not errors


def render(r: dict, m: dict, figure: str | None) -> str:
    a, t = r["args"], r.get("totals", {})
    rows = [[p["role"], str(p["pid"]), str(p["life_s"]), f"{p['rss_start_mib']:.1f}", f"{p['rss_min_mib']:.1f}",
             f"{p['rss_max_mib']:.1f}", f"{p.get('rss_floor_rise_mib', 0.0):.1f}", f"{p['fds'][0]}-{p['fds'][1]}",
             f"{p['threads'][0]}-{p['threads'][1]}"] for p in r.get("processes", [])]
    http = r.get("http", {})
    lines = [
        "## Soak", "",
        f"{m['date']}, {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}: collector (events mode, "
        f"{'full root' if a['full_root'] else 'the unit capability set'}) and API for **{a['duration']:.0f} s**; "
        f"collector restarted every {a['collector_every']:.0f} s ({r['restarts']['collector']} times), API every "
        f"{a['api_every']:.0f} s ({r['restarts']['api']} times). Load: {a['rate']:,} writes/s steady plus "
        f"{a['burst']:,} writes as fast as possible every {a['burst_every']:g} s; a uid-nobody subscriber "
        f"announcing itself and reading a file every second; a hostile publisher feeding the API "
        f"{a['hostile_rate']:g} malformed messages/s; hostile peers of the collector (junk and oversized "
        f"subscriptions, announce floods); HTTP traffic, bad bodies, slow clients, SSE streams opened and closed.",
        "",
        f"- workload events made {t.get('made', 0):,}: delivered {t.get('seen', 0):,}, counted lost "
        f"{t.get('lost', 0):,}, dropped {t.get('dropped', 0):,} (host-wide counters)",
        f"- the announced subscriber's reads: {t.get('reads', 0):,} made, {t.get('reads_missing', 0)} missing",
        "- HTTP: " + ", ".join(f"{k.removeprefix('soak-')} {v['done']:,} ({v['errors']} errors, "
                                f"{v['invalid_json']} invalid JSON)" for k, v in http.items()),
        f"- SSE streams opened and closed: {r.get('sse', {}).get('streams', 0):,}, data lines parsed "
        f"{r.get('sse', {}).get('lines', 0):,}",
        f"- result: **{'OK' if r['ok'] else 'FAILED: ' + '; '.join(r['errors'])[:2000]}**", "",
    ]
    if figure:
        lines += [f"![RSS of each process over the soak]({figure})", ""]
    lines += report._table(["process", "pid", "lived s", "RSS start MiB", "min after warm-up", "max after warm-up",
                            "floor rise MiB", "fds", "threads"], rows)
    return "\n".join(lines)


def figure(r: dict) -> str:
    series: dict[str, list] = {}
    last: dict[str, int] = {}
    for t, role, pid, rss, _, _ in r.get("samples", []):
        s = series.setdefault(role, [])
        if last.get(role) not in (None, pid):
            s.append((t, None))                  # a restart: the line breaks
        last[role] = pid
        s.append((t, round(rss / 1024, 1)))
    return line_chart(series, "RSS of each process over the soak (dashed: restarts)", "seconds", "MiB",
                      marks=[tuple(x) for x in r.get("restart_marks", [])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m bench.soak", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=textwrap.dedent("""\
        examples:
          sudo python3 -m bench.soak --duration 120 --collector-every 45 --api-every 70   # CI size
          sudo python3 -m bench.soak --duration 3600 --docs docs/BENCHMARKS.md           # the hour
        """))
    ap.add_argument("--duration", type=float, default=3600, help="seconds (default: 3600)")
    ap.add_argument("--rate", type=int, default=5000, help="steady writes/s (default: 5000)")
    ap.add_argument("--burst", type=int, default=20000, help="writes per burst (default: 20000)")
    ap.add_argument("--burst-every", type=float, default=15, help="seconds between bursts (default: 15)")
    ap.add_argument("--api-rps", type=float, default=20, help="normal API requests/s (default: 20)")
    ap.add_argument("--hostile-rate", type=float, default=5, help="malformed messages/s to the API (default: 5)")
    ap.add_argument("--collector-every", type=float, default=600, help="collector restart period (default: 600)")
    ap.add_argument("--api-every", type=float, default=900, help="API restart period (default: 900)")
    ap.add_argument("--sample-every", type=float, default=5, help="seconds between RSS samples (default: 5)")
    ap.add_argument("--warmup", type=float, default=60, help="seconds of each process's life not judged "
                    "for flat memory (default: 60, at least a fifth of its life)")
    ap.add_argument("--rss-flat-mib", type=float, default=10,
                    help="allowed rise of the RSS floor after warm-up (default: 10)")
    ap.add_argument("--full-root", action="store_true", help="run the collector with every capability "
                    "(default: the systemd unit's CAP_SYS_ADMIN and CAP_IPC_LOCK only)")
    ap.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    ap.add_argument("--docs", type=Path, help="replace the soak section of this markdown file")
    ap.add_argument("--figure", type=Path, help="write the RSS curve as SVG here (with --docs: docs/img/soak-rss.svg)")
    args = ap.parse_args(argv)
    if min(args.duration, args.rate, args.api_rps, args.collector_every, args.api_every, args.sample_every) <= 0:
        ap.error("durations, periods and rates must be positive")
    machine.check_prerequisites()
    missing = nobody.available()
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 2

    def log(msg):
        print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    result = soak(args, log)
    fig = args.figure or (args.docs.parent / "img" / "soak-rss.svg" if args.docs else None)
    if fig:
        fig.parent.mkdir(parents=True, exist_ok=True)
        fig.write_text(figure(result))
    rel = os.path.relpath(fig, args.docs.parent) if fig and args.docs else (str(fig) if fig else None)
    text = render(result, machine.describe(), rel)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.docs:
        report.splice(args.docs, "soak", text)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
