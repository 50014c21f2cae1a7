"""The API's browser-facing rules (no browser: the exact headers of each answer).

In process (make_app through harness.wsgi, marked unit): the Host check (DNS rebinding), the Origin
check (CSRF, cross-origin reads), opt-in CORS with exact origins, security headers, the dashboard's
static files (types, caching). Against a real API process: bad --cors-origin at start-up, and the
event stream's ``id:`` / ``Last-Event-ID`` resume, its slot freed when a client leaves, and a prompt
exit with a stream open. tests/test_dashboard.py does the same in a real Chromium.
"""
from __future__ import annotations

import http.client
import re
import signal
import time

import pytest
import requests

from harness.api import ApiInProcess, ApiProcess, Publisher, connect, event
from harness.procs import wait_for

FORM = "application/x-www-form-urlencoded"


@pytest.fixture
def api(tmp_path):
    return ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--max-streams", "2", "--threads", "8")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """(server, publisher) for the stream tests; default heartbeat (10 s), two stream slots."""
    srv = ApiProcess(tmp_path_factory.mktemp("websse") / "ips.sqlite3", "--max-streams", "2", "--threads", "8")
    with srv:
        pub = Publisher(srv.collector)
        connect(srv, pub)
        yield srv, pub
        pub.close()


def host_header(srv: ApiProcess | ApiInProcess, name: str) -> dict:
    return {"Host": f"{name}:{srv.port}"}


# --- Host check ------------------------------------------------------------------------------------------
@pytest.mark.unit
@pytest.mark.parametrize("name", ["evil.example", "127.0.0.1.nip.io", "localhost.evil.example", "10.0.0.1", "[::2]"])
def test_a_loopback_bound_api_refuses_a_foreign_host(api, name):
    api.post("/add_ips", {"add_ips": ["192.0.2.1"]})
    for method, path, body in (("GET", "/", None), ("GET", "/events", None), ("GET", "/stats", None),
                               ("POST", "/clear_ip_list", {"clear_ip_list": True})):
        r = api.request(method, path, json=body, headers=host_header(api, name))
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "is not this server's name" in r.json()["error"] and "--allowed-host" in r.json()["error"]
        assert "Content-Security-Policy" in r.headers
    assert api.ips() == ["192.0.2.1"]
    api.post("/clear_ip_list", {"clear_ip_list": True})


@pytest.mark.unit
@pytest.mark.parametrize("name", ["localhost", "LOCALHOST", "127.0.0.1", "127.0.0.2", "[::1]", "dash.localhost"])
def test_loopback_names_are_accepted(api, name):
    r = api.get("/stats", headers=host_header(api, name))
    assert r.status_code == 200, r.text


@pytest.mark.unit
def test_allowed_host_adds_a_name_and_a_non_loopback_bind_checks_only_when_asked(tmp_path):
    with ApiInProcess.from_args(tmp_path / "a.sqlite3", "--allowed-host", "syswatch.internal") as srv:
        assert srv.get("/stats", headers=host_header(srv, "syswatch.internal")).ok
        assert srv.get("/stats", headers=host_header(srv, "localhost")).ok
        assert srv.get("/stats", headers=host_header(srv, "evil.example")).status_code == 403
    # listening on every interface (e.g. in a container behind a published port): names are not known
    with ApiInProcess.from_args(tmp_path / "b.sqlite3", "--host", "0.0.0.0") as srv:
        assert srv.get("/stats", headers=host_header(srv, "api.example")).ok
    with ApiInProcess.from_args(tmp_path / "c.sqlite3", "--host", "0.0.0.0",
                            env={"SYSWATCH_ALLOWED_HOSTS": "api.example,x.example"}) as srv:
        assert srv.get("/stats", headers=host_header(srv, "x.example")).ok
        assert srv.get("/stats", headers=host_header(srv, "evil.example")).status_code == 403


# --- Origin check: CSRF and cross-origin reads --------------------------------------------------------------
@pytest.mark.unit
def test_a_cross_origin_form_post_cannot_clear_the_list(api):
    """The attack of issue 11: a "simple" cross-origin POST (no preflight) with a JSON body."""
    api.post("/add_ips", {"add_ips": ["192.0.2.7"]})
    for origin in ("http://evil.example", f"http://localhost:{api.port + 1}", "null", f"https://127.0.0.1:{api.port}x"):
        r = api.post("/clear_ip_list", data='{"clear_ip_list": true}',
                          headers={"Content-Type": FORM, "Origin": origin})
        assert r.status_code == 403, (origin, r.text)
        assert "cross-origin request" in r.json()["error"] and "--cors-origin" in r.json()["error"]
        assert "Access-Control-Allow-Origin" not in r.headers
    # no Origin but marked by the browser as sent from another site's page (e.g. a <form> in old engines)
    r = api.post("/clear_ip_list", data='{"clear_ip_list": true}',
                      headers={"Content-Type": FORM, "Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    assert api.ips() == ["192.0.2.7"]

    # the API's own page (same origin), and curl (no Origin): allowed
    for origin in (f"http://127.0.0.1:{api.port}", f"HTTP://127.0.0.1:{api.port}"):
        r = api.post("/print_all_ips", json={"print_all_ips": True},
                          headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 200, r.text
    r = api.post("/clear_ip_list", data='{"clear_ip_list": true}', headers={"Content-Type": FORM})
    assert r.status_code == 200 and api.ips() == []


@pytest.mark.unit
def test_cross_origin_reads_are_refused_and_carry_no_cors_headers(api):
    for path in ("/events", "/stats", "/events/stream", "/metrics"):
        r = api.get(path, headers={"Origin": "http://evil.example"})
        assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers, path
        # <img>/<script> loads from another site send no Origin but Sec-Fetch-Site: refused too
        r = api.get(path, headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"})
        assert r.status_code == 403, path
    # a link from another site to the dashboard (a top-level navigation) still opens it
    r = api.get("/", headers={"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    # a preflight from a foreign origin is refused; a plain OPTIONS is still the JSON 405
    r = api.options("/add_ips", headers={"Origin": "http://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers
    r = api.options("/add_ips")
    assert r.status_code == 405 and "error" in r.json()


# --- CORS, opt-in -------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_cors_is_opt_in_for_exact_origins(tmp_path):
    allowed = "http://localhost:3000"
    with ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--cors-origin", allowed,
                                "--cors-origin", "https://Dash.Example/") as srv:
        r = srv.get("/stats", headers={"Origin": allowed})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == allowed
        assert "Origin" in r.headers["Vary"]
        r = srv.get("/stats", headers={"Origin": "https://dash.example"})
        assert r.headers["Access-Control-Allow-Origin"] == "https://dash.example"
        pre = srv.options("/add_ips", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization"})
        assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == allowed
        assert "POST" in pre.headers["Access-Control-Allow-Methods"]
        assert {"authorization", "content-type", "last-event-id"} <= {
            h.strip().lower() for h in pre.headers["Access-Control-Allow-Headers"].split(",")}
        r = srv.post("/add_ips", json={"add_ips": [5]}, headers={"Origin": allowed})
        assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == allowed
        for other in ("http://localhost:3001", "https://localhost:3000", "http://localhost", "http://evil.example"):
            r = srv.get("/stats", headers={"Origin": other})
            assert r.status_code == 403 and "Access-Control-Allow-Origin" not in r.headers, other
        # same-origin requests get no CORS header
        assert "Access-Control-Allow-Origin" not in srv.get("/stats").headers
    with ApiInProcess.from_args(tmp_path / "env.sqlite3",
                                env={"SYSWATCH_CORS_ORIGINS": "http://a.example, http://b.example:81"}) as srv:
        for origin in ("http://a.example", "http://b.example:81"):
            r = srv.get("/stats", headers={"Origin": origin})
            assert r.headers.get("Access-Control-Allow-Origin") == origin


@pytest.mark.parametrize("value, message", [
    ("*", "wildcards are not allowed"), ("http://*.example", "wildcards are not allowed"),
    ("http://a.example/path", "no path"), ("localhost:3000", "is not an origin"),
    ("ftp://a.example", "is not an origin"),
])
def test_bad_cors_origins_are_refused_at_start(tmp_path, value, message):
    srv = ApiProcess(tmp_path / "ips.sqlite3", "--cors-origin", value)
    srv.start(wait=False)
    assert srv.wait_exit() == 2
    assert "--cors-origin" in srv.output and message in srv.output, srv.output


# --- headers and static files ------------------------------------------------------------------------------------
@pytest.mark.unit
def test_every_answer_has_the_security_headers_and_the_page_has_no_inline_script(api):
    for method, path in (("GET", "/"), ("GET", "/stats"), ("GET", "/nowhere"), ("PUT", "/stats"),
                         ("GET", "/openapi.json")):
        r = api.request(method, path)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
    page = api.get("/").text
    scripts = re.findall(r"<script\b[^>]*>", page)
    assert scripts and all(" src=" in s for s in scripts), scripts
    assert not re.search(r"<script\b[^>]*>\s*[^<\s]", page), "inline script"
    assert not re.search(r"<[^>]*\s(on[a-z]+|style)=", page), "inline event handler or style attribute"
    assert "//" not in re.sub(r"<!--.*?-->", "", page).replace("<!doctype", ""), "an external URL in the page"


@pytest.mark.unit
def test_static_files_have_their_types_and_cache_headers(api):
    page = api.get("/")
    assert page.headers["Cache-Control"] == "no-cache" and page.headers["ETag"]
    again = api.get("/", headers={"If-None-Match": page.headers["ETag"]})
    assert again.status_code == 304 and again.content == b""
    assets = re.findall(r'(?:src|href)="(static/[^"?]+)\?v=([0-9a-f]{16})"', page.text)
    types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    assert {a for a, _ in assets} >= {"static/dashboard.js", "static/dashboard.css",
                                      "static/vendor/uplot/uPlot.iife.min.js", "static/vendor/uplot/uPlot.min.css"}
    for path, version in assets:
        r = api.get(f"/{path}?v={version}")
        assert r.status_code == 200 and r.headers["Content-Type"] == types[path[path.rindex("."):]], path
        assert r.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        plain = api.get(f"/{path}")
        assert plain.headers["Cache-Control"] == "no-cache" and plain.headers["ETag"] == f'"{version}"'
        assert api.get(f"/{path}", headers={"If-None-Match": plain.headers["ETag"]}).status_code == 304
        stale = api.get(f"/{path}?v=0000000000000000")
        assert stale.headers["Cache-Control"] == "no-cache" and stale.content == r.content
    head = api.head("/")
    assert head.status_code == 200 and head.content == b""
    for bad in ("/static/nothing.js", "/static/../server.py", "/static/%2e%2e/server.py", "/static/",
                "/static/vendor/uplot/LICENSE"):
        r = api.get(bad)
        assert r.status_code == 404 and "error" in r.json(), bad


# --- the event stream: ids, resume, slots, shutdown ---------------------------------------------------------------
class SSE:
    """A raw SSE client on http.client: reads events and comments as the server sends them."""

    def __init__(self, srv: ApiProcess, query: str = "", last_event_id: str | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.conn.request("GET", "/events/stream" + query, headers=headers)
        self.resp = self.conn.getresponse()
        self.comments: list[str] = []

    def next_event(self) -> tuple[str | None, str]:
        """(id, data) of the next event; comments seen on the way are kept in ``comments``."""
        ident, data = None, None
        while True:
            line = self.resp.readline().decode().rstrip("\n")
            if not line:
                if data is not None:
                    return ident, data
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
            elif line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data: "):
                data = line[6:]

    def events(self, n: int) -> list[tuple[str, dict]]:
        import json
        return [(i, json.loads(d)) for i, d in (self.next_event() for _ in range(n))]

    def close(self) -> None:
        self.resp.close()  # the socket closes only when the response's file lets go of it too
        self.conn.close()


def streams_open(srv: ApiProcess) -> int:
    return srv.get("/stats").json()["api"]["event_streams"]


def test_stream_events_carry_ids_and_a_reconnect_resumes_after_last_event_id(live):
    srv, pub = live
    wait_for(lambda: streams_open(srv) == 0, 10, 0.1, "no stream open")
    first = SSE(srv, "?comm=resume-a")
    assert first.resp.status == 200
    sent = [event(pid=8100 + i, comm="resume-a", count=i) for i in range(5)]
    pub.events(sent + [event(pid=8200, comm="someone-else")])
    sent = [{**e, "host": pub.host} for e in sent]          # the API adds each event's collector host
    got = first.events(5)
    assert [e for _, e in got] == sent
    ids = [i for i, _ in got]
    epoch = ids[0].split("-")[0]
    seqs = [int(i.split("-")[1]) for i in ids]
    assert all(i.startswith(epoch + "-") for i in ids) and seqs == sorted(seqs) and len(set(seqs)) == 5
    first.close()

    # missed while disconnected: these are in the replay buffer
    missed = [event(pid=8300 + i, comm="resume-a", count=100 + i) for i in range(3)]
    pub.events(missed)
    missed = [{**e, "host": pub.host} for e in missed]
    wait_for(lambda: srv.get("/events", params={"comm": "resume-a"}).json()["count"] >= 8, 10, 0.1, "the API got them")
    wait_for(lambda: streams_open(srv) == 0, 10, 0.05, "the first stream's slot freed")
    again = SSE(srv, "?comm=resume-a", last_event_id=ids[2])
    assert again.resp.status == 200
    replayed = again.events(5)
    assert [e for _, e in replayed] == sent[3:] + missed    # each once, in order, filter applied
    assert [i for i, _ in replayed][:2] == ids[3:]
    resumed = f"resumed after {ids[2]}: 5 buffered events replayed"
    assert any(c.startswith(resumed) for c in again.comments), again.comments
    live_one = event(pid=8400, comm="resume-a")
    pub.events([live_one])
    (live_id, live_ev), = again.events(1)
    assert live_ev == {**live_one, "host": pub.host} and int(live_id.split("-")[1]) > int(replayed[-1][0].split("-")[1])
    again.close()

    for bad, notice in (("garbage", "is not an id of this stream"), ("0123abcd-5", "the API restarted since"),
                        (f"{epoch}-999999999", "no such event yet")):
        wait_for(lambda: streams_open(srv) == 0, 10, 0.05, "the previous stream's slot freed")
        s = SSE(srv, "?comm=resume-a", last_event_id=bad)
        assert s.resp.status == 200
        pub.events([event(pid=8500, comm="resume-a")])
        s.events(1)
        assert any(notice in c for c in s.comments), (bad, s.comments)
        s.close()


def test_a_stream_slot_is_freed_as_soon_as_its_client_leaves(live):
    """The heartbeat stays at its default 10 s: the slot must come back without waiting for it."""
    srv, pub = live
    wait_for(lambda: streams_open(srv) == 0, 15, 0.1, "no stream open")
    clients = [SSE(srv, "?comm=nobody-at-all"), SSE(srv, "?comm=nobody-at-all")]
    wait_for(lambda: streams_open(srv) == 2, 10, 0.05, "two streams open")
    full = requests.get(srv.url("/events/stream"), timeout=10)
    assert full.status_code == 503
    for c in clients:
        c.close()
    left = time.monotonic()
    wait_for(lambda: streams_open(srv) == 0, 5, 0.05, "both slots to be freed")
    print(f"\nstream slots freed {time.monotonic() - left:.2f} s after the clients closed their connections")
    third = SSE(srv)
    assert third.resp.status == 200
    third.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_the_api_exits_promptly_with_a_stream_open(tmp_path, sig):
    srv = ApiProcess(tmp_path / "ips.sqlite3").start()
    try:
        stream = SSE(srv)
        assert stream.resp.status == 200
        wait_for(lambda: streams_open(srv) == 1, 10, 0.05, "the stream open")
        asked = time.monotonic()
        srv.proc.send_signal(sig)
        code = srv.proc.wait(10)
        print(f"\n{sig.name}: exited with {code} {time.monotonic() - asked:.2f} s after the signal, one stream open")
        assert code == 0
        stream.close()
    finally:
        srv.stop()
