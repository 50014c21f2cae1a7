"""CurveZMQ: an authorised subscriber gets the stream, an unauthorised or plain one gets nothing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from harness import ROOT
from harness.collector import CollectorProcess, StreamReader
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
        assert coll.stop()[0] == 0
    finally:
        for s in (alice, mallory, plain):
            s.close()
        coll.kill()
