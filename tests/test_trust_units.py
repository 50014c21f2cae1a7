"""Unit tests of api/trust.py: who may speak for a host, and which numbers can be true (issue 29)."""
from __future__ import annotations

import pytest

from syswatch.api import trust
from syswatch.api.trust import HostClaims

pytestmark = pytest.mark.unit


def test_a_host_belongs_to_the_endpoint_that_first_sent_it():
    claims = HostClaims(per_endpoint=1, max_hosts=64, expire_s=60)
    assert claims.admit("vm", "tcp://a", 0) is None
    assert claims.admit("vm", "tcp://a", 1) is None
    reason = claims.admit("vm", "tcp://evil", 2)
    assert reason and "belongs to 'tcp://a'" in reason and claims.owner("vm") == "tcp://a"


def test_an_endpoint_speaks_for_a_bounded_number_of_hosts_and_the_api_holds_a_bounded_number():
    claims = HostClaims(per_endpoint=2, max_hosts=3, expire_s=60)
    assert claims.admit("a1", "A", 0) is None and claims.admit("a2", "A", 0) is None
    assert "already speaks for 2 host(s)" in claims.admit("a3", "A", 0)
    assert claims.admit("b1", "B", 0) is None
    assert "holds 3 hosts" in claims.admit("c1", "C", 0)


def test_silent_hosts_expire_and_free_their_slot_and_name():
    claims = HostClaims(per_endpoint=1, max_hosts=2, expire_s=10)
    claims.admit("vm", "A", 0)
    claims.admit("junk", "EVIL", 0)
    claims.admit("vm", "A", 8)
    assert claims.expired(9) == [] and claims.expired(10.5) == ["junk"]
    assert claims.admit("late", "C", 11) is None                      # a later collector finds the slot
    assert claims.expired(18.5) == ["vm"] and claims.admit("vm", "EVIL", 19) is None


def test_reasons_show_hostile_names_escaped_and_short():
    claims = HostClaims(per_endpoint=1, max_hosts=1, expire_s=10)
    claims.admit("x", "A", 0)
    reason = claims.admit("\x1b[2J" + "y" * 300, "B", 0)
    assert "\x1b" not in reason and "\\x1b[2J" in reason and len(reason) < 250


def status(**over) -> dict:
    s = {"host": "vm", "uptime_s": 100.0, "events_total": 1000, "lost_total": 0, "dropped_total": 0,
         "malformed_total": 0}
    s.update(over)
    return s


def test_statuses_that_cannot_be_true_are_named():
    assert trust.status_problem(status(), None, None) is None
    assert "events_total=18000000000000000000 is more than a host makes" in trust.status_problem(
        status(events_total=18 * 10**18), None, None)
    assert "dropped_total exceeds" in trust.status_problem(status(dropped_total=2000), None, None)
    prev = status()
    assert trust.status_problem(status(uptime_s=101, events_total=2000), prev, 1.0) is None
    backwards = trust.status_problem(status(uptime_s=101, events_total=10), prev, 1.0)
    assert "events_total ran backwards (1000 -> 10)" in backwards
    # a restart: the uptime starts again, or is no longer than the time the host was silent
    assert trust.status_problem(status(uptime_s=2, events_total=10), prev, 1.0) is None
    assert trust.status_problem(status(uptime_s=150, events_total=10), prev, 200.0) is None
    jump = trust.status_problem(status(uptime_s=102, events_total=1000 + 4 * trust.CALLS_PER_S), prev, 2.0)
    assert "grew by" in jump


def counts(rows, interval_ns=10**9) -> dict:
    return {"host": "vm", "interval_ns": interval_ns, "rows": rows}


def row(**over) -> dict:
    r = {"pid": 1, "comm": "x", "container_id": "", "container_name": "", "syscall": "read", "calls": 10,
         "bytes": 100, "errors": 1, "lat_ns_sum": 50}
    r.update(over)
    return r


def test_counts_that_cannot_be_true_are_named():
    assert trust.counts_problem(counts([row(), row(lat_hist=[0, 10])])) is None
    assert "a row of 10 calls with 11 errors" in trust.counts_problem(counts([row(errors=11)]))
    assert trust.counts_problem(counts([row(bytes=10 * trust.MAX_RW_COUNT + 1)]))
    assert "latency buckets" in trust.counts_problem(counts([row(lat_hist=[5, 6])]))
    assert "an interval of" in trust.counts_problem(counts([], interval_ns=10**13))
    assert trust.counts_problem(counts([row(calls=2**40, bytes=0, errors=0)]))


def test_events_that_cannot_be_true_are_named():
    assert trust.events_problem("vm", [{"ret": 5}, {"ret": -9}]) is None
    assert "more than one read or write can move" in trust.events_problem("vm", [{"ret": 2**40}])
