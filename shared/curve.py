"""Optional CurveZMQ encryption and subscriber authentication for the event stream.

The stream stays on loopback by default. When the collector binds beyond the host,
set on the collector:

    SYSWATCH_CURVE_SERVER_KEY=keys/server.key_secret   its own key pair (secret file)
    SYSWATCH_CURVE_CLIENTS=keys/clients                directory of authorised subscribers' *.key

and on each subscriber (API, subscribers/*.py):

    SYSWATCH_CURVE_SERVER_KEY=keys/server.key          the collector's public key
    SYSWATCH_CURVE_CLIENT_KEY=keys/alice.key_secret    its own key pair (secret file)

A subscriber whose public key is not in SYSWATCH_CURVE_CLIENTS is refused during the
handshake (ZAP) and receives nothing. Generate key pairs with:

    python3 -m syswatch.shared.curve DIR NAME    # writes DIR/NAME.key (public) and DIR/NAME.key_secret
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

if __name__ == "__main__":                  # the key tool: a missing pyzmq is one line, exit 2
    from syswatch.shared.deps import require
    require("python3 -m syswatch.shared.curve", "zmq")

import zmq  # noqa: E402
import zmq.auth  # noqa: E402

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
