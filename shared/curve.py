"""Optional CurveZMQ encryption and subscriber authentication for the event stream.

The stream stays on loopback by default. When the collector binds beyond the host,
set on the collector:

    SYSWATCH_CURVE_SERVER_KEY=keys/server.key_secret   its own key pair (secret file)
    SYSWATCH_CURVE_CLIENTS=keys/clients                directory of authorised subscribers' *.key

and on each subscriber (API, subscribers/*.py):

    SYSWATCH_CURVE_SERVER_KEY=keys/server.key          the collector's public key
    SYSWATCH_CURVE_CLIENT_KEY=keys/alice.key_secret    its own key pair (secret file)

A subscriber whose public key is not in SYSWATCH_CURVE_CLIENTS is refused during the
handshake (ZAP) and receives nothing; so is one without a key (a plain, unencrypted peer).
``RefusalWatch`` counts both (the collector's ``status.curve_refused_total``) and logs them with
the peer's address, at most a few lines a minute. Generate key pairs with:

    python3 -m syswatch.shared.curve DIR NAME    # writes DIR/NAME.key (public) and DIR/NAME.key_secret
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import NamedTuple

if __name__ == "__main__":                  # the key tool: a missing pyzmq is one line, exit 2
    from syswatch.shared.deps import require
    require("python3 -m syswatch.shared.curve", "zmq")

import zmq  # noqa: E402
import zmq.auth  # noqa: E402
from zmq.utils.monitor import recv_monitor_message  # noqa: E402

from syswatch.shared import procnet  # noqa: E402
from syswatch.shared.ratelog import RateLimitedLog  # noqa: E402

log = logging.getLogger("syswatch.curve")

ENV_SERVER_KEY = "SYSWATCH_CURVE_SERVER_KEY"
ENV_CLIENT_KEY = "SYSWATCH_CURVE_CLIENT_KEY"
ENV_CLIENTS = "SYSWATCH_CURVE_CLIENTS"


class CurveError(RuntimeError):
    """Curve keys that are missing or unusable; the text says which and what to do."""


class ServerKeys(NamedTuple):
    public: bytes
    secret: bytes
    clients_dir: str


class ClientKeys(NamedTuple):
    public: bytes
    secret: bytes
    server_public: bytes


def _check_support() -> None:
    if not zmq.has("curve"):
        raise CurveError("this libzmq was built without CurveZMQ (libsodium); install a pyzmq/libzmq with curve")


def _load(path: str, env: str, need_secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise CurveError(f"{env}={path!r}: cannot load a key file ({exc}); "
                         "create one with: python3 -m syswatch.shared.curve DIR NAME") from None
    if need_secret and not secret:
        raise CurveError(f"{env}={path!r} holds no secret key: point it at the NAME.key_secret file")
    return public, secret


def server_from_env(environ=os.environ) -> ServerKeys | None:
    """The collector's Curve keys, or None when Curve is off (SYSWATCH_CURVE_SERVER_KEY unset)."""
    path = environ.get(ENV_SERVER_KEY)
    if not path:
        return None
    _check_support()
    public, secret = _load(path, ENV_SERVER_KEY, need_secret=True)
    assert secret is not None                  # need_secret: _load raised otherwise
    clients = environ.get(ENV_CLIENTS, "")
    if not clients or not Path(clients).is_dir():
        raise CurveError(f"{ENV_CLIENTS} must name a directory holding the public keys (NAME.key) of the "
                         f"subscribers allowed in (got {clients!r})")
    if not list(Path(clients).glob("*.key")):
        raise CurveError(f"{ENV_CLIENTS}={clients!r} holds no NAME.key file: no subscriber could connect")
    return ServerKeys(public, secret, clients)


def client_from_env(environ=os.environ) -> ClientKeys | None:
    """A subscriber's Curve keys, or None when Curve is off (SYSWATCH_CURVE_SERVER_KEY unset)."""
    path = environ.get(ENV_SERVER_KEY)
    if not path:
        return None
    _check_support()
    server_public, _ = _load(path, ENV_SERVER_KEY, need_secret=False)
    own = environ.get(ENV_CLIENT_KEY)
    if not own:
        raise CurveError(f"{ENV_SERVER_KEY} is set, so the collector uses CurveZMQ: set {ENV_CLIENT_KEY} "
                         "to this subscriber's NAME.key_secret (python3 -m syswatch.shared.curve DIR NAME) and give "
                         "the collector's operator NAME.key")
    public, secret = _load(own, ENV_CLIENT_KEY, need_secret=True)
    assert secret is not None                  # need_secret: _load raised otherwise
    return ClientKeys(public, secret, server_public)


def start_authenticator(ctx: zmq.Context, keys: ServerKeys):
    """A ZAP handler (its own thread and socket) admitting only the public keys in keys.clients_dir."""
    from zmq.auth.thread import ThreadAuthenticator
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=keys.clients_dir)
    return auth


class RefusalWatch:
    """Counts and logs the handshakes a CurveZMQ publisher refuses: an unknown key (the ZAP handler
    says no) or none at all (a peer of another security mechanism).

    Reads a monitor socket of ``sock`` in its own thread. libzmq reports a refusal as
    HANDSHAKE_FAILED_AUTH / HANDSHAKE_FAILED_PROTOCOL without saying which connection; its one I/O
    thread reports that connection's DISCONNECTED (with its fd) right after, and ACCEPTED named
    the fd earlier, when the peer's address was read. ``refused`` is the count (read from any
    thread); peers that merely connect and leave (a port scan) are not refusals."""

    EVENTS = (zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
              | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    MAX_TRACKED = 4096                      # accepted connections whose address is remembered

    def __init__(self, sock: zmq.Socket, logger: logging.Logger | None = None):
        self.refused = 0
        self._sock = sock
        last = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._port = int(last.rsplit(":", 1)[1]) if last.startswith("tcp://") else None
        self._closed_seen: set[str] = set()    # closing connections already named in a log line
        self._log = RateLimitedLog(logger or log, burst=5, window_s=60.0)
        self._peers: dict[int, str] = {}
        self._failed: str | None = None        # the reason of a refusal whose connection is next
        self._stop = threading.Event()
        self._mon = sock.get_monitor_socket(self.EVENTS)
        self._thread = threading.Thread(target=self._run, name="syswatch-curve-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._mon.poll(500):
                    self._log.tick()
                    continue
                try:
                    msg = recv_monitor_message(self._mon)
                except zmq.ZMQError:
                    return
                self._event(msg["event"], msg["value"])
        finally:
            self._mon.close(linger=0)

    def _event(self, event: int, value: int) -> None:
        if event == zmq.EVENT_ACCEPTED:
            if len(self._peers) >= self.MAX_TRACKED:
                self._peers.clear()
            peer = _peer_name(value)
            if peer:
                self._peers[value] = peer
        elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refused += 1
            self._failed = f"key not authorised (ZAP status {value})"
        elif event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self.refused += 1
            self._failed = f"no CurveZMQ key or a broken handshake (protocol error 0x{value:x})"
        elif event == zmq.EVENT_DISCONNECTED:
            peer = self._peers.pop(value, None)
            if self._failed and self._log.permit():
                self._log.logger.warning(
                    "CurveZMQ refused a subscriber from %s: %s (refusals so far: %d; authorise its public "
                    "key in SYSWATCH_CURVE_CLIENTS if it is yours)",
                    peer or self._closing_peer(), self._failed, self.refused)
            if self._failed:
                self._failed = None

    def _closing_peer(self) -> str:
        """The peer of a connection ZeroMQ closed before its address could be read (a peer without
        a key is refused at once): the kernel still lists it, closing, on our port. Read only for a
        line that will be logged, so a flood costs a few reads a minute."""
        if self._port is None:
            return "an unknown address"
        found = [str(s.remote) for s in procnet.tcp_sockets(states=procnet.CLOSING_STATES, local_port=self._port)]
        new = [a for a in found if a not in self._closed_seen]
        self._closed_seen = set(found)
        if not new:
            return "an unknown address"
        return new[-1] if len(new) == 1 else "one of " + ", ".join(new[-3:])

    def stop(self) -> None:
        """Stops the watch (before the socket is closed)."""
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._stop.set()
        self._thread.join(5)


def _peer_name(fd: int) -> str | None:
    """ "ip:port" of the peer on our socket ``fd``, read at once (the fd is ZeroMQ's: a dup is
    used); None when ZeroMQ closed it already."""
    try:
        dup = os.dup(fd)
    except OSError:
        return None
    try:
        with socket.socket(fileno=dup) as s:
            name = s.getpeername()
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(name, tuple):
        return "a local (ipc) peer"
    host, port = name[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python3 -m syswatch.shared.curve",
        description="Generate a CurveZMQ key pair for the syswatch collector or a subscriber.",
        epilog="examples:\n"
               "  python3 -m syswatch.shared.curve keys server         # collector: keys/server.key(_secret)\n"
               "  python3 -m syswatch.shared.curve keys/clients alice  # a subscriber; keep keys/clients/alice.key\n"
               "  mv keys/clients/alice.key_secret ~alice/              # its secret goes to the subscriber only\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", help="where to write NAME.key and NAME.key_secret (created if missing)")
    p.add_argument("name", help="file name stem, e.g. server or the subscriber's name")
    args = p.parse_args(argv)
    try:
        _check_support()
    except CurveError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.makedirs(args.directory, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if os.path.exists(os.path.join(args.directory, args.name + suffix)):
            print(f"error: {os.path.join(args.directory, args.name + suffix)} exists; not overwriting it",
                  file=sys.stderr)
            return 1
    old = os.umask(0o077)
    try:
        public, secret = zmq.auth.create_certificates(args.directory, args.name)
    finally:
        os.umask(old)
    print(f"public key:  {public}\nsecret key:  {secret}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
