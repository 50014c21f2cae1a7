"""The programs of protocol v2 before issue 24, frozen here as the baseline the bench compares with.

``V2_EVENTS``: the events program bpftrace 0.18+ ran (git 2eab2df, collector/program.py,
``render("events", kicks=False)``): an entry probe keeps (start, fd, count) per thread in
@inflight, the exit prints one JSON-escaped line per call. ``V2_REVISION`` is the commit whose
collector the bench runs as "collector-v2" (git archive into a temporary directory).
"""
from __future__ import annotations

V2_REVISION = "2eab2df"
# its record's printf format for write (index 1), a bpftrace string literal: record_format(1, "write")
V2_RECORD = r'''"%d:1{\"ts_ns\":%llu,\"pid\":%d,\"tid\":%d,\"uid\":%d,\"syscall\":\"write\",\"fd\":%d,\"count\":%llu,\"ret\":%lld,\"lat_ns\":%llu,\"cgroup_id\":%llu,\"comm\":\"%s\"}\n"'''
V2_EVENTS = r"""
BEGIN
{
	/* every probe is attached once BEGIN runs: the collector waits for this line */
	printf("syswatch-ready\n");
}

tracepoint:syscalls:sys_enter_read
/pid != $1 && pid != $3/
{
	@inflight[tid] = (nsecs, args->fd, args->count);
}

tracepoint:syscalls:sys_exit_read
{
	$e = @inflight[tid];
	if ($e.0) {
		delete(@inflight[tid]);
		printf("%d:0{\"ts_ns\":%llu,\"pid\":%d,\"tid\":%d,\"uid\":%d,\"syscall\":\"read\",\"fd\":%d,\"count\":%llu,\"ret\":%lld,\"lat_ns\":%llu,\"cgroup_id\":%llu,\"comm\":\"%s\"}\n",
		    cpu, $e.0 + $2, pid, tid, uid, $e.1, $e.2, args->ret, nsecs - $e.0, cgroup, comm);
	}
}

tracepoint:syscalls:sys_enter_write
/pid != $1 && pid != $3/
{
	@inflight[tid] = (nsecs, args->fd, args->count);
}

tracepoint:syscalls:sys_exit_write
{
	$e = @inflight[tid];
	if ($e.0) {
		delete(@inflight[tid]);
		printf("%d:1{\"ts_ns\":%llu,\"pid\":%d,\"tid\":%d,\"uid\":%d,\"syscall\":\"write\",\"fd\":%d,\"count\":%llu,\"ret\":%lld,\"lat_ns\":%llu,\"cgroup_id\":%llu,\"comm\":\"%s\"}\n",
		    cpu, $e.0 + $2, pid, tid, uid, $e.1, $e.2, args->ret, nsecs - $e.0, cgroup, comm);
	}
}

tracepoint:sched:sched_process_exit
/@inflight[tid].0/
{
	/* a thread that dies inside a call never reaches the exit probe */
	delete(@inflight[tid]);
}

END
{
	clear(@inflight);
}
"""
