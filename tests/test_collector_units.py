"""The collector's parts in process (pytest -m unit): its command line read into one frozen Config,
and the excluded PIDs handed to the parser as new sets. The parser itself: tests/test_parser.py."""
from __future__ import annotations

import dataclasses
import os

import pytest

from syswatch.collector.cli import Config, Filters, parse_args
from syswatch.collector.exclusions import Exclusions, accepted_from, connected_to
from syswatch.collector.parser import Parser

pytestmark = pytest.mark.unit


def test_flags_and_environment_make_one_frozen_config(monkeypatch):
    assert parse_args([]) == Config()
    monkeypatch.setenv("SYSWATCH_PID", "7,8")
    monkeypatch.setenv("SYSWATCH_MODE", "counts")
    config = parse_args(["-n", "nginx", "-c", "web", "-c", "db", "--syscalls", "write,read", "-d", "5"])
    assert config.filters == Filters(pids=(7, 8), comms=("nginx",), containers=("web", "db"))
    assert (config.mode, config.syscalls, config.duration) == ("counts", ("read", "write"), 5.0)
    assert parse_args(["-p", "9", "--mode", "events"]).filters.pids == (9,)      # a flag beats its variable
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.mode = "events"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.filters.pids = ()  # type: ignore[misc]


def test_exclusions_hand_out_a_new_set_and_never_change_one_handed_out():
    ex = Exclusions([os.getpid()], port=None)
    parser = Parser("events", ["read", "write"])
    before = ex.refresh(force=True)                       # other collectors running on this host, if any
    parser.excluded_pids = before
    after = ex.announce(os.getppid(), os.stat("/proc/self/ns/pid").st_ino)   # a subscriber: our parent
    parser.excluded_pids = after
    assert os.getppid() in after and os.getppid() in ex.pids()
    assert os.getppid() not in before and after == before | {os.getppid()}   # the set handed out is unchanged
    assert ex.announce(os.getppid(), os.stat("/proc/self/ns/pid").st_ino) is after   # no change: the same set
    assert ex.announce(os.getpid(), os.stat("/proc/self/ns/pid").st_ino) is after    # own PIDs: never a subscriber


def _net_tcp(path, rows):
    """A /proc/PID/net/tcp of established connections: (local, remote, inode)."""
    path.mkdir(parents=True, exist_ok=True)
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    (path / "tcp").write_text(head + "".join(
        f"   {i}: {loc} {rem} 01 00000000:00000000 00:00000000 00000000 10001 0 {ino} 1\n"
        for i, (loc, rem, ino) in enumerate(rows)))


def test_a_subscriber_pid_two_containers_share_is_the_one_connected_to_this_collector(tmp_path):
    # PID 1 of two compose stacks' API containers (fds unreadable to the collector, so their
    # namespaces' tables count): both hold a connection to a port 5556 (0x15B4), each its own stack's.
    ours, theirs = "AC120003:A000", "AC130003:A000"
    _net_tcp(tmp_path / "101" / "net", [(ours, "AC120002:15B4", "7001")])
    _net_tcp(tmp_path / "202" / "net", [(theirs, "AC130002:15B4", "7002")])
    # this collector's side: it accepted 172.18.0.3 only (an IPv4-mapped spelling on a dual-stack socket)
    (tmp_path / "self" / "net").mkdir(parents=True)
    _net_tcp(tmp_path / "self" / "net", [("AC120002:15B4", ours, "8001"), ("0100007F:15B4", "0100007F:B000", "8002")])
    (tmp_path / "self" / "net" / "tcp6").write_text(
        "  sl  local_address rem_address st ...\n"
        "   0: 0000000000000000FFFF0000AC120002:15B4 0000000000000000FFFF0000AC120009:B001 01 0 0 0 0 0 0 8003 1\n")
    accepted = accepted_from(5556, proc=str(tmp_path))
    assert accepted == {ours, "0100007F:B000", "AC120009:B001"}
    for pid in (101, 202):
        (tmp_path / str(pid) / "fd").mkdir()
        os.chmod(tmp_path / str(pid) / "fd", 0)
    if os.access(tmp_path / "101" / "fd", os.R_OK):     # root reads it anyway: give each fd its socket
        for pid, ino in ((101, "7001"), (202, "7002")):
            os.chmod(tmp_path / str(pid) / "fd", 0o700)
            os.symlink(f"socket:[{ino}]", tmp_path / str(pid) / "fd" / "3")
    assert connected_to(101, 5556, str(tmp_path)) and connected_to(202, 5556, str(tmp_path))
    assert connected_to(101, 5556, str(tmp_path), accepted) and not connected_to(202, 5556, str(tmp_path), accepted)
    assert not connected_to(101, 5557, str(tmp_path), accepted)
