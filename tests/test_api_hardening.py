"""The API's small hardening items (issue 12, item 7): address spelling across Python versions,
databases the API must refuse, a full disk, path aliases, duplicate JSON keys, waitress's own errors,
a bad --host, bad environment variables, test_api.sh. What is request and answer only runs in process
(make_app; the request parsed by waitress's own parser, harness.wsgi; marked unit), the rest against
a real `python -m api.server`."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import sqlite3
import stat
import subprocess

import pytest

from harness import ROOT
from harness.api import PYTHON, ApiInProcess, ApiProcess
from tests.conftest import is_root, require


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def raw_request(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Send ``data`` as is; (status, headers with lower-case names, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:  # the server closed after answering, with our data unread
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict((k.strip().lower(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:]))
    return int(lines[0].split()[1]), headers, body


def strict_json(body: bytes):
    def no_constant(name):
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(body, parse_constant=no_constant)


@pytest.fixture(scope="module")
def server_process(tmp_path_factory):
    srv = ApiProcess(tmp_path_factory.mktemp("hard") / "ips.sqlite3", "--max-body-bytes", "4096")
    with srv:
        yield srv


@pytest.fixture
def server(server_process):
    """The API as a process, its list cleared."""
    assert server_process.post("/clear_ip_list", {"clear_ip_list": True}).status_code == 200
    yield server_process


@pytest.fixture
def api(tmp_path):
    """The same API in process, with a fresh list."""
    return ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--max-body-bytes", "4096")


# --- 1. IPv4-mapped IPv6 addresses: one spelling on every Python version -------------------------

MAPPED_SPELLINGS = ["::ffff:1.2.3.4", "::FFFF:102:304", "0:0:0:0:0:ffff:0102:0304", "::ffff:0102:0304"]


def other_pythons() -> list[str]:
    """Interpreters besides the test's that are on this machine (e.g. pyenv's 3.12 / 3.13)."""
    found = set(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")))
    found |= set(glob.glob("/usr/bin/python3.1[2-9]"))
    return sorted(found)


def test_ipv4_mapped_address_is_spelled_the_same_by_every_python_version():
    """validation.entry gives RFC 5952's mixed form on this interpreter and on any other one found here
    (Python 3.11/3.12 print ::ffff:102:304, 3.13 ::ffff:1.2.3.4): our code decides, not the stdlib."""
    code = ("import json, sys; from syswatch.api.validation import entry; "
            "print(json.dumps([list(entry(a, 0)) for a in json.loads(sys.argv[1])]))")
    spellings = MAPPED_SPELLINGS + ["::ffff:0:0"]
    for python in [PYTHON, *other_pythons()]:
        out = subprocess.run([python, "-c", code, json.dumps(spellings)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, (python, out.stderr)
        keys = [key for key, _ in json.loads(out.stdout)]
        assert keys == ["::ffff:1.2.3.4"] * 4 + ["::ffff:0.0.0.0"], python


@pytest.mark.unit
def test_ipv4_mapped_address_is_stored_once_and_apart_from_the_ipv4_address(api):
    r = api.post("/add_ips", {"add_ips": MAPPED_SPELLINGS})
    assert r.status_code == 200, r.text
    assert r.json()["added_ips"] == ["::ffff:1.2.3.4"]
    assert r.json()["ignored_ips"] == ["::ffff:1.2.3.4"] * 3
    # the documented choice: ::ffff:1.2.3.4 is an IPv6 address, not the IPv4 address 1.2.3.4
    r = api.post("/add_ips", {"add_ips": ["1.2.3.4", 16909060]})
    assert r.json()["added_ips"] == ["1.2.3.4"] and r.json()["ignored_ips"] == [16909060]
    assert api.ips() == ["::ffff:1.2.3.4", "1.2.3.4"]


def make_db(path, rows, schema: str | None = None, user_version: int = 1) -> None:
    from syswatch.api.iplist import SCHEMA
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(schema or SCHEMA)
        conn.executemany("INSERT INTO ips (addr, value) VALUES (?, ?)", rows)
        conn.execute(f"PRAGMA user_version={user_version}")
    conn.close()


def test_database_written_by_python_3_11_and_then_3_13_dedupes(tmp_path):
    """A list moved across versions: 3.11 stored ::ffff:102:304, then 3.13 stored the same address as
    ::ffff:1.2.3.4. At start-up the API respells every stored address and keeps the first of each."""
    db = tmp_path / "ips.sqlite3"
    make_db(db, [("::ffff:102:304", '"::ffff:102:304"'), ("10.0.0.1", '"10.0.0.1"'), ("2001:db8::1", '"2001:db8::1"'),
                 ("::ffff:1.2.3.4", '"::ffff:1.2.3.4"'), ("::ffff:a00:1", '"::ffff:a00:1"')])
    for run in range(2):  # and again: the respelling is done once and changes nothing the second time
        with ApiProcess(db) as srv:
            assert srv.ips() == ["::ffff:1.2.3.4", "10.0.0.1", "2001:db8::1", "::ffff:10.0.0.1"]
            r = srv.post("/add_ips", {"add_ips": ["::ffff:102:304", "::ffff:1.2.3.4", "::ffff:10.0.0.1"]})
            assert r.json()["added_ips"] == [] and r.json()["total_ips"] == 4
            said = "IP list: respelled 2 stored IPv4-mapped IPv6 address(es) as ::ffff:a.b.c.d and dropped 1 duplicate"
            assert (said in srv.output) == (run == 0), srv.output


# --- 2. an `ips` table with another schema is refused at start-up --------------------------------

@pytest.mark.parametrize("schema", [
    "CREATE TABLE ips (id INTEGER PRIMARY KEY, ip TEXT)",
    # the right columns, but addr is not unique: duplicates would be stored silently
    "CREATE TABLE ips (seq INTEGER PRIMARY KEY AUTOINCREMENT, addr TEXT NOT NULL, value TEXT NOT NULL)",
    "CREATE TABLE ips (seq INTEGER PRIMARY KEY AUTOINCREMENT, addr TEXT NOT NULL UNIQUE, value BLOB)",
])
def test_ips_table_of_another_schema_is_refused_at_start_up(tmp_path, schema):
    db = tmp_path / "other.sqlite3"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(schema)
    conn.close()
    before = sha256(db)
    srv = ApiProcess(db).start(wait=False)
    try:
        assert srv.wait_exit(timeout=30) == 2, srv.output
    finally:
        srv.stop()
    assert "has an 'ips' table of another schema" in srv.output and "left untouched" in srv.output
    assert "Traceback" not in srv.output
    assert sha256(db) == before and sorted(os.listdir(tmp_path)) == ["other.sqlite3"]


# --- 3. a FIFO, a directory or a device as --db --------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_db_that_is_not_a_regular_file_is_a_clear_error_and_left_untouched(tmp_path, kind):
    db = tmp_path / "ips.sqlite3"
    if kind == "fifo":
        os.mkfifo(db)
        expected, is_kind = "is a FIFO (named pipe)", stat.S_ISFIFO
    elif kind == "directory":
        db.mkdir()
        expected, is_kind = "is a directory", stat.S_ISDIR
    else:
        require(is_root(), "run as root (the test makes a device node): sudo scripts/test.sh")
        os.mknod(db, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        expected, is_kind = "is a character device", stat.S_ISCHR
    srv = ApiProcess(db).start(wait=False)
    try:
        assert srv.wait_exit(timeout=30) == 2, srv.output
    finally:
        srv.stop()
    assert f"the database path '{db}' {expected}" in srv.output and "--db" in srv.output
    assert "Traceback" not in srv.output
    assert is_kind(os.lstat(db).st_mode) and os.listdir(tmp_path) == ["ips.sqlite3"]


# --- 4. a full disk is a 507 that changes nothing ------------------------------------------------

def test_full_disk_is_507_disk_full_and_changes_nothing(tmp_path):
    require(is_root(), "run as root (the test mounts a small tmpfs): sudo scripts/test.sh")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "syswatch-test-tmpfs", str(mnt)], check=True)
    srv = ApiProcess(mnt / "ips.sqlite3", "--max-items", "20000", "--max-body-bytes", "1000000")
    try:
        srv.start()
        assert srv.post("/add_ips", {"add_ips": [1, 2, "10.0.0.1"]}).status_code == 200
        with open(mnt / "filler", "wb", buffering=0) as f:  # fill the file system to the last byte
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
            try:
                while True:
                    f.write(b"\0")
            except OSError:
                pass
        many = [f"10.99.{i >> 8}.{i & 255}" for i in range(15000)]  # ~200 pages, more than the WAL holds
        r = srv.post("/add_ips", {"add_ips": many})
        assert r.status_code == 507, r.text
        assert r.headers["Content-Type"].startswith("application/json")
        assert "disk full" in r.json()["error"] and "nothing was changed" in r.json()["error"]
        assert srv.ips() == [1, 2, "10.0.0.1"]
        r = srv.post("/clear_ip_list", {"clear_ip_list": True})
        assert r.status_code == 507 and "disk full" in r.json()["error"], r.text
        assert srv.ips() == [1, 2, "10.0.0.1"]
        os.unlink(mnt / "filler")  # with space again the same request succeeds
        r = srv.post("/add_ips", {"add_ips": many})
        assert r.status_code == 200 and r.json()["total_ips"] == 3 + len(many)
    finally:
        srv.stop()
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)])
    assert not os.path.ismount(mnt)


# --- 5. path aliases are 404 ---------------------------------------------------------------------

ALIASES = ["/clear_ip_list%ff", "//clear_ip_list", "/%2Fclear_ip_list", "/%2fclear_ip_list", "///clear_ip_list",
           "/%63lear_ip_list", "/clear_ip_list%2F", "/clear%5Fip_list", "/./clear_ip_list", "/apis/../clear_ip_list",
           "/clear_ip_list/", "/clear_ip_list%00", "/clear_ip_list%20"]


def post_json(api: ApiInProcess, target: str, body: bytes):
    """``body`` POSTed to ``target`` exactly as written (no client normalises the path)."""
    return api.post(target, data=body, headers={"Content-Type": "application/json", "Host": "localhost"})


@pytest.mark.unit
@pytest.mark.parametrize("alias", ALIASES)
def test_path_alias_is_404_and_changes_nothing(api, alias):
    api.post("/add_ips", {"add_ips": [7]})
    r = post_json(api, alias, b'{"clear_ip_list": true}')
    assert r.status_code == 404, r.content
    assert r.headers["content-type"].startswith("application/json")
    assert "no such endpoint" in strict_json(r.content)["error"]
    assert api.ips() == [7]
    r = api.get(alias.replace("clear_ip_list", "apis"), headers={"Host": "localhost"})
    assert r.status_code == 404, r.content


def test_a_path_alias_sent_to_the_server_is_404(server):
    """The same through waitress itself: what it decodes, ExactPaths still tells apart."""
    server.post("/add_ips", {"add_ips": [7]})
    for alias in ("/%63lear_ip_list", "//clear_ip_list", "/clear_ip_list%ff"):
        body = b'{"clear_ip_list": true}'
        status, _, answer = raw_request(server.port, f"POST {alias} HTTP/1.1\r\nHost: localhost\r\n"
                                                     f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                                                     f"\r\nConnection: close\r\n\r\n".encode() + body)
        assert status == 404, answer
    assert server.ips() == [7]


@pytest.mark.unit
@pytest.mark.parametrize("target", ["/clear_ip_list", "http://x/clear_ip_list", "/clear_ip_list?a=%2F%ff"])
def test_the_real_path_still_works(api, target):
    api.post("/add_ips", {"add_ips": [7]})
    r = post_json(api, target, b'{"clear_ip_list": true}')
    assert r.status_code == 200, r.content
    assert api.ips() == []


@pytest.mark.unit
def test_percent_encoded_query_values_still_work(api):
    r = api.get("/events", params={"comm": "a b/c"})
    assert r.status_code == 200 and r.json()["count"] == 0


# --- 6. duplicate JSON keys are a 400 naming the key ---------------------------------------------

@pytest.mark.unit
@pytest.mark.parametrize("path,body,key", [
    ("/add_ips", b'{"add_ips": [1], "add_ips": [2]}', "add_ips"),
    ("/print_all_ips", b'{"print_all_ips": true, "print_all_ips": true}', "print_all_ips"),
    ("/clear_ip_list", b'{"clear_ip_list": false, "clear_ip_list": true}', "clear_ip_list"),
    ("/add_ips", b'{"add_ips": [{"a": 1, "a": 2}]}', "a"),
])
def test_duplicate_json_keys_are_400_naming_the_key(api, path, body, key):
    api.post("/add_ips", {"add_ips": [9]})
    r = post_json(api, path, body)
    assert r.status_code == 400, r.content
    assert f'duplicate key "{key}"' in strict_json(r.content)["error"]
    assert api.ips() == [9]


# --- 7. errors that waitress answers itself are JSON too ---------------------------------------

WAITRESS_ERRORS = [
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    (b"GARBAGE\r\n\r\n", 400),  # waitress 2 (Debian's) passes it on: then our JSON 404
    (b"POST /add_ips HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n", 431),
    (b"POST /add_ips HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
    (b"POST /add_ips HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n[", 413),
]


@pytest.mark.parametrize("request_bytes,status", WAITRESS_ERRORS, ids=[str(s) + "-" + str(i) for i, (_, s) in
                                                                       enumerate(WAITRESS_ERRORS)])
def test_errors_waitress_answers_itself_are_json(server, request_bytes, status):
    got, headers, body = raw_request(server.port, request_bytes)
    assert got == status or (request_bytes.startswith(b"GARBAGE") and got == 404), body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    error = strict_json(body)["error"]
    assert isinstance(error, str) and error and "\r" not in error and "\n" not in error


# --- 8. a --host that is no address -------------------------------------------------------------

def run_api(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SYSWATCH_")}
    full_env.update(env or {})
    return subprocess.run([PYTHON, "-m", "api.server", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_host_that_is_not_an_address_is_a_clear_error(tmp_path, how):
    args, env = (["--host", "999.1.1.1"], None) if how == "flag" else ([], {"SYSWATCH_HOST": "999.1.1.1"})
    out = run_api(*args, "--port", "0", "--db", str(tmp_path / "ips.sqlite3"), env=env)
    assert out.returncode == 2, out.stderr
    assert "error: cannot listen on 999.1.1.1" in out.stderr and "--host / SYSWATCH_HOST" in out.stderr
    assert "Traceback" not in out.stderr


# --- 9. a bad environment variable exits 2, like a bad flag --------------------------------------

def test_bad_environment_variable_exits_2_like_a_bad_flag():
    flag = run_api("--max-items", "lots")
    env = run_api(env={"SYSWATCH_MAX_ITEMS": "lots"})
    assert flag.returncode == env.returncode == 2
    assert env.stderr.strip().endswith("error: environment variable SYSWATCH_MAX_ITEMS='lots' is invalid: "
                                       "invalid literal for int() with base 10: 'lots'")
    assert "Traceback" not in env.stderr and env.stdout == ""


def test_env_default_exits_2_with_its_message_on_stderr(monkeypatch, capsys):
    from syswatch.shared.config import env_default
    monkeypatch.setenv("SYSWATCH_TEST_NUMBER", "x")
    with pytest.raises(SystemExit) as exc:
        env_default("SYSWATCH_TEST_NUMBER", 1, int)
    assert exc.value.code == 2
    assert "environment variable SYSWATCH_TEST_NUMBER='x' is invalid" in capsys.readouterr().err
    monkeypatch.setenv("SYSWATCH_TEST_NUMBER", "5")
    assert env_default("SYSWATCH_TEST_NUMBER", 1, int) == 5


# --- 10. test_api.sh against a list that is not empty ------------------------------------------

def run_walk_through(srv: ApiProcess) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYSWATCH_")}
    return subprocess.run([str(ROOT / "test_api.sh")], env={**env, "BASE_URL": srv.base}, capture_output=True,
                          text=True, timeout=120)


def test_walk_through_script_is_self_contained(server):
    api = server
    api.post("/add_ips", {"add_ips": [3, "10.9.8.7"]})
    out = run_walk_through(api)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "the list held 2 addresses" in out.stdout and "clearing it first" in out.stdout
    for title in ("Getting available APIs", "Adding IPs [1,2,3]", "Adding IPs [4,5,6]", "Printing all IPs",
                  "Clearing IP list", "Printing all IPs after clearing"):
        assert title + "\n" in out.stdout
    assert api.ips() == []
    again = run_walk_through(api)  # from an empty list: nothing to clear first
    assert again.returncode == 0 and "clearing it first" not in again.stdout
