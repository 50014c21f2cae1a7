"""The collector's own Prometheus endpoint (``--metrics HOST:PORT``, off by default, loopback unless told).

The loop publishes a snapshot (a new dict, once a second with ``status``); the HTTP thread
(shared/metricsserver.py) only reads the latest one, so a scrape never touches the ZeroMQ socket, the
parser or bpftrace's pipes, and never waits for the loop. Prometheus then scrapes every node directly:
node health no longer depends on an API being up (docs/DEPLOY.md, "Prometheus").

Families (``host`` label on each, so one query answers per node):
  syswatch_collector_events_total, _lost_total, _dropped_total, _malformed_total, _excluded_total,
  _announces_refused_total, _curve_refused_total (with CurveZMQ)
                               the counters of the status message (the names the API uses for them)
  syswatch_collector_syscall_calls_total{syscall}       (events and counts mode)
  syswatch_collector_syscall_bytes_total / _errors_total{syscall}   (counts mode: the rows carry them)
  syswatch_collector_stale_cpus     CPUs whose loss count stopped updating (bpftrace 0.17)
  syswatch_collector_info{version, bpftrace, probe, mode, output, overload}   1
  process_* (the collector) and syswatch_bpftrace_process_* (its bpftrace child): CPU, memory, fds
"""
from __future__ import annotations

from typing import Callable

# The names the API gives the same counters from the status message (api/metrics.py COLLECTOR_STATUS),
# so one query reads either job.
COUNTERS = (
    ("events_total", "events", "Events the collector read from bpftrace (published or dropped)."),
    ("lost_total", "lost", "Events bpftrace could not deliver (its buffer overflowed)."),
    ("dropped_total", "dropped", "Events the collector could not publish."),
    ("malformed_total", "malformed", "bpftrace lines the collector could not parse."),
    ("excluded_events", "excluded", "Events left out: other collectors' and verified subscribers' ZeroMQ "
                                     "signalling (the collector's own are not traced)."),
)
# Counters the status carries only when they apply (the API's COLLECTOR_STATUS_OPTIONAL).
OPTIONAL_COUNTERS = (
    ("announces_refused_total", "announces_refused", "Subscriber announces the collector could not verify."),
    ("curve_refused_total", "curve_refused", "CurveZMQ handshakes refused: unknown or missing key."),
)
SYSCALL_COLUMNS = (("calls", "Calls traced, per syscall."),
                   ("bytes", "Bytes moved (positive returns), per syscall (counts mode)."),
                   ("errors", "Calls that returned an error, per syscall (counts mode)."))


def registry(snapshot: Callable[[], dict | None], bpftrace_pid: Callable[[], int | None]):
    """A CollectorRegistry reading ``snapshot()`` at each scrape (None before the first one)."""
    from prometheus_client import CollectorRegistry, ProcessCollector
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

    from syswatch import __version__

    class Snapshot:
        def collect(self):
            snap = snapshot()
            if snap is None:
                return
            host = snap["host"]
            for key, name, text in COUNTERS + OPTIONAL_COUNTERS:
                if key in snap:
                    m = CounterMetricFamily(f"syswatch_collector_{name}", text, labels=["host"])
                    m.add_metric([host], snap[key])
                    yield m
            for column, text in SYSCALL_COLUMNS:
                rows = [(sc, row[column]) for sc, row in snap["per_syscall"].items() if row.get(column) is not None]
                if rows:
                    m = CounterMetricFamily(f"syswatch_collector_syscall_{column}", text, labels=["host", "syscall"])
                    for sc, value in rows:
                        m.add_metric([host, sc], value)
                    yield m
            g = GaugeMetricFamily("syswatch_collector_stale_cpus",
                                  "CPUs whose bpftrace loss count stopped updating (lost_total leaves them out).",
                                  labels=["host"])
            g.add_metric([host], len(snap["stale_cpus"]))
            yield g
            info = InfoMetricFamily("syswatch_collector", "What this collector runs.",
                                    labels=["host", "version", "bpftrace", "probe", "mode", "output", "overload"])
            info.add_metric([host, __version__, snap["bpftrace"], snap["probe"], snap["mode"], snap["output"],
                             snap["overload"]], {})
            yield info

    reg = CollectorRegistry()
    reg.register(Snapshot())
    ProcessCollector(registry=reg)
    ProcessCollector(namespace="syswatch_bpftrace", pid=lambda: str(bpftrace_pid() or 0), registry=reg)
    return reg
