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


def render(stream: dict, requests: dict, ip_count: int, streams_open: int) -> str:
    """``stream``: StreamStats.snapshot(); ``requests``: RequestStats.snapshot()."""
    d = _Doc()
    d.metric("syswatch_events_total", "counter", "Syscall events received from the collector, by syscall.",
             [({"syscall": s}, n) for s, n in sorted(stream["calls"].items())])
    d.metric("syswatch_requested_bytes_total", "counter",
             "Bytes the traced read/write calls asked for, by syscall.",
             [({"syscall": s}, n) for s, n in sorted(stream["bytes"].items())])
    d.metric("syswatch_events_per_second", "gauge", "Events received per second (5 s average).",
             stream["events_per_s"])
    d.metric("syswatch_collector_connected", "gauge",
             "1 when a message from the collector arrived in the last 3 seconds.", int(stream["connected"]))
    status = stream["status"] or {}
    for key, help_text in (("events_total", "Events the collector read from bpftrace (its last status)."),
                           ("lost_total", "Events bpftrace reported lost (collector status)."),
                           ("dropped_total", "Events the collector could not publish (collector status)."),
                           ("malformed_total", "bpftrace lines the collector could not parse (collector status).")):
        d.metric(f"syswatch_collector_{key}", "counter", help_text, status.get(key, 0))
    d.metric("syswatch_api_messages_total", "counter", "Well-formed messages received from the collector.",
             stream["messages"])
    d.metric("syswatch_api_malformed_messages_total", "counter",
             "Messages received that are not wire protocol v1 (skipped).", stream["malformed"])
    d.metric("syswatch_api_sse_dropped_events_total", "counter",
             "Events not delivered to /events/stream clients that read too slowly.", stream["sse_dropped"])
    d.metric("syswatch_api_events_not_received", "gauge",
             "Estimate: events the collector published since the API first heard from it, minus events received.",
             stream["events_not_received"])
    d.metric("syswatch_api_event_streams", "gauge", "Open /events/stream connections.", streams_open)
    d.metric("syswatch_ip_list_size", "gauge", "Addresses in the IP list.", ip_count)
    d.metric("syswatch_http_requests_total", "counter", "HTTP requests answered, by route, method and status.",
             [({"route": r, "method": m, "status": s}, n) for (r, m, s), n in sorted(requests.items())])
    return d.text()
