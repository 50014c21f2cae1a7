"""GET /history: its parameters (checked: a bad one is a 400 naming it) and its answer, from the history store.

    from, to     RFC 3339 (2026-12-06T03:10:00Z, 2026-12-06T04:10:00+01:00), relative to now (-15m, -2h,
                 -1d, -1h30m, now) or unix seconds; default the last 15 minutes; at most MAX_RANGE_S apart
    group        process | container | syscall | file | host (default process)
    host         only this collector's host
    container    only this container (id prefix or name, as /events)
    step         seconds per point of the series (60, 60s, 5m); default: a round step giving at most
                 AUTO_POINTS points; never finer than the stored intervals, at most MAX_POINTS points
    order        calls | bytes | errors: what ranks the rows (default calls)
    limit        rows (default 20, at most MAX_LIMIT); everything else is summed in one "(other)" row
    series       keys given per step in JSON (default 5, at most MAX_SERIES), plus "(other)"
    format       json | csv (CSV: one line per step and row key, for a spreadsheet)

Which tier answers: the finest whose intervals in the range number at most MAX_SCAN_INTERVALS (an hour
of 1 s, a day of 1 min), and for each stretch of the range the finest tier at least that coarse that holds
it (old stretches come from coarser tiers, the newest seconds from finer ones), so a range is answered
whole as long as any tier covers it. Steps are aligned to multiples of the step since the epoch.
"""
from __future__ import annotations

import csv
import io
import re
import sqlite3
from datetime import datetime, timezone
from typing import NamedTuple

from syswatch.api.history_store import CONTAINER, DIMS, FILE, OTHER, PROCESS, SYSCALL, HistoryStore
from syswatch.api.validation import BadRequest, _short, host_param

MAX_RANGE_S = 31 * 86_400
MAX_POINTS = 1440
AUTO_POINTS = 360
MAX_SCAN_INTERVALS = 3600
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000
DEFAULT_SERIES, MAX_SERIES = 5, 50
MAX_CSV_LINES = 200_000
GROUPS = ("process", "container", "syscall", "file", "host")
ORDERS = ("calls", "bytes", "errors")
FORMATS = ("json", "csv")
PARAMS = ("from", "to", "group", "host", "container", "step", "order", "limit", "series", "format")
NICE_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_DURATION = re.compile(r"(?:(\d{1,6})([smhdw]))+")
_PART = re.compile(r"(\d{1,6})([smhdw])")
MIN_TIME = 946_684_800            # 2000-01-01: earlier is a mistake, not a question about the past
MAX_TIME = 4_102_444_800          # 2100-01-01


class Query(NamedTuple):
    start: int
    end: int
    group: str
    host: str | None
    container: str | None
    step: int | None
    order: str
    limit: int
    series: int
    fmt: str


def rfc3339(t: int) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_duration(text: str, name: str) -> int:
    """``90``, ``90s``, ``5m``, ``1h30m`` -> seconds."""
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    if not _DURATION.fullmatch(text):
        raise BadRequest(f"query parameter {name!r} = {_short(text)} is not a duration: give seconds (60) or a "
                         f"number with a unit s, m, h, d, w (60s, 5m, 1h30m)")
    return sum(int(n) * UNITS[u] for n, u in _PART.findall(text))


def parse_time(text: str, now: float, name: str) -> int:
    """RFC 3339, relative (``-15m``, ``now``) or unix seconds -> unix seconds (floored)."""
    hint = ("give RFC 3339 (2026-12-06T03:10:00Z), a time relative to now (-15m, -2h, -1d, now) or unix seconds")
    if text == "now":
        return int(now)
    if text.startswith("-") and len(text) > 1:
        return int(now) - parse_duration(text[1:], name)
    if text.isascii() and text.isdigit() and len(text) <= 20:
        t = int(text)
    else:
        if len(text) > 40 or not text.isascii():
            raise BadRequest(f"query parameter {name!r} = {_short(text)} is not a time: {hint}")
        try:
            when = datetime.fromisoformat(text.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise BadRequest(f"query parameter {name!r} = {_short(text)} is not a time: {hint}") from None
        if when.tzinfo is None or "T" not in text.upper():
            raise BadRequest(f"query parameter {name!r} = {_short(text)} lacks a date, a time or a UTC offset "
                             f"(Z or +01:00): {hint}")
        t = int(when.timestamp() // 1)
    if not MIN_TIME <= t <= MAX_TIME:
        ms = " (milliseconds? give seconds)" if MIN_TIME * 1000 <= t <= MAX_TIME * 1000 else ""
        raise BadRequest(f"query parameter {name!r} = {_short(text)} is outside the years 2000..2099{ms}: {hint}")
    return t


def _int(flat: dict, name: str, low: int, high: int, default: int) -> int:
    raw = flat.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9 or not low <= int(raw) <= high:
        raise BadRequest(f"query parameter {name!r} = {_short(raw)} must be an integer {low}..{high}")
    return int(raw)


def _choice(flat: dict, name: str, allowed: tuple, default: str) -> str:
    value = flat.get(name, default)
    if value not in allowed:
        raise BadRequest(f"query parameter {name!r} = {_short(value)} must be one of {', '.join(allowed)}")
    return value


def parse(query: dict, now: float) -> Query:
    """A Query from the parsed query string {name: [values]}; BadRequest names the first bad parameter."""
    for name, values in query.items():
        if name not in PARAMS:
            raise BadRequest(f"unknown query parameter {_short(name)}; known: {', '.join(PARAMS)}")
        if len(values) > 1:
            raise BadRequest(f"query parameter {name!r} is given {len(values)} times; give it once")
    flat = {name: values[0] for name, values in query.items()}
    start = parse_time(flat.get("from", "-15m"), now, "from")
    end = parse_time(flat.get("to", "now"), now, "to")
    if end <= start:
        raise BadRequest(f"the range is empty: 'from' ({rfc3339(start)}) must be before 'to' ({rfc3339(end)})")
    if end - start > MAX_RANGE_S:
        raise BadRequest(f"the range from {rfc3339(start)} to {rfc3339(end)} is {(end - start) / 86400:.1f} days; "
                         f"at most {MAX_RANGE_S // 86400} days are answered at once (the store keeps 1 min "
                         f"intervals for 30 days): ask for a shorter range")
    step = None
    if "step" in flat:
        step = parse_duration(flat["step"], "step")
        if not 1 <= step <= MAX_RANGE_S:
            raise BadRequest(f"query parameter 'step' = {_short(flat['step'])} must be 1 second to "
                             f"{MAX_RANGE_S // 86400} days")
        if (end - start) / step > MAX_POINTS:
            raise BadRequest(f"query parameter 'step' = {step} s over {end - start} s gives "
                             f"{-(-(end - start) // step)} points; at most {MAX_POINTS}: ask for a step of at least "
                             f"{-(-(end - start) // MAX_POINTS)} s")
    container = flat.get("container")
    if container is not None and (not container or len(container) > 255 or not container.isprintable()):
        raise BadRequest(f"query parameter 'container' = {_short(container)} must be a container id prefix or name "
                         f"(1..255 printable characters)")
    return Query(start, end, _choice(flat, "group", GROUPS, "process"), host_param(flat), container, step,
                 _choice(flat, "order", ORDERS, "calls"), _int(flat, "limit", 1, MAX_LIMIT, DEFAULT_LIMIT),
                 _int(flat, "series", 0, MAX_SERIES, DEFAULT_SERIES), _choice(flat, "format", FORMATS, "json"))


# --- answering --------------------------------------------------------------------------------------------
# group -> (dim, key columns, extra select)
GROUP_SQL = {
    "process": (PROCESS, ("host", "cid", "k1", "k2"), ""),
    "file": (FILE, ("host", "cid", "k1", "k2"), ""),
    "container": (CONTAINER, ("host", "cid"), ", max(k1)"),
    "syscall": (SYSCALL, ("host", "k1"), ""),
    "host": (SYSCALL, ("host",), ""),
}
SUMS = "sum(calls), sum(bytes), sum(errors), sum(lat_ns_sum)"


def _segments(cov: list, base: int, start: int, end: int) -> list[tuple[int, int, int]]:
    """(tier index, from, to) stretches covering [start, end): for each, the finest tier at least as coarse as
    ``base`` that holds it whole, else the finest finer one; stretches no tier holds are left out."""
    points = sorted({start, end, *(c[x] for c in cov for x in ("lo", "hi") if start < c[x] < end)})
    order = list(range(base, len(cov))) + list(range(base - 1, -1, -1))
    segs: list = []
    for a, b in zip(points, points[1:]):
        for j in order:
            if cov[j]["lo"] <= a and b <= cov[j]["hi"]:
                if segs and segs[-1][0] == j and segs[-1][2] == a:
                    segs[-1] = (j, segs[-1][1], b)
                else:
                    segs.append((j, a, b))
                break
    return segs


def _auto_step(span: int, unit: int) -> int:
    for s in NICE_STEPS:
        if s % unit == 0 and span / s <= AUTO_POINTS:
            return s
    return -(-span // AUTO_POINTS // unit) * unit


def _plan(store: HistoryStore, cov: list, q: Query) -> tuple[int, int, int, list]:
    """(start, end, step, segments): the base tier, the step (a multiple of every tier used) and the range
    aligned to it."""
    tiers = store.tiers
    span = q.end - q.start
    base = next((i for i, t in enumerate(tiers) if span / t.step <= MAX_SCAN_INTERVALS), len(tiers) - 1)
    if q.step is not None:                          # a finer tier than asked for would only cost time
        base = max(base, max((i for i, t in enumerate(tiers) if q.step % t.step == 0), default=0))
    start, end = q.start, q.end
    for _ in range(4):                              # the step depends on the tiers used, they on the range
        segs = _segments(cov, base, start, end)
        unit = max([tiers[j].step for j, _, _ in segs] + [tiers[base].step])
        step = -(-q.step // unit) * unit if q.step is not None else _auto_step(q.end - q.start, unit)
        aligned = (q.start // step * step, -(-q.end // step) * step)
        if aligned == (start, end):
            break
        start, end = aligned
    else:
        segs = _segments(cov, base, start, end)
    if (end - start) // step > MAX_POINTS:
        raise BadRequest(f"the range needs {(end - start) // step} points of {step} s (the data there is kept in "
                         f"{unit} s intervals); at most {MAX_POINTS}: ask for a larger step or a shorter range")
    return start, end, step, segs


def _filters(store: HistoryStore, conn, cov: list, segs: list, q: Query) -> tuple[str, list] | None:
    """SQL conditions for host= and container= (None: nothing can match)."""
    sql, args = "", []
    if q.host is not None:
        hid = store.ids_of(conn, [q.host]).get(q.host)
        if hid is None:
            return None
        sql += " AND host=?"
        args.append(hid)
    if q.container is not None:
        pairs = set()
        for j, a, b in segs:
            pairs.update(conn.execute(f"SELECT DISTINCT cid, k1 FROM agg_{store.tiers[j].name} WHERE dim=? AND "
                                      f"t>=? AND t<? AND cid>=0", (CONTAINER, a, b)).fetchall())
        names = store.names_of(conn, [i for p in pairs for i in p])
        ref = q.container
        cids = sorted({cid for cid, name in pairs
                       if (names.get(cid) and (names[cid].startswith(ref) if len(ref) <= 12
                                               else ref.startswith(names[cid])))
                       or names.get(name) == ref})
        if not cids:
            return None
        sql += f" AND cid IN ({','.join('?' * len(cids))})"
        args += cids
    return sql, args


def _sum_rows(conn, sql: str, args: list) -> list:
    try:
        return conn.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:        # SUM() past 2**63 (a hostile publisher): exact is impossible
        if "integer overflow" not in str(exc):
            raise
        return [tuple(int(min(v, 2**63 - 1)) if isinstance(v, float) else v for v in row)
                for row in conn.execute(sql.replace("sum(", "total("), args).fetchall()]


def answer(store: HistoryStore, q: Query) -> dict:
    """The JSON-ready answer to ``q`` (one read snapshot of the store)."""
    conn = store.reader()
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.execute("BEGIN")
    try:
        return _answer(store, conn, q)
    finally:
        conn.execute("ROLLBACK")                  # read only: nothing to commit


def _answer(store: HistoryStore, conn, q: Query) -> dict:
    cov = store.coverage(conn)
    start, end, step, segs = _plan(store, cov, q)
    dim, cols, extra = GROUP_SQL[q.group]
    ncols = len(cols)
    npoints = (end - start) // step
    series_n = q.limit if q.fmt == "csv" else min(q.series, q.limit)
    if q.fmt == "csv" and npoints * (series_n + 1) > MAX_CSV_LINES:
        raise BadRequest(f"a CSV of {series_n} rows over {npoints} steps could be {npoints * (series_n + 1)} lines; "
                         f"at most {MAX_CSV_LINES}: ask for a larger step, a shorter range or a smaller limit")
    flt = _filters(store, conn, cov, segs, q)
    totals: dict = {}
    names: dict = {}                                # container key -> name id
    if flt is not None:
        fsql, fargs = flt
        for j, a, b in segs:
            for row in _sum_rows(conn, f"SELECT {', '.join(cols)}, {SUMS}{extra} FROM agg_{store.tiers[j].name} "
                                       f"WHERE dim=? AND t>=? AND t<?{fsql} GROUP BY {', '.join(cols)}",
                                 [dim, a, b, *fargs]):
                key, vals = row[:ncols], row[ncols:ncols + 4]
                acc = totals.get(key)
                totals[key] = list(vals) if acc is None else [x + y for x, y in zip(acc, vals)]
                if extra:
                    names[key] = row[-1]
    metric = ORDERS.index(q.order)
    real = [(k, v) for k, v in totals.items() if not _is_other(q.group, k)]
    real.sort(key=lambda kv: (-kv[1][metric], -kv[1][0], -kv[1][1], kv[0]))
    top = real[:q.limit]
    other = [0, 0, 0, 0]
    for k, v in totals.items():
        if _is_other(q.group, k):
            other = [x + y for x, y in zip(other, v)]
    for _, v in real[q.limit:]:
        other = [x + y for x, y in zip(other, v)]
    all_sum = [sum(v[i] for v in totals.values()) for i in range(4)]

    # per-step series: the top keys, and the rest as (other)
    times = [start + i * step for i in range(npoints)]
    series_keys = [k for k, _ in top[:series_n]]
    per_key = {k: [[0] * npoints for _ in range(4)] for k in series_keys}
    per_step = [[0] * npoints for _ in range(4)]
    if flt is not None and segs:
        fsql, fargs = flt
        for j, a, b in segs:
            table = f"agg_{store.tiers[j].name}"
            for bucket, *vals in _sum_rows(conn, f"SELECT (t-?)/? AS b, {SUMS} FROM {table} WHERE dim=? AND t>=? "
                                                 f"AND t<?{fsql} GROUP BY b", [start, step, dim, a, b, *fargs]):
                for i in range(4):
                    per_step[i][bucket] += vals[i]
            for i in range(0, len(series_keys), 200):
                chunk = series_keys[i:i + 200]
                values = ",".join("(" + ",".join("?" * ncols) + ")" for _ in chunk)
                for row in _sum_rows(conn, f"SELECT (t-?)/? AS b, {', '.join(cols)}, {SUMS} FROM {table} WHERE "
                                           f"dim=? AND t>=? AND t<?{fsql} AND ({', '.join(cols)}) IN (VALUES {values}) "
                                           f"GROUP BY b, {', '.join(cols)}",
                                     [start, step, dim, a, b, *fargs, *(x for k in chunk for x in k)]):
                    values_of = per_key[tuple(row[1:1 + ncols])]
                    for i2 in range(4):
                        values_of[i2][row[0]] += row[1 + ncols + i2]

    ids = set()
    for k in [*(k for k, _ in top), *series_keys]:
        ids.update(_name_ids(q.group, k, names.get(k)))
    cont_names = _container_names(store, conn, segs, {k[1] for k, _ in top if q.group in ("process", "file")})
    ids.update(cont_names.values())
    text = store.names_of(conn, ids)
    cnames = {cid: text.get(nid, "") for cid, nid in cont_names.items()}

    def describe(k) -> dict:
        return _describe(q.group, k, text, names.get(k), cnames)

    rows = [{**describe(k), **_values(v)} for k, v in top]
    if any(other):
        rows.append({**_other(q.group), **_values(other)})
    series: list[dict] = [{**describe(k), **dict(zip(("calls", "bytes", "errors", "lat_ns_sum"), per_key[k]))}
              for k in series_keys]
    rest = [[per_step[i][p] - sum(per_key[k][i][p] for k in series_keys) for p in range(npoints)] for i in range(4)]
    if any(any(r) for r in rest):
        series.append({**_other(q.group), **dict(zip(("calls", "bytes", "errors", "lat_ns_sum"), rest))})
    hi0 = cov[0]["hi"]
    oldest = min((c["oldest"] for c in cov if c["oldest"] is not None), default=None)
    return {
        "from": rfc3339(start), "to": rfc3339(end), "step_s": step, "group": q.group, "order": q.order,
        "host": q.host, "container": q.container,
        "complete_until": rfc3339(hi0) if hi0 else None,
        "oldest": rfc3339(oldest) if oldest is not None else None,
        "intervals": [{"step_s": store.tiers[j].step, "from": rfc3339(a), "to": rfc3339(b)} for j, a, b in segs],
        "totals": _values(all_sum),
        "rows": rows,
        "times": times,
        "series": series,
    }


def _is_other(group: str, key: tuple) -> bool:
    if group == "container":
        return key[1] == OTHER
    if group == "host":
        return False
    return key[-2 if group in ("process", "file") else 1] == OTHER


def _name_ids(group: str, key: tuple, name_id) -> list:
    if group in ("process",):
        return [key[0], key[1], key[3]]
    if group == "file":
        return [key[0], key[1], key[2], key[3]]
    if group == "container":
        return [key[0], key[1], name_id or 0]
    return list(key)


def _container_names(store: HistoryStore, conn, segs: list, cids: set) -> dict:
    """container id (name id) -> the id of its name, from the container rows of the range."""
    wanted = [c for c in cids if c >= 0]
    out: dict = {}
    for i in range(0, len(wanted), 500):
        chunk = wanted[i:i + 500]
        for j, a, b in segs:
            out.update(conn.execute(f"SELECT cid, max(k1) FROM agg_{store.tiers[j].name} WHERE dim=? AND t>=? "
                                    f"AND t<? AND cid IN ({','.join('?' * len(chunk))}) GROUP BY cid",
                                    [CONTAINER, a, b, *chunk]).fetchall())
    return out


def _describe(group: str, key: tuple, text: dict, name_id, cnames: dict) -> dict:
    host = text.get(key[0], "?")
    if group == "host":
        return {"key": host, "host": host}
    if group == "syscall":
        sc = text.get(key[1], "?")
        return {"key": sc, "host": host, "syscall": sc}
    cid = text.get(key[1], "") if key[1] >= 0 else None
    if group == "container":
        return {"key": cid, "host": host, "container_id": cid, "container_name": text.get(name_id, "")}
    cname = cnames.get(key[1], "")
    if group == "process":
        comm = text.get(key[3], "?")
        return {"key": f"{key[2]} {comm}", "host": host, "pid": key[2], "comm": comm, "container_id": cid,
                "container_name": cname}
    path = text.get(key[2], "?")
    return {"key": path, "host": host, "path": path, "file_type": text.get(key[3], ""), "container_id": cid,
            "container_name": cname}


FIELDS = {"process": ("pid", "comm", "container_id", "container_name"),
          "container": ("container_id", "container_name"), "syscall": ("syscall",),
          "file": ("path", "file_type", "container_id", "container_name"), "host": ()}


def _other(group: str) -> dict:
    return {"key": "(other)", "other": True, "host": None, **dict.fromkeys(FIELDS[group])}


def _values(v) -> dict:
    return {"calls": v[0], "bytes": v[1], "errors": v[2], "lat_ns_sum": v[3]}


def _cell(value) -> str | int:
    """A text cell a spreadsheet will not run as a formula (OWASP: lead =, +, -, @, tab, CR with ')."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def to_csv(ans: dict) -> str:
    """One line per step and series key (every key of the rows in CSV mode) with calls > 0."""
    fields = FIELDS[ans["group"]]
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["time", "host", "key", *fields, "calls", "bytes", "errors", "lat_ns_sum"])
    stamps = [rfc3339(t) for t in ans["times"]]
    for s in ans["series"]:
        head = [_cell(s["host"]), _cell(s["key"]), *(_cell(s[f]) for f in fields)]
        for i, stamp in enumerate(stamps):
            if s["calls"][i] or s["errors"][i] or s["bytes"][i]:
                w.writerow([stamp, *head, s["calls"][i], s["bytes"][i], s["errors"][i], s["lat_ns_sum"][i]])
    return out.getvalue()


__all__ = ["Query", "parse", "answer", "to_csv", "rfc3339", "DIMS"]
