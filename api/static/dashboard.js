// syswatch dashboard: reads the API it is served by (same origin) and nothing else.
//
// Every second: GET /stats (aggregates: the charts' rates are computed here from successive
// cumulative totals) and, unless paused, GET /events?limit=50&<filters> (the tail). The page never
// subscribes to the raw event stream, so it stays responsive at 100k events/s on the host.
// A past time range (the "time" selector) shows the same charts and tables from GET /history
// (by syscall, process and container), refreshed every HISTORY_POLL_MS for the "last ..." ranges.
// Fields of the v2 event model (ret, lat_ns, container_*, host, collectors, hosts, path) are shown
// when the API sends them and shown as "–" when it does not. A failed call's ret is shown by its
// errno name, from the API's one errno table (static/errnos.js, built from shared/errnos.py).
"use strict";

(function () {
  const POLL_MS = 1000;
  const WINDOW = 120;          // chart samples kept (two minutes)
  const HEALTH_WINDOW_S = 60;  // lost/dropped/malformed growth within this window raises the warning
  const TAIL_LIMIT = 50;
  const TAIL_FILTERS = ["pid", "comm", "container", "syscall", "uid", "path", "file_type", "min_latency"];
  const HISTORY_POLL_MS = 10000;
  const TOP_ROWS = 10;
  // x ticks: whole seconds, minutes, hours, days (a past range may span a day)
  const TIME_INCRS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const $ = (id) => document.getElementById(id);

  const state = {
    host: "",
    prev: null,            // {t, totals} of the previous /stats answer (same host selection)
    times: [],             // chart x values (unix seconds)
    calls: {},             // syscall -> [calls/s ...]
    bytes: {},             // syscall -> [bytes/s ...]
    p50: {},               // syscall -> [p50 of the calls of each second (ns) ...]
    p99: {},               // syscall -> [p99 ...]
    syscalls: [],          // the series shown, in order of appearance
    charts: {},            // "calls"/"bytes"/"latency" -> uPlot
    health: {},            // collector key -> [{t, lost, dropped, malformed}]
    paused: false,
    filters: {},
    token: null,           // the POST token, if the API wants one (this page's memory only)
    readToken: null,       // the read token, if the API wants one (this page's memory only)
    lastStats: null,
    range: "live",         // "live", "15m", "1h", "1d" or "custom"
    custom: null,          // {from, to}: RFC 3339 of the custom range
    history: null,         // {process, container} answers of the range shown
    historyTimer: null,
    historySeq: 0,         // answers of a range no longer selected are dropped
  };

  // --- formatting -------------------------------------------------------------------------------
  const dash = "–";
  function num(v) { return (typeof v === "number" && isFinite(v)) ? v.toLocaleString("en-US") : dash; }
  function bytes(v) {
    if (typeof v !== "number" || !isFinite(v)) return dash;
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return (i === 0 ? Math.round(v) : v.toFixed(1)) + " " + units[i];
  }
  function rate(v) {
    if (typeof v !== "number" || !isFinite(v)) return dash;
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return String(Math.round(v * 10) / 10);
  }
  function latency(ns) {
    if (typeof ns !== "number" || !isFinite(ns)) return dash;
    if (ns >= 1e9) return (ns / 1e9).toFixed(2) + " s";
    if (ns >= 1e6) return (ns / 1e6).toFixed(2) + " ms";
    if (ns >= 1e3) return (ns / 1e3).toFixed(1) + " µs";
    return Math.round(ns) + " ns";
  }
  function avgLatency(row) {
    if (typeof row.avg_ns === "number" || row.avg_ns === null) return latency(row.avg_ns);  // over measured calls
    return (typeof row.lat_ns_sum === "number" && row.calls > 0) ? latency(row.lat_ns_sum / row.calls) : dash;
  }
  function clock(tsNs) {
    if (typeof tsNs !== "number") return dash;
    const d = new Date(tsNs / 1e6);
    return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
  }
  function container(row) {
    const name = row.container_name || "";
    const id = row.container_id || "";
    if (!name && !id) return row.container_id === "" ? "(host)" : dash;
    return name ? (id ? name + " (" + id.slice(0, 12) + ")" : name) : id.slice(0, 12);
  }
  function text(v) { return (v === undefined || v === null || v === "") ? dash : String(v); }
  const ERRNOS = window.SYSWATCH_ERRNOS || {};   // errno -> [name, message]
  function errnoName(ret) {
    const e = ERRNOS[String(-ret)];
    return e ? e[0] : "errno " + (-ret);
  }
  function retText(ret) {
    if (typeof ret !== "number") return dash;
    return ret < 0 ? errnoName(ret) : num(ret);
  }
  function retTitle(ret) {
    const e = typeof ret === "number" && ret < 0 ? ERRNOS[String(-ret)] : null;
    return e ? e[1] + " (ret " + ret + ")" : "";
  }
  // {"EAGAIN": 990, "EBADF": 8} -> "EAGAIN 990, EBADF 8" (the API sends the most frequent first)
  function errnosText(errnos) {
    const pairs = Object.entries(errnos || {});
    if (!pairs.length) return dash;
    const shown = pairs.slice(0, 3).map(([name, n]) => name + " " + num(n)).join(", ");
    return pairs.length > 3 ? shown + " +" + (pairs.length - 3) : shown;
  }
  function fdText(e) {
    if (e.fd === undefined) return dash;
    return e.path ? e.fd + "<" + e.path + ">" : String(e.fd);
  }
  // A quantile of log2 latency buckets (shared/latency.py): bucket i holds [2^(i-1), 2^i) ns, bucket 0 is 0 ns;
  // the rank is interpolated inside its bucket, as the API and Prometheus do.
  function quantile(buckets, q) {
    let total = 0;
    for (const n of buckets) total += n;
    if (!total) return null;
    const rank = Math.max(1, Math.ceil(q * total));
    let seen = 0;
    for (let i = 0; i < buckets.length; i++) {
      const n = buckets[i];
      if (n && seen + n >= rank) {
        if (i === 0) return 0;
        const lo = 2 ** (i - 1), hi = 2 ** i;
        return Math.min(lo + (hi - lo) * (rank - seen) / n, hi - 1);
      }
      seen += n;
    }
    return null;
  }
  function bucketDelta(now, before) {
    const out = [];
    for (let i = 0; i < (now || []).length; i++) out.push(Math.max(0, now[i] - ((before || [])[i] || 0)));
    return out;
  }

  // DOM rows are built with textContent only: process names and errors are data, never markup.
  function fillTable(tbody, rows, cells) {
    const frag = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      if (row.other) tr.className = "other";  // /history's "(other)": every key not listed
      for (const [value, cls, title] of cells(row)) {
        const td = document.createElement("td");
        td.textContent = value;
        if (cls) td.className = cls;
        if (title) td.title = title;
        tr.appendChild(td);
      }
      frag.appendChild(tr);
    }
    tbody.replaceChildren(frag);
  }

  // --- API calls ----------------------------------------------------------------------------------
  async function getJSON(path) {
    const headers = { "Accept": "application/json" };
    const token = state.readToken || state.token;   // the POST token may read too
    if (token) headers["Authorization"] = "Bearer " + token;
    const r = await fetch(path, { cache: "no-store", headers });
    const body = await r.json().catch(() => ({ error: "answer is not JSON (HTTP " + r.status + ")" }));
    if (r.status === 401) needReadToken(body);
    if (!r.ok) throw new Error(body.error || ("HTTP " + r.status));
    if (token) $("read-token-form").hidden = true;
    return body;
  }

  function needReadToken(body) {
    const form = $("read-token-form");
    if (form.hidden) {
      form.hidden = false;
      $("read-token-input").focus();
    }
    $("read-token-status").textContent = state.readToken ? (body.error || "wrong token") : "";
  }

  async function postJSON(path, payload) {
    const headers = { "Content-Type": "application/json", "Accept": "application/json" };
    if (state.token) headers["Authorization"] = "Bearer " + state.token;
    const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(payload), cache: "no-store" });
    const body = await r.json().catch(() => ({ error: "answer is not JSON (HTTP " + r.status + ")" }));
    return { status: r.status, body };
  }

  // --- /stats: header, charts, tables, health --------------------------------------------------------
  function collectorsOf(s) {
    if (Array.isArray(s.collectors)) return s.collectors;
    // v1 API: one collector, described by top-level fields
    return [{ endpoint: s.collector || "", host: s.collector_status ? s.collector_status.host : "",
              connected: s.connected, last_message_age_s: s.last_message_age_s, status: s.collector_status || null }];
  }

  function updateHosts(s) {
    const hosts = Array.isArray(s.hosts) ? s.hosts : [];
    const sel = $("host");
    const have = Array.from(sel.options).slice(1).map((o) => o.value);
    if (hosts.join("\n") === have.join("\n")) return;
    const keep = sel.value;
    sel.replaceChildren(new Option("all hosts", ""));
    for (const h of hosts) sel.appendChild(new Option(h, h));
    sel.value = hosts.includes(keep) ? keep : "";
  }

  function pushSample(s, now) {
    const totals = s.totals || {};
    for (const sc of Object.keys(totals)) {
      if (!state.syscalls.includes(sc)) {
        state.syscalls.push(sc);
        state.calls[sc] = state.times.map(() => null);
        state.bytes[sc] = state.times.map(() => null);
        state.p50[sc] = state.times.map(() => null);
        state.p99[sc] = state.times.map(() => null);
        const opt = new Option(sc, sc);
        $("f-syscall").appendChild(opt);
        rebuildCharts();
      }
    }
    const prev = state.prev;
    state.prev = { t: now, totals };
    if (!prev) return;
    const dt = (now - prev.t) / 1000;
    if (dt <= 0) return;
    state.times.push(now / 1000);
    for (const sc of state.syscalls) {
      const a = totals[sc], b = prev.totals[sc];
      let c = null, y = null, p50 = null, p99 = null;
      if (a && b) {
        c = (a.calls - b.calls) / dt;
        y = (a.bytes - b.bytes) / dt;
        if (c < 0 || y < 0) { c = null; y = null; }  // the API restarted: its counters began again
        else if (Array.isArray(a.lat_hist)) {          // the calls of this second: the buckets' growth
          const delta = bucketDelta(a.lat_hist, b.lat_hist);
          p50 = quantile(delta, 0.5);
          p99 = quantile(delta, 0.99);
          if (p50 !== null) p50 = Math.max(1, p50);   // a log scale: 0 ns is drawn as 1 ns
          if (p99 !== null) p99 = Math.max(1, p99);
        }
      } else if (a) { c = 0; y = 0; }
      state.calls[sc].push(c);
      state.bytes[sc].push(y);
      state.p50[sc].push(p50);
      state.p99[sc].push(p99);
    }
    while (state.times.length > WINDOW) {
      state.times.shift();
      for (const sc of state.syscalls) {
        state.calls[sc].shift(); state.bytes[sc].shift(); state.p50[sc].shift(); state.p99[sc].shift();
      }
    }
    drawCharts();
  }

  function chartOpts(el, unitFmt) {
    return {
      width: Math.max(300, el.clientWidth - 4), height: 220,
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{ space: 70, incrs: TIME_INCRS }, { size: 90, values: (u, vals) => vals.map(unitFmt) }],
      series: [{}].concat(state.syscalls.map((sc, i) => ({
        label: sc, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: false,
        value: (u, v) => v === null || v === undefined ? dash : unitFmt(v),
      }))),
    };
  }

  function latencyOpts(el) {
    const opts = chartOpts(el, latency);
    opts.scales.y = { distr: 3, log: 10 };     // microseconds and seconds on one chart
    opts.series = [{}];
    state.syscalls.forEach((sc, i) => {
      for (const [q, dashStyle] of [["p50", [6, 4]], ["p99", null]]) {
        opts.series.push({ label: q + " " + sc, stroke: COLORS[i % COLORS.length], width: q === "p99" ? 2 : 1,
                           dash: dashStyle || undefined, spanGaps: false,
                           value: (u, v) => v === null || v === undefined ? dash : latency(v) });
      }
    });
    return opts;
  }

  function rebuildCharts() {
    if (typeof uPlot === "undefined") return;
    for (const [key, fmt] of [["calls", (v) => rate(v) + "/s"], ["bytes", (v) => bytes(v) + "/s"], ["latency", null]]) {
      const el = $("chart-" + key);
      if (state.charts[key]) state.charts[key].destroy();
      el.replaceChildren();
      state.charts[key] = new uPlot(key === "latency" ? latencyOpts(el) : chartOpts(el, fmt), chartData(key), el);
    }
  }

  function chartData(key) {
    if (key === "latency") {
      return [state.times.slice()].concat(...state.syscalls.map((sc) => [state.p50[sc].slice(), state.p99[sc].slice()]));
    }
    return [state.times.slice()].concat(state.syscalls.map((sc) => state[key][sc].slice()));
  }

  function seriesOf(key) {
    return key === "latency" ? state.syscalls.flatMap((sc) => [state.p50[sc], state.p99[sc]])
                             : state.syscalls.map((sc) => state[key][sc]);
  }

  function drawCharts() {
    for (const key of ["calls", "bytes", "latency"]) {
      const el = $("chart-" + key);
      const chart = state.charts[key];
      if (chart) {
        chart.setData(chartData(key));
        // legend: the newest values while the mouse is not over the chart
        if (state.times.length && !(chart.cursor.left >= 0)) chart.setLegend({ idx: state.times.length - 1 });
      }
      let max = 0;
      for (const series of seriesOf(key)) for (const v of series) if (v > max) max = v;
      el.dataset.samples = String(state.times.length);
      el.dataset.max = String(max);
    }
  }

  function showProcs(procs) {
    fillTable($("top-procs").tBodies[0], procs, (p) => [
      [text(p.host)], [text(p.pid)], [p.other ? "(other)" : text(p.comm)], [p.other ? dash : container(p)],
      [num(p.calls), "num"], [bytes(p.bytes), "num"], [num(p.errors), p.errors > 0 ? "num bad" : "num"],
      [avgLatency(p), "num"], [errnosText(p.errnos)],
    ]);
  }

  function showContainers(conts) {
    $("no-containers").hidden = Array.isArray(conts);
    fillTable($("top-containers").tBodies[0], conts || [], (c) => [
      [text(c.host)], [c.other ? "(other)" : (c.container_id ? c.container_id.slice(0, 12) : "(host)")],
      [text(c.container_name)], [num(c.calls), "num"], [bytes(c.bytes), "num"],
      [num(c.errors), c.errors > 0 ? "num bad" : "num"], [avgLatency(c), "num"], [latency(c.p99_ns), "num"],
      [errnosText(c.errnos)],
    ]);
  }

  function showFilesAndLatency(s) {
    const fileOrder = $("file-order").value;
    const files = (fileOrder === "bytes" ? s.top_files_by_bytes : s.top_files_by_calls) || [];
    $("no-files").hidden = files.length > 0;
    fillTable($("top-files").tBodies[0], files, (f) => [
      [text(f.host)], [text(f.file_type)], [text(f.path)], [num(f.calls), "num"], [bytes(f.bytes), "num"],
      [num(f.errors), f.errors > 0 ? "num bad" : "num"], [avgLatency(f), "num"],
    ]);
    const totals = s.totals || {};
    let unmeasured = 0;
    const lat = Object.entries(totals).map(([sc, t]) => {
      unmeasured += t.lat_unmeasured || 0;
      return { sc, ...t };
    });
    $("lat-unmeasured").textContent = num(unmeasured);
    fillTable($("latency").tBodies[0], lat, (t) => [
      [t.sc], [num(t.calls), "num"], [latency(t.p50_ns), "num"], [latency(t.p90_ns), "num"],
      [latency(t.p99_ns), "num"], [latency(t.max_ns), "num"], [num(t.errors), t.errors > 0 ? "num bad" : "num"],
      [errnosText(t.errnos)],
    ]);
  }

  function updateTables(s) {
    const procOrder = $("proc-order").value;
    showProcs((procOrder === "bytes" ? s.top_processes_by_bytes : s.top_processes_by_calls) || []);
    const contOrder = $("cont-order").value;
    showContainers(contOrder === "bytes" ? s.top_containers_by_bytes : s.top_containers_by_calls);
    showFilesAndLatency(s);
  }

  function updateHealth(s, now) {
    const collectors = collectorsOf(s);
    const warnings = [];
    const tSec = now / 1000;
    for (const c of collectors) {
      const key = (c.endpoint || "") + "|" + (c.host || "");
      const st = c.status || {};
      const samples = state.health[key] || (state.health[key] = []);
      samples.push({ t: tSec, lost: st.lost_total, dropped: st.dropped_total, malformed: st.malformed_total });
      while (samples.length > 2 && tSec - samples[0].t > HEALTH_WINDOW_S) samples.shift();
      const first = samples[0], last = samples[samples.length - 1];
      const name = c.host || c.endpoint || "collector";
      for (const field of ["lost", "dropped", "malformed"]) {
        const grew = (typeof last[field] === "number" && typeof first[field] === "number") ? last[field] - first[field] : 0;
        if (grew > 0) warnings.push(name + ": " + grew.toLocaleString("en-US") + " events " + field +
                                    " in the last " + Math.round(Math.min(HEALTH_WINDOW_S, last.t - first.t) || 1) + " s");
      }
      c._grew = samples.length > 1 && ["lost", "dropped", "malformed"].some((f) => last[f] > first[f]);
      if (!c.connected) warnings.push(name + ": not connected" + (c.last_message_age_s != null
        ? " (last message " + Math.round(c.last_message_age_s) + " s ago)" : " (no message received yet)"));
    }
    fillTable($("collectors").tBodies[0], collectors, (c) => {
      const st = c.status || {};
      return [[text(c.endpoint)], [text(c.host || st.host)], [c.connected ? "connected" : "not connected", c.connected ? "good" : "bad"],
              [text(st.probe)], [num(st.events_total), "num"], [num(st.lost_total), c._grew ? "num bad" : "num"],
              [num(st.dropped_total), c._grew ? "num bad" : "num"], [num(st.malformed_total), c._grew ? "num bad" : "num"]];
    });
    const api = s.api || {};
    const apiBits = [];
    if (typeof api.events_not_received === "number") apiBits.push("events not received by the API: " + num(api.events_not_received));
    if (typeof api.malformed_messages === "number") apiBits.push("malformed messages: " + num(api.malformed_messages));
    if (typeof api.sse_dropped_events === "number") apiBits.push("events dropped for slow streams: " + num(api.sse_dropped_events));
    const h = s.history;
    if (h && typeof h.disk_bytes === "number") {
      apiBits.push("history: " + bytes(h.disk_bytes) + " of " + bytes(h.max_bytes) + ", " + h.state);
      if (h.error) warnings.push("history store: " + h.error);
    }
    $("api-counters").textContent = apiBits.join(" · ");
    const box = $("warning");
    box.hidden = warnings.length === 0;
    box.textContent = warnings.length ? "⚠ " + warnings.join("\n⚠ ") : "";
  }

  async function pollStats() {
    try {
      const q = state.host ? "?host=" + encodeURIComponent(state.host) : "";
      const s = await getJSON("stats" + q);
      const now = Date.now();
      state.lastStats = s;
      updateHosts(s);
      const conn = $("conn");
      const anyConnected = collectorsOf(s).some((c) => c.connected);
      conn.textContent = anyConnected ? "collector connected" : "collector not connected";
      conn.className = "badge " + (anyConnected ? "ok" : "bad");
      $("rate").textContent = rate(s.events_per_s) + " events/s · " + num(s.events_received) + " received";
      if (state.range === "live") {
        pushSample(s, now);
        updateTables(s);
      }
      updateHealth(s, now);
    } catch (err) {
      const conn = $("conn");
      conn.textContent = "API unreachable: " + err.message;
      conn.className = "badge bad";
    }
  }

  // --- past ranges: /history -------------------------------------------------------------------------
  function rangeParams() {
    if (state.range === "custom") return state.custom;
    return { from: "-" + state.range, to: "now" };
  }

  function historyURL(group, extra) {
    const params = new URLSearchParams(rangeParams());
    params.set("group", group);
    if (state.host) params.set("host", state.host);
    for (const [k, v] of Object.entries(extra)) params.set(k, v);
    return "history?" + params.toString();
  }

  function resetSeries() {
    state.prev = null;
    state.times = [];
    for (const sc of state.syscalls) { state.calls[sc] = []; state.bytes[sc] = []; state.p50[sc] = []; state.p99[sc] = []; }
  }

  // The charts from a group=syscall answer: per step, calls/s and bytes/s of each syscall (summed over hosts).
  function historyCharts(a) {
    const sums = {};
    for (const sr of a.series) {
      if (sr.other) continue;
      const sc = sr.syscall;
      if (!sums[sc]) sums[sc] = { calls: a.times.map(() => 0), bytes: a.times.map(() => 0) };
      sr.calls.forEach((v, i) => { sums[sc].calls[i] += v; });
      sr.bytes.forEach((v, i) => { sums[sc].bytes[i] += v; });
    }
    let added = false;
    for (const sc of Object.keys(sums)) {
      if (!state.syscalls.includes(sc)) {
        state.syscalls.push(sc);
        $("f-syscall").appendChild(new Option(sc, sc));
        added = true;
      }
    }
    state.times = a.times.slice();
    for (const sc of state.syscalls) {
      const s = sums[sc];
      state.calls[sc] = s ? s.calls.map((v) => v / a.step_s) : a.times.map(() => 0);
      state.bytes[sc] = s ? s.bytes.map((v) => v / a.step_s) : a.times.map(() => 0);
      state.p50[sc] = a.times.map(() => null);   // history keeps no latency distribution (yet)
      state.p99[sc] = a.times.map(() => null);
    }
    if (added) rebuildCharts();
    drawCharts();
  }

  function clockUTC(iso) { return iso ? iso.replace("T", " ").replace("Z", " UTC") : dash; }

  function historyStatus(a, message, bad) {
    const el = $("range-status");
    el.hidden = false;
    el.className = "range-status" + (bad ? " bad" : "");
    el.dataset.mode = bad ? "error" : "history";
    if (message) { el.textContent = message; return; }
    const tiers = a.intervals.map((i) => i.step_s + " s").filter((v, i, all) => all.indexOf(v) === i);
    el.textContent = "history " + clockUTC(a.from) + " – " + clockUTC(a.to) + " · " + a.step_s + " s steps" +
      (tiers.length ? " · from the " + tiers.join(" and ") + " intervals" : " · no data recorded in this range") +
      " · " + num(a.totals.calls) + " calls, " + bytes(a.totals.bytes) + " moved, " + num(a.totals.errors) + " errors" +
      (a.complete_until ? " · recorded until " + clockUTC(a.complete_until) : "");
    el.dataset.from = a.from;
    el.dataset.to = a.to;
  }

  async function loadHistory() {
    if (state.range === "live") return;
    const seq = ++state.historySeq;
    const procOrder = $("proc-order").value, contOrder = $("cont-order").value;
    try {
      const [sc, procs, conts] = await Promise.all([
        getJSON(historyURL("syscall", { series: "50", limit: "50" })),
        getJSON(historyURL("process", { order: procOrder, limit: String(TOP_ROWS), series: "0" })),
        getJSON(historyURL("container", { order: contOrder, limit: String(TOP_ROWS), series: "0" })),
      ]);
      if (seq !== state.historySeq || state.range === "live") return;  // another range was chosen meanwhile
      state.history = { process: procs, container: conts };
      historyCharts(sc);
      showProcs(procs.rows);
      showContainers(conts.rows);
      historyStatus(sc);
    } catch (err) {
      if (seq === state.historySeq) historyStatus(null, "history: " + err.message, true);
    }
  }

  function toInput(d) {  // a Date as a datetime-local value (the browser's local time)
    const p = (n) => String(n).padStart(2, "0");
    return d.getFullYear() + "-" + p(d.getMonth() + 1) + "-" + p(d.getDate()) + "T" + p(d.getHours()) + ":" +
      p(d.getMinutes()) + ":" + p(d.getSeconds());
  }

  function chooseRange(value) {
    state.range = value;
    clearInterval(state.historyTimer);
    state.historyTimer = null;
    state.historySeq++;
    resetSeries();
    drawCharts();
    $("range-custom").hidden = value !== "custom";
    if (value === "live") {
      $("range-status").hidden = true;
      $("range-status").dataset.mode = "live";
      if (state.lastStats) updateTables(state.lastStats);
      return;
    }
    fillTable($("top-procs").tBodies[0], [], () => []);
    fillTable($("top-containers").tBodies[0], [], () => []);
    if (value === "custom") {
      if (!$("range-from").value) {
        const now = new Date();
        $("range-from").value = toInput(new Date(now.getTime() - 3600e3));
        $("range-to").value = toInput(now);
      }
      historyStatus(null, "choose a range and press show", false);
      return;
    }
    loadHistory();
    state.historyTimer = setInterval(loadHistory, HISTORY_POLL_MS);
  }

  function applyCustom() {
    const from = new Date($("range-from").value), to = new Date($("range-to").value);
    if (isNaN(from) || isNaN(to)) return historyStatus(null, "give both times", true);
    state.custom = { from: from.toISOString().replace(/\.\d+Z$/, "Z"), to: to.toISOString().replace(/\.\d+Z$/, "Z") };
    state.historySeq++;
    loadHistory();
  }

  // --- the tail -----------------------------------------------------------------------------------------
  function readFilters() {
    const f = {};
    for (const name of TAIL_FILTERS) {
      const v = $("f-" + name).value.trim();
      if (v) f[name] = v;
    }
    if ($("f-failed").checked) f.failed = "1";
    return f;
  }

  async function pollTail() {
    if (state.paused) return;
    const params = new URLSearchParams({ limit: String(TAIL_LIMIT) });
    for (const [k, v] of Object.entries(state.filters)) params.set(k, v);
    if (state.host) params.set("host", state.host);
    try {
      const body = await getJSON("events?" + params.toString());
      if (state.paused) return;
      const events = (body.events || []).slice().reverse();  // newest first
      fillTable($("tail").tBodies[0], events, (e) => [
        [clock(e.ts_ns)], [text(e.host)], [text(e.pid)], [text(e.tid)], [text(e.comm)], [text(e.syscall)],
        [fdText(e)], [num(e.count), "num"],
        [retText(e.ret), e.ret < 0 ? "num bad" : "num", retTitle(e.ret)], [latency(e.lat_ns), "num"],
        [container(e)],
      ]);
      const shown = Object.entries(state.filters).map(([k, v]) => k + "=" + v).join(", ");
      $("tail-status").textContent = events.length + " events" + (shown ? " (" + shown + ")" : "");
    } catch (err) {
      $("tail-status").textContent = "tail: " + err.message;
    }
  }

  // --- the IP list ------------------------------------------------------------------------------------
  function parseIps(raw) {
    return raw.split(/[\s,]+/).filter(Boolean).map((x) => /^\d+$/.test(x) ? Number(x) : x);
  }

  function needToken(body) {
    $("token-form").hidden = false;
    $("token-input").focus();
    ipStatus(body.error || "this API requires a token", true);
  }

  function ipStatus(message, bad) {
    const el = $("ip-status");
    el.textContent = message;
    el.className = bad ? "warning" : "muted";
  }

  function showIps(ips, total) {
    const frag = document.createDocumentFragment();
    for (const ip of ips) {
      const li = document.createElement("li");
      li.textContent = String(ip);
      frag.appendChild(li);
    }
    $("ip-list").replaceChildren(frag);
    $("ip-count").textContent = "(" + num(total) + ")";
  }

  async function ipCall(path, payload, after) {
    try {
      const { status, body } = await postJSON(path, payload);
      if (status === 401) return needToken(body);
      if (status !== 200) return ipStatus(body.error || ("HTTP " + status), true);
      $("token-form").hidden = true;
      await after(body);
    } catch (err) {
      ipStatus("IP list: " + err.message, true);
    }
  }

  function refreshIps(message) {
    return ipCall("print_all_ips", { print_all_ips: true }, (b) => {
      showIps(b.ips, b.total_ips);
      ipStatus(message || b.message, false);
    });
  }

  // --- wiring ----------------------------------------------------------------------------------------
  function loop(fn) {
    const run = async () => { await fn(); setTimeout(run, POLL_MS); };
    run();
  }

  function init() {
    $("host").addEventListener("change", (e) => {
      state.host = e.target.value;
      resetSeries();  // rates of another selection are not comparable
      drawCharts();
      pollTail();
      if (state.range !== "live" && (state.range !== "custom" || state.custom)) loadHistory();
    });
    const reorder = () => {
      if (state.range === "live") { if (state.lastStats) updateTables(state.lastStats); }
      else if (state.range !== "custom" || state.custom) loadHistory();
    };
    $("proc-order").addEventListener("change", reorder);
    $("cont-order").addEventListener("change", reorder);
    $("file-order").addEventListener("change", () => state.lastStats && showFilesAndLatency(state.lastStats));
    $("range").addEventListener("change", (e) => chooseRange(e.target.value));
    $("range-custom").addEventListener("submit", (e) => { e.preventDefault(); applyCustom(); });
    $("tail-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.filters = readFilters();
      pollTail();
    });
    $("f-clear").addEventListener("click", () => {
      for (const name of TAIL_FILTERS) $("f-" + name).value = "";
      $("f-failed").checked = false;
      state.filters = {};
      pollTail();
    });
    $("tail-pause").addEventListener("click", (e) => {
      state.paused = !state.paused;
      e.target.textContent = state.paused ? "resume" : "pause";
      e.target.classList.toggle("active", state.paused);
      if (state.paused) $("tail-status").textContent = "paused";
      else pollTail();
    });
    $("ip-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const ips = parseIps($("ip-input").value);
      if (!ips.length) return ipStatus("type one or more addresses, separated by commas or spaces", true);
      ipCall("add_ips", { add_ips: ips }, (b) => {
        $("ip-input").value = "";
        const ignored = (b.ignored_ips || []).length;
        return refreshIps("added " + b.added_ips.length + (ignored ? ", " + ignored + " already listed" : ""));
      });
    });
    $("ip-refresh").addEventListener("click", () => refreshIps());
    $("ip-clear").addEventListener("click", () => {
      if (!window.confirm("Remove every address from the IP list?")) return;
      ipCall("clear_ip_list", { clear_ip_list: true }, () => refreshIps("list cleared"));
    });
    $("read-token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.readToken = $("read-token-input").value.trim() || null;  // kept in this page's memory only
      $("read-token-input").value = "";
      $("read-token-status").textContent = "";
      pollStats();
      pollTail();
    });
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("token-input").value.trim() || null;  // kept in this page's memory only
      $("token-input").value = "";
      refreshIps();
    });
    window.addEventListener("resize", () => {
      for (const key of ["calls", "bytes", "latency"]) {
        const chart = state.charts[key];
        if (chart) chart.setSize({ width: Math.max(300, $("chart-" + key).clientWidth - 4), height: 220 });
      }
    });
    rebuildCharts();
    loop(pollStats);
    loop(pollTail);
    refreshIps();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
