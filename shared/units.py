"""Durations as people type and read them: one spelling for the collector, the tail and the API.

``--min-latency 500us`` (collector, syswatch-tail) and ``/events?min_latency=500us`` take the same
text: a number with a unit, ``ns``, ``us``, ``ms`` or ``s`` (``20ms``, ``1.5ms``, ``1s``, ``0``
alone means no bound). A bare number is refused: ``10`` could be any unit, and bpftrace, BCC's
fileslower and strace's ``-T`` all mean something else by it.

    parse_duration("20ms") -> 20_000_000 (ns)      shown(41_000) -> "41.0us"
"""
from __future__ import annotations

import re

UNITS = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
MAX_NS = 86_400 * UNITS["s"]       # a day: a bound longer than that is a typo
_DURATION = re.compile(r"(\d{1,15}(?:\.\d{1,9})?)(ns|us|ms|s)")


def parse_duration(text: str) -> int:
    """``"500us"`` -> 500000 (nanoseconds); ValueError with an example for anything else."""
    text = text.strip()
    if text == "0":
        return 0
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(f"{text[:40]!r} is not a duration: give a number and a unit (ns, us, ms, s), "
                         f"e.g. 500us, 20ms, 1.5s")
    number, unit = m.groups()
    whole, _, frac = number.partition(".")
    ns = int(whole) * UNITS[unit] + (int(frac.ljust(9, "0")) * UNITS[unit]) // 10**9
    if ns > MAX_NS:
        raise ValueError(f"{text!r} is longer than a day")
    return ns


def shown(ns: int | None) -> str:
    """A latency for a table: ``812ns``, ``41.0us``, ``1.23ms``, ``2.50s``; ``-`` for None."""
    if ns is None:
        return "-"
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.2f}ms"
    return f"{ns / 1e9:.2f}s"
