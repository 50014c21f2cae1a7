"""The OpenAPI 3 description of the HTTP API, served at GET /openapi.json.

Built from the running server's settings, so the limits it states (items per request, events per
answer) are the ones enforced. Every answer the API gives is described here, errors included;
tests/test_openapi_fuzz.py fuzzes the API against it with schemathesis.
"""
from __future__ import annotations

from syswatch.api.aggregates import COUNTERS
from syswatch.shared import record
from syswatch.shared.protocol import SYSCALLS

ERROR = {"$ref": "#/components/schemas/Error"}
IP_ENTRY = {"$ref": "#/components/schemas/IpEntry"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict:
    text = {400: "Bad request: malformed JSON, a missing, unknown or wrong field, a bad item or parameter",
            401: "Missing or wrong bearer token (only when the server was started with a token)",
            409: "The IP list would exceed its maximum size (--max-ips); nothing was added",
            413: "Body larger than --max-body-bytes, or more items than --max-items; nothing changed",
            415: "Content-Type is not JSON",
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


def _get(summary: str, ok: dict, params: list | None = None, errors: tuple = ()) -> dict:
    op = {"summary": summary, "responses": {"200": ok, **_errors(*errors)}}
    if params:
        op["parameters"] = params
    return {"get": op}


def _obj(required: list, **props) -> dict:
    return {"type": "object", "required": required, "properties": props}


INT = {"type": "integer", "minimum": 0}
NUM = {"type": "number"}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
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
    ]
    limit = {"name": "limit", "in": "query", "required": False,
             "description": f"at most this many events (default {default_events_limit})",
             "schema": {"type": "integer", "minimum": 1, "maximum": max_events_limit}}
    sums = dict(calls=INT, bytes=INT, errors=INT, lat_ns_sum=INT)
    proc = _obj(["host", "pid", "comm", "container_id", "container_name", *sums], host=STR, pid=INT, comm=STR,
                container_id=STR, container_name=STR, **sums)
    cont = _obj(["host", "container_id", "container_name", *sums], host=STR, container_id=STR,
                container_name=STR, **sums)
    per_syscall = _obj(list(sums), **sums)
    status = {"type": "object", "nullable": True, "description": "the collector's last status message (protocol v2)"}
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
                           _json({"$ref": "#/components/schemas/Stats"}, "Aggregates"), [HOST_PARAM], (400,)),
            "/events": _get("The most recent events (bounded buffer), oldest first, filtered",
                            _json(_obj(["events", "count"], events={"type": "array", "items": {
                                "$ref": "#/components/schemas/Event"}}, count=INT), "Events"),
                            [limit] + filters, (400,)),
            "/events/stream": _get(
                "Live events as Server-Sent Events: one `data:` line per event (an Event as JSON); "
                "heartbeats and drop notices are SSE comments", {"description": "An endless event stream",
                                                                 "content": {"text/event-stream": {"schema": STR}}},
                filters, (400, 503)),
            "/metrics": _get("Prometheus text exposition", {"description": "Metrics", "content": {
                "text/plain": {"schema": STR}}}),
            "/healthz": _get("Liveness: 200 while the API serves; says whether the collector is connected",
                             _json(_obj(["status", "collector_connected", "collectors"],
                                        status={"type": "string", "enum": ["ok"]}, collector_connected=BOOL,
                                        collectors={"type": "array", "items": STR}), "Healthy")),
            "/openapi.json": _get("This document", _json({"type": "object"}, "OpenAPI 3 document")),
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                               "description": "Needed for POST when the server has "
                                                              "SYSWATCH_TOKEN / --token-file"}},
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
                     "collectors", "hosts", "collector_status", "api"],
                    connected=BOOL, events_per_s=NUM, events_received=INT,
                    totals={"type": "object", "additionalProperties": per_syscall,
                            "description": "per syscall seen"},
                    top_processes_by_calls={"type": "array", "items": proc},
                    top_processes_by_bytes={"type": "array", "items": proc},
                    top_containers_by_calls={"type": "array", "items": cont},
                    top_containers_by_bytes={"type": "array", "items": cont},
                    collectors={"type": "array", "items": _obj(
                        ["endpoint", "host", "connected", "last_message_age_s", "status"],
                        endpoint={"type": "string", "nullable": True}, host={"type": "string", "nullable": True},
                        connected=BOOL, last_message_age_s={"type": "number", "nullable": True},
                        events_received=INT, events_not_received=INT, status=status)},
                    hosts={"type": "array", "items": STR},
                    collector_status=status,
                    api=_obj([*COUNTERS, "last_malformed_reason", "recent_events_capacity", "event_streams"],
                             **{name: INT for name in COUNTERS},
                             last_malformed_reason={"type": "string", "nullable": True},
                             recent_events_capacity=INT, event_streams=INT)),
            },
        },
    }
