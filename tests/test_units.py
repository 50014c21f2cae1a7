"""The fast unit layer (pytest -m unit): pure in-process tests of the program renderer, the console
echo, the stream's stats model, the event filter and the option helper (/metrics: test_metrics_units.py).
No root, no child process, no network: seconds."""
from __future__ import annotations

import argparse
import dataclasses
import io
import json

import pytest

from syswatch.api.aggregates import COUNTERS, StreamStats
from syswatch.api.validation import BadRequest, event_query
from syswatch.collector import program
from syswatch.collector.bpfversion import parse
from syswatch.collector.echo import Echo
from syswatch.shared import protocol
from syswatch.shared.config import add_option
from syswatch.shared.selection import Selection

pytestmark = pytest.mark.unit


def test_the_shipped_programs_are_the_renderer_s_defaults():
    assert program.FILES["events"].read_text() == program.render("events")
    assert program.FILES["counts"].read_text() == program.render("counts")


def test_render_places_filters_in_the_first_probe_of_each_call():
    """Exit-only (issue 24): each syscall has one probe, its exit, with the filters; with latency the
    entry probe carries them and the exit takes what the entry kept."""
    pred = '/pid != $1 && pid != $3 && (pid == 7 || pid == 8) && (comm == "nginx") && (cgroup == 99)/'
    text = program.render("events", "tracepoint", protocol.SYSCALLS, pids=[7, 8], comms=["nginx"], cgroups=[99])
    assert text.count(pred) == len(protocol.SYSCALLS) + 2                 # + the open and exec probes
    for name in protocol.SYSCALLS:
        kname = program.KERNEL_NAME.get(name, name)               # sendfile: the kernel's sendfile64
        assert f"tracepoint:syscalls:sys_enter_{kname}\n" not in text
        assert f"tracepoint:syscalls:sys_exit_{kname}\n{pred}" in text
        assert f"$r->orig_ax == {program.ARGS[name].nr} && $r->ax == (uint64)$ret" in text
    assert "@start" not in text and "sched_process_exit" not in text
    lat = program.render("events", "tracepoint", protocol.SYSCALLS, pids=[7, 8], comms=["nginx"], cgroups=[99],
                         latency=True)
    for name in protocol.SYSCALLS:
        kname = program.KERNEL_NAME.get(name, name)
        assert f"tracepoint:syscalls:sys_enter_{kname}\n{pred}" in lat
        assert f"tracepoint:syscalls:sys_exit_{kname}\n{{\n\t$e = @start[tid];" in lat
    assert "sched_process_exit" in lat
    # with latency the registers are read only for a two-fd call's destination (and checked)
    assert lat.count("$r->orig_ax ==") == len(protocol.TWO_FD_SYSCALLS)
    kp = program.render("counts", "kprobe", ["readv"])
    assert "kretprobe:__x64_sys_readv" in kp and "retval" in kp and "kprobe:__x64_sys_readv" not in kp
    assert "($r->cs & 0xffff) == 51" in kp and "$ret = args->ret" not in kp    # opens: tracepoints anyway
    kpl = program.render("counts", "kprobe", ["readv"], latency=True)
    assert "kprobe:__x64_sys_readv" in kpl and "((struct pt_regs *)arg0)->di" in kpl


def test_render_names_files_unless_no_paths():
    with_paths, without = (program.render("events", paths=p).split("*/", 1)[1] for p in (True, False))
    assert "sys_exit_openat" in with_paths and program.OPEN in with_paths
    assert "sys_exit_openat" not in without and program.OPEN not in without
    assert program.render("events", kernel=dataclasses.replace(program.REFERENCE_KERNEL, stack_top=32752)).count(
        "curtask->stack + 32752") == 2


@pytest.mark.parametrize("bad, message", [
    ({"comms": ["x" * 16]}, "longer than 15 bytes"), ({"comms": ['a"b']}, "printable ASCII"),
    ({"pids": [0]}, "a PID is between"), ({"syscalls": ["open"]}, "unknown 'open'"), ({"syscalls": []}, "at least"),
])
def test_render_refuses_what_cannot_be_a_predicate(bad, message):
    with pytest.raises(program.FilterError, match=message):
        program.render("events", **bad)


def test_env_names_follow_the_bpftrace_version():
    assert program.env(parse("bpftrace v0.17.0")) == {"BPFTRACE_PERF_RB_PAGES": "1024",
                                                      "BPFTRACE_MAP_KEYS_MAX": "65536", "BPFTRACE_STRLEN": "128"}
    assert program.env(parse("bpftrace v0.23.2")) == {"BPFTRACE_PERF_RB_PAGES": "4096",
                                                      "BPFTRACE_MAX_MAP_KEYS": "65536"}
    # --on-overload buffer: 4x per CPU (0.17), 8x in total (0.23)
    assert program.env(parse("bpftrace v0.17.0"), "buffer")["BPFTRACE_PERF_RB_PAGES"] == "4096"
    assert program.env(parse("bpftrace v0.23.2"), "buffer")["BPFTRACE_PERF_RB_PAGES"] == "32768"
    with pytest.raises(ValueError, match="overload"):
        program.env(None, "block")


def test_ring_buffer_programs_print_every_cpu_s_last_kick_at_end():
    """Both output paths count per CPU (@sent and the kick); with a ring buffer END prints each
    given CPU's last kick, behind every event; perf buffers give END no such order, so 0.17's
    program has none. kicks=False (the bench's older programs) has neither; the event lines and
    the flush marker are the same in all three."""
    ring = parse("bpftrace v0.23.2")
    perf, rb, none = (program.render("events", version=v, cpus=[0, 1], kicks=k).split("*/", 1)[1]
                      for v, k in ((parse("bpftrace v0.17.0"), True), (ring, True), (ring, False)))
    for text, sent in ((perf, program.SENT_HASH), (rb, program.SENT_COUNT)):     # count() reads: 0.21+
        assert sent.add in text and program.KICK in text and "tracepoint:power:cpu_idle" in text
    end = rb.split("\nEND\n", 1)[1]
    assert [ln.strip() for ln in end.splitlines() if program.KICK in ln] == [
        f'printf("{program.KICK} %d %d %d\\n", {c}, (uint64)@sent[{c}], @kicks[{c}]);' for c in (0, 1)]
    assert program.KICK not in perf.split("\nEND\n", 1)[1]
    assert "@sent" not in none and program.KICK not in none and program.FLUSH in none
    fmt = [[ln.strip() for ln in t.splitlines() if ln.strip().startswith('printf("%d %d')] for t in (perf, rb, none)]
    assert len(fmt[0]) == 4 and fmt[0] == fmt[1] == fmt[2]
    assert program.render("counts", kicks=False, version=ring, cpus=[0]) == program.render("counts", version=ring)


def test_status_overload_is_optional_and_bounded():
    base = {"host": "h", "ts_ns": 1, "mode": "events", "probe": "tracepoint", "syscalls": ["read"],
            "excluded_pids": [], "events_total": 0, "lost_total": 0, "dropped_total": 0,
            "malformed_total": 0, "uptime_s": 1.0}
    assert "overload" not in protocol.clean_status(base)
    assert protocol.clean_status({**base, "overload": "buffer"})["overload"] == "buffer"
    assert "overload" not in protocol.clean_status({**base, "overload": "x" * 100})


def test_echo_caps_lines_per_second_and_summarises_the_rest():
    now = [100.0]
    out = io.StringIO()
    echo = Echo(2, out, clock=lambda: now[0])
    ev = [b'{"ts_ns":1,"pid":%d,"tid":1}' % p for p in (11, 12, 13, 14)]
    echo.events("read", ev)
    assert out.getvalue() == "11 - hello sys_read was called\n12 - hello sys_read was called\n"
    now[0] += 1.0
    echo.tick()
    assert "... 2 more sys_read/sys_write calls in the last second were not echoed" in out.getvalue()
    echo.events("write", ev[:1])
    assert out.getvalue().endswith("11 - hello sys_write was called\n")


def _event(**over):
    e = {"ts_ns": 1, "pid": 10, "tid": 10, "uid": 0, "comm": "a", "syscall": "read", "fd": 3, "count": 100,
         "ret": 100, "lat_ns": 1000, "cgroup_id": 1, "container_id": "", "container_name": ""}
    return {**e, **over}


def test_stream_stats_per_host_bytes_moved_errors_latency_and_containers():
    st = StreamStats(["tcp://a:1", "tcp://b:1"], 100)
    st.add_events("h1", [_event(), _event(ret=-9), _event(ret=40, container_id="0123456789ab", container_name="web")],
                  "tcp://a:1")
    st.add_events("h2", [_event(syscall="write", pid=20, ret=7)], "tcp://b:1")
    one = st.snapshot("h1")
    read = one["totals"]["read"]
    assert {k: read[k] for k in ("calls", "bytes", "errors", "lat_ns_sum", "avg_ns", "errnos")} == {
        "calls": 3, "bytes": 140, "errors": 1, "lat_ns_sum": 3000, "avg_ns": 1000, "errnos": {"EBADF": 1}}
    assert one["totals"]["write"]["calls"] == 0
    assert one["top_containers_by_calls"] == [{
        "host": "h1", "container_id": "0123456789ab", "container_name": "web", "calls": 1, "bytes": 40, "errors": 0,
        "lat_ns_sum": 1000, "avg_ns": 1000, "errnos": {}, "p50_ns": 1000, "p90_ns": 1000, "p99_ns": 1000,
        "max_ns": 1000, "lat_measured": 1, "lat_unmeasured": 0}]
    every = st.snapshot()
    assert every["hosts"] == ["h1", "h2"] and every["totals"]["write"]["bytes"] == 7
    assert {c["host"] for c in every["collectors"]} == {"h1", "h2"} and every["connected"]
    assert set(every["api"]) >= set(COUNTERS)
    assert st.recent_events(Selection(hosts=("h2",)), 10)[0]["pid"] == 20


def test_stream_stats_estimate_what_did_not_arrive_per_host():
    st = StreamStats(["e"], 10)
    status = {"host": "h", "ts_ns": 1, "mode": "events", "probe": "tracepoint", "syscalls": ["read"],
              "excluded_pids": [], "events_total": 0, "lost_total": 0, "dropped_total": 0, "malformed_total": 0,
              "uptime_s": 1.0}
    st.set_status(status)
    st.add_events("h", [_event()] * 5)
    st.set_status({**status, "events_total": 8, "uptime_s": 2.0})
    assert st.snapshot()["api"]["events_not_received"] == 3


def test_event_filter_and_query():
    flt, limit = event_query({"container": ["web"], "syscall": ["pread64"], "limit": ["5"]}, ("limit",), 100, 10)
    assert limit == 5 and flt.matches(_event(syscall="pread64", container_id="0123456789ab", container_name="web"))
    assert not flt.matches(_event(syscall="pread64"))
    assert Selection(containers=("0123",)).matches(_event(container_id="0123456789ab"))
    flt, _ = event_query({"failed": ["1"], "min_latency": ["20ms"], "uid": ["0"], "tid": ["7"], "path": ["/var/log"],
                          "file_type": ["reg"]})
    assert flt == Selection(uids=(0,), tids=(7,), paths=("/var/log",), file_types=("reg",), failed=True,
                            min_latency_ns=20_000_000)
    assert event_query({"failed": ["0"]})[0].empty
    for bad in ({"syscall": ["open"]}, {"host": [""]}, {"container": ["x" * 300]}, {"colour": ["red"]},
                {"min_latency": ["20"]}, {"min_latency": ["2d"]}, {"failed": ["yes"]}, {"file_type": ["file"]},
                {"path": ["/a\nb"]}, {"path": ["/" * 4097]}, {"uid": ["-1"]}, {"tid": ["x"]}):
        with pytest.raises(BadRequest):
            event_query(bad)


def test_option_helper_flag_beats_env_beats_default(monkeypatch):
    def parser():
        p = argparse.ArgumentParser()
        add_option(p, "-p", "--pid", env="SW_TEST_PID", default=[], type=int, repeatable=True, help="pids")
        add_option(p, "--mode", env="SW_TEST_MODE", default="events", help="mode")
        return p
    assert vars(parser().parse_args([])) == {"pid": [], "mode": "events"}
    monkeypatch.setenv("SW_TEST_PID", "1,2")
    monkeypatch.setenv("SW_TEST_MODE", "counts")
    assert vars(parser().parse_args([])) == {"pid": [1, 2], "mode": "counts"}
    assert vars(parser().parse_args(["-p", "3", "--mode", "x"])) == {"pid": [3], "mode": "x"}
    assert "[env SW_TEST_PID] (default: 1,2)" in " ".join(parser().format_help().split())
    monkeypatch.setenv("SW_TEST_PID", "one")
    with pytest.raises(SystemExit) as exc:      # a bad value that is used: exit 2
        parser().parse_args([])
    assert exc.value.code == 2
    assert parser().parse_args(["-p", "3"]).pid == [3]    # one the flag overrides is never used
    assert "[env SW_TEST_PID] (default: one)" in " ".join(parser().format_help().split())


def test_encode_event_batch_uses_the_protocol_version():
    frames = protocol.encode_event_batch("syscall.read", protocol.json_string("h"), [json.dumps(_event()).encode()])
    assert protocol.decode(frames).payload["v"] == protocol.VERSION


@pytest.mark.unit
def test_a_container_named_later_gets_its_name_in_the_tables():
    """The collector asks container names off its loop: a container's first events may carry its id
    only; once a later one names it, the top tables show the name."""
    st = StreamStats(["tcp://a"], 100)
    st.add_events("h1", [_event(container_id="0123456789ab", container_name="")], endpoint="tcp://a")
    st.add_events("h1", [_event(container_id="0123456789ab", container_name="web")], endpoint="tcp://a")
    s = st.snapshot()
    assert [c["container_name"] for c in s["top_containers_by_calls"]] == ["web"]
    assert [p["container_name"] for p in s["top_processes_by_calls"]] == ["web"]


@pytest.mark.unit
def test_the_api_fixes_glibc_s_mmap_threshold():
    """api/memory.py: large blocks are mmapped and given back (glibc; this machine's libc is one)."""
    from syswatch.api.memory import return_large_blocks
    assert return_large_blocks() is True
