"""Container names never block the caller (issue 29): an engine socket that accepts and never
answers, a slow one, a full queue. In process (marked unit): a real Unix socket served by a
thread, a real cgroup-like directory tree (Containers only walks directories and reads their
inodes). Then the real collector with such a socket while real containers start."""
from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from syswatch.collector import containers as cmod
from syswatch.collector.containers import Containers, Engine, Names


class EngineSocket:
    """A Unix socket speaking just enough of the Docker Engine API: answers only once released
    (``hold``) and names container ``<id>`` ``name-<first 6 hex>``; counts the requests it read."""

    def __init__(self, path: Path, hold: bool):
        self.path = str(path)
        self.released = threading.Event()
        if not hold:
            self.released.set()
        self.requests: list[str] = []
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(self.path)
        self.srv.listen(64)
        self.conns: list[socket.socket] = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket):
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            path = head.split(b" ", 2)[1].decode()
            self.requests.append(path)
            self.released.wait()
            cid = path.split("/")[2]
            body = json.dumps({"Id": cid, "Name": f"/name-{cid[:6]}"}).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        self.closed = True
        self.released.set()
        self.srv.close()


def wait_for(cond, timeout=10.0, what=""):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def cgroup_tree(root: Path, n: int) -> list[tuple[int, str]]:
    """n container cgroups as Docker's systemd driver names them: (inode, full id)."""
    out = []
    for i in range(n):
        full = f"{i:02x}" + "ab" * 31
        d = root / "system.slice" / f"docker-{full}.scope"
        d.mkdir(parents=True)
        out.append((d.stat().st_ino, full))
    return out


@pytest.mark.unit
def test_a_hung_engine_never_blocks_the_lookup(tmp_path):
    """The engine accepts and never answers, with a lookup timeout of an hour: every call returns
    the id at once with an empty name (a blocking lookup would hang this test); once the engine
    answers, the names appear."""
    eng = EngineSocket(tmp_path / "engine.sock", hold=True)
    root = tmp_path / "cg"
    ids = cgroup_tree(root, 20)
    c = Containers(root=root, engine=Engine(sockets=[eng.path], timeout=3600))
    try:
        c.scan()
        for ino, full in ids:
            assert c.fields(ino) == (full[:12], "")
            got = json.loads(b"{" + c.fields_json(ino) + b"}")
            assert got == {"container_id": full[:12], "container_name": ""}
        wait_for(lambda: len(eng.requests) >= 1, what="the worker's first request")
        assert len(eng.requests) == 1, "one worker, one question at a time, the rest queued"
        eng.released.set()
        wait_for(lambda: all(c.fields(ino)[1] for ino, _ in ids), what="the names after the engine answered")
        assert [c.fields(ino) for ino, _ in ids] == [(full[:12], f"name-{full[:6]}") for _, full in ids]
        assert json.loads(b"{" + c.fields_json(ids[0][0]) + b"}")["container_name"] == f"name-{ids[0][1][:6]}"
        assert sorted(eng.requests) == sorted(f"/containers/{full}/json" for _, full in ids), "each asked once"
    finally:
        eng.close()
        c.close()


@pytest.mark.unit
def test_the_queue_is_bounded_and_what_did_not_fit_is_asked_later(tmp_path, monkeypatch):
    monkeypatch.setattr(cmod, "NAME_QUEUE_MAX", 4)
    eng = EngineSocket(tmp_path / "engine.sock", hold=True)
    root = tmp_path / "cg"
    ids = cgroup_tree(root, 12)
    c = Containers(root=root, engine=Engine(sockets=[eng.path], timeout=3600))
    try:
        c.scan()
        for ino, _ in ids:
            c.fields(ino)
        wait_for(lambda: len(eng.requests) == 1, what="the first request")
        # 4 queued (and one more if the worker took the first before the queue filled): the rest
        # were not queued (counted), and nothing grew
        queued = 12 - c.names.deferred
        assert queued in (4, 5) and c.names._queue.qsize() == queued - 1, (c.names.deferred, c.names._queue.qsize())
        eng.released.set()
        wait_for(lambda: len(eng.requests) == queued, what="the queued ones")

        def all_named():                       # as the collector does: retry_misses once a second
            c.retry_misses()
            return all([c.fields(ino)[1] for ino, _ in ids])
        wait_for(all_named, what="every name in the end")
        assert len(eng.requests) == 12 and c.names._queue.qsize() == 0
    finally:
        eng.close()
        c.close()


@pytest.mark.unit
def test_a_miss_is_cached_and_asked_again_later(tmp_path):
    """An engine that does not know the container (404) is asked once, not per event; after
    MISS_RETRY_S it is asked again."""
    now = [1000.0]
    path = tmp_path / "engine.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    asked = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            asked.append(conn.recv(4096).split(b" ")[1])
            conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}")
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    root = tmp_path / "cg"
    [(ino, full)] = cgroup_tree(root, 1)
    c = Containers(root=root, engine=Engine(sockets=[str(path)], timeout=5), clock=lambda: now[0])
    try:
        c.scan()
        assert c.fields(ino) == (full[:12], "")
        wait_for(lambda: asked and not c.names._asked or c.names._answered, what="the 404")
        for _ in range(1000):
            assert c.fields(ino) == (full[:12], "")
        c.retry_misses()
        for _ in range(10):
            c.fields(ino)
        assert len(asked) == 1
        now[0] += cmod.MISS_RETRY_S + 1
        c.retry_misses()
        c.fields(ino)
        wait_for(lambda: len(asked) == 2, what="the second question after MISS_RETRY_S")
    finally:
        srv.close()
        c.close()


@pytest.mark.unit
def test_no_engine_no_thread(tmp_path):
    root = tmp_path / "cg"
    [(ino, full)] = cgroup_tree(root, 1)
    c = Containers(root=root, engine=Engine(sockets=[]))
    c.scan()
    assert c.fields(ino) == (full[:12], "") and c.names._thread is None


@pytest.mark.unit
def test_names_are_asked_by_one_worker_thread_only(tmp_path):
    eng = EngineSocket(tmp_path / "engine.sock", hold=False)
    names = Names(Engine(sockets=[eng.path], timeout=5))
    try:
        for i in range(50):
            names.get(f"{i:064x}")
        wait_for(lambda: len(eng.requests) == 50, what="50 answers")
        workers = [t for t in threading.enumerate() if t.name == "syswatch-names"]
        assert len(workers) == 1
    finally:
        names.close()
        eng.close()
    assert not [t for t in threading.enumerate() if t.name == "syswatch-names" and t.is_alive()]


@pytest.mark.docker
def test_a_collector_with_a_never_answering_engine_keeps_its_pace_while_containers_start(tmp_path):
    """The real collector, its engine socket one that accepts and never answers, ten containers
    started at once: status keeps its 1 s pace (a lookup on the loop cost 0.5 s per new container),
    the containers' events carry their ids, and the engine was asked (by the worker)."""
    import concurrent.futures
    import uuid

    from harness.collector import CollectorProcess, StreamReader
    from harness.compose import BASE_IMAGE, docker, stack_missing
    from tests.conftest import have, is_root, require
    require(is_root() and have("bpftrace"), "run as root with bpftrace: sudo scripts/test.sh")
    why = stack_missing()
    require(why is None, why or "")
    sock_dir = tmp_path / "engine"
    sock_dir.mkdir()
    eng = EngineSocket(sock_dir / "docker.sock", hold=True)   # never released: never answers
    coll = CollectorProcess(tmp_path, "--echo-rate", "0", env={"SYSWATCH_DOCKER_SOCKET": eng.path})
    sub = StreamReader(coll.endpoint)
    tag = uuid.uuid4().hex[:6]
    names = [f"swnames-{tag}-{i}" for i in range(10)]
    try:
        sub.wait_status()
        since = len(sub.statuses)

        def run(name):
            return docker("run", "-d", "--rm", "--name", name, BASE_IMAGE, "sh", "-c",
                          "while :; do echo swnames > /dev/null; sleep 0.2; done").stdout.strip()[:12]
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            ids = set(pool.map(run, names))
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and set(seen) != ids:
            for msg in sub.messages(1):
                for e in msg.events:
                    if e["container_id"] in ids:
                        seen.setdefault(e["container_id"], e)
        for msg in sub.messages(3):          # a few more statuses after the last container
            pass
        assert set(seen) == ids, f"events of {len(seen)} of the {len(ids)} containers"
        assert all(e["container_name"] == "" for e in seen.values()), "the engine never answered"
        assert len(eng.requests) >= 1, "the collector never asked the engine"
        ups = [s["uptime_s"] for s in sub.statuses[since:]]
        gaps = [round(b - a, 2) for a, b in zip(ups, ups[1:])]
        assert len(ups) >= 5 and max(gaps) <= 1.6, f"status gaps while containers started: {gaps}"
    finally:
        docker("rm", "-f", *names, check=False)
        sub.close()
        coll.kill()
        eng.close()
