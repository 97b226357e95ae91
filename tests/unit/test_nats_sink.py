"""The nats sink against a real `nats-server` with JetStream (no BPF): records arrive exactly
once, a server restart loses and duplicates nothing, what overflows the buffer is counted as a
loss, an unreachable server never slows `write`, and what is left at close is said."""
from __future__ import annotations

import errno
import os
import socket
import threading
import time

import msgspec
import pytest

from orchestrator import safefile
from orchestrator.pipeline import dispatch, events
from orchestrator.profile import models
from orchestrator.sinks import factory
from orchestrator.sinks import nats as nats_sink
from tests.support.nats_server import NatsServer, read_stream
from tests.support.nginx import free_port

ENCODE = msgspec.json.Encoder().encode
SUBJECT = "ecapture.test"
STREAM = "ECAPTURE"


def _records(start: int, n: int, target: str = "t") -> list:
    return [events.Record("bash.command", None, {"profile": "p", "target": target, "command": f"echo {i}"})
            for i in range(start, start + n)]


def _line(record) -> bytes:
    return record.to_json(ENCODE)


def _wait_stream(srv, count: int, timeout: float = 20.0, stream: str = STREAM, **auth) -> list:
    """The stream's messages once it holds at least `count` (what a consumer of the stream sees)."""
    deadline = time.monotonic() + timeout
    msgs: list = []
    while time.monotonic() < deadline:
        try:
            msgs = read_stream(srv.url, stream, **auth)
        except Exception:           # not created yet, or the server restarting
            msgs = []
        if len(msgs) >= count:
            return msgs
        time.sleep(0.2)
    return msgs


class Warnings:
    def __init__(self):
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 15.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        return None


@pytest.fixture
def server():
    with NatsServer() as srv:
        yield srv


@pytest.fixture
def sinks():
    made = []

    def make(*args, **kwargs):
        kwargs.setdefault("warn", Warnings())
        kwargs.setdefault("flush_timeout", 1.0)     # a sink left with records does not hold teardown long
        sink = nats_sink.NatsSink(*args, **kwargs)
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close()
        sink.join(30)


def test_records_arrive_exactly_once_in_order(server, sinks):
    sink = sinks(server.url, SUBJECT, STREAM)
    written = []
    for b in range(40):
        batch = _records(b * 50, 50)
        sink.write(batch)
        written += batch
    msgs = _wait_stream(server, len(written))
    assert [payload for _, payload in msgs] == [_line(r) for r in written]
    ids = [msg_id for msg_id, _ in msgs]
    assert all(ids) and len(set(ids)) == len(ids)
    time.sleep(0.5)                  # nothing more arrives later
    assert len(read_stream(server.url, STREAM)) == len(written)


def test_payload_is_the_jsonl_line(server, sinks, tmp_path):
    from orchestrator.sinks import jsonl
    tmp_path.chmod(0o700)
    sink = sinks(server.url, SUBJECT, STREAM)
    file_sink = jsonl.JsonlSink(str(tmp_path / "out.jsonl"))
    batch = _records(0, 3) + [events.Record("loss", None, {"profile": "p", "target": "t", "stage": "x", "count": 2})]
    sink.write(batch)
    file_sink.write(batch)
    file_sink.close()
    msgs = _wait_stream(server, 4)
    assert b"".join(p + b"\n" for _, p in msgs) == (tmp_path / "out.jsonl").read_bytes()


def test_server_restart_loses_and_duplicates_nothing(server, sinks):
    warnings = Warnings()
    sink = sinks(server.url, SUBJECT, STREAM, warn=warnings)
    written: list = []
    stop = threading.Event()

    def writer():            # keeps writing through the restart, as the dispatcher would
        i = 0
        while not stop.is_set():
            batch = _records(i, 20)
            sink.write(batch)           # the buffer holds everything: never raises here
            written.extend(batch)
            i += 20
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert len(_wait_stream(server, 200)) >= 200
        server.stop()
        assert warnings.wait_for("cannot reach the server"), warnings.lines
        time.sleep(1.0)                 # records written while it is away wait in the buffer
        server.start()                  # the same store: the stream and its duplicate window
        assert warnings.wait_for("connected again"), warnings.lines
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    msgs = _wait_stream(server, len(written))
    time.sleep(0.5)
    msgs = read_stream(server.url, STREAM)
    assert [payload for _, payload in msgs] == [_line(r) for r in written]
    assert len({msg_id for msg_id, _ in msgs}) == len(written)


def test_overflow_while_down_is_counted_exactly(sinks):
    """Through the real dispatcher: the batches that find the buffer full are lost at stage
    sink.nats, told to the other sink as `loss` records; the rest arrive once the server is up."""
    srv = NatsServer()            # not started yet: the port is free, nothing listens
    try:
        sink = sinks(srv.url, SUBJECT, STREAM, buffer_records=100)
        seen: list = []

        class Collect:
            kind = "collect"

            def write(self, records):
                seen.extend(records)

            def close(self):
                pass

        messages: list = []
        d = dispatch.Dispatcher(lambda profile: [sink, Collect()], warn=messages.append)
        kept = []
        for b in range(30):
            batch = _records(b * 10, 10)
            d.process(batch)
            if b < 10:
                kept += batch
        d.flush_all()                     # the loss records go out to the other sink
        assert d.stats.losses == {("p", "t", "sink.nats"): 200}
        assert sum(r.fields["count"] for r in seen if r.type == "loss" and r.fields["stage"] == "sink.nats") == 200
        assert any("sink nats" in m and "buffer full" in m for m in messages), messages
        srv.start()
        msgs = _wait_stream(srv, 100)
        assert [p for _, p in msgs] == [_line(r) for r in kept]
        more = _records(1000, 10)
        d.process(more)                   # the sink writes again: first what it lacks, as a loss record
        msgs = _wait_stream(srv, 111)
        told = msgspec.json.decode(msgs[100][1])
        assert told["type"] == "loss" and told["stage"] == "sink.nats" and told["count"] == 200
        assert [p for _, p in msgs[101:]] == [_line(r) for r in more]
    finally:
        srv.__exit__(None, None, None)


@pytest.mark.parametrize("where", ["silent", "refused"])
def test_unreachable_server_never_slows_write(sinks, where):
    """A server that accepts TCP but never speaks (the slowest way to fail: each attempt waits for
    the connect timeout), or nothing listening at all."""
    if where == "silent":
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"
    else:
        listener = None
        url = f"nats://127.0.0.1:{free_port()}"
    try:
        warnings = Warnings()
        sink = sinks(url, SUBJECT, STREAM, buffer_records=2000, warn=warnings)
        slowest = 0.0
        refused = 0
        deadline = time.monotonic() + 3 * nats_sink.CONNECT_TIMEOUT_S
        b = 0
        while time.monotonic() < deadline:          # through several connection attempts
            batch = _records(b * 50, 50)
            b += 1
            started = time.perf_counter()
            try:
                sink.write(batch)
            except OSError as exc:
                assert exc.errno == errno.ENOBUFS
                refused += 1
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.005)
        assert slowest < 0.05, f"a write took {slowest * 1000:.1f} ms"
        assert refused == b - 40          # 2000 records fit, every later batch is refused whole
        assert warnings.wait_for("cannot reach the server"), warnings.lines
    finally:
        if listener is not None:
            listener.close()


def test_close_sends_what_is_buffered(server, sinks):
    sink = sinks(server.url, SUBJECT, STREAM)
    batch = _records(0, 500)
    sink.write(batch)
    sink.close()
    assert sink.join(15)
    assert [p for _, p in read_stream(server.url, STREAM)] == [_line(r) for r in batch]
    with pytest.raises(OSError):
        sink.write(_records(500, 1))


def test_close_counts_what_cannot_be_sent_in_time(sinks):
    warnings = Warnings()
    sink = sinks(f"nats://127.0.0.1:{free_port()}", SUBJECT, STREAM, flush_timeout=0.5, warn=warnings)
    sink.write(_records(0, 7, target="a") + _records(7, 5, target="b"))
    started = time.monotonic()
    sink.close()
    assert sink.join(10)
    assert time.monotonic() - started < 5
    line = warnings.wait_for("lost", timeout=1)
    assert line and "12 record(s) not sent within 0.5 s of closing" in line and "p/a: 7, p/b: 5" in line, \
        warnings.lines


def test_apply_counts_what_a_sink_could_not_send_at_close_in_its_summary(sinks):
    """ApplySession's shutdown waits for the sink and puts what it lost into the summary's losses."""
    from orchestrator.reconcile import session
    sink = sinks(f"nats://127.0.0.1:{free_port()}", SUBJECT, STREAM, flush_timeout=0.5)
    sink.write(_records(0, 3, target="a") + _records(3, 4, target="b"))
    sink.close()
    d = dispatch.Dispatcher(lambda _p: [])
    fake = type("Session", (), {"dispatcher": d})()
    session.ApplySession._count_lost_at_close(fake, [sink])
    assert dict(d.stats.losses) == {("p", "a", "sink.nats"): 3, ("p", "b", "sink.nats"): 4}


def test_existing_stream_must_take_the_subject(server, sinks):
    import asyncio
    import nats

    async def make_streams():
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="OTHER", subjects=["other.>"])
        await js.add_stream(name="WIDE", subjects=["ecapture.>"])
        await nc.close()

    asyncio.run(make_streams())
    warnings = Warnings()
    wrong = sinks(server.url, SUBJECT, "OTHER", buffer_records=10, warn=warnings)
    wrong.write(_records(0, 10))
    line = warnings.wait_for("does not take subject")
    assert line and "stream OTHER exists but does not take subject ecapture.test" in line
    with pytest.raises(OSError) as err:
        wrong.write(_records(10, 1))
    assert err.value.errno == errno.ENOBUFS and "does not take subject" in str(err.value)

    wide = sinks(server.url, SUBJECT, "WIDE")
    batch = _records(0, 5)
    wide.write(batch)
    assert [p for _, p in _wait_stream(server, 5, stream="WIDE")] == [_line(r) for r in batch]


def test_token_from_a_private_file(tmp_path, sinks):
    tmp_path.chmod(0o700)
    token = "s3cret-token-for-test"
    token_file = tmp_path / "nats.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    with NatsServer(token=token) as srv:
        sink = sinks(srv.url, SUBJECT, STREAM, token_file=str(token_file))
        batch = _records(0, 3)
        sink.write(batch)
        assert [p for _, p in _wait_stream(srv, 3, token=token)] == [_line(r) for r in batch]

        warnings = Warnings()
        wrong_file = tmp_path / "wrong.token"
        wrong_file.write_text("not-the-token\n")
        wrong_file.chmod(0o600)
        wrong = sinks(srv.url, SUBJECT, STREAM, token_file=str(wrong_file), warn=warnings)
        wrong.write(_records(0, 1))
        line = warnings.wait_for("nats ")
        assert line and "not-the-token" not in line
    token_file.chmod(0o644)
    with pytest.raises(safefile.UnsafePathError, match="0600"):
        nats_sink.NatsSink("nats://127.0.0.1:4222", SUBJECT, STREAM, token_file=str(token_file))
    link = tmp_path / "link.token"
    link.symlink_to(token_file)
    with pytest.raises(OSError):
        nats_sink.NatsSink("nats://127.0.0.1:4222", SUBJECT, STREAM, token_file=str(link))


def test_user_and_password_file(tmp_path, sinks):
    tmp_path.chmod(0o700)
    password_file = tmp_path / "nats.password"
    password_file.write_text("pa55word\n")
    password_file.chmod(0o600)
    with NatsServer(user="capture", password="pa55word") as srv:
        sink = sinks(srv.url, SUBJECT, STREAM, user="capture", password_file=str(password_file))
        batch = _records(0, 4)
        sink.write(batch)
        got = _wait_stream(srv, 4, user="capture", password="pa55word")
        assert [p for _, p in got] == [_line(r) for r in batch]


def test_credentials_in_the_url_are_refused_without_repeating_them():
    with pytest.raises(ValueError) as err:
        nats_sink.NatsSink("nats://u:hunter2@127.0.0.1:4222", SUBJECT, STREAM)
    assert "hunter2" not in str(err.value) and "token_file" in str(err.value)
    for url in ("http://127.0.0.1:4222", "nats://", ""):
        with pytest.raises(ValueError):
            nats_sink.parse_servers(url)
    assert nats_sink.parse_servers("nats://a:4222, tls://b:4443") == ["nats://a:4222", "tls://b:4443"]


def test_subject_matches():
    m = nats_sink.subject_matches
    assert m("ecapture.test", "ecapture.test")
    assert m("ecapture.*", "ecapture.test") and not m("ecapture.*", "ecapture.test.x")
    assert m("ecapture.>", "ecapture.test.x") and not m("ecapture.>", "ecapture")
    assert m(">", "a") and not m("other.>", "ecapture.test") and not m("ecapture", "ecapture.test")


def test_factory_builds_it_from_a_profile_spec(server):
    spec = models.Sink("nats", (("buffer_records", 5), ("flush_timeout", 1), ("stream", STREAM),
                                ("subject", SUBJECT), ("url", server.url)))
    sink = factory.build(spec, "p")
    try:
        assert (sink.buffer_records, sink.flush_timeout, sink.subject, sink.stream) == (5, 1, SUBJECT, STREAM)
        batch = _records(0, 5)
        sink.write(batch)
        assert [p for _, p in _wait_stream(server, 5)] == [_line(r) for r in batch]
    finally:
        sink.close()
        sink.join(10)


def test_tls_url_checks_the_server_certificate(tmp_path, sinks, monkeypatch):
    import ssl
    import subprocess
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    with NatsServer(tls=(str(cert), str(key))) as srv:
        url = f"tls://127.0.0.1:{srv.port}"
        untrusted = Warnings()
        sink = sinks(url, SUBJECT, STREAM, warn=untrusted)       # the system's CAs do not know this one
        sink.write(_records(0, 1))
        line = untrusted.wait_for("cannot reach the server")
        assert line and "CERTIFICATE_VERIFY_FAILED" in line, untrusted.lines
        sink.close()
        assert sink.join(10) and sum(sink.lost_at_close.values()) == 1
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))          # OpenSSL's default verify paths
        trusted = sinks(url, SUBJECT, STREAM)
        batch = _records(0, 3)
        trusted.write(batch)
        got = _wait_stream(srv, 3, tls=ssl.create_default_context(cafile=str(cert)))
        assert [p for _, p in got] == [_line(r) for r in batch]


PROFILE = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: t}
spec:
  targets:
    - {name: web, kind: openssl, binary: /usr/sbin/nginx}
  sinks:
"""


@pytest.mark.parametrize("sink, field, says", [
    ('{type: nats, url: "nats://u:hunter2@127.0.0.1:4222", subject: a.b, stream: S}', "url", "holds credentials"),
    ('{type: nats, url: "http://127.0.0.1:4222", subject: a.b, stream: S}', "url", "nats://HOST:PORT"),
    ('{type: nats, url: "nats://127.0.0.1:4222", subject: "a.*", stream: S}', "subject", "no wildcards"),
    ('{type: nats, url: "nats://127.0.0.1:4222", subject: a.b}', "stream", "missing required field"),
    ('{type: nats, url: "nats://127.0.0.1:4222", subject: a.b, stream: S, token_file: t}', "token_file", "Absolute"),
    ('{type: nats, url: "nats://127.0.0.1:4222", subject: a.b, stream: S, user: u}', "", "password_file"),
])
def test_profile_errors_name_the_field_and_never_repeat_a_password(tmp_path, sink, field, says):
    from orchestrator.profile import errors, load
    path = tmp_path / "nats.yaml"
    path.write_text(PROFILE + f"    - {sink}\n")
    with pytest.raises(errors.ProfileError) as err:
        load.load_file(str(path))
    text = str(err.value)
    assert f"nats.yaml:8:" in text and f"spec.sinks[0]{'.' + field if field else ''}" in text and says in text, text
    assert "hunter2" not in text


def test_a_valid_nats_sink_loads(tmp_path):
    from orchestrator.profile import load
    path = tmp_path / "nats.yaml"
    path.write_text(PROFILE + '    - {type: nats, url: "nats://a:4222,tls://b:4443", subject: ecapture.web, '
                              'stream: ECAPTURE, user: capture, password_file: /etc/ecapture/nats.pw, '
                              'buffer_records: 500, buffer_bytes: 1048576, flush_timeout: 2.5}\n')
    sink, = load.load_file(str(path)).sinks
    assert sink.type == "nats" and sink.option("stream") == "ECAPTURE" and sink.option("flush_timeout") == 2.5
