"""Log lines a peer can provoke, at a bounded rate: at most ``burst`` per ``window_s``, then one
line saying how many were left out. A flood of refused handshakes or announces costs the log a
few lines a minute, never one line per attempt."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable


class RateLimitedLog:
    """``log(level, msg, *args)`` writes at most ``burst`` lines per ``window_s`` seconds; the
    first line of the next window says how many were suppressed. Thread-safe."""

    def __init__(self, logger: logging.Logger, burst: int = 5, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = -window_s
        self._written = 0
        self.suppressed = 0                    # in the current window, not yet reported

    def log(self, level: int, msg: str, *args) -> bool:
        """Writes the line unless this window's share is used up; True if it was written."""
        if not self.permit(level):
            return False
        self.logger.log(level, msg, *args)
        return True

    def permit(self, level: int = logging.WARNING) -> bool:
        """Takes one line of this window's share (False, and counted as suppressed, when none is
        left): for a line that costs something to compose, write it with ``logger`` only if True."""
        with self._lock:
            self._roll(level)
            if self._written >= self.burst:
                self.suppressed += 1
                return False
            self._written += 1
            return True

    def tick(self, level: int = logging.WARNING) -> None:
        """Call now and then (the collector: every status): reports what a finished window left out
        even when no further line comes."""
        with self._lock:
            self._roll(level)

    def _roll(self, level: int) -> None:
        now = self._clock()
        if now - self._window_start >= self.window_s:
            if self.suppressed:
                self.logger.log(level, "... and %d more such lines in the last %.0f s (not logged)",
                                self.suppressed, now - self._window_start)
            self._window_start, self._written, self.suppressed = now, 0, 0

    def warning(self, msg: str, *args) -> bool:
        return self.log(logging.WARNING, msg, *args)

    def info(self, msg: str, *args) -> bool:
        return self.log(logging.INFO, msg, *args)
