"""Which container a cgroup belongs to: bpftrace's ``cgroup`` (a cgroup v2 id) -> id and name.

bpftrace's ``cgroup`` is the id of the task's cgroup in the v2 hierarchy, which is the inode
number of that cgroup's directory. On a pure v2 host the hierarchy is /sys/fs/cgroup; on a
hybrid host (cgroup v1 controllers, v2 mounted at /sys/fs/cgroup/unified) Docker still puts
every container in the v2 hierarchy, so the same lookup works. The collector walks the
hierarchy once, maps every directory's inode to its path, and finds the container id in the
path as each runtime writes it:

    Docker, cgroupfs driver        /docker/<64 hex>
    Docker, systemd driver         /system.slice/docker-<64 hex>.scope
    containerd / CRI (Kubernetes)  /kubepods/.../<64 hex>, /kubepods.slice/.../cri-containerd-<64 hex>.scope
    CRI-O                          .../crio-<64 hex>.scope
    Podman                         /machine.slice/libpod-<64 hex>.scope, /libpod_parent/libpod-<64 hex>

The deepest such component wins (a container's own sub-cgroups stay that container's). The
name comes from the Docker Engine API on its Unix socket (Podman serves the same API on
/run/podman/podman.sock); Kubernetes pod names are not looked up (the id is what `crictl ps`
shows). Lookups are cached per cgroup id, so the event path costs one dict lookup; an unknown
id triggers a new walk at most once per RESCAN_S.

Names are asked off the event loop (``Names``: one worker thread, a bounded queue): a hung or
slow engine never stalls the collector. Until the engine answers, a new container's events
carry its id and an empty ``container_name``; a failed lookup is remembered for MISS_RETRY_S.
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections import deque
from pathlib import Path

log = logging.getLogger("syswatch.collector")

# Where the v2 hierarchy may be, in order. /host/...: the compose file mounts the host's
# /sys/fs/cgroup there, because a container's own /sys/fs/cgroup shows only its namespace.
CGROUP_ROOTS = ("/host/sys/fs/cgroup/unified", "/host/sys/fs/cgroup",
                "/sys/fs/cgroup/unified", "/sys/fs/cgroup")
ENGINE_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")
ROOT_CGROUP_ID = 1                   # the v2 root directory's inode (kernfs root)
RESCAN_S = 1.0
CACHE_MAX = 65_536
NAME_QUEUE_MAX = 256                 # container ids waiting for the engine; more are asked later
MISS_RETRY_S = 30.0                  # a container the engine did not name is asked again after this
_CONTAINER = re.compile(r"(?:(?:docker|cri-containerd|crio|libpod)-)?([0-9a-f]{64})(?:\.scope)?")
HOST = ("", "")


def container_of_path(path: str) -> str:
    """The full container id in a cgroup path, or ""."""
    for part in reversed(path.split("/")):
        m = _CONTAINER.fullmatch(part)
        if m:
            return m.group(1)
    return ""


def find_cgroup2_root(candidates=CGROUP_ROOTS) -> Path | None:
    """The root of the cgroup v2 hierarchy (its inode is the root cgroup's id), or None."""
    env = os.environ.get("SYSWATCH_CGROUP_ROOT")
    for cand in ((env,) if env else candidates):
        p = Path(cand)
        try:
            if (p / "cgroup.controllers").exists() and p.stat().st_ino == ROOT_CGROUP_ID:
                return p
        except OSError:
            continue
    return None


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Engine:
    """The Docker Engine API (or Podman's compatible one) on a Unix socket, if there is one."""

    def __init__(self, sockets=ENGINE_SOCKETS, timeout: float = 0.5):
        env = os.environ.get("SYSWATCH_DOCKER_SOCKET")
        self.sockets = [env] if env else [s for s in sockets if os.path.exists(s)]
        self.timeout = timeout

    def inspect(self, ref: str) -> dict | None:
        """The engine's JSON for container ``ref`` (id, id prefix or name), or None."""
        for path in self.sockets:
            try:
                conn = _UnixHTTP(path, self.timeout)
                conn.request("GET", f"/containers/{ref}/json")
                resp = conn.getresponse()
                body = resp.read(1 << 20)
                conn.close()
            except (OSError, http.client.HTTPException):
                continue
            if resp.status == 200:
                try:
                    return json.loads(body)
                except ValueError:
                    return None
        return None

    def name(self, container_id: str) -> str:
        info = self.inspect(container_id)
        name = info.get("Name", "") if isinstance(info, dict) else ""
        return name.lstrip("/")[:255] if isinstance(name, str) else ""


class Names:
    """Container names asked of the engine by one worker thread, never by the caller.

    ``get(full_id)`` answers from what is known at once: the name, "" for a container the engine
    did not name (asked again after MISS_RETRY_S), or None while the question is pending (it is
    queued; at most NAME_QUEUE_MAX wait, the rest are asked on a later ``get``). ``take_answered()``
    hands the ids answered since the last call, so a cache of "" can be refreshed."""

    def __init__(self, engine: Engine, clock=time.monotonic):
        self.engine = engine
        self._clock = clock
        self._known: dict[str, tuple[str, float]] = {}   # id -> (name, when answered); worker writes
        self._asked: set[str] = set()                     # queued or being asked; caller's thread only
        self._queue: queue.Queue[str | None] = queue.Queue(NAME_QUEUE_MAX)
        self._answered: deque[str] = deque()              # appended by the worker, taken by the caller
        self._thread: threading.Thread | None = None
        self.deferred = 0                                 # questions not queued (queue full)

    def get(self, full_id: str) -> str | None:
        if not self.engine.sockets:
            return ""                          # no engine on this host: nothing to ask
        known = self._known.get(full_id)
        if known is not None and (known[0] or self._clock() - known[1] < MISS_RETRY_S):
            return known[0]
        if full_id not in self._asked:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="syswatch-names", daemon=True)
                self._thread.start()
            try:
                self._queue.put_nowait(full_id)
                self._asked.add(full_id)
            except queue.Full:
                self.deferred += 1
        return None if known is None else known[0]

    def due(self, full_id: str) -> bool:
        """Whether a container without a name should be asked (again): the engine did not name it
        MISS_RETRY_S ago, or it was never queued (the queue was full)."""
        if not self.engine.sockets:
            return False
        known = self._known.get(full_id)
        if known is None:
            return full_id not in self._asked
        return not known[0] and self._clock() - known[1] >= MISS_RETRY_S

    def take_answered(self) -> list[str]:
        """Ids whose answer arrived since the last call (cheap when none did)."""
        out = []
        while self._answered:
            full_id = self._answered.popleft()
            self._asked.discard(full_id)
            out.append(full_id)
        return out

    def _work(self) -> None:
        while True:
            full_id = self._queue.get()
            if full_id is None:
                return
            try:
                name = self.engine.name(full_id)
            except Exception:                  # noqa: BLE001 - a worker must not die; a miss is retried
                log.exception("container name lookup failed")
                name = ""
            if len(self._known) >= CACHE_MAX:
                self._known.clear()
            self._known[full_id] = (name, self._clock())
            self._answered.append(full_id)

    def close(self, timeout: float = 1.0) -> None:
        """Stops the worker (it may be inside a lookup: it is a daemon thread, and exits after it)."""
        if self._thread is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._thread.join(timeout)
            self._thread = None


class Containers:
    """cgroup id -> (container id, name), cached; also resolves --container references."""

    def __init__(self, root: Path | None = None, engine: Engine | None = None, clock=time.monotonic):
        self.root = root if root is not None else find_cgroup2_root()
        self.engine = engine or Engine()
        self._clock = clock
        self._paths: dict[int, str] = {}       # inode -> path below the root
        self._fields: dict[int, tuple[str, str]] = {ROOT_CGROUP_ID: HOST}
        self._json: dict[int, bytes] = {}
        self.names = Names(self.engine, clock)
        self._unnamed: dict[str, list[int]] = {}   # container id -> cgroups cached without a name yet
        self._last_scan = -RESCAN_S
        if self.root is None:
            log.warning("no cgroup v2 hierarchy found (%s): container_id will be empty; mount the host's "
                        "/sys/fs/cgroup (docker-compose.yml does) or set SYSWATCH_CGROUP_ROOT",
                        ", ".join(CGROUP_ROOTS))

    def scan(self) -> None:
        """Walk the hierarchy: every cgroup directory's inode and path."""
        self._last_scan = self._clock()
        if self.root is None:
            return
        paths: dict[int, str] = {}
        stack = [("", str(self.root))]
        while stack and len(paths) < 4 * CACHE_MAX:
            rel, path = stack.pop()
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        if entry.is_dir(follow_symlinks=False):
                            sub = f"{rel}/{entry.name}"
                            paths[entry.inode()] = sub
                            stack.append((sub, entry.path))
            except OSError:
                continue
        self._paths = paths

    def fields(self, cgroup_id: int) -> tuple[str, str]:
        """(container id as `docker ps` shows it, name or "") of a cgroup; ("", "") for the host."""
        if self.names._answered:
            self._forget_unnamed()
        got = self._fields.get(cgroup_id)
        if got is not None:
            return got
        path = self._paths.get(cgroup_id)
        if path is None and self._clock() - self._last_scan >= RESCAN_S:
            self.scan()
            path = self._paths.get(cgroup_id)
        if path is None:
            return HOST                        # not cached: a later event may find it after a rescan
        full = container_of_path(path)
        name = self.names.get(full) if full else ""
        got = (full[:12], name or "") if full else HOST
        if len(self._fields) >= CACHE_MAX:
            self._fields.clear()
            self._json.clear()
            self._unnamed.clear()
        self._fields[cgroup_id] = got
        if full and not name:                      # pending, or a miss: refreshed when an answer comes
            cgroups = self._unnamed.setdefault(full, [])
            if len(cgroups) < 64:
                cgroups.append(cgroup_id)
        return got

    def retry_misses(self) -> None:
        """Once in a while (the collector: every status): containers the engine did not name are
        asked again on their next event."""
        for full in [f for f in self._unnamed if self.names.due(f)]:
            for cgroup_id in self._unnamed.pop(full, ()):
                self._fields.pop(cgroup_id, None)
                self._json.pop(cgroup_id, None)

    def _forget_unnamed(self) -> None:
        """Drop the cached "" name of containers the engine has answered for since."""
        for full in self.names.take_answered():
            for cgroup_id in self._unnamed.pop(full, ()):
                self._fields.pop(cgroup_id, None)
                self._json.pop(cgroup_id, None)

    def fields_json(self, cgroup_id: int) -> bytes:
        """``"container_id":"...","container_name":"..."`` for the event JSON (cached)."""
        if self.names._answered:
            self._forget_unnamed()
        got = self._json.get(cgroup_id)
        if got is None:
            cid, name = self.fields(cgroup_id)
            got = b'"container_id":"%s","container_name":%s' % (cid.encode(), json.dumps(name).encode())
            if cgroup_id in self._fields:
                self._json[cgroup_id] = got
        return got

    def close(self) -> None:
        self.names.close()

    def cgroups_of(self, ref: str) -> tuple[str, list[int]]:
        """(full container id, its cgroup ids) for a container id prefix or name; ValueError if none."""
        if self.root is None:
            raise ValueError("--container needs the cgroup v2 hierarchy, and none was found "
                             f"({', '.join(CGROUP_ROOTS)}; or set SYSWATCH_CGROUP_ROOT)")
        self.scan()
        full = ""
        info = self.engine.inspect(ref)
        if isinstance(info, dict) and isinstance(info.get("Id"), str):
            full = info["Id"]
        elif re.fullmatch(r"[0-9a-f]{3,64}", ref):
            ids = {container_of_path(p) for p in self._paths.values()} - {""}
            matches = sorted(i for i in ids if i.startswith(ref))
            if len(matches) > 1:
                raise ValueError(f"--container {ref!r} matches {len(matches)} containers: give more digits")
            full = matches[0] if matches else ""
        if not full:
            hint = "" if self.engine.sockets else (" (no Docker/Podman API socket: names cannot be looked up, "
                                                    "give the container id)")
            raise ValueError(f"--container {ref!r}: no running container has this id or name{hint}")
        cgroups = [ino for ino, p in self._paths.items() if container_of_path(p) == full]
        if not cgroups:
            raise ValueError(f"--container {ref!r} ({full[:12]}) has no cgroup in {self.root}: is it running?")
        return full, cgroups
