"""bpftrace 0.23 beside the host's 0.17: Debian trixie's, from the cached root that
scripts/trixie-bpftrace.sh builds, run through its wrapper (issue 16). Nothing here builds it."""
from __future__ import annotations

import subprocess

from harness import ROOT

TRIXIE_SCRIPT = ROOT / "scripts" / "trixie-bpftrace.sh"
TRIXIE_FIX = "build bpftrace 0.23: sudo scripts/trixie-bpftrace.sh (about a minute; scripts/test.sh does it)"


def trixie_bpftrace() -> str | None:
    """The wrapper's path when the trixie root is built, else None."""
    try:
        check = subprocess.run(["bash", str(TRIXIE_SCRIPT), "--check"], capture_output=True, timeout=60)
        path = subprocess.run(["bash", str(TRIXIE_SCRIPT), "--print-path"], capture_output=True, text=True,
                              timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return path if check.returncode == 0 and path else None


def trixie_missing() -> str | None:
    """None when bpftrace 0.23 can run, else what to do."""
    return TRIXIE_FIX if trixie_bpftrace() is None else None
