"""Prometheus text exposition (format 0.0.4): a thin adapter over the stats snapshots."""
from __future__ import annotations

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class _Doc:
    def __init__(self):
        self.lines: list[str] = []

    def metric(self, name: str, kind: str, help_text: str, samples) -> None:
        """``samples``: a number, or a list of (labels dict, number)."""
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")
        if not isinstance(samples, list):
            samples = [({}, samples)]
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(stream, requests: dict, ip_count: int, streams_open: int) -> str:
    """``stream``: the StreamStats; ``requests``: RequestStats.snapshot(). Per-host series carry a ``host`` label."""
    from .stream import COUNTERS
    d = _Doc()
    overall = stream.snapshot()
    per_host = {h: stream.snapshot(h) for h in overall["hosts"]}
    for name, col, help_text in (
            ("syswatch_events_total", "calls", "Syscall events received from the collectors, by host and syscall."),
            ("syswatch_moved_bytes_total", "bytes", "Bytes the traced calls actually moved (sum of positive ret)."),
            ("syswatch_errors_total", "errors", "Traced calls that failed (ret < 0)."),
            ("syswatch_call_latency_nanoseconds_total", "lat_ns_sum", "Time spent in the traced calls, summed.")):
        d.metric(name, "counter", help_text,
                 [({"host": h, "syscall": sc}, row[col]) for h, snap in sorted(per_host.items())
                  for sc, row in snap["totals"].items()])
    d.metric("syswatch_events_per_second", "gauge", "Events received per second (5 s average).",
             overall["events_per_s"])
    d.metric("syswatch_collector_connected", "gauge",
             "1 when a message from the collector arrived in the last 3 seconds.",
             [({"host": c["host"] or "", "endpoint": c["endpoint"] or ""}, int(c["connected"]))
              for c in overall["collectors"]])
    for key, help_text in (("events_total", "Events the collector read from bpftrace (its last status)."),
                           ("lost_total", "Events bpftrace could not deliver (collector status)."),
                           ("dropped_total", "Events the collector could not publish (collector status)."),
                           ("malformed_total", "bpftrace lines the collector could not parse (collector status).")):
        d.metric(f"syswatch_collector_{key}", "counter", help_text,
                 [({"host": c["host"]}, c["status"][key]) for c in overall["collectors"] if c["status"]])
    for name, (kind, help_text) in COUNTERS.items():
        d.metric(f"syswatch_api_{name}" + ("_total" if kind == "counter" else ""), kind, help_text,
                 overall["api"][name])
    d.metric("syswatch_api_event_streams", "gauge", "Open /events/stream connections.", streams_open)
    d.metric("syswatch_ip_list_size", "gauge", "Addresses in the IP list.", ip_count)
    d.metric("syswatch_http_requests_total", "counter", "HTTP requests answered, by route, method and status.",
             [({"route": r, "method": m, "status": s}, n) for (r, m, s), n in sorted(requests.items())])
    return d.text()
