"""The collector's parts in process (pytest -m unit): its command line read into one frozen Config,
and what is excluded handed to the parser as new values. The parser itself: tests/test_parser.py."""
from __future__ import annotations

import dataclasses
import os

import pytest

from syswatch.collector import exclusions as exmod
from syswatch.collector.cli import Config, Filters, parse_args
from syswatch.collector.exclusions import Exclusions
from syswatch.collector.parser import Parser
from syswatch.collector.streamio import Rules

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


def test_exclusions_hand_out_a_value_and_never_change_one_handed_out():
    """The parser holds the Rules it was given; Exclusions replaces its own, never mutates one."""
    ex = Exclusions([os.getpid()], port=None)
    parser = Parser("events", ["read", "write"])
    parser.rules = handed = ex.rules
    ex.subscribers[12345] = exmod.Subscriber(12345, (12345, 1), 0, 1, "x", frozenset({1}), frozenset({2}))
    ex._apply()
    assert ex.rules is not handed and ex.rules.subscribers == {12345} and ex.rules.sockets == {2}
    assert handed == Rules() and parser.rules is handed          # what was handed out is unchanged
    with pytest.raises(AttributeError):
        handed.pids = frozenset({1})  # type: ignore[misc]
    with pytest.raises(AttributeError):
        handed.subscribers.add(1)  # type: ignore[attr-defined]
    assert 12345 in ex.pids() and os.getpid() in ex.pids()
