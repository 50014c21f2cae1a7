"""The dashboard while a publisher feeds the API 100,000 events/s (issue 11: it must stay responsive).

    python3 -m bench.dashboard_load [SECONDS]

A real API on a free port, fed by harness.api.Publisher (wire protocol batches of 250 events),
and the dashboard open in headless Chromium (harness/browser.py). Prints, from the browser's own
Resource Timing, how long its /stats and /events polls took, and the page's event-loop lag (a 100 ms
interval timer's lateness). A measurement, not a test: nothing is asserted.
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from harness.api import ApiProcess, Publisher, connect, event
from harness.browser import start_chromium

RATE = 100_000          # events/s
RESULTS = """return {
    stats: performance.getEntriesByType('resource').filter(e => e.name.includes('/stats')).map(e => e.duration),
    events: performance.getEntriesByType('resource').filter(e => e.name.includes('/events')).map(e => e.duration),
    sizes: performance.getEntriesByType('resource').filter(e => e.name.includes('/events'))
        .map(e => e.transferSize),
    lags: window.lags, rate: document.getElementById('rate').textContent,
    heap: performance.memory ? performance.memory.usedJSHeapSize : null}"""


def pct(xs: list, p: float) -> float | None:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(len(xs) * p))], 1) if xs else None


def main(seconds: float) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="syswatch-dashload-"))
    api = ApiProcess(tmp / "ips.sqlite3").start()
    driver = None
    stop = threading.Event()
    sent = [0]
    try:
        pub = Publisher(api.collector)
        connect(api, pub)
        batch = [event(pid=9000 + (i % 37), comm=f"load{i % 37}", syscall=("read", "write")[i % 2], count=64)
                 for i in range(250)]

        def feed():
            t0 = time.monotonic()
            while not stop.is_set():
                target = int((time.monotonic() - t0) * RATE)
                while sent[0] < target:
                    pub.events(batch)
                    sent[0] += len(batch)
                time.sleep(0.002)
                if sent[0] % 100_000 < 250:
                    pub.status()
        threading.Thread(target=feed, daemon=True).start()
        driver = start_chromium(tmp / "profile")
        driver.get(api.url("/"))
        driver.execute_script("""window.lags = []; let last = performance.now();
            setInterval(() => { const now = performance.now(); window.lags.push(now - last - 100); last = now; },
                        100);""")
        time.sleep(seconds)
        stop.set()
        res = driver.execute_script(RESULTS)
        print("published", sent[0], f"events in {seconds:.0f} s; the page's header:", res["rate"])
        for k in ("stats", "events", "lags"):
            print(k, "n", len(res[k]), "p50", pct(res[k], .5), "p95", pct(res[k], .95), "max", pct(res[k], 1))
        print("events answer bytes p50", pct(res["sizes"], .5), "heap MB", (res["heap"] or 0) / 1e6)
        print(api.get("/stats").json()["api"])
    finally:
        stop.set()
        if driver:
            driver.quit()
        api.stop()


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20)
