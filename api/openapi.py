"""The OpenAPI 3 description of the HTTP API, served at GET /openapi.json.

Built from the running server's settings, so the limits it states (items per request, events per
answer) are the ones enforced. Every answer the API gives is described here, errors included;
tests/test_openapi_fuzz.py fuzzes the API against it with schemathesis.
"""
from __future__ import annotations

from syswatch.api import history_query
from syswatch.api.aggregates import COUNTERS
from syswatch.api.history_recorder import COUNTERS as HISTORY_COUNTERS
from syswatch.api.validation import FILE_TYPES, MAX_PATH
from syswatch.shared import record
from syswatch.shared.protocol import SYSCALLS

ERROR = {"$ref": "#/components/schemas/Error"}
IP_ENTRY = {"$ref": "#/components/schemas/IpEntry"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "Bad request: malformed JSON, a missing, unknown or wrong field, a bad item or parameter",
            401: "Missing or wrong bearer token (only when the server was started with a token: for POST the "
                 "POST token, for the stream's views the read token or the POST token)",
            409: "The IP list would exceed its maximum size (--max-ips); nothing was added",
            413: "Body larger than --max-body-bytes, or more items than --max-items; nothing changed",
            404: "This API keeps no history (--history-max-mb 0)",
            415: "Content-Type is not JSON",
            429: "Your address holds its share of the event streams (--max-streams-per-address); retry later",
            503: "Too many open event streams (--max-streams); retry later"}
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _post(field: str, body_schema: dict, example: dict, ok_schema: dict, summary: str, errors: tuple) -> dict:
    return {"post": {
        "summary": summary,
        "security": [{}, {"bearerAuth": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {field: body_schema}, "required": [field],
            "additionalProperties": False}, "example": example}}},
        "responses": {"200": _json(ok_schema, "Done"), **_errors(*errors)},
    }}


def _get(summary: str, ok: dict, params: list | None = None, errors: tuple = (), read: bool = False) -> dict:
    """``read``: one of the stream's views, behind the read token when the server has one."""
    op = {"summary": summary, "responses": {"200": ok, **_errors(*errors, *((401,) if read else ()))}}
    if read:
        op["security"] = [{}, {"bearerAuth": []}]
    if params:
        op["parameters"] = params
    return {"get": op}


def _obj(required: list, **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


INT = {"type": "integer", "minimum": 0}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
NULL_INT = {"type": "integer", "minimum": 0, "nullable": True}
HOST_PARAM = {"name": "host", "in": "query", "required": False, "description": "only this collector's host",
              "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"}}


def event_schema() -> dict:
    """The Event schema, from the one declaration of the event record (shared/record.py)."""
    props: dict = {}
    for f in record.FIELDS:
        if f.kind == "int":
            lo, hi = f.bounds  # type: ignore[misc]
            schema: dict = {"type": "integer", "minimum": lo, "maximum": hi}
        elif f.name == "syscall":
            schema = {"type": "string", "enum": list(SYSCALLS)}
        elif f.enum:
            schema = {"type": "string", "enum": list(f.enum)}
        else:
            schema = {"type": "string", "maxLength": f.bounds}
        props[f.name] = {**schema, "description": f.doc}
    props["host"] = {"type": "string", "description": "the collector's host"}
    return {"type": "object", "required": [*record.REQUIRED, "host"], "properties": props}
def history_path() -> dict:
    """GET /history: its parameters (api/history_query.py checks them) and its answer."""
    q = history_query

    def param(name: str, schema: dict, description: str) -> dict:
        return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}
    nullstr = {"type": "string", "nullable": True}
    values = dict(calls=INT, bytes=INT, errors=INT, lat_ns_sum=INT)
    key_fields = {"key": STR, "host": nullstr, "other": BOOL, "pid": {"type": "integer", "nullable": True},
                  "comm": nullstr, "container_id": nullstr, "container_name": nullstr, "syscall": nullstr,
                  "path": nullstr, "file_type": nullstr}
    row = {"type": "object", "required": ["key", "host", *values], "properties": {**key_fields, **values},
           "description": "one key of the group (its fields depend on the group) or, with other: true, the sum "
                          "of every key not listed"}
    per_step = {"type": "array", "items": INT}
    series = {"type": "object", "required": ["key", "host", *values],
              "properties": {**key_fields, **{v: per_step for v in values}},
              "description": "a row's values per step, in the order of times"}
    stamp = {"type": "string", "format": "date-time"}
    answer = _obj(["from", "to", "step_s", "group", "order", "host", "container", "complete_until", "oldest",
                   "intervals", "totals", "rows", "times", "series"],
                  **{"from": stamp, "to": stamp}, step_s={"type": "integer", "minimum": 1},
                  group={"type": "string", "enum": list(q.GROUPS)}, order={"type": "string", "enum": list(q.ORDERS)},
                  host=nullstr, container=nullstr,
                  complete_until={**stamp, "nullable": True, "description": "every interval before this is written"},
                  oldest={**stamp, "nullable": True, "description": "the oldest interval the store holds"},
                  intervals={"type": "array", "description": "which tier answered which stretch of the range",
                             "items": _obj(["step_s", "from", "to"], step_s=INT, **{"from": stamp, "to": stamp})},
                  totals=_obj(list(values), **values), rows={"type": "array", "items": row},
                  times={"type": "array", "items": INT, "description": "start of each step, unix seconds"},
                  series={"type": "array", "items": series})
    printable = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    params = [
        param("from", {"type": "string", "maxLength": 40}, "start: RFC 3339 (2026-12-06T03:10:00Z), relative to now "
                                                           "(-15m, -2h, -1d, -1h30m) or unix seconds; default -15m"),
        param("to", {"type": "string", "maxLength": 40}, "end, as from; default now"),
        param("group", {"type": "string", "enum": list(q.GROUPS)}, "what the rows are (default process)"),
        HOST_PARAM,
        param("container", {"type": "string", "minLength": 1, "maxLength": 255, "pattern": printable},
              "only this container (id prefix or name)"),
        param("step", {"type": "string", "pattern": "^([0-9]{1,9}|([0-9]{1,6}[smhdw])+)$"},
              f"seconds per point (60, 60s, 5m); default: a round step giving at most {q.AUTO_POINTS} points; "
              f"at most {q.MAX_POINTS} points"),
        param("order", {"type": "string", "enum": list(q.ORDERS)}, "what ranks the rows (default calls)"),
        param("limit", {"type": "integer", "minimum": 1, "maximum": q.MAX_LIMIT},
              f"rows (default {q.DEFAULT_LIMIT}); the rest is one (other) row"),
        param("series", {"type": "integer", "minimum": 0, "maximum": q.MAX_SERIES},
              f"rows given per step in JSON (default {q.DEFAULT_SERIES}), plus (other)"),
        param("format", {"type": "string", "enum": list(q.FORMATS)}, "json (default) or csv: one line per step "
                                                                    "and row"),
    ]
    ok = {"description": "What was recorded in the range", "content": {
        "application/json": {"schema": answer},
        "text/csv": {"schema": STR, "example": "time,host,key,container_id,container_name,calls,bytes,errors,"
                                               "lat_ns_sum\r\n2026-12-06T03:10:00Z,vm,4f2a...,4f2a...,web-1,613,"
                                               "2510848,7,2881230\r\n"}}}
    return _get(f"What was recorded: totals per group over a range (at most {q.MAX_RANGE_S // 86400} days) and "
                "per step, from the history store (docs/HISTORY.md)", ok, params, (400, 404), read=True)


def document(max_items: int, max_events_limit: int, default_events_limit: int) -> dict:
    filters = [
        {"name": "pid", "in": "query", "required": False, "description": "only events of this process id",
         "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}},
        {"name": "comm", "in": "query", "required": False, "description": "only events of this process name",
         "schema": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"}},
        {"name": "syscall", "in": "query", "required": False, "description": "only events of this syscall",
         "schema": {"type": "string", "enum": list(SYSCALLS)}},
        {"name": "container", "in": "query", "required": False,
         "description": "only events of this container (id prefix or name)",
         "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"}},
        HOST_PARAM,
        {"name": "tid", "in": "query", "required": False, "description": "only events of this thread id",
         "schema": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}},
        {"name": "uid", "in": "query", "required": False, "description": "only events of this user id",
         "schema": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1}},
        {"name": "path", "in": "query", "required": False,
         "description": "only events on this path or below it (whole components: /var/log, not /var/logs)",
         "schema": {"type": "string", "minLength": 1, "maxLength": MAX_PATH,
                    "pattern": "^[^\\x00-\\x1f\\x7f-\\x9f]+$"}},
        {"name": "file_type", "in": "query", "required": False, "description": "only events on this kind of file",
         "schema": {"type": "string", "enum": list(FILE_TYPES)}},
        {"name": "failed", "in": "query", "required": False,
         "description": "1: only calls that failed (ret < 0)",
         "schema": {"type": "string", "enum": ["1", "0", "true", "false"]}},
        {"name": "min_latency", "in": "query", "required": False,
         "description": "only calls that took at least this long: a number and a unit (ns, us, ms, s), e.g. 20ms",
         "schema": {"type": "string", "pattern": "^(0|[0-9]{1,15}(\\.[0-9]{1,9})?(ns|us|ms|s))$"}},
    ]
    limit = {"name": "limit", "in": "query", "required": False,
             "description": f"at most this many events (default {default_events_limit})",
             "schema": {"type": "integer", "minimum": 1, "maximum": max_events_limit}}
    sums = dict(calls=INT, bytes=INT, errors=INT, lat_ns_sum=INT, avg_ns=NULL_INT)
    errnos = {"type": "object", "additionalProperties": INT,
              "description": "failed calls by errno name (EAGAIN, EBADF, ...), most frequent first"}
    pct = dict(p50_ns=NULL_INT, p90_ns=NULL_INT, p99_ns=NULL_INT, max_ns=NULL_INT, lat_measured=INT,
               lat_unmeasured=INT)
    proc = _obj(["host", "pid", "comm", "container_id", "container_name", *sums, "errnos"], host=STR, pid=INT,
                comm=STR, container_id=STR, container_name=STR, errnos=errnos, **sums)
    cont = _obj(["host", "container_id", "container_name", *sums, "errnos", *pct], host=STR, container_id=STR,
                container_name=STR, errnos=errnos, **sums, **pct)
    per_syscall = _obj([*sums, *pct, "lat_hist", "errnos"], **sums, **pct, errnos=errnos, lat_hist={
        "type": "array", "items": INT, "maxItems": 65,
        "description": "calls per log2 latency bucket (bpftrace hist()): [0 ns, 1 ns, 2-3 ns, 4-7 ns, ...]"})
    file_row = _obj(["host", "path", "file_type", "dev", "ino", *sums], host=STR, path=STR, file_type=STR,
                    dev=NULL_INT, ino=NULL_INT, **sums)
    status = {"type": "object", "nullable": True,
              "description": "the collector's last status message (protocol v2); a list longer than 16 items is cut "
                             "to its first 16, its length is in <name>_count"}
    return {
        "openapi": "3.0.3",
        "info": {"title": "syswatch API", "version": "1.0.0",
                 "description": "The IP list (seed-compatible endpoints) and live views of the "
                                "read/write syscall stream published by the syswatch collector."},
        "paths": {
            "/": _get("The live dashboard: an HTML page (same origin, no external resources) that polls "
                      "/stats and /events; its files are under /static/", {"description": "The page", "content": {
                          "text/html": {"schema": STR}}}),
            "/apis": _get("List every endpoint with its usage", _json(_obj(
                ["available_apis", "usage"], available_apis={"type": "array", "items": STR},
                usage={"type": "object", "additionalProperties": STR}), "The endpoints")),
            "/add_ips": _post(
                "add_ips", {"type": "array", "maxItems": max_items, "items": IP_ENTRY}, {"add_ips": [1, 2, 3]},
                _obj(["message", "added_ips", "total_ips", "ignored_ips"],
                     message={"type": "string", "enum": ["IPs added successfully"]},
                     added_ips={"type": "array", "items": IP_ENTRY,
                                "description": "entries newly added, in request order"},
                     ignored_ips={"type": "array", "items": IP_ENTRY,
                                  "description": "entries already in the list (in any form), not added again"},
                     total_ips=INT),
                "Add IP addresses (all or nothing)", (400, 401, 409, 413, 415)),
            "/print_all_ips": _post(
                "print_all_ips", {"type": "boolean", "enum": [True]}, {"print_all_ips": True},
                _obj(["message", "ips", "total_ips"],
                     message={"type": "string", "enum": ["All IPs retrieved successfully"]},
                     ips={"type": "array", "items": IP_ENTRY}, total_ips=INT),
                "Return the whole IP list in insertion order", (400, 401, 413, 415)),
            "/clear_ip_list": _post(
                "clear_ip_list", {"type": "boolean", "enum": [True]}, {"clear_ip_list": True},
                _obj(["message", "total_ips"],
                     message={"type": "string", "enum": ["IP list cleared successfully"]},
                     total_ips={"type": "integer", "enum": [0]}),
                "Empty the IP list", (400, 401, 413, 415)),
            "/stats": _get("Aggregates of the event stream (one host, or all) and every collector's status",
                           _json({"$ref": "#/components/schemas/Stats"}, "Aggregates"), [HOST_PARAM], (400,),
                           read=True),
            "/events": _get("The most recent events (bounded buffer), oldest first, filtered",
                            _json(_obj(["events", "count"], events={"type": "array", "items": {
                                "$ref": "#/components/schemas/Event"}}, count=INT), "Events"),
                            [limit] + filters, (400,), read=True),
            "/events/stream": _get(
                "Live events as Server-Sent Events: one `data:` line per event (an Event as JSON); "
                "heartbeats and drop notices are SSE comments", {"description": "An endless event stream",
                                                                 "content": {"text/event-stream": {"schema": STR}}},
                filters, (400, 429, 503), read=True),
            "/history": history_path(),
            "/metrics": _get("Prometheus text exposition", {"description": "Metrics", "content": {
                "text/plain": {"schema": STR}}}, read=True),
            "/healthz": _get("Liveness: 200 while the API serves; says whether the collector is connected",
                             _json(_obj(["status", "collector_connected", "collectors"],
                                        status={"type": "string", "enum": ["ok"]}, collector_connected=BOOL,
                                        collectors={"type": "array", "items": STR}), "Healthy")),
            "/openapi.json": _get("This document", _json({"type": "object"}, "OpenAPI 3 document")),
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Needed for POST when the server has "
                                                              "SYSWATCH_TOKEN / --token-file, and for "
                                                              "/stats, /events, /events/stream and /metrics "
                                                              "when it has SYSWATCH_READ_TOKEN / "
                                                              "--read-token-file (the POST token reads too)"}},
            "schemas": {
                "Error": _obj(["error"], error=STR),
                "IpEntry": {"description": "an IPv4 address as an integer, or an IPv4/IPv6 address string",
                            "anyOf": [{"type": "integer", "minimum": 0, "maximum": 4294967295},
                                      {"type": "string", "format": "ipv4"},
                                      {"type": "string", "format": "ipv6"}]},
                "Event": event_schema(),
                "Stats": _obj(
                    ["connected", "events_per_s", "events_received", "totals", "top_processes_by_calls",
                     "top_processes_by_bytes", "top_containers_by_calls", "top_containers_by_bytes",
                     "top_files_by_calls", "top_files_by_bytes", "collectors", "hosts", "collector_status", "api",
                     "history"],
                    connected=BOOL, events_per_s=NUM, events_received=INT,
                    totals={"type": "object", "additionalProperties": per_syscall,
                            "description": "per syscall seen"},
                    top_processes_by_calls={"type": "array", "items": proc},
                    top_processes_by_bytes={"type": "array", "items": proc},
                    top_containers_by_calls={"type": "array", "items": cont},
                    top_containers_by_bytes={"type": "array", "items": cont},
                    top_files_by_calls={"type": "array", "items": file_row},
                    top_files_by_bytes={"type": "array", "items": file_row},
                    collectors={"type": "array", "items": _obj(
                        ["endpoint", "host", "connected", "last_message_age_s", "status"],
                        endpoint={"type": "string", "nullable": True}, host={"type": "string", "nullable": True},
                        connected=BOOL, last_message_age_s={"type": "number", "nullable": True},
                        events_received=INT, events_not_received=INT, status=status,
                        bridge={"type": "object", "nullable": True,
                                "description": "the host's NATS bridge's last counters (--nats only): what it "
                                               "published and could not publish, by reason (docs/PROTOCOL.md)"})},
                    hosts={"type": "array", "items": STR},
                    collector_status=status,
                    api=_obj([*COUNTERS, "last_malformed_reason", "last_refused_reason", "recent_events_capacity",
                              "event_streams", "event_streams_max", "event_streams_per_address"],
                             **{name: INT for name in COUNTERS},
                             last_malformed_reason={"type": "string", "nullable": True},
                             last_refused_reason={"type": "string", "nullable": True},
                             recent_events_capacity=INT, event_streams=INT, event_streams_max=INT,
                             event_streams_per_address=INT),
                    history={**_obj(["path", "state", "error", "disk_bytes", "max_bytes", "complete_until", "tiers",
                                     *HISTORY_COUNTERS],
                                    path=STR, state={"type": "string",
                                                     "enum": ["recording", "disk full", "write failing", "stopped"]},
                                    error={"type": "string", "nullable": True},
                                    error_since={"type": "string", "nullable": True}, disk_bytes=INT, max_bytes=INT,
                                    complete_until=INT, intervals_pending=INT, trims_for_size=INT, cpu_seconds=NUM,
                                    tiers={"type": "array", "items": _obj(
                                        ["step_s", "keep_s", "rows", "kept_from", "written_until"], step_s=INT,
                                        keep_s=INT, rows=INT, kept_from=INT, written_until=INT)},
                                    **{name: INT for name in HISTORY_COUNTERS}),
                               "nullable": True, "description": "the history store (null: history is off)"}),
            },
        },
    }
