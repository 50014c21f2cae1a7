"""The collector's parts in process (pytest -m unit): its command line read into one frozen Config,
and the excluded PIDs handed to the parser as new sets. The parser itself: tests/test_parser.py."""
from __future__ import annotations

import dataclasses
import os

import pytest

from syswatch.collector.cli import Config, Filters, parse_args
from syswatch.collector.exclusions import Exclusions
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
