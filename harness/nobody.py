"""Subscribers (and attackers) as an unprivileged user: uid/gid 65534 (nobody), through setpriv,
running Debian's /usr/bin/python3 with python3-zmq (root's own interpreter may not be readable by
other users). ``SUBSCRIBER`` is one small program with a mode per behaviour the tests and the soak
need; it prints one line when it has done its setup and then follows orders on stdin.

    sub = Nobody(endpoint, "self")                  # connect and announce itself
    sub.command("read /etc/hostname 100 900000")    # 100 reads of 900000+i bytes; replies "done"
"""
from __future__ import annotations

import os
import subprocess
import sys

from harness import ROOT

SYSTEM_PYTHON = "/usr/bin/python3"
SETPRIV_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NOBODY_UID = 65534

# argv: ENDPOINT MODE [ARG]
#   self            connect and announce (make_subscriber does)
#   pid N           connect, announce PID N of this PID namespace instead
#   tids N          start N threads, announce every thread id of the process
#   spawn N         start N child processes, announce each through this one connection
#   flood N         announce N made-up (pid, namespace) pairs
# stdin commands, each answered by one line:
#   read PATH N BASE [PERIOD]   N reads of PATH asking BASE+i bytes, PERIOD s apart; "done T0 T1 ..." (ns)
#   quit
SUBSCRIBER = r"""
import os, sys, threading, time, subprocess
import zmq
from syswatch.shared.protocol import announce_topic
from syswatch.shared.zmqsock import make_subscriber, pid_namespace
endpoint, mode = sys.argv[1], sys.argv[2]
arg = int(sys.argv[3]) if len(sys.argv) > 3 else 0
ctx = zmq.Context()
sock = make_subscriber(ctx, endpoint, ("status",), announce=mode == "self")
ns = pid_namespace()
kids, stop = [], threading.Event()
if mode == "pid":
    sock.setsockopt(zmq.SUBSCRIBE, announce_topic(arg, ns).encode())
elif mode == "tids":
    threads = [threading.Thread(target=stop.wait) for _ in range(arg)]
    for t in threads:
        t.start()
    for tid in os.listdir("/proc/self/task"):
        sock.setsockopt(zmq.SUBSCRIBE, announce_topic(int(tid), ns).encode())
elif mode == "spawn":
    kids = [subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
            for _ in range(arg)]
    for k in kids:
        sock.setsockopt(zmq.SUBSCRIBE, announce_topic(k.pid, ns).encode())
elif mode == "flood":
    for i in range(arg):
        sock.setsockopt(zmq.SUBSCRIBE, announce_topic(1000 + i, 4026531000 + i).encode())
print(" ".join(str(k.pid) for k in kids) or "ready", flush=True)
poller = zmq.Poller()
poller.register(sock, zmq.POLLIN)
for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
        break
    if cmd[0] == "read":
        path, n, base = cmd[1], int(cmd[2]), int(cmd[3])
        period = float(cmd[4]) if len(cmd) > 4 else 0.0
        fd = os.open(path, os.O_RDONLY)
        times = []
        for i in range(n):
            times.append(time.time_ns())
            os.lseek(fd, 0, 0)
            os.read(fd, base + i)
            while poller.poll(0):              # keep receiving: the stream flows meanwhile
                sock.recv_multipart()
            if period:
                time.sleep(period)
        os.close(fd)
        print("done", *times, flush=True)
stop.set()
for k in kids:
    k.stdin.close()
    k.wait()
sock.close(0)
ctx.term()
"""


def available() -> str | None:
    """None when subscribers can run as nobody here, else what to install."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is missing: apt-get install python3"
    probe = subprocess.run([*SETPRIV_NOBODY, SYSTEM_PYTHON, "-c", "import zmq"], capture_output=True)
    if probe.returncode != 0:
        return "apt-get install python3-zmq (scripts/setup-host.sh does): uid-nobody subscribers use it"
    return None


class Nobody:
    """A SUBSCRIBER process as uid nobody (or as root with ``nobody=False``)."""

    def __init__(self, endpoint: str, mode: str, arg: int | None = None, nobody: bool = True):
        python = SYSTEM_PYTHON if nobody else sys.executable
        argv = [*(SETPRIV_NOBODY if nobody else []), python, "-c", SUBSCRIBER, endpoint, mode,
                *([] if arg is None else [str(arg)])]
        self.proc = subprocess.Popen(argv, cwd="/", env={"PYTHONPATH": str(ROOT), "PATH": os.environ["PATH"]},
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        first = self.stdout.readline()
        if not first:
            self.close()
            raise RuntimeError(f"subscriber ({mode}) exited at start-up with status {self.proc.returncode}")
        self.kids = [int(x) for x in first.split() if x.isdigit()]

    def command(self, line: str) -> list[str]:
        """Sends one command; its answer, split."""
        self.stdin.write(line + "\n")
        self.stdin.flush()
        return self.stdout.readline().split()

    def close(self) -> None:
        try:
            self.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
