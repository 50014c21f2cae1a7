"""The checks both SQLite files of the API (the IP list, the history) pass before SQLite opens them.

Nothing here writes: a path that is not a usable database file is refused with a message that says
what it is and which option to change, and the file is left as it was. What is inside a non-empty
file (its tables, its schema) is each store's own check.
"""
from __future__ import annotations

import os
import stat

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
         (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_path(path: str, what: str, option: str, env: str, error: type[Exception]) -> bool:
    """Raise ``error`` unless ``path`` can hold ``what`` (e.g. "database"); True if it has content to check.

    ``option`` and ``env`` name the setting that picks another path (``--db``, ``SYSWATCH_DB``).
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise error(f"the directory of the {what} {path!r} does not exist: create it (mkdir -p {directory}) "
                    f"or pick another {option} / {env}")
    if not os.path.exists(path):
        if not os.access(directory, os.W_OK):
            raise error(f"cannot create the {what} {path!r}: directory {directory} is not writable by this "
                        f"user (uid {os.getuid()}); pick another {option} / {env}")
        return False
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        kind = next((k for is_kind, k in KINDS if is_kind(mode)), "not a regular file")
        raise error(f"the {what} path {path!r} is {kind}; it was left untouched: give the path of a regular "
                    f"file with {option} / {env}")
    if not os.access(path, os.R_OK | os.W_OK):
        raise error(f"the {what} {path!r} is not readable and writable by this user (uid {os.getuid()}): "
                    f"fix its permissions or pick another {option} / {env}")
    return os.path.getsize(path) > 0        # an empty file is a new SQLite database
