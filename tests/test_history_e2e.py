"""History end to end: a real collector (bpftrace) tracing two real containers, the real API recording, and
/history asked about minutes that are over.

Each container's only process is harness/rounds.c: it reads and writes nothing until it gets SIGUSR1, then
makes one round of known calls (ERRORS writes to a bad fd, COUNT writes and COUNT reads of SIZE bytes).
The test sends rounds in two consecutive minutes and takes what the kernel counted for the process
(/proc/PID/io: read and write calls and bytes; the failed writes never reach it and are added by design)
as the truth. /history per minute and per container must give exactly that, also after a kill -9 of the
API and a restart; and the dashboard, set to that past range in headless Chromium, shows it.
"""
from __future__ import annotations

import os
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from harness.api import ApiProcess
from harness.browser import browser_missing, console_errors, save_screenshot, start_chromium
from harness.collector import CollectorProcess
from harness.compose import BASE_IMAGE, docker, docker_answers, image_present
from harness.procs import wait_for
from harness.workloads import build_rounds, rounds_missing
from tests.conftest import have, is_root, require

pytestmark = [pytest.mark.docker, pytest.mark.slow]

ROUNDS = {"a": (4096, 300, 7), "b": (1000, 500, 3)}      # container -> SIZE, COUNT, ERRORS of its round
PLAN = ({"a": 2, "b": 1}, {"a": 1, "b": 3})              # rounds in the first and in the second minute
READY_BIT = 1 << (signal.SIGUSR2 - 1)                   # rounds.c blocks SIGUSR2 once it waits for SIGUSR1


def proc_io(pid: int) -> Counter:
    """The kernel's read/write accounting of ``pid`` (/proc/PID/io): syscr, syscw, rchar, wchar."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return Counter({k: int(fields[k]) for k in ("syscr", "syscw", "rchar", "wchar")})


class Container:
    """A container whose one process is harness/rounds.c; ``round()`` makes one round and returns what
    the kernel counted."""

    def __init__(self, key: str, binary: Path, tag: str):
        self.size, self.count, self.errors = ROUNDS[key]
        self.name = f"swhist-{key}-{tag}"
        docker("run", "-d", "--rm", "--network", "none", "--name", self.name, "-v", f"{binary.parent}:/w:ro",
               BASE_IMAGE, f"/w/{binary.name}", str(self.size), str(self.count), str(self.errors))
        try:
            info = docker("inspect", "-f", "{{.Id}} {{.State.Pid}}", self.name).stdout.split()
            self.cid, self.pid = info[0][:12], int(info[1])
            wait_for(self._ready, 20, 0.05, f"container {self.name}'s process to wait for SIGUSR1")
        except BaseException:
            self.remove()
            raise

    def _ready(self) -> bool:
        status = Path(f"/proc/{self.pid}/status").read_text()
        mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:"))
        return bool(int(mask, 16) & READY_BIT)

    def round(self) -> Counter:
        before = proc_io(self.pid)
        os.kill(self.pid, signal.SIGUSR1)

        def counted():
            now = proc_io(self.pid) - before
            return now["syscr"] >= self.count and now["syscw"] >= self.count and now
        got = wait_for(counted, 20, 0.01, f"{self.name}'s round to be counted in /proc/{self.pid}/io")
        return Counter(calls=got["syscr"] + got["syscw"] + self.errors, bytes=got["rchar"] + got["wchar"],
                       errors=self.errors)

    def remove(self) -> None:
        docker("rm", "-f", self.name, check=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    require(is_root(), "run as root (bpftrace and docker need it): sudo scripts/test.sh")
    require(have("bpftrace"), "install bpftrace: apt-get install -y bpftrace (scripts/setup-host.sh does it)")
    require(rounds_missing() is None, rounds_missing() or "")
    require(have("docker") and docker_answers(), "start dockerd: sudo scripts/setup-host.sh")
    require(image_present(BASE_IMAGE), f"build {BASE_IMAGE} without a registry: sudo scripts/build-base-image.sh")
    tmp = tmp_path_factory.mktemp("history")
    (tmp / "bin").mkdir()
    binary = build_rounds(tmp / "bin")
    tag = uuid.uuid4().hex[:6]
    boxes: dict[str, Container] = {}
    collector = api = None
    try:
        for key in ROUNDS:
            boxes[key] = Container(key, binary, tag)
        only = [arg for box in boxes.values() for arg in ("--container", box.cid)]
        collector = CollectorProcess(tmp, "--echo-rate", "0", *only)
        api = ApiProcess(tmp / "ips.sqlite3", collector=collector.endpoint).start()
        wait_for(lambda: api.get("/healthz").json()["collector_connected"], 30, 0.2, "the API to hear the collector")
        yield {"api": api, "boxes": boxes, "tmp": tmp}
    finally:
        if api is not None:
            api.stop()
        if collector is not None:
            collector.kill()
        for box in boxes.values():
            box.remove()


def sleep_until(t: float) -> None:
    while (left := t - time.time()) > 0:
        time.sleep(min(left, 1.0))


def history(api: ApiProcess, **params) -> dict:
    r = api.get("/history", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def written_past(api: ApiProcess, t: float) -> None:
    wait_for(lambda: api.get("/stats").json()["history"]["complete_until"] > t, 30, 0.2,
             f"the history to be written past {t:.0f}")


@pytest.fixture(scope="module")
def minutes(stack):
    """Rounds in two consecutive whole minutes; (first minute, truth per (minute, container), the answer)."""
    api, boxes = stack["api"], stack["boxes"]
    if time.time() % 60 > 45:                  # the first minute's rounds must end well inside it
        sleep_until(time.time() // 60 * 60 + 61)
    first = int(time.time() // 60 * 60)
    truth: dict = {}
    for m, plan in enumerate(PLAN):
        sleep_until(first + 60 * m + 1)
        for key, n in plan.items():
            for _ in range(n):
                truth.setdefault((m, key), Counter()).update(boxes[key].round())
        assert time.time() < first + 60 * (m + 1), "a round ran into the next minute: the machine is too slow"
    written_past(api, time.time() + 1)
    return first, truth, history(api, **{"from": first, "to": first + 120, "group": "container", "step": 60})


def test_each_minute_and_container_is_exact(stack, minutes):
    """Per minute and container, exactly the calls, bytes and errors the kernel counted; the process rows
    of each container add up to it; the CSV has one line per minute and container."""
    api, boxes = stack["api"], stack["boxes"]
    first, truth, answer = minutes
    assert answer["step_s"] == 60 and answer["times"] == [first, first + 60], answer
    series = {s["container_id"]: s for s in answer["series"]}
    assert set(series) == {box.cid for box in boxes.values()}, "calls of anything but the two workloads"
    for key, box in boxes.items():
        s = series[box.cid]
        assert s["container_name"] == box.name
        for m in range(2):
            got = {f: s[f][m] for f in ("calls", "bytes", "errors")}
            assert got == {f: truth[(m, key)][f] for f in got}, (box.name, m, got, truth[(m, key)])
        total = truth[(0, key)] + truth[(1, key)]
        procs = history(api, **{"from": first, "to": first + 120, "group": "process", "container": box.name})
        assert [(r["pid"], r["comm"], r["calls"], r["bytes"]) for r in procs["rows"]] == \
               [(box.pid, "rounds", total["calls"], total["bytes"])]
    r = api.get("/history", params={"from": first, "to": first + 120, "group": "container", "step": 60,
                                    "format": "csv"})
    assert r.headers["Content-Type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == "time,host,key,container_id,container_name,calls,bytes,errors,lat_ns_sum"
    assert len(lines) == 1 + 2 * len(boxes)
    assert f",{boxes['b'].cid},{boxes['b'].name},{truth[(1, 'b')]['calls']},{truth[(1, 'b')]['bytes']}," in r.text


def test_kill_9_and_a_restart_keep_every_written_minute(stack, minutes):
    api, box = stack["api"], stack["boxes"]["a"]
    first, _, answer = minutes
    api.stop(signal.SIGKILL)
    api.start()
    again = history(api, **{"from": first, "to": first + 120, "group": "container", "step": 60})
    for key in ("rows", "series", "times", "totals"):
        assert again[key] == answer[key], key
    # and the restarted API records on
    wait_for(lambda: api.get("/healthz").json()["collector_connected"], 30, 0.2,
             "the restarted API to hear the collector")
    start = int(time.time())
    more = box.round()
    written_past(api, time.time() + 1)
    after = history(api, **{"from": start, "to": int(time.time()) + 2, "group": "container"})
    assert [(r["container_id"], r["calls"], r["bytes"]) for r in after["rows"]] == \
           [(box.cid, more["calls"], more["bytes"])]


def test_the_dashboard_shows_a_past_range(stack, minutes):
    """The dashboard's custom range over the two minutes: the containers table has the totals /history gives
    (exact, as the tests above show), the charts one point per step of the range, the status line the
    range; no console error."""
    why = browser_missing()
    require(why is None, why or "")
    api, boxes = stack["api"], stack["boxes"]
    first = minutes[0]
    # asked now: the kill -9 test may have added a round to the second minute
    answer = history(api, **{"from": first, "to": first + 120, "group": "container", "step": 60})
    driver = start_chromium(stack["tmp"] / "profile")
    try:
        driver.get(api.url("/"))
        js = driver.execute_script
        # the range as a user types it: in the browser's local time
        js("""const local = (t) => { const d = new Date(t * 1000), p = (n) => String(n).padStart(2, '0');
                return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + 'T' + p(d.getHours()) +
                       ':' + p(d.getMinutes()) + ':' + p(d.getSeconds()); };
              const sel = document.getElementById('range');
              sel.value = 'custom';
              sel.dispatchEvent(new Event('change'));
              document.getElementById('range-from').value = local(arguments[0]);
              document.getElementById('range-to').value = local(arguments[1]);
              document.getElementById('range-apply').click();""", first, first + 120)

        def status():
            return js("const e = document.getElementById('range-status'); return [e.dataset.mode, e.textContent]")
        wait_for(lambda: status()[0] == "history", 20, 0.2, "the page to show the range")

        def table():
            return js("return Array.from(document.querySelectorAll('#top-containers tbody tr'))"
                      ".map(tr => Array.from(tr.cells).map(td => td.textContent))")
        rows = wait_for(lambda: len(t := table()) == len(boxes) and t, 20, 0.2, "the containers table")
        shown = {r[1]: r for r in rows}
        for row in answer["rows"]:
            assert shown[row["container_id"]][2] == row["container_name"]
            assert shown[row["container_id"]][3] == f"{row['calls']:,}", (shown, row)
        points = len(history(api, **{"from": first, "to": first + 120, "group": "syscall"})["times"])
        chart = js("const d = document.getElementById('chart-calls').dataset; return [d.samples, d.max]")
        assert int(chart[0]) == points and float(chart[1]) > 0, chart
        stamp = time.strftime("%H:%M:%S", time.gmtime(first))
        assert stamp in status()[1] and f"{answer['totals']['calls']:,} calls" in status()[1], status()
        save_screenshot(driver, stack["tmp"] / "history.png")
        driver.get("about:blank")
        assert console_errors(driver) == []
    finally:
        driver.quit()
