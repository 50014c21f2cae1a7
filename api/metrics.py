"""GET /metrics with prometheus_client: one private registry per API, read at scrape time.

``StatsCollector`` turns the API's models into metric families when Prometheus scrapes: the
stream's StreamStats (``metrics_view``), the RequestStats of the access log, the IP list's size and
the open event streams. Nothing is incremented for metrics alone, so /stats, /metrics and the
dashboard can never disagree, and the event loop pays nothing for them. Only counters leave this
module: Prometheus computes rates itself (``rate(syswatch_events_total[1m])``).

Label sets are bounded by the models: ``host`` by MAX_HOSTS (api/aggregates.py, each name at most 255
characters, checked by shared/protocol.py), ``syscall`` by protocol.SYSCALLS, ``errno`` by the errno table
(shared/errnos.py, plus ``other`` and ``unknown``) and per (host, syscall) by MAX_ERRNOS (8) + 1 names
(api/hoststats.py), ``le`` by shared/latency.EXPORTED_EXPONENTS, ``route`` by the route table
(api/routes.py ROUTES, everything else is ``unmatched``), ``method`` by AccessLog.KNOWN_METHODS.

Per (host, syscall) a host traced: 3 counters (events, moved bytes, calls without a latency), the latency
histogram's 27 series (24 bounds + ``+Inf``, ``_sum``, ``_count``) and one ``syswatch_errors_total``
per errno seen (at most 9): 30 to 39 series.
"""
from __future__ import annotations

import platform

import zmq
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

import syswatch
from syswatch.api.aggregates import COUNTERS
from syswatch.api.history_recorder import COUNTERS as HISTORY_COUNTERS

CONTENT_TYPE = CONTENT_TYPE_LATEST

# (name without _total, help): the per-host, per-syscall counters, from each syscall's (row, histogram).
TRAFFIC = (
    ("syswatch_events", "Syscall events received from the collectors, by host and syscall.",
     lambda row, hist: row["calls"]),
    ("syswatch_moved_bytes", "Bytes the traced calls actually moved (sum of positive ret).",
     lambda row, hist: row["bytes"]),
    ("syswatch_call_latency_unmeasured", "Traced calls whose latency is not in syswatch_call_latency_seconds "
     "(not measured, or a counts-mode row without latency buckets).", lambda row, hist: hist.unmeasured),
)
LATENCY_HELP = ("Time spent in the traced calls (log2 buckets from 1.02 us to 8.6 s; a bound of 2^k ns counts "
                "the calls shorter than 2^k ns), by host and syscall.")
ERRORS_HELP = ("Traced calls that failed (ret < 0), by host, syscall and errno name (other: a number the errno "
               "table does not hold; unknown: a counts-mode row that gave no errno).")
# Counters of the collector's own status message, by host.
COLLECTOR_STATUS = (
    ("events_total", "Events the collector read from bpftrace (its last status)."),
    ("lost_total", "Events bpftrace could not deliver (collector status)."),
    ("dropped_total", "Events the collector could not publish (collector status)."),
    ("malformed_total", "bpftrace lines the collector could not parse (collector status)."),
)
# Optional counters of the status (a collector sends them when they apply): a host without one has no sample.
COLLECTOR_STATUS_OPTIONAL = (
    ("curve_refused_total", "CurveZMQ handshakes the collector refused: unknown or missing key (collector status)."),
    ("announces_refused_total", "Subscriber announces the collector could not verify (collector status)."),
)

# Counters of a NATS bridge's status (topic "bridge"), by host: the names its own /metrics uses.
BRIDGE_STATUS = (
    ("published_events", "Events in the messages JetStream acknowledged (the bridge's last status)."),
    ("published_messages", "Messages JetStream acknowledged (the bridge's last status)."),
    ("received_events", "Events in the collector's messages that reached the bridge."),
)


class StatsCollector(Collector):
    """The API's models as metric families, built anew at each scrape."""

    def __init__(self, stream, requests, iplist, hub, history=None):
        self.stream, self.requests, self.iplist, self.hub = stream, requests, iplist, hub
        self.history = history

    def collect(self):
        view = self.stream.metrics_view()
        yield from self._traffic(view["by_host"])
        yield from self._collectors(view["collectors"])
        for name, (kind, help_text) in COUNTERS.items():
            family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            yield family(f"syswatch_api_{name}", help_text, value=view["api"][name])
        yield GaugeMetricFamily("syswatch_api_event_streams", "Open /events/stream connections.",
                                value=self.hub.count())
        yield GaugeMetricFamily("syswatch_api_event_streams_max", "Event stream slots (--max-streams).",
                                value=self.hub.max_clients)
        yield GaugeMetricFamily("syswatch_ip_list_size", "Addresses in the IP list.", value=self.iplist.count())
        yield from self._http()
        if self.history is not None:
            yield from self._history(self.history.status())
        build = InfoMetricFamily("syswatch_build", "The running API: its version and what it runs on.")
        build.add_metric([], {"version": syswatch.__version__, "python": platform.python_version(),
                              "pyzmq": zmq.pyzmq_version(), "libzmq": zmq.zmq_version()})
        yield build

    @staticmethod
    def _traffic(by_host: dict):
        """``by_host``: {host: {syscall: (row dict, Histogram, errnos)}} (StreamStats.metrics_view)."""
        hosts = sorted(by_host.items())
        for name, help_text, value in TRAFFIC:
            family = CounterMetricFamily(name, help_text, labels=["host", "syscall"])
            for host, syscalls in hosts:
                for syscall, (row, hist, _) in syscalls.items():
                    family.add_metric([host, syscall], value(row, hist))
            yield family
        errors = CounterMetricFamily("syswatch_errors", ERRORS_HELP, labels=["host", "syscall", "errno"])
        latency = HistogramMetricFamily("syswatch_call_latency_seconds", LATENCY_HELP, labels=["host", "syscall"])
        for host, syscalls in hosts:
            for syscall, (_, hist, errs) in syscalls.items():
                for errno, n in sorted(errs.items()):
                    errors.add_metric([host, syscall, errno], n)
                latency.add_metric([host, syscall], [(floatToGoString(le), n) for le, n in hist.cumulative()],
                                   hist.sum_ns * 1e-9)
        yield errors
        yield latency

    @staticmethod
    def _collectors(collectors: list):
        connected = GaugeMetricFamily("syswatch_collector_connected",
                                      "1 when a message from the collector arrived in the last 3 seconds.",
                                      labels=["host", "endpoint"])
        for c in collectors:  # a --collector not heard from yet: host=""
            connected.add_metric([c["host"] or "", c["endpoint"] or ""], int(c["connected"]))
        yield connected
        for key, help_text in COLLECTOR_STATUS + COLLECTOR_STATUS_OPTIONAL:
            family = CounterMetricFamily(f"syswatch_collector_{key}", help_text, labels=["host"])
            for c in collectors:
                if c["status"] and key in c["status"]:
                    family.add_metric([c["host"]], c["status"][key])
            yield family
        # what each host's NATS bridge published and could not (--nats; the bridge's own /metrics has the same)
        bridges = [c for c in collectors if c.get("bridge")]
        if bridges:
            for key, help_text in BRIDGE_STATUS:
                family = CounterMetricFamily(f"syswatch_bridge_{key}", help_text, labels=["host"])
                for c in bridges:
                    family.add_metric([c["host"]], c["bridge"][key])
                yield family
            lost = CounterMetricFamily("syswatch_bridge_unpublished_events",
                                       "Events a host's NATS bridge could not publish, by reason.",
                                       labels=["host", "reason"])
            for c in bridges:
                for reason, n in c["bridge"]["unpublished_by_reason"].items():
                    lost.add_metric([c["host"], reason], n)
            yield lost

    @staticmethod
    def _history(st: dict):
        """The history recorder's status (api/history_recorder.py): its store's size, state and counters."""
        yield GaugeMetricFamily("syswatch_history_disk_bytes", "Bytes the history store takes on disk (the "
                                "file, its WAL and index).", value=st["disk_bytes"])
        yield GaugeMetricFamily("syswatch_history_max_bytes", "The history store's size limit (--history-max-mb).",
                                value=st["max_bytes"])
        yield GaugeMetricFamily("syswatch_history_recording", "1 while the history store is written; 0 while it "
                                "cannot be (disk full, write errors: /stats history.error says why).",
                                value=int(st["state"] == "recording"))
        yield GaugeMetricFamily("syswatch_history_written_until_seconds", "Every interval before this time (unix "
                                "seconds) is in the history store.", value=st["complete_until"])
        rows = GaugeMetricFamily("syswatch_history_rows", "Rows held per tier of the history store.",
                                 labels=["step"])
        for tier in st["tiers"]:
            rows.add_metric([f"{tier['step_s']}s"], tier["rows"])
        yield rows
        for name, help_text in HISTORY_COUNTERS.items():
            yield CounterMetricFamily(f"syswatch_history_{name}", help_text, value=st[name])
        yield CounterMetricFamily("syswatch_history_trims_for_size", "Deletions of a tier's oldest rows made "
                                  "to stay under the size limit.", value=st["trims_for_size"])
        yield CounterMetricFamily("syswatch_history_cpu_seconds", "CPU time of the history recorder's thread.",
                                  value=st["cpu_seconds"])

    def _http(self):
        requests = CounterMetricFamily("syswatch_http_requests", "HTTP requests answered, by route, method and status.",
                                       labels=["route", "method", "status"])
        durations = HistogramMetricFamily(
            "syswatch_http_request_duration_seconds",
            "Time from a request's arrival to its answer's last byte, by route template, method and status "
            "(an /events/stream request lasts as long as its stream).", labels=["route", "method", "status"])
        for (route, method, status), (buckets, total) in sorted(self.requests.durations().items()):
            labels = [route, method, str(status)]
            requests.add_metric(labels, buckets[-1][1])
            durations.add_metric(labels, [(floatToGoString(le), n) for le, n in buckets], total)
        yield requests
        yield durations


def registry(stream, requests, iplist, hub, history=None) -> CollectorRegistry:
    """A registry of its own per API (tests run several in one process): the models plus the standard
    process_*, python_info and python_gc_* collectors of prometheus_client."""
    reg = CollectorRegistry()
    reg.register(StatsCollector(stream, requests, iplist, hub, history))
    ProcessCollector(registry=reg)
    PlatformCollector(registry=reg)
    GCCollector(registry=reg)
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    """The text exposition of ``reg`` (CONTENT_TYPE)."""
    return generate_latest(reg)
