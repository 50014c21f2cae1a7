"""docker-compose.curve.yml end to end: keys from scripts/curve-keys.sh, the API connected to the
collector through CurveZMQ, an authorised subscriber on the host receives, an unknown one gets nothing."""
from __future__ import annotations

import subprocess
import time

import pytest
import zmq

from harness import ROOT
from harness.compose import ComposeStack, receive, wait_for_status
from harness.procs import free_port
from syswatch.shared import curve, protocol, zmqsock
from tests.conftest import is_root, require, require_compose_stack, uncaptured_printer

pytestmark = [pytest.mark.docker, pytest.mark.slow]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    require(is_root(), "run as root (the API's key is given to uid 10001): sudo scripts/test.sh")
    directory = tmp_path_factory.mktemp("curve") / "keys"
    out = subprocess.run([str(ROOT / "scripts" / "curve-keys.sh"), str(directory), "alice"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    # A key pair the collector was never told about.
    assert curve.main([str(directory / "stranger"), "mallory"]) == 0
    return directory


@pytest.fixture(scope="module")
def curve_stack(request, keys):
    require_compose_stack()
    s = ComposeStack(api_port=free_port(), collector_port=free_port(),
                     files=("docker-compose.yml", "docker-compose.curve.yml"))
    s.env["SYSWATCH_KEYS"] = str(keys)
    with s.running(uncaptured_printer(request.config)):
        yield s


def subscriber(stack: ComposeStack, server_key, client_key):
    ctx = zmq.Context()
    keys = curve.client_from_env({curve.ENV_SERVER_KEY: str(server_key), curve.ENV_CLIENT_KEY: str(client_key)})
    return ctx, zmqsock.make_subscriber(ctx, stack.collector_endpoint, (protocol.TOPIC_STATUS,), curve_client=keys)


def test_api_reaches_the_collector_through_curve(curve_stack):
    deadline = time.monotonic() + 30
    while (health := curve_stack.http("GET", "/healthz")[1])["collector_connected"] is not True:
        assert time.monotonic() < deadline, health
        time.sleep(0.5)
    assert "(CurveZMQ)" in curve_stack.logs("api")


def test_authorised_subscriber_receives_and_a_stranger_gets_nothing(curve_stack, keys):
    ctx, alice = subscriber(curve_stack, keys / "server.key", keys / "clients" / "alice.key_secret")
    ctx2, mallory = subscriber(curve_stack, keys / "server.key", keys / "stranger" / "mallory.key_secret")
    ctx3, plain = zmq.Context(), None
    try:
        plain = zmqsock.make_subscriber(ctx3, curve_stack.collector_endpoint, (protocol.TOPIC_STATUS,))
        assert wait_for_status(alice, timeout=30)["v"] == 2
        # The collector publishes status every second: 5 s of silence means refused.
        assert list(receive(mallory, time.monotonic() + 5)) == []
        assert list(receive(plain, time.monotonic() + 1)) == []
    finally:
        for sock in (alice, mallory, plain):
            if sock is not None:
                sock.close()
        for c in (ctx, ctx2, ctx3):
            c.term()
