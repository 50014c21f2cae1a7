"""Hostile HTTP clients against a real API process: slow senders, many idle connections, oversized
bodies. Each is bounded (time, memory, worker threads) and leaves the IP list unchanged."""
from __future__ import annotations

import socket
import threading
import time

import pytest
import requests

from harness.api import ApiProcess
from harness.procs import rss_kib


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Few worker threads, few connections, a short idle timeout: limits are reached quickly."""
    srv = ApiProcess(tmp_path_factory.mktemp("hostile") / "ips.sqlite3", "--threads", "5", "--max-streams", "1",
                    "--max-connections", "40", "--channel-timeout", "2", "--max-body-bytes", "1000")
    with srv:
        yield srv


def test_slow_clients_hold_no_worker_thread(small):
    """Eight clients sending a request one byte at a time do not stop five workers from serving others."""
    body = b'{"add_ips": ["10.20.30.%d"]}'
    results = []

    def slow(i):
        data = body % i
        head = b"POST /add_ips HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n" \
               b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
        with socket.create_connection(("127.0.0.1", small.port), timeout=30) as s:
            for byte in head + data:
                s.sendall(bytes([byte]))
                time.sleep(0.02)
            results.append(s.recv(4096).split(b"\r\n", 1)[0])

    slow_clients = [threading.Thread(target=slow, args=(i,)) for i in range(8)]
    for t in slow_clients:
        t.start()
    time.sleep(0.3)
    started = time.monotonic()
    for _ in range(30):
        assert small.get("/healthz", timeout=5).status_code == 200
    fast_took = time.monotonic() - started
    assert any(t.is_alive() for t in slow_clients), "the slow clients finished before the fast ones: not a test"
    for t in slow_clients:
        t.join(60)
    assert results == [b"HTTP/1.1 200 OK"] * 8
    assert fast_took < 10  # generous: only fails if the slow clients blocked the workers


def test_idle_connections_are_closed_after_the_channel_timeout(small):
    with socket.create_connection(("127.0.0.1", small.port), timeout=30) as s:
        started = time.monotonic()
        assert s.recv(1) == b""  # the server closes the idle connection
        assert time.monotonic() - started < 15


def test_more_idle_connections_than_the_limit_delay_but_do_not_stop_service(small):
    idle = [socket.create_connection(("127.0.0.1", small.port)) for _ in range(120)]  # limit: 40
    try:
        started = time.monotonic()
        r = requests.get(small.url("/healthz"), timeout=30)
        assert r.status_code == 200
        assert time.monotonic() - started < 30
    finally:
        for s in idle:
            s.close()


def test_many_idle_connections_use_bounded_memory(tmp_path):
    with ApiProcess(tmp_path / "ips.sqlite3") as srv:  # default --max-connections 1000
        srv.get("/healthz")
        rss0 = rss_kib(srv.proc.pid)
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(600)]
        try:
            for s in idle[::50]:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")  # half a request, never finished
            time.sleep(1)
            assert srv.get("/healthz").status_code == 200
            grown_mib = (rss_kib(srv.proc.pid) - rss0) / 1024
            assert grown_mib < 40, f"600 idle connections cost {grown_mib:.0f} MiB"
        finally:
            for s in idle:
                s.close()
        assert srv.get("/healthz").status_code == 200


def test_huge_bodies_are_refused_without_reading_them(small):
    small.post("/clear_ip_list", {"clear_ip_list": True})
    small.post("/add_ips", {"add_ips": [1]})
    r = requests.post(small.url("/add_ips"), data=b'{"add_ips": [' + b"1," * 600 + b"1]}",
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413 and "larger than 1000 bytes" in r.json()["error"]
    # far beyond the limit, waitress refuses before buffering the body
    with socket.create_connection(("127.0.0.1", small.port), timeout=10) as s:
        s.sendall(b"POST /add_ips HTTP/1.1\r\nHost: localhost\r\nContent-Length: 10000000000\r\n\r\n" + b"[" * 1000)
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    assert small.ips() == [1]


def test_malformed_http_is_a_4xx(small):
    for raw in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX: a\rb\r\n\r\n",
                b"POST /add_ips HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", small.port), timeout=10) as s:
            s.sendall(raw)
            status = s.recv(4096).split(b" ", 2)[1]
        assert status.startswith(b"4"), raw
