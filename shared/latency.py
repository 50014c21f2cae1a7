"""Call-latency histograms: log2 nanosecond buckets, the layout bpftrace's ``hist()`` prints.

Bucket ``i`` holds the calls whose latency in nanoseconds has ``i`` significant bits: bucket 0 is
0 ns, bucket ``i >= 1`` is ``[2**(i-1), 2**i)`` ns, so ``ns.bit_length()`` is the bucket and 65
buckets cover every u64. bpftrace's ``hist()`` prints the same buckets (``[0]``, ``[1]``,
``[2, 4)``, ``[4, 8)``, ... ``[1K, 2K)``) after its bucket of negative values, which a latency never
fills. Written as a list of counts from bucket 0 with the trailing zeros left out (``lat_hist`` in
a counts ROW and in /stats), e.g. ``[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 97]``: 3 calls of
512..1023 ns, 97 of 1024..2047 ns.

A histogram is exact where latency is measured for every call: its buckets add up to the calls.
A call whose latency was not measured (an event without ``lat_ns``) is counted apart in
``unmeasured``, never as a 0 ns call. Quantiles are estimated inside their bucket by linear
interpolation (as Prometheus' ``histogram_quantile`` does), so an estimate is always in the bucket
that holds the true value, and never above the largest latency seen.

    h = Histogram(); h.add(41_000); h.add_buckets([0, 2, 5], sum_ns=30, max_ns=3)
    h.quantile(0.99), h.summary()["p99_ns"], h.buckets()
"""
from __future__ import annotations

import math

NBUCKETS = 65           # 0 ns, then one bucket per power of two up to 2**64
U64 = 2**64 - 1
# The bucket boundaries /metrics exports (``le`` of syswatch_call_latency_seconds_bucket): every power of
# two from 2**10 ns (1.02 us) to 2**33 ns (8.6 s). Each is a boundary of the log2 buckets, so the exported
# cumulative counts are exact; 24 bounds + ``+Inf``, ``_sum`` and ``_count``: 27 series per (host, syscall).
EXPORTED_EXPONENTS = tuple(range(10, 34))


def bucket(ns: int) -> int:
    """The bucket of a latency of ``ns`` nanoseconds (0 <= ns <= 2**64-1)."""
    return ns.bit_length()


def lower(i: int) -> int:
    """The smallest latency (ns) bucket ``i`` holds."""
    return 0 if i == 0 else 1 << (i - 1)


def upper(i: int) -> int:
    """The first latency (ns) above bucket ``i`` (its exclusive bound)."""
    return 1 << i


def label(i: int) -> str:
    """Bucket ``i`` as bpftrace's hist() prints it: ``[0]``, ``[1]``, ``[2, 4)``, ``[1K, 2K)``."""
    if i <= 1:
        return f"[{i}]"                    # bucket 1 holds 1 ns only
    return f"[{_si(lower(i))}, {_si(upper(i))})"


def _si(n: int) -> str:
    for unit in ("", "K", "M", "G", "T", "P", "E"):
        if n < 1024 or n % 1024:
            return f"{n}{unit}"
        n //= 1024
    return f"{n}Z"


def check_buckets(buckets: object) -> list[int]:
    """``buckets`` as a list of at most NBUCKETS non-negative integers, or ValueError saying why."""
    if type(buckets) is not list or len(buckets) > NBUCKETS:
        raise ValueError(f"a latency histogram is a list of at most {NBUCKETS} bucket counts")
    if any(type(c) is not int or not 0 <= c <= U64 for c in buckets):
        raise ValueError("a latency histogram's bucket counts are integers 0..2**64-1")
    return buckets


class Histogram:
    """Latency of one group of calls (a syscall of a host, a container, a process row of top)."""

    __slots__ = ("counts", "sum_ns", "max_ns", "unmeasured")

    def __init__(self):
        self.counts = [0] * NBUCKETS
        self.sum_ns = 0          # of the measured calls (Prometheus' _sum)
        self.max_ns = 0          # the largest latency measured (an upper bound when only buckets came)
        self.unmeasured = 0      # calls without a latency

    # --- filling --------------------------------------------------------------------------------------
    def add(self, ns: int | None) -> None:
        """One call; ``None``: its latency was not measured."""
        if ns is None:
            self.unmeasured += 1
            return
        self.counts[ns.bit_length()] += 1
        self.sum_ns += ns
        if ns > self.max_ns:
            self.max_ns = ns

    def add_buckets(self, buckets: list[int], sum_ns: int, max_ns: int | None = None) -> None:
        """Counts already bucketed (a counts-mode row's ``lat_hist``): ``sum_ns`` is their latency summed,
        ``max_ns`` their largest when the source knows it (else the top bucket's last nanosecond)."""
        counts = self.counts
        top = -1
        for i, n in enumerate(buckets):
            if n:
                counts[i] += n
                top = i
        self.sum_ns += sum_ns
        if top >= 0:
            seen = max_ns if max_ns is not None else upper(top) - 1
            if seen > self.max_ns:
                self.max_ns = seen

    def merge(self, other: "Histogram") -> None:
        counts = self.counts
        for i, n in enumerate(other.counts):
            if n:
                counts[i] += n
        self.sum_ns += other.sum_ns
        self.unmeasured += other.unmeasured
        if other.max_ns > self.max_ns:
            self.max_ns = other.max_ns

    def copy(self) -> "Histogram":
        h = Histogram()
        h.counts = list(self.counts)
        h.sum_ns, h.max_ns, h.unmeasured = self.sum_ns, self.max_ns, self.unmeasured
        return h

    # --- reading --------------------------------------------------------------------------------------
    @property
    def measured(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[int]:
        """The counts from bucket 0, trailing zeros left out (the wire and /stats form)."""
        counts = self.counts
        n = len(counts)
        while n and not counts[n - 1]:
            n -= 1
        return counts[:n]

    def quantile(self, q: float) -> int | None:
        """The ``q`` quantile (0 < q <= 1) in ns, interpolated inside its bucket; None without a measured call."""
        total = self.measured
        if not total:
            return None
        rank = max(1, math.ceil(q * total))      # the rank-th smallest call, 1-based
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                if i == 0:
                    return 0
                lo, hi = lower(i), upper(i)
                value = lo + (hi - lo) * (rank - seen) // n
                return min(value, hi - 1, self.max_ns)      # the bucket's last ns at most
            seen += n
        return self.max_ns  # not reached: the ranks add up to total

    def summary(self) -> dict:
        """p50/p90/p99/max in ns (None without a measured call) and how many calls were (not) measured."""
        measured = self.measured
        return {"p50_ns": self.quantile(0.50), "p90_ns": self.quantile(0.90), "p99_ns": self.quantile(0.99),
                "max_ns": self.max_ns if measured else None, "lat_measured": measured,
                "lat_unmeasured": self.unmeasured}

    def cumulative(self, exponents=EXPORTED_EXPONENTS) -> list[tuple[float, int]]:
        """Prometheus buckets: (le in seconds, calls shorter than ``2**e`` ns) for each exponent, then
        (inf, every measured call). ``le=2**e ns`` counts the calls shorter than 2**e ns: those of
        exactly 2**e ns fall in the next bound (latencies are whole nanoseconds, so this is the
        bound ``<= 2**e - 1 ns``)."""
        out = []
        counts = self.counts
        running = 0
        i = 0
        for e in exponents:
            while i <= e:
                running += counts[i]
                i += 1
            out.append(((1 << e) * 1e-9, running))
        out.append((math.inf, self.measured))
        return out
