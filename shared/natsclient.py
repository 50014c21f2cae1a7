"""A small NATS client, Python standard library only (TLS and nkeys included; nkeys sign with the
``cryptography`` package).

Why our own: the container images install Debian packages only, and Debian has nats-server but no
Python NATS client; the official nats-py (PyPI) is asyncio-only. What syswatch needs of NATS is a
small part of the text protocol (CONNECT, PUB/HPUB, SUB, MSG/HMSG, PING/PONG) plus JetStream's JSON
API (shared/jetstream.py), so this module implements exactly that, bounded everywhere, and the tests
run it against the real nats-server and compare it with nats-py. Threads: one I/O thread per
connection reads, writes and answers pings; ``publish`` only appends to a bounded output buffer, so a
caller never blocks on the network (it gets ``Backpressure`` when the buffer is full). Subscription
callbacks run on the I/O thread and must be quick. A lost connection is not re-established here:
the owner (bridge, API) makes a new ``Connection`` with its own back-off, and so decides what to
resend.

    conn = Connection(Options(servers=["nats://127.0.0.1:4222"]))
    conn.connect()
    reply = conn.request("$JS.API.INFO", b"", timeout=2)
    conn.close()
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import secrets
import select
import socket
import ssl
import threading
import time
import urllib.parse
from typing import Callable

DEFAULT_PORT = 4222
MAX_CONTROL_LINE = 64 * 1024       # a server's control line (INFO with many connect_urls is the longest)
MAX_PENDING_OUT = 64 * 1024 * 1024  # bytes queued for the server before publish() refuses
READ_CHUNK = 256 * 1024
PING_INTERVAL_S = 5.0
MAX_OUTSTANDING_PINGS = 3           # unanswered pings before the connection counts as dead
VERSION = "1"


class NatsError(Exception):
    """Something NATS said or did that the caller must handle; the text says what."""


class ConnectError(NatsError):
    """No usable connection: the server cannot be reached, refused us, or TLS/auth failed."""


class ConnectionClosed(NatsError):
    """The connection is gone (server stopped, network, protocol error); make a new one."""


class Backpressure(NatsError):
    """More than MAX_PENDING_OUT bytes wait to be written: the server or network is not keeping up."""


class Timeout(NatsError):
    pass


class NoResponders(NatsError):
    """Nobody listens on the subject of a request (for JetStream: no stream takes that subject)."""


@dataclasses.dataclass(frozen=True)
class Options:
    """How to reach and authenticate to NATS. ``servers``: nats://HOST:PORT or tls://HOST:PORT URLs,
    tried in turn; user:password@ or token@ in a URL count like ``user``/``password``/``token``."""
    servers: tuple[str, ...]
    user: str | None = None
    password: str | None = None
    token: str | None = None
    nkey_seed_file: str | None = None   # a file holding an nkey seed (SU...): nkey authentication
    ca_file: str | None = None          # TLS: verify the server against this CA (else the system's)
    cert_file: str | None = None        # TLS client certificate (servers with verify: true)
    key_file: str | None = None
    name: str = "syswatch"
    connect_timeout_s: float = 5.0

    def display(self) -> str:
        """The server URLs with any credentials left out (for logs, /stats and errors)."""
        return ",".join(redact(u) for u in self.servers)


def redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def check_url(url: str) -> str:
    """``url`` if it is nats://HOST[:PORT] or tls://HOST[:PORT] (comma-separated list allowed), else ValueError."""
    for one in url.split(","):
        one = one.strip()
        parts = urllib.parse.urlsplit(one)
        if parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"{redact(one)!r} is not a NATS URL: use nats://HOST:4222 or tls://HOST:4222 "
                             "(several: comma separated)")
        try:
            parts.port
        except ValueError:
            raise ValueError(f"{redact(one)!r}: the port must be 0..65535") from None
    return url


# --- nkeys: seeds and public keys as NATS spells them (base32, a type prefix, CRC-16) -------------
_PREFIX_SEED = 18 << 3
_PREFIX_USER = 20 << 3


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=")


def _unb32(text: str) -> bytes:
    try:
        return base64.b32decode(text + "=" * (-len(text) % 8))
    except (binascii.Error, ValueError):
        raise ValueError("not base32") from None


def _with_crc(raw: bytes) -> bytes:
    return raw + binascii.crc_hqx(raw, 0).to_bytes(2, "little")   # CRC-16/XMODEM, as nkeys computes it


def nkey_seed_bytes(seed: str) -> bytes:
    """The 32-byte ed25519 seed of a user nkey seed (``SU...``); ValueError naming what is wrong."""
    raw = _unb32(seed.strip())
    if len(raw) != 36 or binascii.crc_hqx(raw[:-2], 0).to_bytes(2, "little") != raw[-2:]:
        raise ValueError("not an nkey seed (wrong length or checksum)")
    kind = ((raw[0] & 7) << 5) | ((raw[1] & 0xF8) >> 3)
    if raw[0] & 0xF8 != _PREFIX_SEED or kind != _PREFIX_USER:
        raise ValueError("not a user nkey seed (it must start with SU)")
    return raw[2:34]


def nkey_encode_seed(seed32: bytes) -> str:
    """A user nkey seed (``SU...``) for 32 random bytes, e.g. ``secrets.token_bytes(32)``."""
    return _b32(_with_crc(bytes([_PREFIX_SEED | (_PREFIX_USER >> 5), (_PREFIX_USER & 31) << 3]) + seed32))


def _ed25519(seed32: bytes):
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        raise ConnectError("nkey authentication needs the cryptography package (Debian: python3-cryptography; "
                           "pip: cryptography)") from None
    return Ed25519PrivateKey.from_private_bytes(seed32)


def nkey_public(seed: str) -> str:
    """The public user key (``U...``) of a seed: what the server's configuration lists."""
    from cryptography.hazmat.primitives import serialization
    key = _ed25519(nkey_seed_bytes(seed)).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b32(_with_crc(bytes([_PREFIX_USER]) + key))


def _nkey_sign(seed: str, nonce: str) -> tuple[str, str]:
    sig = _ed25519(nkey_seed_bytes(seed)).sign(nonce.encode("ascii"))
    return nkey_public(seed), base64.urlsafe_b64encode(sig).decode("ascii").rstrip("=")


# --- messages -----------------------------------------------------------------------------------
@dataclasses.dataclass
class Msg:
    subject: str
    reply: str
    data: bytes
    headers: dict[str, str] | None = None
    status: int | None = None          # e.g. 503 (no responders), 404/408 (JetStream pull status)
    description: str = ""


def encode_headers(headers: dict[str, str]) -> bytes:
    lines = ["NATS/1.0"]
    for key, value in headers.items():
        if any(c in key + value for c in "\r\n") or ":" in key:
            raise ValueError(f"header {key!r} holds a line break or a colon")
        lines.append(f"{key}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_headers(raw: bytes) -> tuple[dict[str, str], int | None, str]:
    """(headers, status, description) of an HMSG header block."""
    text = raw.decode("utf-8", "replace")
    lines = text.split("\r\n")
    first = lines[0].split(" ", 2)
    status = int(first[1]) if len(first) > 1 and first[1].isdigit() else None
    description = first[2] if len(first) > 2 else ""
    headers = {}
    for line in lines[1:]:
        key, sep, value = line.partition(":")
        if sep:
            headers[key.strip()] = value.strip()
    return headers, status, description


class _Slot:
    __slots__ = ("event", "msg")

    def __init__(self):
        self.event = threading.Event()
        self.msg: Msg | None = None


class Connection:
    """One connection to one NATS server (the first of ``options.servers`` that answers)."""

    def __init__(self, options: Options):
        self.options = options
        self.info: dict = {}
        self.server = ""
        self.max_payload = 1024 * 1024
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._out = bytearray()
        self._out_pos = 0        # bytes of _out already sent (dropped in large steps, not per send)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._subs: dict[int, Callable[[Msg], None]] = {}
        self._next_sid = 1
        self._inbox_prefix = "_INBOX." + secrets.token_hex(11)
        self._inbox_sid: int | None = None
        self._replies: dict[str, Callable[[Msg], None] | _Slot] = {}
        self._pongs: list[threading.Event | None] = []   # None: a keep-alive ping's PONG
        self._closed = threading.Event()
        self.error: str | None = None       # why the connection ended, when it did by itself
        self._thread: threading.Thread | None = None
        self.on_close: Callable[[str | None], None] | None = None
        self.bytes_out = self.bytes_in = 0

    # --- connecting ---------------------------------------------------------------------------
    def connect(self) -> "Connection":
        problems = []
        for url in self.options.servers:
            try:
                self._connect_one(url.strip())
                break
            except ConnectError as exc:
                problems.append(str(exc))
        else:
            self._close_fds()
            raise ConnectError("; ".join(problems) or "no server URL")
        self._thread = threading.Thread(target=self._run, name="nats-io", daemon=True)
        self._thread.start()
        return self

    def _connect_one(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        host, port = parts.hostname or "", parts.port or DEFAULT_PORT
        shown = redact(url)
        timeout = self.options.connect_timeout_s
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectError(f"{shown}: cannot connect: {exc.strerror or exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader = _LineReader(sock)
            line = reader.line(timeout)
            if not line.startswith(b"INFO "):
                raise ConnectError(f"{shown}: not a NATS server (it said {line[:60]!r})")
            info = json.loads(line[5:])
            want_tls = parts.scheme == "tls" or bool(self.options.ca_file or self.options.cert_file)
            if info.get("tls_required") or want_tls:
                if not (info.get("tls_required") or info.get("tls_available")):
                    raise ConnectError(f"{shown}: TLS was asked for (tls:// or a CA/certificate) but the server "
                                       "offers none")
                sock = self._tls(sock, host, shown)
                reader = _LineReader(sock)
            connect = {"verbose": False, "pedantic": False, "lang": "python-syswatch", "version": VERSION,
                       "protocol": 1, "headers": True, "no_responders": True, "echo": True,
                       "name": self.options.name, "tls_required": isinstance(sock, ssl.SSLSocket)}
            user, password, token = self.options.user, self.options.password, self.options.token
            if parts.username and not (user or token):   # nats://USER:PASSWORD@host or nats://TOKEN@host
                if parts.password is None:
                    token = urllib.parse.unquote(parts.username)
                else:
                    user, password = urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password)
            if user:
                connect["user"], connect["pass"] = user, password or ""
            if token:
                connect["auth_token"] = token
            if self.options.nkey_seed_file:
                if "nonce" not in info:
                    raise ConnectError(f"{shown}: nkey authentication asked for but the server sent no nonce "
                                       "(is nkey auth configured on the server?)")
                try:
                    with open(self.options.nkey_seed_file, encoding="ascii") as f:
                        seed = f.read().strip()
                    connect["nkey"], connect["sig"] = _nkey_sign(seed, info["nonce"])
                except (OSError, ValueError) as exc:
                    raise ConnectError(f"nkey seed file {self.options.nkey_seed_file}: {exc}") from None
            sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
            while True:
                line = reader.line(timeout)
                if line == b"PONG":
                    break
                if line.startswith(b"-ERR"):
                    raise ConnectError(f"{shown}: the server refused the connection: "
                                       f"{line[4:].strip().decode('utf-8', 'replace')}")
                if line.startswith(b"PING"):
                    sock.sendall(b"PONG\r\n")
            sock.settimeout(None)
            sock.setblocking(False)
        except ConnectError:
            sock.close()
            raise
        except (OSError, ValueError) as exc:
            sock.close()
            raise ConnectError(f"{shown}: {exc}") from None
        self._sock, self.info, self.server = sock, info, shown
        self.max_payload = int(info.get("max_payload", self.max_payload))
        self._pending_in = reader.rest

    def _tls(self, sock: socket.socket, host: str, shown: str) -> ssl.SSLSocket:
        ctx = ssl.create_default_context(cafile=self.options.ca_file)
        if self.options.cert_file:
            ctx.load_cert_chain(self.options.cert_file, self.options.key_file)
        try:
            return ctx.wrap_socket(sock, server_hostname=host)
        except (ssl.SSLError, OSError) as exc:
            raise ConnectError(f"{shown}: TLS handshake failed: {exc}") from None

    # --- sending ------------------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        with self._lock:
            if self._closed.is_set():
                raise ConnectionClosed(self.error or "the connection is closed")
            pending = len(self._out) - self._out_pos
            if pending + len(data) > MAX_PENDING_OUT:
                raise Backpressure(f"{pending} bytes wait to be sent to {self.server}")
            wake = not pending
            self._out += data
        if wake:
            try:
                os.write(self._wake_w, b"w")
            except BlockingIOError:
                pass

    def publish(self, subject: str, data: bytes, reply: str | None = None,
                headers: dict[str, str] | None = None) -> None:
        if len(data) > self.max_payload:
            raise NatsError(f"a message of {len(data)} bytes exceeds the server's max_payload {self.max_payload}")
        mid = f"{subject} {reply} " if reply else f"{subject} "
        if headers:
            head = encode_headers(headers)
            self._send(f"HPUB {mid}{len(head)} {len(head) + len(data)}\r\n".encode() + head + data + b"\r\n")
        else:
            self._send(f"PUB {mid}{len(data)}\r\n".encode() + data + b"\r\n")

    def subscribe(self, subject: str, callback: Callable[[Msg], None], queue: str | None = None) -> int:
        with self._lock:
            sid = self._next_sid
            self._next_sid += 1
            self._subs[sid] = callback
        self._send(f"SUB {subject} {queue + ' ' if queue else ''}{sid}\r\n".encode())
        return sid

    def unsubscribe(self, sid: int) -> None:
        with self._lock:
            self._subs.pop(sid, None)
        self._send(f"UNSUB {sid}\r\n".encode())

    def new_inbox(self) -> str:
        """A reply subject under this connection's inbox; responses go to ``expect``/``request``."""
        if self._inbox_sid is None:
            self._inbox_sid = self.subscribe(self._inbox_prefix + ".*", self._on_reply)
        return f"{self._inbox_prefix}.{secrets.token_hex(8)}"

    def expect(self, inbox: str, callback: Callable[[Msg], None]) -> None:
        """Call ``callback`` (on the I/O thread) with the first message to ``inbox``."""
        with self._lock:
            self._replies[inbox] = callback

    def forget(self, inbox: str) -> None:
        with self._lock:
            self._replies.pop(inbox, None)

    def _on_reply(self, msg: Msg) -> None:
        with self._lock:
            target = self._replies.pop(msg.subject, None)
        if isinstance(target, _Slot):
            target.msg = msg
            target.event.set()
        elif target is not None:
            target(msg)

    def request(self, subject: str, data: bytes, timeout: float, headers: dict[str, str] | None = None) -> Msg:
        inbox = self.new_inbox()
        slot = _Slot()
        with self._lock:
            self._replies[inbox] = slot
        try:
            self.publish(subject, data, inbox, headers)
            if not self._wait(slot.event, timeout):
                raise Timeout(f"no answer to {subject} within {timeout:g} s")
        finally:
            self.forget(inbox)
        assert slot.msg is not None
        if slot.msg.status == 503:
            raise NoResponders(f"no responders on {subject}")
        return slot.msg

    def flush(self, timeout: float) -> None:
        """Return once the server has processed everything sent so far (a PING/PONG round trip)."""
        pong = threading.Event()
        with self._lock:
            self._pongs.append(pong)
        self._send(b"PING\r\n")
        if not self._wait(pong, timeout):
            raise Timeout(f"no PONG from {self.server} within {timeout:g} s")

    def _wait(self, event: threading.Event, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not event.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._closed.is_set():
                raise ConnectionClosed(self.error or "the connection is closed")
            if time.monotonic() >= deadline:
                return False
        return True

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def pending_out(self) -> int:
        return len(self._out) - self._out_pos

    def close(self) -> None:
        """Send what is queued (briefly), then close; safe to call more than once."""
        if self._thread is None:
            self._close_fds()
            return
        if not self._closed.is_set():
            deadline = time.monotonic() + 1.0
            while self.pending_out and not self._closed.is_set() and time.monotonic() < deadline:
                time.sleep(0.005)
            self._shutdown(None)
        if self._thread is not threading.current_thread():
            self._thread.join(5)

    # --- the I/O thread -----------------------------------------------------------------------
    def _shutdown(self, error: str | None) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self.error = error
            self._closed.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _close_fds(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None                     # connect() set it before starting this thread
        buf = bytearray(self._pending_in)
        next_ping = time.monotonic() + PING_INTERVAL_S
        outstanding = 0
        error = None
        try:
            while not self._closed.is_set():
                now = time.monotonic()
                if now >= next_ping:
                    if outstanding >= MAX_OUTSTANDING_PINGS:
                        raise ConnectionClosed(f"{self.server} did not answer {outstanding} pings: connection "
                                               "considered dead")
                    outstanding += 1
                    with self._lock:
                        self._out += b"PING\r\n"
                        self._pongs.append(None)   # a keep-alive ping: its PONG wakes no one
                    next_ping = now + PING_INTERVAL_S
                wants_write = len(self._out) > self._out_pos
                readable = isinstance(sock, ssl.SSLSocket) and sock.pending()
                if not readable:
                    fd = sock.fileno()
                    r, w, _ = select.select([fd, self._wake_r], [fd] if wants_write else [], [],
                                            max(0.0, next_ping - time.monotonic()))
                    if self._wake_r in r:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    readable = fd in r
                    if fd in w:
                        self._write(sock)
                elif wants_write:
                    self._write(sock)
                if readable:
                    data = self._read(sock)
                    if data is None:
                        continue
                    if not data:
                        raise ConnectionClosed(f"{self.server} closed the connection")
                    self.bytes_in += len(data)
                    buf += data
                    outstanding = self._parse(buf, outstanding)
        except ConnectionClosed as exc:
            error = str(exc)
        except (OSError, ValueError, ssl.SSLError) as exc:
            error = f"{self.server}: connection lost: {exc}"
        finally:
            if error is not None:
                self._shutdown(error)
            try:  # a polite goodbye is not needed: the server notices the closed socket
                sock.close()
            except OSError:
                pass
            with self._lock:
                pongs, self._pongs = self._pongs, []
            for pong in pongs:
                if pong is not None:
                    pong.set()    # waiters see the closed flag
            for fd in (self._wake_r, self._wake_w):
                try:
                    os.close(fd)
                except OSError:
                    pass
            if self.on_close is not None:
                self.on_close(self.error)

    def _write(self, sock) -> None:
        with self._lock:
            chunk = bytes(self._out[self._out_pos:self._out_pos + READ_CHUNK])
        try:
            sent = sock.send(chunk)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            return
        self.bytes_out += sent
        with self._lock:
            self._out_pos += sent
            if self._out_pos >= len(self._out):
                self._out.clear()
                self._out_pos = 0
            elif self._out_pos >= 1 << 20:
                del self._out[:self._out_pos]
                self._out_pos = 0

    @staticmethod
    def _read(sock) -> bytes | None:
        try:
            return sock.recv(READ_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return None

    def _parse(self, buf: bytearray, outstanding: int) -> int:
        """Handle every complete operation in ``buf``, then drop them from it at once (deleting each
        from the front would move the rest of a many-megabyte burst once per message); returns the
        outstanding pings."""
        pos = 0
        try:
            while True:
                end = buf.find(b"\r\n", pos)
                if end < 0:
                    if len(buf) - pos > MAX_CONTROL_LINE:
                        raise ConnectionClosed(f"{self.server}: a control line over {MAX_CONTROL_LINE} bytes")
                    return outstanding
                line = bytes(buf[pos:end])
                op = line[:4].upper()
                if op in (b"MSG ", b"HMSG"):
                    args = line.split()
                    hdr_len = 0
                    try:
                        if op == b"MSG ":
                            subject, sid, size = args[1], int(args[2]), int(args[-1])
                            reply = args[3] if len(args) == 5 else b""
                        else:
                            subject, sid, reply = args[1], int(args[2]), (args[3] if len(args) == 6 else b"")
                            hdr_len, size = int(args[-2]), int(args[-1])
                    except (IndexError, ValueError):
                        raise ConnectionClosed(f"{self.server}: malformed {line[:80]!r}") from None
                    if size > max(self.max_payload, 1) + 64 * 1024 or hdr_len > size:
                        raise ConnectionClosed(f"{self.server}: a message of {size} bytes exceeds max_payload")
                    if len(buf) < end + 2 + size + 2:
                        return outstanding              # the rest of the message has not arrived yet
                    body = bytes(buf[end + 2:end + 2 + size])
                    pos = end + 2 + size + 2
                    msg = Msg(subject.decode("utf-8", "replace"), reply.decode("utf-8", "replace"), body[hdr_len:])
                    if hdr_len:
                        msg.headers, msg.status, msg.description = parse_headers(body[:hdr_len])
                    with self._lock:
                        callback = self._subs.get(sid)
                    if callback is not None:
                        callback(msg)
                    continue
                pos = end + 2
                if line == b"PING":
                    with self._lock:
                        self._out += b"PONG\r\n"
                elif line == b"PONG":
                    with self._lock:
                        pong = self._pongs.pop(0) if self._pongs else None
                    if pong is None:
                        outstanding = max(0, outstanding - 1)
                    else:
                        pong.set()
                elif line.startswith(b"-ERR"):
                    text = line[4:].strip().decode("utf-8", "replace")
                    # permission errors leave the connection up; anything else ends it (the server closes)
                    if "permissions violation" not in text.lower():
                        raise ConnectionClosed(f"{self.server}: server error: {text}")
                    self.error = text
                elif line.startswith(b"INFO "):
                    try:
                        self.info.update(json.loads(line[5:]))
                    except ValueError:
                        pass
                # +OK (verbose is off) and anything unknown: ignored
        finally:
            del buf[:pos]


class _LineReader:
    """Blocking line reads during the handshake; keeps whatever followed the last line."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.rest = b""

    def line(self, timeout: float) -> bytes:
        self.sock.settimeout(timeout)
        while b"\r\n" not in self.rest:
            if len(self.rest) > MAX_CONTROL_LINE:
                raise ConnectError("a line over the size limit during the handshake")
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise ConnectError(f"no answer within {timeout:g} s during the handshake") from None
            if not chunk:
                raise ConnectError("the server closed the connection during the handshake")
            self.rest += chunk
        line, _, self.rest = self.rest.partition(b"\r\n")
        return line
