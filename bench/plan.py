"""How big each benchmark is: the full run (for docs/BENCHMARKS.md) and the quick one (CI)."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Plan:
    name: str
    rounds: int            # interleaved (baseline, traced) pairs per tracer and workload
    dd_n: int              # dd bs=1 count=N: 2N syscalls
    copy_mb: int           # realistic workload: copy a file of this size with 4 KiB buffers
    strace_dd_n: int       # strace is ~400x slower: it gets smaller workloads (ratios stay comparable)
    strace_copy_mb: int
    steady_rate: int       # writes/s from one process, to be delivered completely
    steady_s: float
    latency_low_rate: int
    latency_low_s: float
    latency_high_rate: int
    latency_high_s: float
    api_seconds: float     # per endpoint and concurrency level
    api_ips: int           # list size for POST /print_all_ips
    api_sub_rate: int      # synthetic events/s offered to the API's subscriber
    api_sub_s: float

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Plan(name="full", rounds=3, dd_n=1_000_000, copy_mb=200, strace_dd_n=50_000, strace_copy_mb=20,
            steady_rate=20_000, steady_s=5, latency_low_rate=100, latency_low_s=10,
            latency_high_rate=10_000, latency_high_s=5, api_seconds=5, api_ips=10_000,
            api_sub_rate=500_000, api_sub_s=5)
QUICK = Plan(name="quick", rounds=1, dd_n=100_000, copy_mb=32, strace_dd_n=5_000, strace_copy_mb=4,
             steady_rate=20_000, steady_s=2, latency_low_rate=100, latency_low_s=2,
             latency_high_rate=10_000, latency_high_s=2, api_seconds=1.5, api_ips=10_000,
             api_sub_rate=300_000, api_sub_s=2)
