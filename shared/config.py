"""Flag > environment > default resolution, shared by every entry point's argparse."""
from __future__ import annotations

import os
import sys
from typing import Any, Callable


def env_default(name: str, default: Any, convert: Callable[[str], Any] = str, report: bool = True) -> Any:
    """The value of environment variable ``name`` converted, or ``default`` when unset/empty.

    A value that does not convert is reported on stderr with a message naming the variable, then
    SystemExit(2) is raised, the exit status argparse gives a bad flag: a typo in a compose file is
    reported at start-up instead of being ignored. With ``report=False`` the conversion's error is
    raised instead (add_option reports it later, and only if the value is used).
    """
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return convert(raw)
    except (TypeError, ValueError) as exc:
        if not report:
            raise
        print(f"error: environment variable {name}={raw!r} is invalid: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


class _BadEnv(str):
    """An option's default taken from a variable whose value does not convert: argparse converts a
    str default only when the flag is absent, and converting this one reports it (exit 2)."""
    problem = ""

    def fail(self):
        print(f"error: {self.problem}", file=sys.stderr)
        raise SystemExit(2)


def add_option(parser, *flags: str, env: str | None = None, default=None, type: Callable = str,
               repeatable: bool = False, help: str, **kwargs):
    """One command-line option for every entry point: flag > environment > default.

    ``env`` names the variable read when the flag is absent (a repeatable option's variable is
    comma separated); the help text gets ``[env NAME] (default: ...)`` in one format everywhere.
    A bad value exits 2 with a message naming the flag or the variable.
    """
    import argparse

    def convert(text: str):
        if isinstance(text, _BadEnv):   # argparse converts a str default only when the flag is absent
            text.fail()
        try:
            return type(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = getattr(type, "__name__", "value").lstrip("_")

    def split(text: str) -> list:
        return [type(item.strip()) for item in text.split(",") if item.strip()]

    if env:
        # A bad value is reported only if it is used: not when the flag overrides it (flag > environment),
        # nor for --help / --version, which exit before argparse converts the defaults it still needs.
        raw = os.environ.get(env)
        try:
            default = env_default(env, default, split if repeatable else type, report=False)
        except (TypeError, ValueError) as exc:
            default = _BadEnv(raw)
            default.problem = f"environment variable {env}={raw!r} is invalid: {exc}"
    shown = ",".join(map(str, default)) if repeatable and default and not isinstance(default, _BadEnv) else default
    suffix = (f" [env {env}]" if env else "") + f" (default: {shown if shown not in (None, '', []) else 'none'})"
    return parser.add_argument(*flags, type=convert, default=default, help=help + suffix,
                               action=_Repeat if repeatable else "store", **kwargs)


def _repeat_action():
    import argparse

    class Repeat(argparse.Action):
        """Like "append", but the values given on the command line replace the default."""

        def __call__(self, parser, namespace, values, option_string=None):
            current = getattr(namespace, self.dest, None)
            if current is self.default or current is None:
                current = []
            setattr(namespace, self.dest, [*current, values])
    return Repeat


_Repeat = _repeat_action()
