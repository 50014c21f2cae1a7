"""The one rule for showing a string someone else chose (a collector's host, a process or container
name, a path, an error text) in a terminal or a log: what could act on the terminal is shown as text.

``visible(text)`` keeps printable characters (any script: ``café``, ``日本``) and writes everything
else as a backslash escape: ``\\n``, ``\\t``, ``\\r``, ``\\xNN`` (C0/C1 controls, ESC, DEL),
``\\uNNNN`` (format characters such as the right-to-left override U+202E, zero-width spaces, line
and paragraph separators, unassigned code points), ``\\UNNNNNNNN``. A backslash itself is doubled,
so every escape in the output was made here: a name holding the four characters ``\\x1b`` shows
as ``\\\\x1b``, a name holding ESC as ``\\x1b``. A byte that was not UTF-8 and reached us as a lone
surrogate (Python's ``surrogateescape``, U+DC80..U+DCFF) is shown as the byte, ``\\xNN``.
Nothing else changes, so ``visible(s) == s`` for every ordinary name.

It is the rule of syswatch-tail and syswatch-top's text output and of the API's log lines;
JSON outputs need no such rule (JSON escapes control characters itself).
"""
from __future__ import annotations

_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(c: str) -> str:
    named = _NAMED.get(c)
    if named:
        return named
    n = ord(c)
    if 0xDC80 <= n <= 0xDCFF:          # surrogateescape: the original byte
        return f"\\x{n - 0xDC00:02x}"
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def visible(text: str, limit: int | None = None) -> str:
    """``text`` safe for a terminal or a log line (see the module doc); cut to ``limit`` characters
    with a trailing ``...`` when longer (the cut never splits an escape)."""
    if text.isprintable() and "\\" not in text:
        if limit is None or len(text) <= limit:
            return text                  # the common case: nothing to escape
        return text[:max(0, limit - 3)] + "..."
    pieces = [c if c.isprintable() and c != "\\" else _escape(c) for c in text]
    if limit is None or sum(map(len, pieces)) <= limit:
        return "".join(pieces)
    out, used = [], 0
    for piece in pieces:
        if used + len(piece) > limit - 3:
            break
        out.append(piece)
        used += len(piece)
    return "".join(out) + "..."
