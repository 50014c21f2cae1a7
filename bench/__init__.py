"""syswatch benchmark suite: `python3 -m bench.run [--quick]` (see docs/BENCH.md)."""
