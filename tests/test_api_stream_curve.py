"""The API's subscriber with CurveZMQ (shared/curve.py): an authorised key gets the stream, an
unknown key gets nothing, and missing keys are a clear start-up error."""
from __future__ import annotations

import time

import pytest
import zmq
import zmq.auth

from harness.api import ApiProcess, Publisher, connect, event
from harness.procs import wait_for
from syswatch.shared import curve
from tests.conftest import require


@pytest.fixture
def keys(tmp_path):
    require(zmq.has("curve"), "pyzmq/libzmq with CurveZMQ support (libsodium) is needed")
    for sub in ("clients", "others"):
        (tmp_path / sub).mkdir()
    zmq.auth.create_certificates(tmp_path, "server")
    zmq.auth.create_certificates(tmp_path / "clients", "alice")
    zmq.auth.create_certificates(tmp_path / "others", "mallory")
    return tmp_path


@pytest.fixture
def curve_publisher(keys):
    """A publisher admitting only keys/clients/*.key, on its own context (the ZAP handler is per context)."""
    ctx = zmq.Context()
    server = curve.server_from_env({curve.ENV_SERVER_KEY: str(keys / "server.key_secret"),
                                    curve.ENV_CLIENTS: str(keys / "clients")})
    auth = curve.start_authenticator(ctx, server)
    from harness.procs import free_port
    pub = Publisher(f"tcp://127.0.0.1:{free_port()}", ctx=ctx, curve_server=server)
    yield pub
    pub.close()
    auth.stop()
    ctx.term()


def test_authorised_api_receives_and_unknown_key_gets_nothing(tmp_path, keys, curve_publisher):
    pub = curve_publisher
    common = {curve.ENV_SERVER_KEY: str(keys / "server.key")}
    alice = ApiProcess(tmp_path / "a.sqlite3", collector=pub.endpoint,
                      env={**common, curve.ENV_CLIENT_KEY: str(keys / "clients" / "alice.key_secret")})
    mallory = ApiProcess(tmp_path / "m.sqlite3", collector=pub.endpoint,
                        env={**common, curve.ENV_CLIENT_KEY: str(keys / "others" / "mallory.key_secret")})
    with alice, mallory:
        assert "(CurveZMQ)" in alice.output
        connect(alice, pub)
        pub.events([event(pid=7700, comm="secret")])
        wait_for(lambda: alice.get("/events", params={"pid": 7700}).json()["count"] == 1, what="alice's event")
        for _ in range(20):  # two seconds of status messages: none reaches mallory
            pub.status()
            time.sleep(0.1)
        s = mallory.get("/stats").json()
        assert s["connected"] is False and s["events_received"] == 0 and s["api"]["messages_received"] == 0
        assert mallory.get("/healthz").status_code == 200


def test_server_key_without_client_key_is_a_clear_error(tmp_path, keys):
    srv = ApiProcess(tmp_path / "x.sqlite3", env={curve.ENV_SERVER_KEY: str(keys / "server.key")})
    srv.start(wait=False)
    assert srv.wait_exit() == 2
    assert "set SYSWATCH_CURVE_CLIENT_KEY" in srv.output and "Traceback" not in srv.output
