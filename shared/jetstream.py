"""syswatch on NATS JetStream: subject names, the stream's limits, publish acks and the pull consumer
(JetStream's JSON API over shared/natsclient.py; standard library only). Used by the bridge
(subscribers/nats_bridge.py) and the API's NATS ingest; the root collector never imports it.

Subjects: ``syswatch.<host>.<topic>``, e.g. ``syswatch.node-1.syscall.read``, ``syswatch.node-1.status``,
``syswatch.node-1.bridge`` (the bridge's own counters). The payload is the wire protocol's payload frame,
byte for byte; the topic frame is the subject's tail. A host name is one subject token: ``.`` is written
``_`` and any other character that cannot be in a token (space, ``*``, ``>``, ``%``, non-ASCII, ...) as
``%XX`` per UTF-8 byte (``host_token``). Users filter with subject wildcards:
``syswatch.*.syscall.>`` (every event), ``syswatch.node-1.>`` (one host).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import re
import secrets
import time

from syswatch.shared.config import add_option
from syswatch.shared.natsclient import (
    ConnectError,
    Connection,
    Msg,
    NatsError,
    NoResponders,
    Options,
    Timeout,
    check_url,
)

PREFIX = "syswatch"
DEFAULT_STREAM = "SYSWATCH"
DEFAULT_CONSUMER = "syswatch-api"
API_TIMEOUT_S = 5.0
MSG_ID_HEADER = "Nats-Msg-Id"      # JetStream drops a message whose id it stored within duplicate_window
_TOKEN_OK = re.compile(r"[A-Za-z0-9_-]")
_STREAM_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class JetStreamError(NatsError):
    """An error JetStream answered with (its description and codes in the text)."""

    def __init__(self, text: str, code: int = 0, err_code: int = 0):
        super().__init__(text)
        self.code, self.err_code = code, err_code


# --- subjects -----------------------------------------------------------------------------------
def host_token(host: str) -> str:
    """``host`` as one subject token: ``.`` -> ``_``, other characters a token cannot hold -> ``%XX``."""
    out = []
    for ch in host:
        if _TOKEN_OK.fullmatch(ch):
            out.append(ch)
        elif ch == ".":
            out.append("_")
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
    return "".join(out) or "%"


def subject(host: str, topic: str) -> str:
    return f"{PREFIX}.{host_token(host)}.{topic}"


def split_subject(subj: str) -> tuple[str, str] | None:
    """(host token, topic) of a ``syswatch.<host>.<topic>`` subject, None for any other subject."""
    head, sep, rest = subj.partition(".")
    token, sep2, topic = rest.partition(".")
    if head != PREFIX or not sep or not sep2 or not token or not topic:
        return None
    return token, topic


# --- settings shared by the bridge and the API --------------------------------------------------
def add_flags(p: argparse.ArgumentParser, required: bool) -> None:
    """--nats and the authentication/TLS options (each with its environment variable)."""
    add_option(p, "--nats", env="SYSWATCH_NATS", default=None, type=check_url, metavar="URL",
               help="NATS server URL(s), nats://HOST:4222 or tls://HOST:4222, comma separated for a cluster"
                    + ("" if required else "; consume events from JetStream (beside or instead of --collector)"))
    add_option(p, "--nats-user", env="SYSWATCH_NATS_USER", default=None, metavar="NAME",
               help="NATS user (password: --nats-password-file or SYSWATCH_NATS_PASSWORD)")
    add_option(p, "--nats-password-file", env="SYSWATCH_NATS_PASSWORD_FILE", default=None, metavar="FILE",
               help="file holding the NATS user's password; beats SYSWATCH_NATS_PASSWORD (the password itself)")
    add_option(p, "--nats-token-file", env="SYSWATCH_NATS_TOKEN_FILE", default=None, metavar="FILE",
               help="file holding a NATS authentication token; beats SYSWATCH_NATS_TOKEN (the token itself)")
    add_option(p, "--nats-nkey", env="SYSWATCH_NATS_NKEY", default=None, metavar="FILE",
               help="file holding an nkey seed (SU...): nkey authentication (needs python3-cryptography)")
    add_option(p, "--nats-ca", env="SYSWATCH_NATS_CA", default=None, metavar="FILE",
               help="CA certificate(s) the NATS server's TLS certificate must chain to (turns TLS on)")
    add_option(p, "--nats-cert", env="SYSWATCH_NATS_CERT", default=None, metavar="FILE",
               help="TLS client certificate, for servers that verify clients (key: --nats-key)")
    add_option(p, "--nats-key", env="SYSWATCH_NATS_KEY", default=None, metavar="FILE",
               help="TLS client certificate's private key")
    add_option(p, "--nats-stream", env="SYSWATCH_NATS_STREAM", default=DEFAULT_STREAM, type=stream_name,
               metavar="NAME", help="the JetStream stream holding syswatch's subjects")


def stream_name(text: str) -> str:
    if not _STREAM_NAME.fullmatch(text):
        raise ValueError(f"{text!r}: a stream or consumer name is 1-64 letters, digits, - or _")
    return text


class SettingsError(ValueError):
    """A NATS setting that cannot work (unreadable file, a key without its certificate, ...)."""


def _secret(path: str | None, env: str, what: str) -> str | None:
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read {what} {path}: {exc}") from None
        if not value:
            raise SettingsError(f"{what} {path} is empty")
        return value
    return os.environ.get(env) or None


def options(args: argparse.Namespace, name: str) -> Options:
    """Connection options from parsed flags; SettingsError says what is wrong."""
    for path, flag in ((args.nats_nkey, "--nats-nkey"), (args.nats_ca, "--nats-ca"),
                       (args.nats_cert, "--nats-cert"), (args.nats_key, "--nats-key")):
        if path and not os.access(path, os.R_OK):
            raise SettingsError(f"{flag} {path}: no such file, or not readable")
    if bool(args.nats_cert) != bool(args.nats_key):
        raise SettingsError("--nats-cert and --nats-key go together (a client certificate and its key)")
    return Options(servers=tuple(u.strip() for u in args.nats.split(",") if u.strip()),
                   user=args.nats_user,
                   password=_secret(args.nats_password_file, "SYSWATCH_NATS_PASSWORD", "--nats-password-file"),
                   token=_secret(args.nats_token_file, "SYSWATCH_NATS_TOKEN", "--nats-token-file"),
                   nkey_seed_file=args.nats_nkey, ca_file=args.nats_ca, cert_file=args.nats_cert,
                   key_file=args.nats_key, name=name)


# --- the JSON API ---------------------------------------------------------------------------------
def api(conn: Connection, what: str, body: dict | None = None, timeout: float = API_TIMEOUT_S) -> dict:
    """One JetStream API call (``$JS.API.<what>``); its JSON answer, or JetStreamError."""
    try:
        msg = conn.request(f"$JS.API.{what}", json.dumps(body).encode() if body is not None else b"", timeout)
    except NoResponders:
        raise JetStreamError("JetStream is not enabled on this NATS server (or not for this account): "
                             "start nats-server with -js (jetstream {} in its configuration)") from None
    try:
        answer = json.loads(msg.data)
    except ValueError:
        raise JetStreamError(f"$JS.API.{what}: an answer that is not JSON: {msg.data[:80]!r}") from None
    err = answer.get("error")
    if err:
        raise JetStreamError(f"{what.split('.')[0].lower()} {what}: {err.get('description', err)}",
                             err.get("code", 0), err.get("err_code", 0))
    return answer


STREAM_NOT_FOUND = 10059
CONSUMER_NOT_FOUND = 10014


@dataclasses.dataclass(frozen=True)
class StreamLimits:
    """The stream's limits, chosen on purpose (docs/DEPLOY.md, "NATS JetStream"): limits retention
    (every consumer reads everything until age or size removes it), discard ``new`` (a full stream
    refuses new messages, which the bridge counts, instead of deleting stored ones a lagging API has
    not read yet), duplicate window for the bridge's retries."""
    max_bytes: int = 1 << 30
    max_age_s: float = 3600.0
    discard: str = "new"
    replicas: int = 1
    duplicate_window_s: float = 120.0

    def config(self, name: str) -> dict:
        return {"name": name, "subjects": [f"{PREFIX}.>"], "retention": "limits", "storage": "file",
                "max_bytes": self.max_bytes, "max_age": int(self.max_age_s * 1e9), "discard": self.discard,
                "num_replicas": self.replicas, "max_msgs": -1, "max_msgs_per_subject": -1,
                "max_msg_size": -1, "max_consumers": -1,
                "duplicate_window": int(min(self.duplicate_window_s, self.max_age_s) * 1e9)}


def ensure_stream(conn: Connection, name: str, limits: StreamLimits) -> str:
    """Create the stream, or update it where its limits differ from ``limits``: "created", "updated"
    or "unchanged"."""
    want = limits.config(name)
    try:
        have = api(conn, f"STREAM.INFO.{name}")["config"]
    except JetStreamError as exc:
        if exc.err_code != STREAM_NOT_FOUND:
            raise
        api(conn, f"STREAM.CREATE.{name}", want)
        return "created"
    if all(have.get(k) == v for k, v in want.items()):
        return "unchanged"
    api(conn, f"STREAM.UPDATE.{name}", {**have, **want})
    return "updated"


def stream_info(conn: Connection, name: str) -> dict:
    return api(conn, f"STREAM.INFO.{name}")


# --- publishing (the bridge) ---------------------------------------------------------------------
def pub_ack(msg: Msg) -> tuple[int | None, bool, str]:
    """(stream sequence or None, duplicate, error text) of a publish acknowledgement."""
    if msg.status == 503:
        return None, False, "no stream takes this subject (JetStream answered: no responders)"
    try:
        answer = json.loads(msg.data)
    except ValueError:
        return None, False, f"an acknowledgement that is not JSON: {msg.data[:60]!r}"
    if "error" in answer:
        return None, False, str(answer["error"].get("description", answer["error"]))
    return answer.get("seq"), bool(answer.get("duplicate")), ""


# --- consuming (the API) -------------------------------------------------------------------------
def ensure_consumer(conn: Connection, stream: str, durable: str, max_ack_pending: int = 1000,
                    ack_wait_s: float = 30.0) -> dict:
    """The durable pull consumer ``durable`` on ``stream`` (created if missing): explicit acks, every
    message of the stream from the first one still kept. Replicas that use the same name share it
    (each message goes to one of them); another name reads everything again."""
    try:
        return api(conn, f"CONSUMER.INFO.{stream}.{durable}")
    except JetStreamError as exc:
        if exc.err_code not in (CONSUMER_NOT_FOUND, STREAM_NOT_FOUND):
            raise
        if exc.err_code == STREAM_NOT_FOUND:
            raise JetStreamError(f"stream {stream} does not exist yet: a bridge creates it when it starts "
                                 "(syswatch-nats-bridge)", exc.code, exc.err_code) from None
    return api(conn, f"CONSUMER.DURABLE.CREATE.{stream}.{durable}", {
        "stream_name": stream,
        "config": {"durable_name": durable, "deliver_policy": "all", "ack_policy": "explicit",
                   "ack_wait": int(ack_wait_s * 1e9), "max_deliver": -1, "filter_subject": f"{PREFIX}.>",
                   "replay_policy": "instant", "max_ack_pending": max_ack_pending, "max_waiting": 512}})


@dataclasses.dataclass(frozen=True)
class AckInfo:
    stream_seq: int
    consumer_seq: int
    delivered: int      # 1 the first time, more when redelivered
    pending: int        # messages left for the consumer after this one


def ack_info(reply: str) -> AckInfo | None:
    """What a JetStream message's reply subject ($JS.ACK...) says, None if it is not one."""
    t = reply.split(".")
    if len(t) == 9 and t[:2] == ["$JS", "ACK"]:
        nums = t[4:7] + t[8:9]
    elif len(t) >= 12 and t[:2] == ["$JS", "ACK"]:
        nums = t[6:9] + t[10:11]
    else:
        return None
    try:
        delivered, sseq, cseq, pending = (int(x) for x in nums)
    except ValueError:
        return None
    return AckInfo(sseq, cseq, delivered, pending)


class PullConsumer:
    """Fetches batches from a durable pull consumer over one connection; ack each message after use."""

    def __init__(self, conn: Connection, stream: str, durable: str):
        self.conn, self.stream, self.durable = conn, stream, durable
        self.inbox = f"_INBOX.{secrets.token_hex(11)}"
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._sid = conn.subscribe(self.inbox, self._queue.put)

    def fetch(self, batch: int, expires_s: float) -> list[Msg]:
        """Up to ``batch`` messages, waiting at most ``expires_s`` for the first ones."""
        body = json.dumps({"batch": batch, "expires": int(expires_s * 1e9)}).encode()
        self.conn.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self.durable}", body, self.inbox)
        out: list[Msg] = []
        deadline = time.monotonic() + expires_s + 2.0     # the server's 408 ends the request first
        while len(out) < batch:
            try:
                msg = self._queue.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            except queue.Empty:
                if self.conn.closed:
                    raise ConnectError(self.conn.error or "connection closed")
                if time.monotonic() >= deadline:
                    break
                continue
            if msg.status is None:
                out.append(msg)
            elif msg.status in (404, 408):          # no messages / the request expired: done
                break
            elif msg.status == 409:                 # e.g. the consumer was deleted, or too many waiting
                raise JetStreamError(f"pull from {self.stream}/{self.durable}: {msg.description or '409'}", 409)
            # 100 (heartbeat) and other statuses: ignored
        return out

    def ack(self, msg: Msg) -> None:
        self.conn.publish(msg.reply, b"+ACK")

    def close(self) -> None:
        try:
            self.conn.unsubscribe(self._sid)
        except NatsError:
            pass


__all__ = ["JetStreamError", "StreamLimits", "PullConsumer", "Timeout", "ack_info", "api", "ensure_consumer",
           "ensure_stream", "host_token", "options", "pub_ack", "split_subject", "subject"]
