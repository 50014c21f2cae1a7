"""The dashboard in a real headless Chromium, fed by a real collector (bpftrace) through a real API.

The collector traces only two processes the tests start (``--comm``), with distinctive names, so
what other processes on a busy machine do cannot crowd them out of the tables. Everything the
page shows comes from the API's /stats and /events, polled by the page itself.

Also in the browser: a page of another site (``http://evil.test:<port>``) tries to clear the IP
list, add to it and read events and the stream, and a DNS-rebinding name for 127.0.0.1
(``rebind.test``) tries to load the dashboard; the API refuses them all (its access log shows the
403s, so the browser did send them). With ``--cors-origin`` that same site may.

The screenshot is saved in the test's tmp dir, and to $SYSWATCH_SCREENSHOT when set:
    SYSWATCH_SCREENSHOT=docs/img/dashboard.png python3 -m pytest tests/test_dashboard.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import pytest
import requests

from harness.api import ApiProcess, Publisher, connect
from harness.browser import OtherOrigin, browser_missing, console_errors, save_screenshot, start_chromium
from harness.collector import CollectorProcess
from harness.procs import wait_for
from tests.conftest import have, is_root, require

TAG = f"{os.getpid() % 10000:04d}"
ALPHA = f"swdash-a{TAG}"   # comm names: at most 15 bytes
BETA = f"swdash-b{TAG}"

# A process that renames itself (the kernel's comm) and then writes and reads one block every
# ``pause`` seconds until killed. Steady single calls, not bursts: the tail shows the newest 50
# events, and the collector publishes what one read of bpftrace's output holds as one batch per
# syscall, so a looper's 80-call burst arrived as 40 writes + 40 reads and filled every 50-row window
# alone. Which looper a poll showed then depended on the phase between the two loopers' bursts and
# the page's 1 s poll, whose beat can last longer than any wait (issue 32: 30 s of one looper). At
# one call each way per 10 ms, a window spans ~12 calls of each looper, whatever the phase.
# With a 4th argument N, each call pair is followed by N reads of a closed descriptor (EBADF).
LOOPER = r"""
import ctypes, os, sys, time
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(sys.argv[1].encode()), 0, 0, 0)
w, r, size = os.open("/dev/null", os.O_WRONLY), os.open("/dev/zero", os.O_RDONLY), int(sys.argv[2])
pause, failing = float(sys.argv[3]), int(sys.argv[4])
closed = os.dup(w)
os.close(closed)
print("ready", flush=True)
while True:
    os.write(w, b"x" * size)
    os.read(r, size)
    for _ in range(failing):
        try:
            os.read(closed, 1)
        except OSError:
            pass
    time.sleep(pause)
"""


class Looper:
    def __init__(self, name: str, size: int, pause: float = 0.01, failing: int = 0):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, "-c", LOOPER, name, str(size), str(pause), str(failing)],
                                     stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(collector, api, driver, loopers): a collector tracing only ALPHA and BETA, the API, a browser."""
    require(is_root(), "run as root (bpftrace needs it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-test.sh does it)")
    why = browser_missing()
    require(why is None, why or "")
    tmp = tmp_path_factory.mktemp("dashboard")
    collector = api = driver = None
    loopers: dict[str, Looper] = {}
    try:
        # --latency: the latency views need lat_ns (off by default since issue 24)
        collector = CollectorProcess(tmp, "--comm", ALPHA, "--comm", BETA, "--echo-rate", "0", "--latency")
        api = ApiProcess(tmp / "ips.sqlite3", collector=collector.endpoint).start()
        wait_for(lambda: api.get("/healthz").json()["collector_connected"], 20, 0.2, "the API to hear the collector")
        driver = start_chromium(tmp / "profile")
        yield collector, api, driver, loopers
    finally:
        for looper in loopers.values():
            looper.stop()
        if driver is not None:
            driver.quit()
        if api is not None:
            api.stop()
        if collector is not None:
            collector.kill()


def ensure_loopers(loopers: dict) -> None:
    """Both loopers running (a test run alone does not have the earlier tests' ones); beta also
    fails one read per call pair (EBADF), for the errno views."""
    for key, name, size, failing in (("alpha", ALPHA, 512, 0), ("beta", BETA, 300, 1)):
        if key not in loopers:
            loopers[key] = Looper(name, size, failing=failing)


def leave(driver) -> list[str]:
    """Leave the page (it would go on polling an API the test stops); returns its console errors."""
    driver.get("about:blank")
    return console_errors(driver)


def js(driver, script: str, *args):
    return driver.execute_script(script, *args)


def rows(driver, table_id: str) -> list[list[str]]:
    return js(driver, "return Array.from(document.querySelectorAll('#' + arguments[0] + ' tbody tr'))"
                      ".map(tr => Array.from(tr.cells).map(td => td.textContent))", table_id)


def text(driver, element_id: str) -> str:
    return js(driver, "return document.getElementById(arguments[0]).textContent", element_id)


def test_page_loads_from_the_api_with_no_console_errors(stack):
    _, api, driver, _ = stack
    driver.get(api.url("/"))
    assert driver.title == "syswatch dashboard"
    wait_for(lambda: text(driver, "conn") == "collector connected", 15, 0.2, "the page to show the collector connected")
    # every resource came from the API itself (CSP: no inline script, no other host)
    urls = js(driver, "return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(api.base + "/") for u in urls), urls
    assert js(driver, "return typeof uPlot") == "function"
    assert console_errors(driver) == []


def test_a_process_the_test_starts_shows_in_the_top_processes_within_10_s(stack):
    _, api, driver, loopers = stack
    started = time.monotonic()
    loopers["alpha"] = Looper(ALPHA, 512)
    wait_for(lambda: any(r[2] == ALPHA and r[1] == str(loopers["alpha"].pid) for r in rows(driver, "top-procs")),
             10, 0.2, f"{ALPHA} in the page's top processes table")
    print(f"\n{ALPHA} shown {time.monotonic() - started:.1f} s after it started")
    row = next(r for r in rows(driver, "top-procs") if r[2] == ALPHA)
    assert int(row[4].replace(",", "")) > 0              # calls
    assert row[5].endswith("B") or row[5].endswith("iB")  # bytes, formatted


def test_charts_have_data(stack):
    _, api, driver, loopers = stack
    ensure_loopers(loopers)
    if not driver.current_url.startswith(api.base):
        driver.get(api.url("/"))

    def charted():
        state = js(driver, "return ['calls', 'bytes'].map(k => {const el = document.getElementById('chart-' + k);"
                           " return [Number(el.dataset.samples), Number(el.dataset.max),"
                           " el.querySelectorAll('canvas').length]})")
        return all(samples >= 3 and peak > 0 and canvases >= 1 for samples, peak, canvases in state) and state
    state = wait_for(charted, 15, 0.3, "both charts to have samples above 0")
    # the looper moves 512-byte reads and writes: bytes/s is far above calls/s
    assert state[1][1] > state[0][1]
    legend = js(driver, "return Array.from(document.querySelectorAll('#chart-calls .u-legend .u-series'))"
                        ".map(e => e.textContent)")
    assert any("read" in s for s in legend) and any("write" in s for s in legend), legend


def wait_tail_shows_all(driver, comms: set, timeout: float = 15) -> None:
    """Until one poll of the page shows every name in ``comms`` in its tail, with no filter named in
    the tail's status. The loopers' calls interleave far finer than the tail's 50 rows, so every
    poll shows both; a timeout lists the last tails seen (status, rows per name)."""
    seen: list = []

    def check() -> bool:
        status, counts = text(driver, "tail-status"), Counter(r[4] for r in rows(driver, "tail"))
        if not seen or seen[-1] != (status, counts):
            seen.append((status, counts))
        return "(" not in status and set(counts) >= comms
    try:
        wait_for(check, timeout, 0.3, f"{sorted(comms)} in one unfiltered tail")
    except AssertionError as e:
        raise AssertionError(f"{e}; the last tails seen: {[(s, dict(c)) for s, c in seen[-8:]]}") from None


def test_tail_filter_and_pause(stack):
    _, api, driver, loopers = stack
    ensure_loopers(loopers)
    if not driver.current_url.startswith(api.base):
        driver.get(api.url("/"))
    wait_tail_shows_all(driver, {ALPHA, BETA})

    driver.find_element("id", "f-comm").send_keys(BETA)
    driver.find_element("id", "f-syscall").send_keys("write")
    driver.find_element("id", "f-apply").click()

    def only_beta_writes():
        tail = rows(driver, "tail")
        return tail and all(r[4] == BETA and r[5] == "write" and r[7] == "300" for r in tail) and tail
    tail = wait_for(only_beta_writes, 20, 0.2, f"the tail to show only {BETA}'s writes")
    assert all(r[2] == str(loopers["beta"].pid) for r in tail)
    assert f"comm={BETA}" in text(driver, "tail-status")

    driver.find_element("id", "tail-pause").click()
    time.sleep(1.5)   # a poll already on its way when pause was clicked may still land
    frozen = rows(driver, "tail")
    time.sleep(2.5)  # two polls would have replaced the rows: the looper writes all the time
    assert rows(driver, "tail") == frozen and text(driver, "tail-status") == "paused"
    driver.find_element("id", "tail-pause").click()
    wait_for(lambda: rows(driver, "tail") != frozen, 20, 0.2, "the tail to move again after resume")

    driver.find_element("id", "f-clear").click()
    wait_tail_shows_all(driver, {ALPHA, BETA})


def test_latency_distribution_and_errno_names_are_shown(stack):
    """Issue 25's view: per-syscall percentiles (a table and the p50/p99 chart), failed calls by errno
    name in the top processes and the tail, and the tail's failed-only filter."""
    _, api, driver, loopers = stack
    ensure_loopers(loopers)
    if not driver.current_url.startswith(api.base):
        driver.get(api.url("/"))

    def latency_rows():
        table = {r[0]: r for r in rows(driver, "latency")}
        return "read" in table and table["read"][4] != "–" and table
    table = wait_for(latency_rows, 15, 0.3, "the latency table with percentiles")
    p50, p99 = table["read"][2], table["read"][4]
    assert p50.endswith(("ns", "µs", "ms", " s")) and p99.endswith(("ns", "µs", "ms", " s"))
    assert "EBADF" in table["read"][7]
    chart = wait_for(lambda: (int(js(driver, "return document.getElementById('chart-latency').dataset.samples")) >= 3
                              and float(js(driver, "return document.getElementById('chart-latency').dataset.max")) > 0),
                     15, 0.3, "the latency chart's samples")
    assert chart
    legend = js(driver, "return Array.from(document.querySelectorAll('#chart-latency .u-legend .u-series'))"
                        ".map(e => e.textContent)")
    assert any("p99 read" in s for s in legend) and any("p50 write" in s for s in legend), legend
    wait_for(lambda: any(r[2] == BETA and "EBADF" in r[8] for r in rows(driver, "top-procs")), 15, 0.3,
             f"{BETA}'s errors by errno in the top processes")

    driver.find_element("id", "f-failed").click()
    driver.find_element("id", "f-apply").click()
    tail = wait_for(lambda: (t := rows(driver, "tail")) and all(r[8] == "EBADF" for r in t) and t, 20, 0.2,
                    "the tail to show only failed calls")
    assert {r[4] for r in tail} == {BETA} and "failed=1" in text(driver, "tail-status")
    title = js(driver, "return document.querySelector('#tail tbody tr td:nth-child(9)').title")
    assert title == "Bad file descriptor (ret -9)"
    driver.find_element("id", "f-clear").click()
    assert not driver.find_element("id", "f-failed").is_selected()
    # the collector names every event's file (issue 22): the loopers' /dev/null and /dev/zero are the top files
    files = wait_for(lambda: {r[2] for r in rows(driver, "top-files")} >= {"/dev/null", "/dev/zero"}, 15, 0.3,
                     "the loopers' files in the top files")
    assert files and not driver.find_element("id", "no-files").is_displayed()


def test_collector_health_is_shown(stack):
    collector, api, driver, loopers = stack
    ensure_loopers(loopers)
    if not driver.current_url.startswith(api.base):
        driver.get(api.url("/"))
    wait_for(lambda: rows(driver, "collectors") and int(rows(driver, "collectors")[0][4].replace(",", "")) > 0,
             10, 0.2, "the collector health table with the collector's event count")
    health = rows(driver, "collectors")
    assert len(health) == 1 and health[0][0] == collector.endpoint and health[0][2] == "connected"
    assert health[0][3] in ("tracepoint", "kprobe") and all(c.replace(",", "").isdigit() for c in health[0][4:])
    if health[0][5:] == ["0", "0", "0"]:  # nothing lost, dropped or malformed: no warning
        assert not driver.find_element("id", "warning").is_displayed()


def test_adding_and_clearing_ips_through_the_page_changes_the_list(stack, tmp_path):
    _, api, driver, _ = stack
    if not driver.current_url.startswith(api.base):
        driver.get(api.url("/"))
    api.post("/add_ips", {"add_ips": ["192.0.2.1"]})
    driver.find_element("id", "ip-refresh").click()
    wait_for(lambda: "192.0.2.1" in text(driver, "ip-list"), 10, 0.2, "the list in the page")

    driver.find_element("id", "ip-input").send_keys("10.1.2.3, 2001:DB8::7 16909060")
    driver.find_element("id", "ip-add").click()
    wait_for(lambda: api.ips() == ["192.0.2.1", "10.1.2.3", "2001:db8::7", 16909060], 10, 0.2,
             "the API's list to hold what the page added")
    wait_for(lambda: "2001:db8::7" in text(driver, "ip-list") and text(driver, "ip-count") == "(4)", 10, 0.2,
             "the page to show the new list")
    save_screenshot(driver, tmp_path / "dashboard.png")

    driver.find_element("id", "ip-clear").click()
    driver.switch_to.alert.accept()  # "Remove every address from the IP list?"
    wait_for(lambda: api.ips() == [], 10, 0.2, "the list to be cleared")
    wait_for(lambda: text(driver, "ip-count") == "(0)", 10, 0.2, "the page to show the empty list")


def test_the_page_asks_for_the_token_when_the_api_wants_one(stack, tmp_path):
    collector, _, driver, _ = stack
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token\n")
    with ApiProcess(tmp_path / "ips.sqlite3", "--token-file", str(token_file), collector=collector.endpoint) as api:
        driver.get(api.url("/"))
        wait_for(lambda: driver.find_element("id", "token-input").is_displayed(), 10, 0.2, "the token prompt")
        assert "bearer token" in text(driver, "ip-status")
        driver.find_element("id", "token-input").send_keys("s3cret-token")
        driver.find_element("id", "token-save").click()
        wait_for(lambda: not driver.find_element("id", "token-input").is_displayed(), 10, 0.2, "the prompt to go")
        driver.find_element("id", "ip-input").send_keys("198.51.100.9")
        driver.find_element("id", "ip-add").click()
        headers = {"Authorization": "Bearer s3cret-token"}
        wait_for(lambda: api.ips(headers=headers) == ["198.51.100.9"], 10, 0.2, "the address added with the token")
        errors = leave(driver)
        assert all("401 (Unauthorized)" in m for m in errors), errors  # only the answer that asked for the token


def test_with_a_read_token_the_page_asks_for_it_and_then_shows_the_stream(stack, tmp_path):
    """An API whose read endpoints need a token (issue 23): the page shows nothing of the stream
    until the token is typed in, then its tables and tail fill as usual."""
    collector, _, driver, loopers = stack
    token_file = tmp_path / "read-token"
    token_file.write_text("read-s3cret\n")
    ensure_loopers(loopers)
    with ApiProcess(tmp_path / "ips.sqlite3", "--read-token-file", str(token_file),
                    collector=collector.endpoint) as api:
        assert api.get("/stats").status_code == 401
        driver.get(api.url("/"))
        wait_for(lambda: driver.find_element("id", "read-token-input").is_displayed(), 10, 0.2,
                 "the read token prompt")
        assert rows(driver, "top-procs") == [] and "API unreachable" in text(driver, "conn")
        driver.find_element("id", "read-token-input").send_keys("read-s3cret")
        driver.find_element("id", "read-token-save").click()
        wait_for(lambda: not driver.find_element("id", "read-token-form").is_displayed(), 10, 0.2,
                 "the prompt to go")
        wait_for(lambda: text(driver, "conn") == "collector connected", 15, 0.2, "the page to read /stats")
        wait_for(lambda: any(r[2] == ALPHA for r in rows(driver, "top-procs")), 15, 0.2,
                 f"{ALPHA} in the top processes table")
        wait_for(lambda: any(ALPHA in " ".join(r) for r in rows(driver, "tail")), 15, 0.2, f"{ALPHA} in the tail")
        errors = leave(driver)
        assert all("401 (Unauthorized)" in m for m in errors), errors  # only the answers that asked for it


def test_a_visible_warning_when_the_collector_loses_events(stack, tmp_path):
    """lost/dropped/malformed that grow raise the page's warning; here a publisher speaking the wire
    protocol stands in for the collector, since a real collector loses events only under overload."""
    _, _, driver, _ = stack
    leave(driver)
    with ApiProcess(tmp_path / "ips.sqlite3") as api:
        pub = Publisher(api.collector)
        try:
            connect(api, pub)
            driver.get(api.url("/"))
            wait_for(lambda: text(driver, "conn") == "collector connected", 10, 0.2, "connected")
            assert not driver.find_element("id", "warning").is_displayed()
            pub.status(lost_total=0, dropped_total=0, malformed_total=0)
            time.sleep(1.5)  # one page poll sees the baseline
            pub.status(lost_total=1234, dropped_total=0, malformed_total=7)
            wait_for(lambda: driver.find_element("id", "warning").is_displayed(), 10, 0.2, "the warning")
            warning = text(driver, "warning")
            assert "1,234 events lost" in warning and "7 events malformed" in warning, warning
            health = rows(driver, "collectors")[0]
            assert health[5] == "1,234" and health[7] == "7"
            assert console_errors(driver) == []
        finally:
            pub.close()
    # the API went away: the page says so (its failed polls are in the console: drained here)
    wait_for(lambda: "API unreachable" in text(driver, "conn"), 10, 0.2, "the page to notice the API is gone")
    leave(driver)


EVIL_PAGE = """<!doctype html><title>another site</title><pre id="out">running</pre>
<script>
const api = new URLSearchParams(location.search).get("api");
const results = {};
async function attempt(name, fn) { try { results[name] = await fn(); } catch (e) { results[name] = "error: " + e; } }
(async () => {
  // the classic CSRF: a "simple" request, no preflight; the body is JSON the API would accept
  await attempt("form_post", async () => { const r = await fetch(api + "/clear_ip_list", {method: "POST",
      mode: "no-cors", headers: {"Content-Type": "application/x-www-form-urlencoded"},
      body: '{"clear_ip_list": true}'}); return "sent " + r.type; });
  await attempt("json_post", async () => { const r = await fetch(api + "/add_ips", {method: "POST",
      headers: {"Content-Type": "application/json"}, body: '{"add_ips": ["203.0.113.66"]}'});
      return "status " + r.status; });
  await attempt("read_events", async () => { const r = await fetch(api + "/events?limit=3");
      return "read " + (await r.text()).slice(0, 40); });
  await attempt("event_source", () => new Promise((resolve) => {
      const es = new EventSource(api + "/events/stream");
      es.onmessage = (m) => { es.close(); resolve("message " + m.data.slice(0, 40)); };
      es.onerror = () => { es.close(); resolve("error"); };
      setTimeout(() => { es.close(); resolve("timeout"); }, 8000); }));
  document.getElementById("out").textContent = JSON.stringify(results);
  document.title = "done";
})();
</script>"""


def run_evil_page(driver, site: OtherOrigin, api: ApiProcess) -> dict:
    driver.get(site.url(f"/evil.html?api={api.base}"))
    wait_for(lambda: driver.title == "done", 20, 0.2, "the other site's page to finish its attempts")
    return json.loads(text(driver, "out"))


def test_a_page_of_another_site_cannot_change_the_list_or_read_events(stack):
    _, api, driver, _ = stack
    api.post("/add_ips", {"add_ips": ["192.0.2.44"]})
    with OtherOrigin({"/evil.html": EVIL_PAGE}) as site:
        results = run_evil_page(driver, site, api)
    console_errors(driver)  # the other site's failed fetches are its own console's business
    # the no-cors POST is sent; its 403 answer is then also withheld from the page
    # (Cross-Origin-Resource-Policy: same-origin), so even the opaque response is an error
    assert results["form_post"] in ("sent opaque", "error: TypeError: Failed to fetch"), results
    assert results["json_post"].startswith("error"), results      # its preflight was refused
    assert results["read_events"].startswith("error"), results    # no CORS header: unreadable
    assert results["event_source"] == "error", results
    assert api.ips() == ["192.0.2.44"]
    log = api.output
    assert "POST /clear_ip_list 403" in log, "the browser sent the CSRF request and the API refused it"
    assert "OPTIONS /add_ips 403" in log and "GET /events?limit=3 403" in log and "GET /events/stream 403" in log
    api.post("/clear_ip_list", {"clear_ip_list": True})


def test_with_cors_origin_that_site_may_call_the_api(stack, tmp_path):
    collector, _, driver, loopers = stack
    ensure_loopers(loopers)  # events for its EventSource to receive
    with OtherOrigin({"/evil.html": EVIL_PAGE}) as site:
        origin = site.url("").rstrip("/")
        with ApiProcess(tmp_path / "ips.sqlite3", "--cors-origin", origin, collector=collector.endpoint) as api:
            wait_for(lambda: api.get("/healthz").json()["collector_connected"], 20, 0.2, "the second API connected")
            results = run_evil_page(driver, site, api)
            leave(driver)
            assert results["json_post"] == "status 200", results
            assert results["read_events"].startswith('read {"events":'), results
            assert results["event_source"].startswith("message {"), results
            assert "203.0.113.66" in api.ips()


def test_dns_rebinding_name_gets_no_dashboard_and_no_data(stack):
    _, api, driver, _ = stack
    driver.get(f"http://rebind.test:{api.port}/")
    body = driver.find_element("tag name", "body").text
    assert "is not this server's name" in body and "syswatch dashboard" != driver.title
    r = requests.get(api.url("/events"), headers={"Host": f"rebind.test:{api.port}"}, timeout=10)
    assert r.status_code == 403
    console_errors(driver)


def test_screenshot_of_the_live_dashboard(stack, tmp_path):
    """Last: the dashboard after a while of live data, for the README."""
    _, api, driver, loopers = stack
    ensure_loopers(loopers)
    api.post("/add_ips", {"add_ips": ["192.0.2.10", "198.51.100.7", "2001:db8::42", 3232235777]})
    driver.get(api.url("/"))
    wait_for(lambda: int(js(driver, "return document.getElementById('chart-calls').dataset.samples")) >= 8,
             30, 0.5, "eight chart samples")
    wait_for(lambda: len(rows(driver, "tail")) >= 10, 10, 0.2, "the tail")
    path = save_screenshot(driver, tmp_path / "dashboard.png")
    assert path.stat().st_size > 10_000
    assert console_errors(driver) == []
