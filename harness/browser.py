"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium, for the
dashboard tests. Nothing is downloaded: the browser and the driver are the system's, named by path,
and Selenium Manager is told to stay offline.

Every name under ``.test`` resolves to 127.0.0.1 inside this browser (``--host-resolver-rules``), so
the tests can load pages from another *site* (``http://evil.test:PORT``) and play DNS rebinding
(``http://rebind.test:<api port>``) without touching DNS or leaving the machine.

Also: ``OtherOrigin``, a tiny HTTP server on another port serving one page, standing in for a web
site the user happens to have open.
"""
from __future__ import annotations

import http.server
import importlib.util
import os
import shutil
import threading
from pathlib import Path

from harness.procs import free_port

CHROMIUM = os.environ.get("SYSWATCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SYSWATCH_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1700", "--host-resolver-rules=MAP *.test 127.0.0.1")


def browser_missing() -> str | None:
    """What starting the browser still needs, as what to do about it; None when nothing is missing."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        return ("install Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver "
                "(scripts/setup-host.sh does it)")
    if importlib.util.find_spec("selenium") is None:
        return "install selenium: python3 -m pip install -r requirements-dev.txt (or apt-get install python3-selenium)"
    return None


def start_chromium(profile: Path):
    """A new headless Chromium with a fresh profile in ``profile``; the caller must ``quit()`` it.
    RuntimeError when the browser is missing (``browser_missing`` says what to do)."""
    why = browser_missing()
    if why:
        raise RuntimeError(why)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    log = str(profile.parent / "chromedriver.log")
    try:
        service = Service(executable_path=CHROMEDRIVER, log_output=log)   # selenium >= 4.11
    except TypeError:
        service = Service(executable_path=CHROMEDRIVER, log_path=log)     # Debian bookworm's 4.8
    driver = webdriver.Chrome(service=service, options=opts)
    driver.set_page_load_timeout(30)
    return driver


def console_errors(driver) -> list[str]:
    """Console messages of level SEVERE (JS errors, CSP violations, failed loads) since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


class OtherOrigin:
    """``http://<name>:<port>/``: a page of another origin, served from ``pages`` {path: html}."""

    def __init__(self, pages: dict[str, str]):
        self.port = free_port()
        body = {path: html.encode() for path, html in pages.items()}

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                data = body.get(self.path.split("?")[0])
                self.send_response(200 if data else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data or b"")))
                self.end_headers()
                self.wfile.write(data or b"")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, name: str = "evil.test") -> str:
        return f"http://{name}:{self.port}{path}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def save_screenshot(driver, path: Path) -> Path:
    """Save a PNG of the page; also to $SYSWATCH_SCREENSHOT when set (docs/img/dashboard.png for the README)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    extra = os.environ.get("SYSWATCH_SCREENSHOT")
    if extra:
        Path(extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, extra)
    return path
