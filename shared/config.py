"""Flag > environment > default resolution, shared by every entry point's argparse."""
from __future__ import annotations

import os
import sys
from typing import Callable, TypeVar

T = TypeVar("T")


def env_default(name: str, default: T, convert: Callable[[str], T] = str) -> T:
    """The value of environment variable ``name`` converted, or ``default`` when unset/empty.

    A value that does not convert is reported on stderr with a message naming the variable, then
    SystemExit(2) is raised, the exit status argparse gives a bad flag: a typo in a compose file is
    reported at start-up instead of being ignored.
    """
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except (TypeError, ValueError) as exc:
        print(f"error: environment variable {name}={raw!r} is invalid: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
