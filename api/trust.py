"""What the API believes of a collector (issue 29): who may speak for a host, and which numbers can be true.

Every collector endpoint is a trust boundary: a compromised or misconfigured node, or anything that can
reach an endpoint the API reads. Two rules keep one of them from spoiling the others' data:

``HostClaims``: a host name belongs to the endpoint that first sent it. Messages naming that host from
another endpoint are refused (and counted), so a stolen name changes nothing for the real host. An
endpoint speaks for at most ``per_endpoint`` hosts (a collector sends one; a relay of several
collectors needs more: ``--hosts-per-collector``), the API holds at most ``max_hosts``, and a host not
heard from for ``expire_s`` is forgotten with its claim, so a collector added later always finds a slot
and a host that moved to another endpoint is taken back after that time.

``Plausibility``: numbers no host can produce are refused, not shown: a collector's counters running
backwards without a restart, counters past CALLS_PER_S calls for every second the collector has run,
a counts row with more errors than calls or more bytes than its calls can move, an event that moved
more than a read or write can (Linux's MAX_RW_COUNT). What is refused is counted
(``implausible_messages``) and the reason kept (``last_refused_reason``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from syswatch.shared.escaping import visible

# A read/write-family call costs a CPU well over 100 ns, so even a host with hundreds of CPUs doing
# nothing else makes far fewer than 2**32 calls per second. Counters above that rate are not real.
CALLS_PER_S = 2**32
MAX_RW_COUNT = 0x7FFFF000           # Linux: the most one read/write can move (INT_MAX & PAGE_MASK)
MAX_INTERVAL_S = 3600 + 60          # a counts interval: the collector's --interval is at most 3600 s
RESTART_SLACK_S = 5.0               # a restarted collector's uptime may exceed the silence by this much
COUNTER_FIELDS = ("events_total", "lost_total", "dropped_total", "malformed_total")


@dataclass
class _Claim:
    endpoint: str
    last_seen: float


@dataclass
class HostClaims:
    """Which endpoint speaks for which host; see the module doc. ``now`` is time.monotonic()."""

    per_endpoint: int
    max_hosts: int
    expire_s: float
    claims: dict = field(default_factory=dict)          # host -> _Claim

    def admit(self, host: str, endpoint: str | None, now: float) -> str | None:
        """None when ``endpoint`` may speak for ``host`` (claiming it if new), else why not.

        ``endpoint`` None: a message handed in by code in this process (tests, an ingest that checked
        the origin itself): it may speak for any host, within the API's bound of hosts."""
        claim = self.claims.get(host)
        if endpoint is None:
            if claim is not None:
                claim.last_seen = now
                return None
            if len(self.claims) >= self.max_hosts:
                return f"the API holds {len(self.claims)} hosts, its most; refused host {_name(host)}"
            self.claims[host] = _Claim("", now)
            return None
        if claim is not None and claim.endpoint == "":
            del self.claims[host]           # claimed in process only: the first endpoint takes it over
            claim = None
        if claim is not None:
            if claim.endpoint != endpoint:
                return (f"host {_name(host)} belongs to {_name(claim.endpoint)}; "
                        f"{_name(endpoint)} may not speak for it")
            claim.last_seen = now
            return None
        held = sum(1 for c in self.claims.values() if c.endpoint == endpoint)
        if held >= self.per_endpoint:
            return (f"{_name(endpoint)} already speaks for {held} host(s), the most one collector endpoint may "
                    f"(--hosts-per-collector {self.per_endpoint}); refused host {_name(host)}")
        if len(self.claims) >= self.max_hosts:
            return f"the API holds {len(self.claims)} hosts, its most; refused host {_name(host)}"
        self.claims[host] = _Claim(endpoint, now)
        return None

    def expired(self, now: float) -> list[str]:
        """The hosts not heard from for ``expire_s``: their claims are released (the caller drops their data)."""
        gone = [h for h, c in self.claims.items() if now - c.last_seen > self.expire_s]
        for host in gone:
            del self.claims[host]
        return gone

    def owner(self, host: str) -> str | None:
        claim = self.claims.get(host)
        return claim.endpoint if claim else None


def _name(text: str) -> str:
    """A host or endpoint inside a reason text: quoted, escaped, short (the text is shown in /stats and logs)."""
    return repr(visible(text, 80)) if text else "an unnamed endpoint"


# --- plausibility -------------------------------------------------------------------------------------
def status_problem(status: dict, previous: dict | None, silence_s: float | None) -> str | None:
    """Why ``status`` cannot be true given the host's ``previous`` accepted status (None: it can).

    ``silence_s``: seconds since ``previous`` arrived. Counters may only run backwards when the
    collector restarted, that is when its uptime is no longer than that silence."""
    up = status["uptime_s"]
    ceiling = CALLS_PER_S * (up + 1)
    for key in COUNTER_FIELDS:
        if status[key] > ceiling:
            return (f"status of host {_name(status['host'])}: {key}={status[key]} is more than a host makes in "
                    f"{up:.0f} s of collector uptime")
    if status["dropped_total"] > status["events_total"]:
        return f"status of host {_name(status['host'])}: dropped_total exceeds events_total"
    if previous is None:
        return None
    back = [k for k in COUNTER_FIELDS if status[k] < previous[k]]
    restarted = up < previous["uptime_s"] or (silence_s is not None and up <= silence_s + RESTART_SLACK_S)
    if back and not restarted:
        return (f"status of host {_name(status['host'])}: {back[0]} ran backwards ({previous[back[0]]} -> "
                f"{status[back[0]]}) while the collector's uptime went on ({previous['uptime_s']:.0f} -> {up:.0f} s)")
    if not back and not restarted:
        span = max(0.0, up - previous["uptime_s"])
        for key in COUNTER_FIELDS:
            if status[key] - previous[key] > CALLS_PER_S * (span + 1):
                return (f"status of host {_name(status['host'])}: {key} grew by {status[key] - previous[key]} "
                        f"in {span:.0f} s")
    return None


def counts_problem(payload: dict) -> str | None:
    """Why a counts message cannot be true (None: it can)."""
    seconds = payload["interval_ns"] / 1e9
    if seconds > MAX_INTERVAL_S:
        return f"counts of host {_name(payload['host'])}: an interval of {seconds:.0f} s"
    calls = 0
    for r in payload["rows"]:
        n = r["calls"]
        if r["errors"] > n or r["bytes"] > n * MAX_RW_COUNT:
            return (f"counts of host {_name(payload['host'])}: a row of {n} calls with {r['errors']} errors and "
                    f"{r['bytes']} bytes")
        hist = r.get("lat_hist")
        if hist is not None and sum(hist) > n:
            return f"counts of host {_name(payload['host'])}: a row's latency buckets hold more than its {n} calls"
        calls += n
    if calls > CALLS_PER_S * (seconds + 1):
        return f"counts of host {_name(payload['host'])}: {calls} calls in {seconds:.1f} s"
    return None


def events_problem(host: str, events: list) -> str | None:
    """Why a batch of events cannot be true (None: it can): a call that moved more than one call can."""
    most = max(e["ret"] for e in events)
    if most > MAX_RW_COUNT:
        return f"events of host {_name(host)}: a call returned {most}, more than one read or write can move"
    return None
