"""The event record, declared once: the wire EVENT's fields and the kernel line they come from.

Every place that knows the record's layout derives it from the two tables below:

* ``FIELDS``: the wire protocol's EVENT object (shared/protocol.py checks it field by field, the
  API's OpenAPI schema and docs/PROTOCOL.md describe it, the parser emits it in this order);
* ``COLUMNS``: the line the collector's bpftrace program prints per call in events mode (its
  printf format and arguments: collector/program.py; its pattern: collector/parser.py; the tests
  render lines as bpftrace would print them with ``render_line``).

A wire field either copies one column's digits (``column``), or is computed by the collector from
several (``column`` None: comm from two words, the syscall from its index, the container from the
cgroup, the file's type and name from the inode and the name caches).

Names (a process's comm, a file's path) are bytes to the kernel and text on the wire:
``decode_name`` writes a byte that is not part of valid UTF-8 as the four characters ``\\xNN``,
and a backslash that would start such a sequence as ``\\x5c``; ``name_bytes`` gives the exact
bytes back. Valid UTF-8 names (the usual case) are the text itself.
"""
from __future__ import annotations

import re
from typing import NamedTuple

U64 = 2**64 - 1
U32 = 2**32 - 1
I64_MIN, I64_MAX = -2**63, 2**63 - 1

MAX_COMM = 64                  # 15 bytes of kernel name, at most 4 characters per byte
MAX_CONTAINER_NAME = 255
MAX_PATH = 16_400              # PATH_MAX (4096) bytes, 4 characters per byte, " (deleted)"
MAX_SOCK = 512                 # "unix " and a 108-byte socket path, 4 characters per byte
FILE_TYPES = ("reg", "dir", "fifo", "sock", "chr", "blk", "lnk", "anon", "unknown")


class Field(NamedTuple):
    """One field of the wire EVENT."""
    name: str
    kind: str                        # "int" | "str"
    bounds: tuple[int, int] | int    # ints: (low, high); strings: the most characters
    required: bool                   # a decoder of this version rejects an event without it
    doc: str
    column: str | None = None        # the kernel column whose digits it copies (None: computed)
    enum: tuple[str, ...] = ()       # strings with a fixed set of values


FIELDS: tuple[Field, ...] = (
    Field("ts_ns", "int", (0, U64), True,
          "wall-clock ns since the Unix epoch: the call's entry when lat_ns is present, else its return", "ts"),
    Field("pid", "int", (0, U32), True, "host PID (thread group id)", "pid"),
    Field("tid", "int", (0, U32), True, "thread id", "tid"),
    Field("uid", "int", (0, U32), True, "user id of the caller", "uid"),
    Field("syscall", "str", 16, True, "the syscall, as strace names it (read, pwrite64, ...)"),
    Field("fd", "int", (-2**31, 2**31 - 1), True, "the file descriptor (for two-fd calls: the source)", "fd"),
    Field("count", "int", (0, U64), True,
          "bytes asked for (readv, writev, preadv, pwritev, preadv2, pwritev2: the number of iovecs)", "count"),
    Field("ret", "int", (I64_MIN, I64_MAX), True, "what the call returned: bytes moved, or -errno", "ret"),
    Field("lat_ns", "int", (0, U64), False,
          "time in the call; present only when the collector measures latency (--latency)", "lat"),
    Field("cgroup_id", "int", (0, U64), True, "the caller's cgroup v2 id", "cgroup"),
    Field("container_id", "str", 12, True, "12 hex digits as `docker ps` shows, \"\" for none"),
    Field("container_name", "str", MAX_CONTAINER_NAME, True, "the container's name where known, else \"\""),
    Field("comm", "str", MAX_COMM, True, "the thread's name at the call (non-UTF-8 bytes as \\xNN)"),
    Field("file_type", "str", 7, False, "what the fd pointed to: reg, dir, fifo, sock, chr, blk, lnk, anon, "
          "or unknown (not open when the call returned)", enum=FILE_TYPES),
    Field("path", "str", MAX_PATH, False, "the fd's target as /proc/PID/fd/N spells it, in the process's own "
          "mount namespace (\"/etc/passwd\", \"/x (deleted)\", \"pipe:[123]\", \"socket:[123]\", "
          "\"anon_inode:[eventfd]\"); \"\" when unknown or with --no-paths"),
    Field("ino", "int", (0, U64), False, "the file's inode number (0: unknown)", "ino"),
    Field("dev", "int", (0, U64), False, "the file's device as stat(2) gives st_dev (0: unknown)"),
    Field("sock", "str", MAX_SOCK, False, "sockets only: protocol and both ends, "
          "\"tcp 127.0.0.1:40000->127.0.0.1:5556\", \"unix /run/x.sock\"; \"\" when unknown"),
    Field("fd_out", "int", (-2**31, 2**31 - 1), False, "two-fd calls (copy_file_range, sendfile, splice, "
          "tee): the destination fd"),
    Field("path_out", "str", MAX_PATH, False, "two-fd calls: the destination's path"),
    Field("file_type_out", "str", 7, False, "two-fd calls: the destination's type", enum=FILE_TYPES),
)
FIELD = {f.name: f for f in FIELDS}
EVENT_INTS = {f.name: f.bounds for f in FIELDS if isinstance(f.bounds, tuple)}   # name -> (low, high)
EVENT_STRS = {f.name: f.bounds for f in FIELDS if isinstance(f.bounds, int)}     # name -> most characters
REQUIRED = tuple(f.name for f in FIELDS if f.required)


class Column(NamedTuple):
    """One value of the kernel's event line: a bpftrace expression and its printf conversion.

    ``expr`` may hold placeholders that collector/program.py fills per probe kind and mode:
    {idx} the syscall's index, {ts} {fd} {count} {ret} {lat}, {comm} the offset of task_struct.comm.
    """
    name: str
    expr: str
    conv: str                        # %d %u %llu %lld
    latency_only: bool = False


# $i: the fd's inode, $d: its dentry, $fl: flags (bit 0: the arguments were read and checked,
# bit 1: the dentry is unhashed, i.e. the file was deleted), $nk: a key that changes when the
# file's name does (the name's hash and length, xor its parent dentry).
COLUMNS: tuple[Column, ...] = (
    Column("cpu", "cpu", "%d"),
    Column("idx", "{idx}", "%d"),
    Column("ts", "{ts}", "%llu"),
    Column("pid", "pid", "%d"),
    Column("tid", "tid", "%d"),
    Column("uid", "uid", "%d"),
    Column("fd", "{fd}", "%d"),
    Column("count", "{count}", "%llu"),
    Column("ret", "{ret}", "%lld"),
    Column("lat", "{lat}", "%llu", latency_only=True),
    Column("cgroup", "cgroup", "%llu"),
    Column("ino", "$i->i_ino", "%llu"),
    Column("dev", "$dev", "%u"),
    Column("mode", "$i->i_mode", "%u"),
    Column("flags", "$fl", "%u"),
    Column("namekey", "$nk", "%llu"),
    Column("comm0", "*(uint64 *)((uint64)curtask + {comm})", "%llu"),
    Column("comm1", "*(uint64 *)((uint64)curtask + {comm} + 8)", "%llu"),
)
# Calls with two descriptors (copy_file_range, sendfile, splice, tee): after the columns, the
# marker " o" and the destination's fd and file facts ($fdo, its inode $io, $devo, $flo: bit 1
# deleted, $nko), in the source's order.
OUT_COLUMNS: tuple[Column, ...] = (
    Column("fd_out", "$fdo", "%d"),
    Column("ino_out", "$io->i_ino", "%llu"),
    Column("dev_out", "$devo", "%u"),
    Column("mode_out", "$io->i_mode", "%u"),
    Column("flags_out", "$flo", "%u"),
    Column("namekey_out", "$nko", "%llu"),
)
OUT_MARK = "o"
# After the columns, for files whose name only the kernel knows (anonymous inodes, memfd): the
# dentry's name, as its length and its bytes in hex (bpftrace's %rh: "6d 65 6d"). Other lines end
# after the last column.
NAME_TAIL = " %d %rh"
FLAG_ARGS_OK = 1
FLAG_DELETED = 2

_CONV_PATTERN = {"%d": rb"-?\d{1,10}", "%u": rb"\d{1,10}", "%llu": rb"\d{1,20}", "%lld": rb"-?\d{1,19}"}


def columns(latency: bool) -> tuple[Column, ...]:
    """The kernel line's columns with or without the latency column."""
    return tuple(c for c in COLUMNS if latency or not c.latency_only)


def printf_format(latency: bool, name_tail: bool = False, out: bool = False) -> str:
    """The printf format string of one event line (without the quotes); ``out``: a two-fd call's."""
    text = " ".join(c.conv for c in columns(latency))
    if out:
        text += f" {OUT_MARK} " + " ".join(c.conv for c in OUT_COLUMNS)
    return text + (NAME_TAIL if name_tail else "") + "\\n"


def line_pattern(latency: bool) -> re.Pattern[bytes]:
    """A pattern matching one event line exactly: a group per column, the destination's columns
    (None when the call has one fd), then the name tail's two groups (length, hex bytes; None when
    the line has none)."""
    body = rb" ".join(b"(" + _CONV_PATTERN[c.conv] + b")" for c in columns(latency))
    out = rb"(?: " + OUT_MARK.encode() + rb" " + rb" ".join(b"(" + _CONV_PATTERN[c.conv] + b")"
                                                         for c in OUT_COLUMNS) + rb")?"
    return re.compile(body + out + rb"(?: (\d{1,3}) ((?:[0-9a-f]{2}(?: [0-9a-f]{2}){0,254})?))?")


def render_line(values: dict, latency: bool, name: bytes | None = None) -> bytes:
    """The line bpftrace prints for ``values`` (column name -> int), as the tests build it; with
    ``fd_out`` in ``values``, a two-fd call's (the destination's columns default to 0)."""
    text = " ".join(str(int(values[c.name])) for c in columns(latency))
    if "fd_out" in values:
        text += f" {OUT_MARK} " + " ".join(str(int(values.get(c.name, 0))) for c in OUT_COLUMNS)
    if name is not None:
        text += f" {len(name)} {name.hex(' ')}"
    return text.encode()


def comm_words(name: bytes) -> tuple[int, int]:
    """A 16-byte kernel comm (NUL padded) as the two little-endian words the line carries."""
    raw = name[:15].ljust(16, b"\0")
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def kernel_dev(st_dev: int) -> int:
    """st_dev (user space's encoding) as the kernel's dev_t: major << 20 | minor."""
    import os
    return (os.major(st_dev) << 20) | os.minor(st_dev)


def user_dev(kdev: int) -> int:
    """The kernel's dev_t (major << 20 | minor) as st_dev, as stat(2) reports it."""
    import os
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


_HEX_ESCAPE = re.compile(r"\\x([0-9a-f]{2})")
_LITERAL_ESCAPE = re.compile(rb"\\(?=x[0-9a-f]{2})")


def decode_name(raw: bytes) -> str:
    """A name's bytes as text: valid UTF-8 as itself; each byte that is not as ``\\xNN``, and a
    backslash followed by ``x`` and two lowercase hex digits as ``\\x5c`` (so it is not read as one).
    The result is valid UTF-8 whatever the bytes, and ``name_bytes`` reverses it exactly."""
    if b"\\" in raw:
        raw = _LITERAL_ESCAPE.sub(rb"\\x5c", raw)
    return raw.decode("utf-8", "backslashreplace")


def name_bytes(text: str) -> bytes:
    """The bytes a name had, from ``decode_name``'s text."""
    parts = _HEX_ESCAPE.split(text)          # literal text, then an escape's two hex digits, in turn
    return b"".join(bytes.fromhex(part) if i % 2 else part.encode("utf-8") for i, part in enumerate(parts))


FILE_TYPE_BY_MODE = {0o140000: "sock", 0o120000: "lnk", 0o100000: "reg", 0o060000: "blk",
                     0o040000: "dir", 0o020000: "chr", 0o010000: "fifo"}


def file_type(mode: int, anon: bool = False) -> str:
    """The wire file_type for an inode's i_mode (``anon``: the inode is on the anonymous-inode fs)."""
    if anon:
        return "anon"
    return FILE_TYPE_BY_MODE.get(mode & 0o170000, "unknown")
