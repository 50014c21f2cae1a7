"""What syswatch's tests and benchmarks start and drive, in one place (not part of the product).

    harness.procs      free ports, CPU time and memory from /proc, stopping processes, die-with-parent,
                       waiting for a condition, Gated (a command held before exec)
    harness.api        `python -m api.server` on a free port; a ZeroMQ publisher standing in for a collector
    harness.wsgi       the API's WSGI app called in process (no server, no socket)
    harness.collector  `python -m collector.collector` on a free port; a strict stream reader
    harness.workloads  processes making known read/write calls (dd, the paced writer, Child)
    harness.bpftrace   bpftrace 0.23 from the cached Debian trixie root (scripts/trixie-bpftrace.sh)
    harness.compose    a docker-compose project of syswatch with its own name and ports
    harness.browser    Debian's headless Chromium through Selenium; a page of another origin

tests/ and bench/ both import it and never each other's helpers. It says what is missing (a reason
string); the caller decides what that means (tests: skip locally, fail in CI; bench: skip a row).
"""
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent     # the checkout
