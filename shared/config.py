"""Flag > environment > default resolution, shared by every entry point's argparse."""
from __future__ import annotations

import os
import re
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
               repeatable: bool = False, flag: bool = False, help: str, **kwargs):
    """One command-line option for every entry point: flag > environment > default.

    ``env`` names the variable read when the flag is absent (a repeatable option's variable is
    comma separated; a ``flag`` (on/off, no value) takes 1/true/yes/on or 0/false/no/off). The help
    text ends with ``[env NAME] (default: ...)`` in one format everywhere (the value that applies
    when the flag is absent: the variable's if set): lists are shown as the
    variable takes them (``read,write``), numbers as written (``1``, not ``1.0``). A help text that
    ends with its own ``(default: words)`` keeps those words as the one default shown. A bad value
    exits 2 with a message naming the flag or the variable.
    """
    import argparse

    help, own_default = _own_default(help)
    if flag:
        return _add_flag(parser, flags, env, bool(default), help, own_default, **kwargs)

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
    # What applies when the flag is absent: the variable's value if set, else the default.
    from_env = bool(env and os.environ.get(env))
    shown = str(default) if isinstance(default, _BadEnv) else \
        own_default if own_default is not None and not from_env else show_default(default)
    return parser.add_argument(*flags, type=convert, default=default, help=help + _suffix(env, shown),
                               action=_Repeat if repeatable else "store", **kwargs)


def show_default(value) -> str:
    """A default as a user would type it: ``read,write`` for a list, ``1`` for 1.0, ``none`` for nothing."""
    if value is None or value == "" or value == [] or value == ():
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(show_default(v) for v in value)
    return str(value)


def _suffix(env: str | None, shown: str) -> str:
    return (f" [env {env}]" if env else "") + f" (default: {shown})"


_OWN_DEFAULT = re.compile(r"\s*\(default: ([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


def _own_default(help: str) -> tuple[str, str | None]:
    """(help without a trailing "(default: X)", X) or (help, None)."""
    m = _OWN_DEFAULT.search(help)
    return (help[:m.start()], m.group(1)) if m else (help, None)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _add_flag(parser, flags, env, default: bool, help: str, own_default: str | None, **kwargs):
    """An on/off flag (store_true) whose default may come from ``env``."""
    value = default
    raw = os.environ.get(env) if env else None
    if raw not in (None, ""):
        low = raw.strip().lower()
        if low not in _TRUE | _FALSE:
            print(f"error: environment variable {env}={raw!r} is invalid: use 1/true/yes/on or 0/false/no/off",
                  file=sys.stderr)
            raise SystemExit(2)
        value = low in _TRUE
    shown = own_default if own_default is not None and raw in (None, "") else show_default(value)
    return parser.add_argument(*flags, action="store_true", default=value, help=help + _suffix(env, shown),
                               **kwargs)


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
