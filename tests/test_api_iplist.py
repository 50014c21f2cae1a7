"""The seed-compatible IP-list endpoints: compatibility, strict validation (every bad input: status,
message, list unchanged) and limits in process (make_app through harness.wsgi, marked unit); what
needs the real server (raw sockets, parallel clients, restarts, kill -9, start-up errors) against a
real API process."""
from __future__ import annotations

import concurrent.futures
import hashlib
import ipaddress
import json
import signal
import socket
import threading
import time

import pytest
import requests

from harness.api import ApiInProcess, ApiProcess
from harness.procs import wait_for

LIMITS = {"max_items": 50, "max_ips": 200, "max_body_bytes": 4096}


@pytest.fixture
def api(tmp_path):
    """The API in process, with a fresh list and small limits."""
    return ApiInProcess(tmp_path / "ips.sqlite3", **LIMITS)


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    srv = ApiProcess(tmp_path_factory.mktemp("api") / "ips.sqlite3",
                     *(arg for k, v in LIMITS.items() for arg in (f"--{k.replace('_', '-')}", str(v))))
    with srv:
        yield srv


@pytest.fixture
def server(server_process):
    """The API as a process (the same limits), its list cleared."""
    assert server_process.post("/clear_ip_list", {"clear_ip_list": True}).status_code == 200
    yield server_process


@pytest.mark.unit
def test_seed_walk_through(api):
    """The original README's sequence gives the original's fields and values."""
    r = api.get("/apis")
    assert r.status_code == 200
    for path in ("/apis", "/add_ips", "/print_all_ips", "/clear_ip_list", "/stats", "/events",
                 "/events/stream", "/metrics", "/healthz", "/openapi.json"):
        assert path in r.json()["available_apis"] and path in r.json()["usage"]
    r = api.post("/add_ips", {"add_ips": [1, 2, 3]})
    assert r.status_code == 200
    assert r.json() == {"message": "IPs added successfully", "added_ips": [1, 2, 3], "ignored_ips": [],
                        "total_ips": 3}
    r = api.post("/add_ips", {"add_ips": [4, 5, 6]})
    assert (r.json()["message"], r.json()["added_ips"], r.json()["total_ips"]) == \
           ("IPs added successfully", [4, 5, 6], 6)
    r = api.post("/print_all_ips", {"print_all_ips": True})
    assert r.json() == {"message": "All IPs retrieved successfully", "ips": [1, 2, 3, 4, 5, 6], "total_ips": 6}
    r = api.post("/clear_ip_list", {"clear_ip_list": True})
    assert r.json() == {"message": "IP list cleared successfully", "total_ips": 0}
    r = api.post("/print_all_ips", {"print_all_ips": True})
    assert r.json() == {"message": "All IPs retrieved successfully", "ips": [], "total_ips": 0}
    assert r.headers["Content-Type"].startswith("application/json")


@pytest.mark.unit
def test_same_address_in_any_form_is_stored_once(api):
    r = api.post("/add_ips", {"add_ips": [16909060, "1.2.3.4", "2001:DB8::0:1", "2001:db8::1", 0, "0.0.0.0"]})
    assert r.status_code == 200
    assert r.json()["added_ips"] == [16909060, "2001:db8::1", 0]
    assert r.json()["ignored_ips"] == ["1.2.3.4", "2001:db8::1", "0.0.0.0"]
    r = api.post("/add_ips", {"add_ips": ["1.2.3.4", 4294967295, "255.255.255.255"]})
    assert r.json()["added_ips"] == [4294967295] and r.json()["total_ips"] == 4
    assert api.ips() == [16909060, "2001:db8::1", 0, 4294967295]


BAD_BODIES = [
    # (body bytes, status, fragment of the error message)
    (b"", 400, "empty request body"),
    (b"   ", 400, "empty request body"),
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not UTF-8"),
    (b"[1, 2]", 400, "must be a JSON object, got array"),
    (b'"add_ips"', 400, "must be a JSON object, got string"),
    (b"{}", 400, "missing field 'add_ips'"),
    (b'{"add_ip": [1]}', 400, "missing field 'add_ips'"),
    (b'{"add_ips": [1], "x": 2}', 400, "unknown field \"x\""),
    (b'{"add_ips": 1}', 400, "must be a list of IP addresses, got number"),
    (b'{"add_ips": "1.2.3.4"}', 400, "must be a list of IP addresses, got string"),
    (b'{"add_ips": null}', 400, "got null"),
    (b'{"add_ips": [7, -1]}', 400, "add_ips[1] = -1 is out of range"),
    (b'{"add_ips": [4294967296]}', 400, "add_ips[0] = 4294967296 is out of range"),
    (b'{"add_ips": [1.5]}', 400, "add_ips[0] = 1.5 is not an IP address"),
    (b'{"add_ips": [1.0]}', 400, "add_ips[0] = 1.0 is not an IP address"),
    (b'{"add_ips": [true]}', 400, "add_ips[0] = true is not an IP address"),
    (b'{"add_ips": [7, [1, 2]]}', 400, "add_ips[1] = [1, 2] is not an IP address"),
    (b'{"add_ips": [{"ip": 1}]}', 400, "add_ips[0] = {\"ip\": 1} is not an IP address"),
    (b'{"add_ips": [null]}', 400, "add_ips[0] = null is not an IP address"),
    (b'{"add_ips": [8, "1.2.3.999"]}', 400, "add_ips[1] = \"1.2.3.999\" is not a valid IPv4 or IPv6 address"),
    (b'{"add_ips": [" 1.2.3.4"]}', 400, "is not a valid IPv4 or IPv6 address"),
    (b'{"add_ips": ["01.2.3.4"]}', 400, "is not a valid IPv4 or IPv6 address"),
    (b'{"add_ips": ["fe80::1%eth0"]}', 400, "is not a valid IPv4 or IPv6 address"),
    (b'{"add_ips": ["10.0.0.0/8"]}', 400, "is not a valid IPv4 or IPv6 address"),
    (b'{"add_ips": [""]}', 400, "add_ips[0] = \"\" is not a valid"),
    (json.dumps({"add_ips": list(range(51))}).encode(), 413, "has 51 items; at most 50 per request"),
    (b'{"add_ips": [' + b"1," * 2100 + b"1]}", 413, "larger than 4096 bytes"),
]


@pytest.mark.unit
@pytest.mark.parametrize("body,status,message", BAD_BODIES, ids=[repr(b[0][:30]) for b in BAD_BODIES])
def test_bad_add_ips_is_rejected_and_changes_nothing(api, body, status, message):
    api.post("/add_ips", {"add_ips": [9, "10.0.0.1"]})
    r = api.post("/add_ips", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    assert message in r.json()["error"]
    assert api.ips() == [9, "10.0.0.1"]


@pytest.mark.unit
@pytest.mark.parametrize("path", ["/print_all_ips", "/clear_ip_list"])
@pytest.mark.parametrize("body,message", [
    (b"{}", "missing field"),
    (b'{"%s": false}', "must be true, got false"),
    (b'{"%s": "true"}', "must be true, got \"true\""),
    (b'{"%s": 1}', "must be true, got 1"),
    (b'{"%s": null}', "must be true, got null"),
    (b'{"%s": true, "extra": 1}', "unknown field \"extra\""),
    (b"", "empty request body"),
    (b"true", "must be a JSON object, got boolean"),
])
def test_bad_confirmation_flag_is_rejected(api, path, body, message):
    api.post("/add_ips", {"add_ips": [1]})
    if b"%s" in body:
        body = body % path.strip("/").encode()
    r = api.post(path, data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"]
    assert api.ips() == [1]


@pytest.mark.unit
def test_list_size_limit_is_a_409_and_adds_nothing(api):
    for start in range(0, 200, 50):
        assert api.post("/add_ips", {"add_ips": list(range(start, start + 50))}).status_code == 200
    r = api.post("/add_ips", {"add_ips": [0, 1, 500]})  # two already there, one new: 201 > 200
    assert r.status_code == 409
    assert "the maximum is 200" in r.json()["error"] and "nothing was added" in r.json()["error"]
    assert api.post("/add_ips", {"add_ips": [0, 199]}).json()["total_ips"] == 200  # duplicates only: fine
    assert len(api.ips()) == 200


@pytest.mark.unit
def test_unknown_route_is_json_404_and_wrong_method_json_405_with_allow(api):
    r = api.get("/nope")
    assert r.status_code == 404 and r.headers["Content-Type"] == "application/json"
    assert r.json()["error"] == "no such endpoint: /nope; GET /apis lists the endpoints"
    r = api.post("/nope", data=b"{}")
    assert r.status_code == 404 and "no such endpoint" in r.json()["error"]
    for method, path, allow in (("GET", "/add_ips", "POST"), ("DELETE", "/clear_ip_list", "POST"),
                                ("POST", "/stats", "GET"), ("PUT", "/apis", "GET")):
        r = api.request(method, path)
        assert r.status_code == 405, (method, path)
        assert allow in r.headers["Allow"]
        assert r.json()["error"].startswith(f"method {method} is not allowed on {path}")


@pytest.mark.unit
@pytest.mark.parametrize("content_type", ["text/plain", "multipart/form-data; boundary=x", "application/xml"])
def test_non_json_content_type_is_415(api, content_type):
    api.post("/add_ips", {"add_ips": [3]})
    r = api.post("/add_ips", data=b'{"add_ips": [4]}', headers={"Content-Type": content_type})
    assert r.status_code == 415
    assert "unsupported Content-Type" in r.json()["error"]
    assert api.ips() == [3]


def test_a_content_type_with_an_injected_header_is_415(server):
    """A header injection attempt: the HTTP layer must refuse it, not split it."""
    server.post("/add_ips", {"add_ips": [3]})
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        body = b'{"add_ips": [4]}'
        s.sendall(b"POST /add_ips HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/html\r\nX-Injected: 1"
                  + b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = s.recv(65536).decode("latin-1")
    assert answer.startswith("HTTP/1.1 415"), answer
    assert server.ips() == [3]


@pytest.mark.unit
@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8",
                                          "application/x-www-form-urlencoded", "application/merge-patch+json"])
def test_json_and_curl_default_content_types_are_accepted(api, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = api.post("/add_ips", data=b'{"add_ips": [5]}', headers=headers)
    assert r.status_code == 200, r.text
    assert api.ips() == [5]


def test_header_injection_in_path_and_query_is_refused_and_not_echoed(server):
    api = server
    with socket.create_connection(("127.0.0.1", api.port), timeout=10) as s:
        s.sendall(b"GET /events?comm=a%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"Set-Cookie" not in head
    assert "must be 1..64 printable characters" in json.loads(body)["error"]
    r = api.get("/nope%0d%0aX-Evil:%201")
    assert r.status_code == 404 and "X-Evil" not in r.headers
    assert "\\x0d\\x0a" in r.json()["error"]
    assert not any("\r" in line or "X-Evil: 1" in line for line in api.lines)


def test_chunked_oversized_body_is_413(server):
    api = server

    def chunks():
        for _ in range(10):
            yield b"[" + b"1," * 300 + b"1]"
    r = requests.post(api.url("/add_ips"), data=chunks(), headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413
    assert api.ips() == []


@pytest.mark.unit
def test_every_request_is_logged_once_with_status_and_duration(api):
    api.get("/apis?x=1")
    assert len(api.lines) == 1
    assert api.lines[0].split()[2:5] == ["GET", "/apis?x=1", "200"] and api.lines[0].endswith("ms")


def test_the_server_logs_each_request_when_it_closes_the_response(server):
    server.get("/apis?x=1")
    # written when the server closes the response, which may be just after the client has it
    line = wait_for(lambda: next((x for x in reversed(server.lines) if " GET /apis?x=1 " in x), None),
                    what="the access log line")
    assert line.split()[2:5] == ["GET", "/apis?x=1", "200"] and line.endswith("ms")


def test_fifty_parallel_clients_lose_no_update(server):
    api = server

    def add(i):
        r = requests.post(api.url("/add_ips"), json={"add_ips": [f"10.1.{i}.1", f"10.1.{i}.2"]}, timeout=30)
        return r.status_code
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(add, range(50)))
    assert statuses == [200] * 50
    ips = api.ips()
    assert len(ips) == 100
    assert set(ips) == {f"10.1.{i}.{j}" for i in range(50) for j in (1, 2)}


def test_restart_keeps_the_list(tmp_path):
    db = tmp_path / "ips.sqlite3"
    with ApiProcess(db) as srv:
        srv.post("/add_ips", {"add_ips": [1, "::1", "192.168.0.1"]})
    with ApiProcess(db) as srv:
        assert srv.ips() == [1, "::1", "192.168.0.1"]
        assert "(3 addresses)" in srv.output


def test_kill_9_mid_burst_keeps_every_acknowledged_add(tmp_path):
    db = tmp_path / "ips.sqlite3"
    srv = ApiProcess(db).start()
    acked, stop = [], threading.Event()

    def writer(w):
        session, n = requests.Session(), 0
        while not stop.is_set():
            batch = [f"10.{w}.{n // 250}.{n % 250}", str(ipaddress.ip_address(f"fd00::{w:x}:{n:x}"))]
            try:
                r = session.post(srv.url("/add_ips"), json={"add_ips": batch}, timeout=5)
            except requests.RequestException:
                return
            if r.status_code == 200:
                acked.append(batch)
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    srv.proc.send_signal(signal.SIGKILL)
    srv.proc.wait(5)
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 20, "the burst did not get going"
    with ApiProcess(db) as again:
        stored = again.ips()
    missing = [ip for batch in acked for ip in batch if ip not in set(stored)]
    assert not missing, f"{len(missing)} acknowledged addresses lost, e.g. {missing[:3]}"
    # nothing half-written: each request's two addresses are both there or both absent
    stored_set = set(stored)
    for ip in stored:
        if ip.startswith("10."):
            _, w, hi, lo = ip.split(".")
            assert str(ipaddress.ip_address(f"fd00::{int(w):x}:{int(hi) * 250 + int(lo):x}")) in stored_set, ip


@pytest.mark.parametrize("content", [b"this is not a database, just text\n" * 100,
                                     b"SQLite format 3\x00" + b"\x00\xff" * 3000],
                         ids=["text", "sqlite-header-then-garbage"])
def test_corrupt_database_is_refused_at_start_and_left_untouched(tmp_path, content):
    db = tmp_path / "ips.sqlite3"
    db.write_bytes(content)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    srv = ApiProcess(db).start(wait=False)
    assert srv.wait_exit() == 2
    assert "error: the database" in srv.output and "left untouched" in srv.output, srv.output
    assert "Traceback" not in srv.output
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ips.sqlite3"]


def test_unreadable_database_is_a_clear_error(tmp_path):
    db = tmp_path / "missing-dir" / "ips.sqlite3"
    srv = ApiProcess(db).start(wait=False)
    assert srv.wait_exit() == 2
    assert "does not exist: create it" in srv.output
    other = tmp_path / "dir.sqlite3"
    other.mkdir()
    srv = ApiProcess(other).start(wait=False)
    assert srv.wait_exit() == 2
    assert "is a directory" in srv.output


def test_foreign_sqlite_database_is_refused(tmp_path):
    import sqlite3
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    before = db.read_bytes()
    srv = ApiProcess(db).start(wait=False)
    assert srv.wait_exit() == 2
    assert "is not a syswatch IP list (tables: customers" in srv.output
    assert db.read_bytes() == before
