"""Offsets of kernel struct members, read from the running kernel's BTF (/sys/kernel/btf/vmlinux).

The events program reads a few values at a byte offset from a struct pointer (the thread's name as
two 64-bit words; a ``struct mount`` from its ``struct vfsmount``), which bpftrace 0.17 cannot
compute (it has no ``offsetof``). BTF describes the running kernel exactly, so the offsets are
taken from it at start-up: ``offsets("task_struct.comm", "mount.mnt")``.

BTF's layout (linux/btf.h): a header, then a type section of ``struct btf_type`` records (name,
info: kind and member count, size) each followed by its kind's data, then a string section.
"""
from __future__ import annotations

import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_STRUCT, _UNION = 4, 5
# bytes of data after the 12-byte btf_type, by kind: fixed, or per member (vlen)
_FIXED = {1: 4, 3: 12, 14: 4, 17: 4}                 # INT, ARRAY, VAR, DECL_TAG
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}   # STRUCT, UNION, ENUM, FUNC_PROTO, DATASEC, ENUM64


class BtfError(RuntimeError):
    """No BTF, or it lacks a struct or member the collector needs; the text says which."""


def offsets(*members: str, path: Path = VMLINUX) -> dict[str, int]:
    """Byte offsets of ``"struct.member"`` names (one level), e.g. ``{"task_struct.comm": 3184}``."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read the kernel's BTF ({path}): {exc.strerror}; the collector needs a "
                       "kernel built with CONFIG_DEBUG_INFO_BTF=y") from None
    want: dict[str, set[str]] = {}
    for m in members:
        owner, _, field = m.partition(".")
        want.setdefault(owner, set()).add(field)
    found = _scan(data, want)
    missing = [m for m in members if m not in found]
    if missing:
        raise BtfError(f"the kernel's BTF has no {', '.join(missing)}")
    return {m: found[m] for m in members}


def _scan(data: bytes, want: dict[str, set[str]]) -> dict[str, int]:
    if len(data) < 24:
        raise BtfError("the kernel's BTF is truncated")
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != _MAGIC:
        raise BtfError("the kernel's BTF has a wrong magic number (not little-endian BTF)")
    type_off, type_len, str_off, _str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off

    def name(off: int) -> str:
        end = data.index(b"\0", strings + off)
        return data[strings + off:end].decode("ascii", "replace")

    found: dict[str, int] = {}
    pos, end = types, types + type_len
    while pos < end and len(found) < sum(len(v) for v in want.values()):
        name_off, info, _size = struct.unpack_from("<III", data, pos)
        kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
        pos += 12
        if kind in (_STRUCT, _UNION) and vlen:
            fields = want.get(name(name_off))
            if fields:
                for i in range(vlen):
                    m_name, _m_type, m_off = struct.unpack_from("<III", data, pos + 12 * i)
                    member = name(m_name)
                    if member in fields:
                        bits = m_off & 0xFFFFFF if kflag else m_off
                        found.setdefault(f"{name(name_off)}.{member}", bits // 8)
        pos += _FIXED.get(kind, 0) + _PER_MEMBER.get(kind, 0) * vlen
    return found
