"""What must hold on this host before the collector binds or starts bpftrace, and what it found.

``preflight(config)`` runs every check (root, bpftrace and its version, the host PID namespace,
tracefs, the filters, the containers asked for) and returns a frozen ``Prepared``, or raises
``SetupError`` with what to do (the collector then exits 2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from syswatch.collector import bpf, bpfversion, btf, program
from syswatch.collector.bpf import SetupError
from syswatch.collector.cli import Config
from syswatch.collector.containers import Containers
from syswatch.collector.hostinfo import host_name
from syswatch.collector.kernel import Kernel
from syswatch.collector.kernel import detect as detect_kernel
from syswatch.collector.parser import NoContainers

log = logging.getLogger("syswatch.collector")


@dataclass(frozen=True)
class Prepared:
    """What preflight found: the bpftrace to run, the host's name, container lookups and filters."""
    bpftrace: str                            # the binary's path
    version: bpfversion.Version
    hostname: str                            # the host field of every message
    containers: Containers | NoContainers    # cgroup id -> container id and name
    cgroups: tuple[int, ...]                 # --container's cgroup ids, filtered in the kernel
    kernel: Kernel                           # the running kernel's layout (collector/kernel.py)


def preflight(config: Config) -> Prepared:
    bpf.check_root()
    path = bpf.find_bpftrace(config.bpftrace)
    try:
        version = bpfversion.detect(path)
    except bpfversion.BpftraceVersionError as exc:
        raise SetupError(f"cannot tell which bpftrace {path} is: {exc}") from None
    bpf.check_host_pid_namespace()
    bpf.ensure_tracefs()
    program.predicate(config.filters.pids, config.filters.comms, uids=config.filters.uids,
                      tids=config.filters.tids)                            # validates the filters
    if config.path_prefixes and not config.paths:
        raise SetupError("--path filters by file path, which --no-paths leaves out: use one or the other")
    try:
        layout = detect_kernel()
    except btf.BtfError as exc:
        raise SetupError(str(exc)) from None
    log.info("kernel layout: syscall registers at task stack + %d (%s); task_struct.comm at %d",
             layout.stack_top, layout.layout_from, layout.comm_offset)
    containers = Containers()
    cgroups: list[int] = []
    for ref in config.filters.containers:
        try:
            full, ids = containers.cgroups_of(ref)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        log.info("--container %s: container %s, filtered in the kernel by cgroup id %s (processes it "
                 "starts in new cgroups later are not traced; a restarted container needs a new collector)",
                 ref, full[:12], ", ".join(map(str, ids)))
        cgroups += ids
    return Prepared(bpftrace=path, version=version,
                    hostname=config.hostname if config.hostname is not None else host_name(),
                    containers=containers if containers.root is not None else NoContainers(),
                    cgroups=tuple(cgroups), kernel=layout)
