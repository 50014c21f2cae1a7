"""Console echo of events in the seed's wording, capped so a busy host cannot flood the log.

At most ``rate`` lines per second: ``<pid> - hello sys_read was called``. Events over the
cap are still published; once a second a summary line says how many were not echoed.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

_PID = b'"pid":'


def event_pid(event_json: bytes) -> int:
    """The pid of one EVENT (JSON bytes as built by the parser: pid is a plain integer)."""
    start = event_json.index(_PID) + len(_PID)
    return int(event_json[start:event_json.index(b",", start)])


class Echo:
    def __init__(self, rate: int, out: TextIO = sys.stdout, clock=time.monotonic):
        self.rate = rate
        self.out = out
        self._clock = clock
        self._window = clock()
        self._echoed = 0
        self._skipped = 0

    def events(self, syscall: str, events: list[bytes]) -> None:
        if self.rate <= 0 or not events:
            return
        self._roll()
        room = self.rate - self._echoed
        if room > 0:
            shown = events[:room]
            self.out.write("".join(f"{event_pid(e)} - hello sys_{syscall} was called\n" for e in shown))
            self.out.flush()
            self._echoed += len(shown)
        self._skipped += max(0, len(events) - max(room, 0))

    def tick(self) -> None:
        """Call often (at least once a second): closes the one-second window."""
        if self.rate > 0:
            self._roll()

    def _roll(self) -> None:
        now = self._clock()
        if now - self._window < 1.0:
            return
        if self._skipped:
            self.out.write(f"... {self._skipped} more sys_read/sys_write calls in the last second were not "
                           f"echoed (echo limit {self.rate}/s, --echo-rate); all were published\n")
            self.out.flush()
        self._window, self._echoed, self._skipped = now, 0, 0
