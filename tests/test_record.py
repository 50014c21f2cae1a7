"""The one declaration of the event record (shared/record.py) and everything derived from it: a line
rendered as bpftrace prints it goes through the parser and the wire protocol and comes back with the
same fields; the program's printf, the parser's pattern, the protocol's tables and the OpenAPI schema
all agree with the declaration; names round-trip exactly."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syswatch.api.openapi import event_schema
from syswatch.collector import program
from syswatch.collector.files import Files
from syswatch.collector.parser import Parser
from syswatch.shared import protocol, record

pytestmark = pytest.mark.unit
K = program.REFERENCE_KERNEL
SYSCALLS = list(protocol.SYSCALLS)


@given(st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_names_round_trip_exactly_and_are_valid_utf8(raw):
    text = record.decode_name(raw)
    assert record.name_bytes(text) == raw
    text.encode("utf-8")                                  # never a lone surrogate
    if b"\\" not in raw:
        try:
            assert text == raw.decode("utf-8")            # valid UTF-8 is the text itself
        except UnicodeDecodeError:
            pass


@given(values=st.fixed_dictionaries({
    "cpu": st.integers(0, 8191), "idx": st.integers(0, len(SYSCALLS) - 1), "ts": st.integers(0, 2**64 - 1),
    "pid": st.integers(0, 2**31 - 1), "tid": st.integers(0, 2**31 - 1), "uid": st.integers(0, 2**31 - 1),
    "fd": st.integers(-2**31, 2**31 - 1), "count": st.integers(0, 2**64 - 1), "ret": st.integers(-2**63, 2**63 - 1),
    "lat": st.integers(0, 2**64 - 1), "cgroup": st.integers(0, 2**64 - 1), "ino": st.integers(1, 2**64 - 1),
    "dev": st.sampled_from([266338304, 6, 44]), "mode": st.sampled_from([0o100644, 0o20666, 0o40755]),
    "flags": st.sampled_from([1, 3]), "namekey": st.integers(0, 2**64 - 1)}),
    comm=st.binary(max_size=15).filter(lambda b: b"\0" not in b), latency=st.booleans())
@settings(max_examples=300, deadline=None)
def test_a_line_as_bpftrace_prints_it_comes_back_as_the_same_fields(values, comm, latency):
    """render_line -> Parser -> encode_event_batch -> protocol.decode: every field as declared."""
    c0, c1 = record.comm_words(comm)
    line = record.render_line({**values, "comm0": c0, "comm1": c1}, latency)
    parser = Parser("events", SYSCALLS, latency=latency, files=Files(K, proc="/nonexistent"))
    syscall = SYSCALLS[values["idx"]]
    (event,) = parser.parse(line).events[syscall]
    (got,) = protocol.decode(protocol.encode_event_batch(protocol.topic_for(syscall), b'"h"', [event])).events
    want = {f.name: values[f.column] for f in record.FIELDS if f.column and (latency or f.name != "lat_ns")}
    deleted = " (deleted)" if values["flags"] & record.FLAG_DELETED else ""
    want.update(syscall=syscall, comm=record.decode_name(comm), container_id="", container_name="",
                dev=record.user_dev(values["dev"]), file_type=record.file_type(values["mode"]), path="")
    assert got == want and (deleted == "" or got["path"] == "")     # no name known: "" even when deleted
    assert list(json.loads(event)) == [f for f in (f.name for f in record.FIELDS) if f in want]   # declared order


def test_the_program_prints_what_the_parser_reads():
    """The printf format of every event line in the rendered program is record.printf_format, with as
    many arguments as conversions, and the parser's pattern reads what render_line prints."""
    for latency in (False, True):
        text = program.render("events", syscalls=SYSCALLS, latency=latency)
        calls = re.findall(r'printf\("([^"]*)",\n\s*(.*?)\);\n', text)
        formats = {fmt for fmt, _ in calls if fmt.startswith("%d %d")}
        assert formats == {record.printf_format(latency), record.printf_format(latency, True),
                           record.printf_format(latency, out=True)}          # two-fd calls: no name tail
        for fmt, args in calls:
            if fmt.startswith("%d %d"):
                n_args = len([a for a in re.split(r",\s*(?![^()]*\))", args) if a.strip()])
                assert fmt.count("%") == n_args, (fmt, args)
        values = {c.name: 1 for c in record.COLUMNS}
        assert record.line_pattern(latency).fullmatch(record.render_line(values, latency))
        assert record.line_pattern(latency).fullmatch(record.render_line(values, latency, b"[eventfd]"))
        two = record.line_pattern(latency).fullmatch(record.render_line({**values, "fd_out": -1}, latency))
        assert two and two.group(len(record.columns(latency)) + 1) == b"-1"


def test_protocol_and_openapi_follow_the_declaration():
    assert protocol.EVENT_FIELDS == tuple(f.name for f in record.FIELDS)
    assert set(protocol.EVENT_INTS) | set(protocol.EVENT_OPTIONAL_INTS) == set(record.EVENT_INTS)
    assert set(protocol.EVENT_STRS) | set(protocol.EVENT_OPTIONAL_STRS) == set(record.EVENT_STRS)
    assert set(protocol.EVENT_INTS) | set(protocol.EVENT_STRS) == set(record.REQUIRED)
    schema = event_schema()
    assert set(schema["properties"]) == {f.name for f in record.FIELDS} | {"host"}
    assert set(schema["required"]) == set(record.REQUIRED) | {"host"}


def test_optional_fields_are_checked_when_present():
    base = {"ts_ns": 1, "pid": 2, "tid": 3, "uid": 0, "comm": "c", "syscall": "read", "fd": 0, "count": 7,
            "ret": 7, "cgroup_id": 1, "container_id": "", "container_name": ""}
    assert protocol.clean_event(base, "read") == base                       # an event without them is complete
    full = {**base, "lat_ns": 5, "file_type": "reg", "path": "/x", "ino": 1, "dev": 2, "sock": ""}
    assert protocol.clean_event(full, "read") == full
    for bad in ({"lat_ns": -1}, {"file_type": "socket"}, {"path": "x" * (record.MAX_PATH + 1)}, {"ino": "1"},
                {"dev": 2**64}, {"sock": 3}):
        with pytest.raises(protocol.ProtocolError):
            protocol.clean_event({**full, **bad}, "read")
