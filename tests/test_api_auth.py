"""Optional bearer token: with SYSWATCH_TOKEN or --token-file set, every POST needs it; GETs stay open;
the token never shows up in the log or in an answer. In process (the command line read by
server.parse_args, the app by make_app; marked unit), and once against a real API process."""
from __future__ import annotations

import pytest
import requests

from harness.api import ApiInProcess, ApiProcess
from harness.procs import wait_for

TOKEN = "s3cret-Token_for.tests~42"


@pytest.fixture(params=["env", "file"])
def server(request, tmp_path):
    if request.param == "env":
        return ApiInProcess.from_args(tmp_path / "ips.sqlite3", env={"SYSWATCH_TOKEN": TOKEN})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    # the file beats the environment variable
    return ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--token-file", str(token_file),
                                  env={"SYSWATCH_TOKEN": "other"})


AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"}, {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": "Bearer "}, {"Authorization": "Bearer \u00e9t\u00e9"},
], ids=["none", "wrong", "longer", "shorter", "no-scheme", "basic", "empty", "latin1"])
@pytest.mark.unit
def test_post_without_the_right_token_is_401_and_changes_nothing(server, headers):
    assert server.post("/clear_ip_list", {"clear_ip_list": True}, headers=AUTH).status_code == 200
    assert server.post("/add_ips", {"add_ips": [1]}, headers=AUTH).status_code == 200
    for path, body in (("/add_ips", {"add_ips": [2]}), ("/clear_ip_list", {"clear_ip_list": True}),
                       ("/print_all_ips", {"print_all_ips": True})):
        r = server.post(path, body, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert "bearer token" in r.json()["error"]
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert TOKEN not in r.text and TOKEN not in str(r.headers)
    assert server.ips(headers=AUTH) == [1]


@pytest.mark.unit
def test_gets_stay_open_and_the_right_token_works(server):
    for path in ("/apis", "/stats", "/events", "/metrics", "/healthz", "/openapi.json"):
        assert server.get(path).status_code == 200, path
    r = server.post("/add_ips", {"add_ips": ["10.9.8.7"]}, headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200


@pytest.mark.unit
def test_token_never_appears_in_the_log(server):
    server.post("/add_ips", {"add_ips": [3]}, headers=AUTH)
    server.post("/add_ips", {"add_ips": [3]}, headers={"Authorization": f"Bearer {TOKEN}0"})
    server.get("/nope", headers=AUTH)
    assert any(" GET /nope 404 " in line for line in server.lines)
    assert TOKEN not in server.output


def test_the_served_api_requires_the_token_and_never_logs_it(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with ApiProcess(tmp_path / "ips.sqlite3", "--token-file", str(token_file), env={"SYSWATCH_TOKEN": "other"}) as srv:
        assert "POST token: required" in srv.output
        r = requests.post(srv.url("/add_ips"), json={"add_ips": [1]}, headers={"Authorization": "Bearer other"},
                          timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert srv.post("/add_ips", {"add_ips": [1]}, headers=AUTH).status_code == 200
        srv.get("/nope", headers=AUTH)
        wait_for(lambda: any(" GET /nope 404 " in line for line in srv.lines), what="the last request's log line")
        assert TOKEN not in srv.output


@pytest.mark.parametrize("content,message", [("", "is empty"), ("has space", "holds characters")])
def test_bad_token_file_is_refused_at_start(tmp_path, content, message):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    srv = ApiProcess(tmp_path / "ips.sqlite3", "--token-file", str(token_file)).start(wait=False)
    assert srv.wait_exit() != 0
    assert message in srv.output and "Traceback" not in srv.output


# --- the read token (issue 23): the endpoints that show the stream ----------------------------------------
READ = "read-Token.for~tests-7"
READ_PATHS = ("/stats", "/events", "/events/stream", "/metrics")


@pytest.fixture(params=["env", "file"])
def reader_server(request, tmp_path):
    if request.param == "env":
        return ApiInProcess.from_args(tmp_path / "ips.sqlite3", env={"SYSWATCH_READ_TOKEN": READ,
                                                                      "SYSWATCH_TOKEN": TOKEN})
    token_file = tmp_path / "read-token"
    token_file.write_text(READ + "\n")
    return ApiInProcess.from_args(tmp_path / "ips.sqlite3", "--read-token-file", str(token_file),
                                  env={"SYSWATCH_READ_TOKEN": "other", "SYSWATCH_TOKEN": TOKEN})


@pytest.mark.parametrize("headers", [
    {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {READ}x"}, {"Authorization": READ},
    {"Authorization": f"Basic {READ}"}, {"Authorization": "Bearer "}, {"Authorization": "Bearer \u00e9t\u00e9"},
], ids=["none", "wrong", "longer", "no-scheme", "basic", "empty", "latin1"])
@pytest.mark.unit
def test_reading_the_stream_without_the_read_token_is_401(reader_server, headers):
    for path in READ_PATHS:
        r = reader_server.get(path, headers=headers)
        assert r.status_code == 401, (path, r.status_code, r.text[:200])
        assert "read the stream" in r.json()["error"] and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert READ not in r.text and TOKEN not in r.text


@pytest.mark.unit
def test_the_read_token_or_the_post_token_reads_and_the_rest_stays_open(reader_server):
    for token in (READ, TOKEN):
        for path in ("/stats", "/events", "/metrics"):
            r = reader_server.get(path, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, (path, r.text[:200])
        head = reader_server.head("/events/stream", headers={"Authorization": f"Bearer {token}"})
        assert head.status_code == 200 and head.headers["Content-Type"].startswith("text/event-stream")
    for path in ("/", "/apis", "/healthz", "/openapi.json", "/static/dashboard.js"):
        assert reader_server.get(path).status_code == 200, path
    # the read token is not the POST token
    r = reader_server.post("/add_ips", {"add_ips": [1]}, headers={"Authorization": f"Bearer {READ}"})
    assert r.status_code == 401
    reader_server.get("/stats", headers={"Authorization": f"Bearer {READ}"})
    assert READ not in reader_server.output


def test_the_served_api_streams_only_with_the_read_token(tmp_path):
    """A real server: /events/stream is refused without the token and streams with it."""
    token_file = tmp_path / "read-token"
    token_file.write_text(READ + "\n")
    with ApiProcess(tmp_path / "ips.sqlite3", "--read-token-file", str(token_file)) as srv:
        assert "read token: required" in srv.output
        r = requests.get(srv.url("/events/stream"), timeout=10)
        assert r.status_code == 401 and r.json()["error"].startswith("missing bearer token")
        with requests.get(srv.url("/events/stream"), headers={"Authorization": f"Bearer {READ}"}, stream=True,
                          timeout=10) as r:
            assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            assert next(r.iter_lines()).startswith(b":")     # the stream's opening comment
        assert READ not in srv.output
