"""NATS JetStream for real: Debian's nats-server on a free port with JetStream on a temporary store.

shared/natsclient.py + shared/jetstream.py against it (acks, duplicates, pull consumer, user/password,
token, nkey and TLS), read back by nats-py, the official client; and the real syswatch-nats-bridge
fed by a ZeroMQ publisher speaking the wire protocol: payloads stored byte for byte, and every event
either published or counted (NATS stopped for 10 s, a full stream)."""
from __future__ import annotations

import json
import secrets
import subprocess
import time

import pytest

from harness.api import Publisher, event
from harness.nats import BridgeProcess, NatsServer, publish_raw, stream_messages
from harness.procs import free_port, wait_for
from syswatch.shared import jetstream, natsclient, protocol
from tests.conftest import require_nats_server

pytestmark = pytest.mark.usefixtures("nats_installed")


@pytest.fixture
def nats_installed():
    require_nats_server()


@pytest.fixture
def nats_server(tmp_path, nats_installed):
    with NatsServer(tmp_path) as srv:
        yield srv


def connect(url: str, **opts) -> natsclient.Connection:
    return natsclient.Connection(natsclient.Options(servers=(url,), **opts)).connect()


def test_publish_acks_duplicates_and_pull_consumer_agree_with_nats_py(nats_server):
    conn = connect(nats_server.url)
    try:
        assert jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits()) == "created"
        assert jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits()) == "unchanged"
        assert jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits(max_age_s=600)) == "updated"
        acks = {}
        sent = []
        for i in range(40):
            data = json.dumps({"v": 2, "i": i, "pad": "x" * i}).encode()
            subj = jetstream.subject(f"host-{i % 2}.example", "syscall.read")
            inbox = conn.new_inbox()
            conn.expect(inbox, lambda m, i=i: acks.__setitem__(i, jetstream.pub_ack(m)))
            msg_id = f"id-{i % 30}"                 # the last 10 repeat earlier ids: stored once
            conn.publish(subj, data, inbox, {jetstream.MSG_ID_HEADER: msg_id})
            if i < 30:
                sent.append((subj, data, msg_id))
        wait_for(lambda: len(acks) == 40, 10, what="40 acknowledgements")
        assert [acks[i][0] for i in range(30)] == list(range(1, 31))
        assert all(acks[i][1] and acks[i][0] == i - 29 for i in range(30, 40)), "duplicates name the stored copy"
        # nats-py reads exactly what was published, headers included
        stored = stream_messages(nats_server.url)
        assert [(s, d, h.get("Nats-Msg-Id")) for _, s, h, d in stored] == sent
        # our pull consumer: every message once, then nothing
        jetstream.ensure_consumer(conn, "SYSWATCH", "t")
        puller = jetstream.PullConsumer(conn, "SYSWATCH", "t")
        got = []
        while len(got) < 30:
            batch = puller.fetch(7, 2.0)
            assert batch, f"pull stopped after {len(got)} of 30"
            for m in batch:
                got.append((m.subject, m.data))
                puller.ack(m)
        assert got == [(s, d) for s, d, _ in sent]
        started = time.monotonic()
        assert puller.fetch(5, 0.5) == [] and time.monotonic() - started < 5
        info = jetstream.api(conn, "CONSUMER.INFO.SYSWATCH.t")
        assert info["num_pending"] == 0 and info["ack_floor"]["stream_seq"] == 30
    finally:
        conn.close()


def test_no_stream_and_no_jetstream_are_told_apart(tmp_path):
    with NatsServer(tmp_path, extra="") as srv:
        conn = connect(srv.url)
        try:
            with pytest.raises(jetstream.JetStreamError, match="does not exist yet"):
                jetstream.ensure_consumer(conn, "SYSWATCH", "api")
        finally:
            conn.close()
    plain = tmp_path / "plain"
    plain.mkdir()
    srv = NatsServer(plain)
    srv.config.write_text(f"listen: 127.0.0.1:{srv.port}\n")        # no jetstream block
    srv.log.write_text("")
    with srv:
        conn = connect(srv.url)
        try:
            with pytest.raises(jetstream.JetStreamError, match="JetStream is not enabled"):
                jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits())
        finally:
            conn.close()


def test_user_password_nkey_and_token_authentication(tmp_path):
    seed = natsclient.nkey_encode_seed(secrets.token_bytes(32))
    seed_file = tmp_path / "bridge.nk"
    seed_file.write_text(seed + "\n")
    users = tmp_path / "users"
    users.mkdir()
    extra = ('authorization { users = [ {user: "bridge", password: "pw-1"}, '
             f'{{nkey: "{natsclient.nkey_public(seed)}"}} ] }}\n')
    with NatsServer(users, extra=extra) as srv:
        connect(srv.url, user="bridge", password="pw-1").close()
        connect(srv.url.replace("nats://", "nats://bridge:pw-1@")).close()
        connect(srv.url, nkey_seed_file=str(seed_file)).close()
        with pytest.raises(natsclient.ConnectError, match="Authorization Violation"):
            connect(srv.url, user="bridge", password="wrong")
        other = tmp_path / "other.nk"
        other.write_text(natsclient.nkey_encode_seed(secrets.token_bytes(32)))
        with pytest.raises(natsclient.ConnectError, match="Authorization Violation"):
            connect(srv.url, nkey_seed_file=str(other))
        with pytest.raises(natsclient.ConnectError, match="refused"):
            connect(srv.url)
    token = tmp_path / "token"
    token.mkdir()
    with NatsServer(token, extra='authorization { token: "t0ken" }\n') as srv:
        connect(srv.url, token="t0ken").close()
        connect(srv.url.replace("nats://", "nats://t0ken@")).close()
        with pytest.raises(natsclient.ConnectError, match="Authorization Violation"):
            connect(srv.url, token="nope")


def make_certs(tmp) -> dict:
    def run(*args):
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=syswatch test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (tmp / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext")
    return {name: str(tmp / name) for name in ("ca.pem", "server.pem", "server.key")}


def test_tls_with_the_servers_ca_and_refused_without(tmp_path):
    certs = make_certs(tmp_path)
    extra = f'tls {{ cert_file: "{certs["server.pem"]}", key_file: "{certs["server.key"]}" }}\n'
    with NatsServer(tmp_path, extra=extra, scheme="tls") as srv:
        conn = connect(srv.url, ca_file=certs["ca.pem"])
        try:
            assert jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits()) == "created"
            assert conn._sock.version().startswith("TLS")
        finally:
            conn.close()
        with pytest.raises(natsclient.ConnectError, match="certificate verify failed"):
            connect(srv.url)               # the system's CAs do not know the test CA
        with pytest.raises(natsclient.ConnectError, match="certificate verify failed"):
            connect(srv.url.replace("tls://", "nats://"))   # the server requires TLS: it is used anyway


# --- the bridge ---------------------------------------------------------------------------------
def batches(pub: Publisher, n: int, size: int, pid: int, start: int = 0) -> int:
    """Send ``n`` batches of ``size`` write events of ``pid`` (counts numbered from ``start``), paced so
    that ZeroMQ drops nothing; returns the events sent."""
    for b in range(n):
        pub.events([event(pid=pid, count=start + b * size + k) for k in range(size)])
        time.sleep(0.002)
    return n * size


def stored_events(url: str, pid: int) -> list[int]:
    counts = []
    for _, subj, _, data in stream_messages(url):
        if subj.endswith(".syscall.write"):
            counts += [e["count"] for e in protocol.decode([b"syscall.write", data]).events if e["pid"] == pid]
    return counts


def joined(bridge: BridgeProcess, pub: Publisher) -> None:
    """ZeroMQ's slow joiner: status messages until the bridge has published one."""
    def seen():
        pub.status()
        return bridge.metrics().get(("syswatch_bridge_published_messages_total", None), 0) > 0
    wait_for(seen, 30, 0.1, f"the bridge to publish the publisher's status:\n{bridge.output()[-2000:]}")


def test_bridge_stores_every_message_unchanged_with_its_status(nats_server, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, host="node-1.example")
    bridge = BridgeProcess(tmp_path, endpoint, nats_server.url, "--stream-max-age", "10m")
    try:
        joined(bridge, pub)
        sent_frames = []
        orig = pub.sock.send_multipart
        pub.sock.send_multipart = lambda frames, *a: (sent_frames.append(list(frames)), orig(frames, *a))[1]
        sent = batches(pub, 50, 20, pid=777)
        pub.sock.send_multipart = orig
        wait_for(lambda: bridge.metrics().get(("syswatch_bridge_published_events_total", None), 0) >= sent,
                 30, 0.2, f"{sent} events published:\n{bridge.output()[-2000:]}")
        stored = stream_messages(nats_server.url)
        by_payload = {d: s for _, s, _, d in stored}
        for topic, payload in sent_frames:
            assert by_payload.get(payload) == f"syswatch.node-1_example.{topic.decode()}", "stored byte for byte"
        assert stored_events(nats_server.url, 777) == list(range(sent))
        ids = [h.get("Nats-Msg-Id") for _, s, h, _ in stored if ".syscall." in s]
        assert len(set(ids)) == len(ids) and all(ids)
        # its own counters, on NATS for the API, every second
        wait_for(lambda: any(s == "syswatch.node-1_example.bridge" for _, s, _, _ in stream_messages(nats_server.url)),
                 10, 0.2, "a bridge status")
        last = [d for _, s, _, d in stream_messages(nats_server.url) if s.endswith(".bridge")][-1]
        st = protocol.decode([b"bridge", last]).payload
        assert st["host"] == "node-1.example" and st["nats_connected"] and st["unpublished_events"] == 0
        m = bridge.metrics()
        assert m[("syswatch_bridge_nats_connected", None)] == 1
        assert all(m[("syswatch_bridge_unpublished_events_total", r)] == 0 for r in protocol.BRIDGE_LOSS_REASONS)
    finally:
        assert bridge.stop() == 0, bridge.output()[-2000:]
        pub.close()


def test_nats_stopped_for_10_s_the_bridge_counts_what_it_could_not_publish_and_resumes(tmp_path):
    srv = NatsServer(tmp_path).start()
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, host="node-2")
    bridge = BridgeProcess(tmp_path, endpoint, srv.url, "--queue-mb", "1")
    try:
        joined(bridge, pub)
        sent = batches(pub, 20, 50, pid=888)
        wait_for(lambda: bridge.metrics()[("syswatch_bridge_published_events_total", None)] >= sent, 30, 0.2,
                 "the first events published")
        srv.stop()
        stopped = time.monotonic()
        # ~1 MiB of queue: the ~9 KB batches of 50 events fill it after ~115 of them
        while time.monotonic() - stopped < 10:
            sent += batches(pub, 25, 50, pid=888, start=sent)
        wait_for(lambda: bridge.metrics()[("syswatch_bridge_nats_connected", None)] == 0, 10, 0.2,
                 "the bridge to notice")
        srv.start()
        m = wait_for(lambda: (lambda m: m if m[("syswatch_bridge_nats_connected", None)] == 1
                              and m[("syswatch_bridge_queued_messages", None)] == 0 else None)(bridge.metrics()),
                     60, 0.2, f"the bridge to reconnect and empty its queue:\n{bridge.output()[-3000:]}")
        sent += batches(pub, 10, 50, pid=888, start=sent)          # and it goes on publishing
        def settled():
            m = bridge.metrics()
            return m if (m[("syswatch_bridge_published_events_total", None)]
                         + m[("syswatch_bridge_unpublished_events_total", "queue_full")]) >= sent else None
        m = wait_for(settled, 30, 0.2, "every event published or counted")
        published = m[("syswatch_bridge_published_events_total", None)]
        lost = m[("syswatch_bridge_unpublished_events_total", "queue_full")]
        assert published + lost == sent and lost > 0 and published > 0, m
        assert sum(m[("syswatch_bridge_unpublished_events_total", r)] for r in protocol.BRIDGE_LOSS_REASONS) == lost
        assert m[("syswatch_bridge_reconnects_total", None)] >= 1
        stored = stored_events(srv.url, 888)
        assert len(stored) == published and len(set(stored)) == len(stored), "stored once each, nothing else"
        assert "lost the NATS connection" in bridge.output() and "NATS unavailable" in bridge.output()
    finally:
        bridge.stop()
        pub.close()
        srv.stop()


def test_a_full_stream_refuses_new_messages_and_the_bridge_counts_them(nats_server, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, host="node-3")
    bridge = BridgeProcess(tmp_path, endpoint, nats_server.url, "--stream-max-bytes", "1MiB")
    try:
        joined(bridge, pub)
        sent = batches(pub, 300, 50, pid=999)        # ~2.7 MB of payload into a 1 MiB stream
        def settled():
            m = bridge.metrics()
            done = (m[("syswatch_bridge_published_events_total", None)]
                    + m[("syswatch_bridge_unpublished_events_total", "stream_full")])
            return m if done >= sent else None
        m = wait_for(settled, 60, 0.2, f"every event published or counted:\n{bridge.output()[-2000:]}")
        published = m[("syswatch_bridge_published_events_total", None)]
        full = m[("syswatch_bridge_unpublished_events_total", "stream_full")]
        assert published + full == sent and full > 0, m
        assert len(stored_events(nats_server.url, 999)) == published
    finally:
        bridge.stop()
        pub.close()


def test_hostile_client_messages_are_only_what_nats_py_put_there(nats_server):
    """The other direction of the trust: the stream takes anything a permitted client publishes, so the
    API's validator (tests/test_nats_fleet.py) is what refuses it; here the raw messages land as sent."""
    conn = connect(nats_server.url)
    try:
        jetstream.ensure_stream(conn, "SYSWATCH", jetstream.StreamLimits())
    finally:
        conn.close()
    seqs = publish_raw(nats_server.url, [("syswatch.evil.status", b"not json"),
                                         ("syswatch.evil.syscall.read", b'{"v":1}')])
    assert seqs == [1, 2]
    assert [d for _, _, _, d in stream_messages(nats_server.url)] == [b"not json", b'{"v":1}']


def test_api_replicas_with_one_consumer_share_its_messages(nats_server, tmp_path):
    """Two APIs with the same --nats-consumer: each message goes to one of them (the sum is exact, no event
    twice); a third with another name reads everything for itself."""
    from harness.api import ApiProcess
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    pub = Publisher(endpoint, host="shared-node")
    bridge = BridgeProcess(tmp_path, endpoint, nats_server.url)
    apis = [ApiProcess(tmp_path / f"ips{i}.sqlite3", "--nats", nats_server.url, "--nats-consumer", name)
            for i, name in enumerate(("pair", "pair", "alone"))]
    try:
        joined(bridge, pub)
        for api in apis:
            api.start()
        sent = batches(pub, 60, 10, pid=4321)

        def counts(api):
            return [e["count"] for e in api.get("/events?pid=4321&limit=10000").json()["events"]]
        wait_for(lambda: len(counts(apis[0])) + len(counts(apis[1])) >= sent and len(counts(apis[2])) >= sent,
                 60, 0.2, f"{sent} events in the pair and in the third API")
        pair = counts(apis[0]) + counts(apis[1])
        assert sorted(pair) == list(range(sent)), "each event in exactly one of the pair"
        assert sorted(counts(apis[2])) == list(range(sent)), "another consumer name reads everything"
    finally:
        for api in apis:
            api.stop()
        bridge.stop()
        pub.close()
