"""CurveZMQ: an authorised subscriber gets the stream, an unauthorised or plain one gets nothing."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import zmq

from harness import ROOT
from harness.api import ApiProcess, metric
from harness.collector import CollectorProcess, StreamReader
from harness.procs import wait_for
from syswatch.shared import curve


def keygen(directory, name) -> None:
    res = subprocess.run([sys.executable, "-m", "shared.curve", str(directory), name],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "public key:" in res.stdout


def test_keygen_refuses_to_overwrite(tmp_path):
    keygen(tmp_path, "server")
    assert oct((tmp_path / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    res = subprocess.run([sys.executable, "-m", "shared.curve", str(tmp_path), "server"],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert res.returncode == 1 and "not overwriting" in res.stderr


def test_env_errors_are_clear(tmp_path):
    keygen(tmp_path, "server")
    with pytest.raises(curve.CurveError, match="SYSWATCH_CURVE_CLIENTS"):
        curve.server_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "server.key_secret")})
    with pytest.raises(curve.CurveError, match="no secret key"):
        curve.server_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "server.key"),
                               "SYSWATCH_CURVE_CLIENTS": str(tmp_path)})
    with pytest.raises(curve.CurveError, match="SYSWATCH_CURVE_CLIENT_KEY"):
        curve.client_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "server.key")})
    with pytest.raises(curve.CurveError, match="cannot load"):
        curve.client_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "missing.key")})
    assert curve.server_from_env({}) is None and curve.client_from_env({}) is None


def test_authorised_and_unauthorised_subscribers(tmp_path, root_and_bpftrace):
    """Alice's key is authorised, mallory's is unknown, a third subscriber has none: only alice
    gets data; the two refusals are counted in status and in the API's /metrics, and logged with
    the peer's address."""
    keys, clients, outsiders = tmp_path / "keys", tmp_path / "keys" / "clients", tmp_path / "outsiders"
    keygen(keys, "server")
    keygen(clients, "alice")
    keygen(outsiders, "mallory")
    # the collector's directory of authorised subscribers holds public keys only
    os.rename(clients / "alice.key_secret", keys / "alice.key_secret")
    env = {"SYSWATCH_CURVE_SERVER_KEY": str(keys / "server.key_secret"), "SYSWATCH_CURVE_CLIENTS": str(clients)}
    coll = CollectorProcess(tmp_path, "--echo-rate", "0", "--comm", "sw-curve", env=env)
    def as_client(own):
        return curve.client_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(keys / "server.key"),
                                      "SYSWATCH_CURVE_CLIENT_KEY": str(own)})
    alice = StreamReader(coll.endpoint, ("status",), curve_client=as_client(keys / "alice.key_secret"))
    mallory = StreamReader(coll.endpoint, ("status",), curve_client=as_client(outsiders / "mallory.key_secret"))
    plain = StreamReader(coll.endpoint, ("status",))
    try:
        assert alice.wait_status(10)["mode"] == "events"
        for intruder in (mallory, plain):
            assert list(intruder.messages(2.5)) == [], "an unauthorised subscriber received data"
        # the subscriber scripts take the same environment
        res = subprocess.run([sys.executable, str(ROOT / "subscribers" / "tail.py"), "--endpoint", coll.endpoint,
                              "--topic", "status", "--json", "--count", "1", "--timeout", "10"],
                             capture_output=True, text=True, timeout=30,
                             env={**os.environ, "SYSWATCH_CURVE_SERVER_KEY": str(keys / "server.key"),
                                  "SYSWATCH_CURVE_CLIENT_KEY": str(keys / "alice.key_secret")})
        assert res.returncode == 0 and '"excluded_pids"' in res.stdout, res.stderr
        # refused, counted, logged. Which side of a mechanism mismatch notices it first is a race inside
        # libzmq (the collector's side then sees a peer that left mid-handshake, not a refusal), so a
        # client without a key connects anew until one of its attempts is refused; bounded, and the
        # failure says what was seen.
        deadline = time.monotonic() + 30
        st = alice.wait_status()
        while st.get("curve_refused_total", 0) < 2 or "no CurveZMQ key" not in coll.stderr():
            assert time.monotonic() < deadline, (f"refusals: {st.get('curve_refused_total')} after 30 s; "
                                                 f"collector log: {coll.stderr()[-1500:]}")
            plain.close()
            plain = StreamReader(coll.endpoint, ("status",))
            list(plain.messages(1.0))
            st = alice.wait_status()
        log = coll.stderr()
        assert "CurveZMQ refused a subscriber from 127.0.0.1:" in log and "key not authorised" in log, log[-2000:]
        assert "no CurveZMQ key" in log, log[-2000:]
        with ApiProcess(tmp_path / "ips.sqlite3", collector=coll.endpoint,
                        env={"SYSWATCH_CURVE_SERVER_KEY": str(keys / "server.key"),
                             "SYSWATCH_CURVE_CLIENT_KEY": str(keys / "alice.key_secret")}) as api:
            refused = wait_for(lambda: metric(api.get("/metrics").text, "syswatch_collector_curve_refused_total",
                                              host=st["host"]), timeout=20, what="the refusals in /metrics")
            assert refused >= 2
        assert coll.stop()[0] == 0
    finally:
        for s in (alice, mallory, plain):
            s.close()
        coll.kill()


def test_refusals_are_counted_and_logged_with_the_peer_address(tmp_path, caplog):
    """In-process, real CurveZMQ over loopback: a subscriber with an unknown key and one with no key
    are refused and counted, an authorised one is not; the log names each refused peer's address
    and port, and a flood of refusals costs the log a bounded number of lines."""
    import logging
    import time
    keygen(tmp_path, "server")
    keygen(tmp_path / "clients", "alice")
    keygen(tmp_path / "outsiders", "mallory")
    server = curve.server_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "server.key_secret"),
                                    "SYSWATCH_CURVE_CLIENTS": str(tmp_path / "clients")})

    def as_client(own):
        return curve.client_from_env({"SYSWATCH_CURVE_SERVER_KEY": str(tmp_path / "server.key"),
                                      "SYSWATCH_CURVE_CLIENT_KEY": str(own)})
    from syswatch.shared.zmqsock import make_publisher, make_subscriber
    ctx = zmq.Context()
    auth = curve.start_authenticator(ctx, server)
    pub = make_publisher(ctx, "tcp://127.0.0.1:*", sndhwm=10, manual=True, curve_server=server)
    endpoint = pub.getsockopt(zmq.LAST_ENDPOINT).decode()
    caplog.set_level(logging.WARNING, logger="syswatch.curve")
    watch = curve.RefusalWatch(pub)
    subs = []

    def wait_refused(n):
        deadline = time.monotonic() + 20
        while watch.refused < n:
            assert time.monotonic() < deadline, f"{watch.refused} refusals counted, expected {n}"
            time.sleep(0.05)

    try:
        alice = as_client(tmp_path / "clients" / "alice.key_secret")
        good = make_subscriber(ctx, endpoint, ("status",), curve_client=alice, announce=False)
        subs.append(good)
        deadline = time.monotonic() + 20
        while not pub.poll(100):                 # alice's subscription arrives: her handshake passed
            assert time.monotonic() < deadline, "the authorised subscriber never got through"
        assert watch.refused == 0
        mallory = make_subscriber(ctx, endpoint, ("status",), announce=False,
                                  curve_client=as_client(tmp_path / "outsiders" / "mallory.key_secret"))
        subs.append(mallory)
        wait_refused(1)
        mallory.close(0)
        plain = make_subscriber(ctx, endpoint, ("status",), announce=False)
        subs.append(plain)
        wait_refused(2)
        plain.close(0)
        deadline = time.monotonic() + 10
        while len([r for r in caplog.records if "CurveZMQ refused" in r.getMessage()]) < 2:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.05)
        lines = [r.getMessage() for r in caplog.records if "CurveZMQ refused" in r.getMessage()]
        assert "key not authorised" in lines[0] and "no CurveZMQ key" in lines[1], lines
        assert all("from 127.0.0.1:" in line for line in lines), lines
        # a flood: 40 unknown-key connections; all counted, at most the minute's share logged
        for _ in range(40):
            s = make_subscriber(ctx, endpoint, ("status",), announce=False,
                                curve_client=as_client(tmp_path / "outsiders" / "mallory.key_secret"))
            subs.append(s)
        wait_refused(42)
        assert len([r for r in caplog.records if "CurveZMQ refused" in r.getMessage()]) <= 5
    finally:
        for s in subs:
            s.close(0)
        watch.stop()
        pub.close(0)
        auth.stop()
        ctx.term()
