"""The web sink without a browser or the kernel: listen addresses, the token (file and checks),
the bounded per-browser queue, and a real `websockets` client reading records written to a sink."""
from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

import msgspec
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from orchestrator import safefile
from orchestrator.pipeline import dispatch, events
from orchestrator.sinks import factory, jsonl, web
from orchestrator.profile import models

ENCODE = msgspec.json.Encoder().encode


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _record(i: int, type_: str = "bash.command", **fields) -> events.Record:
    return events.Record(type_, None, {"profile": "p", "target": "t", "command": f"echo {i}", **fields})


@pytest.fixture
def private(tmp_path):
    tmp_path.chmod(0o700)
    return tmp_path


@pytest.fixture
def sink(private):
    s = web.WebSink(f"127.0.0.1:{_free_port()}", token_file=str(private / "web.token"))
    yield s
    s.close()


def _ws(s: web.WebSink, token: str | None = None, since: str = ""):
    query = f"?token={s.server.token if token is None else token}" + (f"&since={since}" if since else "")
    return connect(f"ws://{web.netloc(s.server.host, s.server.port)}/socket{query}", open_timeout=5, max_size=None)


def _records(ws, want: int, timeout: float = 5.0) -> tuple[list, dict]:
    """Records from `records` messages until `want` have come; and the last message."""
    got, last, deadline = [], {}, time.monotonic() + timeout
    while len(got) < want:
        msg = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if msg["kind"] == "records":
            got.extend(msg["records"])
            last = msg
    return got, last


# ---------------------------------------------------------------- listen addresses

@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:8089", ("127.0.0.1", 8089)),
    ("localhost:1", ("127.0.0.1", 1)),
    ("[::1]:65535", ("::1", 65535)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("[::FFFF:127.0.0.1]:9000", ("::ffff:7f00:1", 9000)),
])
def test_listen_addresses_parse(text, parsed):
    assert web.parse_listen(text) == parsed


@pytest.mark.parametrize("text, why", [
    ("8089", "HOST:PORT"), (":8089", "IP address"), ("127.0.0.1:0", "1 to 65535"),
    ("127.0.0.1:65536", "1 to 65535"), ("127.0.0.1:http", "1 to 65535"), ("example.com:80", "IP address"),
    ("::1:80", "brackets"), ("999.1.1.1:80", "IP address"), ("[127.0.0.1:80", "IP address"),
])
def test_bad_listen_addresses_say_why(text, why):
    with pytest.raises(ValueError, match=why):
        web.parse_listen(text)


def test_loopback_or_not():
    assert web.is_loopback("127.0.0.1") and web.is_loopback("::1") and web.is_loopback("127.3.4.5")
    assert not web.is_loopback("0.0.0.0") and not web.is_loopback("10.1.2.3") and not web.is_loopback("::")


def test_schema_accepts_web_sink_and_refuses_bad_options(tmp_path):
    from orchestrator.profile import errors, load
    base = ("apiVersion: ecapture/v1\nkind: CaptureProfile\nmetadata: {name: w}\nspec:\n  targets:\n"
            "    - {name: s, kind: bash, binary: /bin/bash}\n  sinks:\n    - ")
    profile = load.load_text(base + "{type: web}\n", "w.yaml", check_outputs=False)
    assert profile.sinks == (models.Sink("web", ()),)
    profile = load.load_text(base + '{type: web, listen: "[::1]:9000", token_file: /run/x.token}\n', "w.yaml",
                             check_outputs=False)
    assert profile.sinks[0].option("listen") == "[::1]:9000"
    for bad in ('{type: web, listen: "example.com:80"}', '{type: web, listen: "127.0.0.1:70000"}',
                "{type: web, token_file: relative.token}", "{type: web, path: /tmp/x}"):
        with pytest.raises(errors.ProfileError) as exc:
            load.load_text(base + bad + "\n", "w.yaml", check_outputs=False)
        assert "w.yaml:8:" in str(exc.value.issues[0]), exc.value.issues


# ---------------------------------------------------------------- the token

def test_token_file_is_made_private_and_kept(private):
    path = str(private / "sub" / "web.token")
    token = web.load_token(path)
    assert web.TOKEN_RE.fullmatch(token) and len(token) >= 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(private / "sub").st_mode & 0o777 == 0o700
    assert web.load_token(path) == token            # an apply restart finds the same token
    other = private / "other.token"
    other.write_text("my-own-token-0123456789\n")
    other.chmod(0o600)
    assert web.load_token(str(other)) == "my-own-token-0123456789"


def test_token_file_refused_through_a_link_wide_open_or_not_a_token(private):
    real = private / "real.token"
    real.write_text("x" * 32)
    real.chmod(0o600)
    (private / "link.token").symlink_to(real)
    with pytest.raises(safefile.UnsafePathError, match="symbolic link"):
        web.load_token(str(private / "link.token"))
    real.chmod(0o644)
    with pytest.raises(safefile.UnsafePathError, match="mode 0644"):
        web.load_token(str(real))
    real.chmod(0o600)
    real.write_text("short\n")
    with pytest.raises(ValueError, match="does not hold a token"):
        web.load_token(str(real))


def test_token_check_missing_wrong_right():
    assert web.check_token(None, "secret-token-0123456789") == 401
    assert web.check_token("", "secret-token-0123456789") == 401
    assert web.check_token("secret-token-012345678X", "secret-token-0123456789") == 403
    assert web.check_token("secret", "secret-token-0123456789") == 403
    assert web.check_token("secret-token-0123456789", "secret-token-0123456789") is None


def test_default_token_file_sits_beside_the_control_socket(monkeypatch):
    monkeypatch.delenv("ECAPTURE_SOCKET", raising=False)
    assert web.default_token_file("127.0.0.1", 8089) == "/run/ecapture/web-127.0.0.1-8089.token"
    monkeypatch.setenv("ECAPTURE_SOCKET", "/tmp/x/apply.sock")
    assert web.default_token_file("::1", 9000) == "/tmp/x/web-__1-9000.token"


# ---------------------------------------------------------------- the bounded queue

def test_queue_drops_whole_batches_when_full_and_counts_their_records():
    q = web.ClientQueue(limit=100)
    assert q.put(b"a" * 60, 3, 3) == (True, True)       # the first batch wakes the sender
    assert q.put(b"b" * 40, 2, 5) == (True, False)      # already woken
    assert q.put(b"c" * 1, 7, 12) == (False, False)     # full: dropped whole, counted
    assert (q.missed, q.queued_bytes) == (7, 100)
    batches, upto, missed = q.take()
    assert batches == [b"a" * 60, b"b" * 40] and upto == 12 and missed == 7
    assert q.queued_bytes == 0
    assert q.put(b"d" * 500, 1, 13) == (True, True)     # larger than the limit alone: still passes
    assert q.put(b"e", 4, 17) == (False, False)
    assert q.take() == ([b"d" * 500], 17, 11)


# ---------------------------------------------------------------- the server

def test_a_websocket_client_receives_the_jsonl_lines(sink):
    first = [_record(1), _record(2, "http.request", method="GET", path="/x")]
    with _ws(sink) as ws:
        hello = json.loads(ws.recv(timeout=5))
        assert hello["kind"] == "hello" and hello["run"] == sink.server.run_id
        sink.write(first)
        got, last = _records(ws, 2)
        assert got == [json.loads(r.to_json(ENCODE)) for r in first]
        assert last["upto"] == 2 and last["missed"] == 0


def test_tls_secrets_reach_the_browser_only_when_asked(private):
    secret = events.Record("tls.secret", None, {"profile": "p", "target": "t", "label": "CLIENT_RANDOM",
                                                 "client_random": "00" * 32, "secret": "11" * 48})
    for show, want in ((False, ["bash.command"]), (True, ["tls.secret", "bash.command"])):
        s = web.WebSink(f"127.0.0.1:{_free_port()}", token_file=str(private / "t"), show_secrets=show)
        try:
            with _ws(s) as ws:
                s.write([secret, _record(1)])
                got, _ = _records(ws, len(want))
                assert [r["type"] for r in got] == want
        finally:
            s.close()


def test_token_required_by_page_socket_and_ping(sink):
    base = f"http://{web.netloc(sink.server.host, sink.server.port)}"

    def status(path):
        try:
            with urllib.request.urlopen(base + path, timeout=5) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers, exc.read()

    token = sink.server.token
    code, headers, body = status(f"/?token={token}")
    assert code == 200 and b'<script src="app.js"' in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    assert status("/")[0] == 401
    assert status("/?token=wrong-token-0123456789")[0] == 403
    assert status(f"/ping?token={token}")[0] == 200 and status("/ping?token=nope")[0] == 403
    assert status("/app.js")[0] == 200            # the same for everyone: no token, no data
    assert status("/etc/passwd")[0] == 404
    for token_, code_ in (("", 401), ("wrong-token-0123456789", 403)):
        with pytest.raises(InvalidStatus) as refused:
            _ws(sink, token=token_)
        assert refused.value.response.status_code == code_
    with pytest.raises(InvalidStatus) as refused:       # another site's page, even with the token
        connect(f"ws://{web.netloc(sink.server.host, sink.server.port)}/socket?token={token}",
                origin="http://evil.example", open_timeout=5)
    assert refused.value.response.status_code == 403


def test_a_page_that_reconnects_gets_what_it_missed_from_the_history(sink):
    with _ws(sink) as ws:
        hello = json.loads(ws.recv(timeout=5))
        sink.write([_record(1)])
        _, last = _records(ws, 1)
    sink.write([_record(2), _record(3)])
    with _ws(sink, since=f"{hello['run']}:{last['upto']}") as ws:
        assert json.loads(ws.recv(timeout=5))["gap"] == 0
        got, last = _records(ws, 2)
        assert [r["command"] for r in got] == ["echo 2", "echo 3"] and last["upto"] == 3
    with _ws(sink, since="another-run:1") as ws:      # apply restarted: everything this server has
        got, _ = _records(ws, 3)
        assert [r["command"] for r in got] == ["echo 1", "echo 2", "echo 3"]


def test_sinks_on_one_address_share_one_server(private):
    listen = f"127.0.0.1:{_free_port()}"
    token_file = str(private / "t")
    a = web.WebSink(listen, token_file=token_file)
    b = factory.build(models.Sink("web", (("listen", listen), ("token_file", token_file))), "p")
    assert b.server is a.server and a.server.refs == 2
    with pytest.raises(ValueError, match="same token_file"):
        web.WebSink(listen, token_file=str(private / "other"))
    with _ws(b) as ws:
        a.close()                          # a reload closing the old sink keeps the server and the page
        b.write([_record(1)])
        got, _ = _records(ws, 1)
        assert got[0]["command"] == "echo 1"
    b.close()
    deadline = time.monotonic() + 5
    while True:                            # the port is free again once the last one closed
        try:
            with socket.create_server(web.parse_listen(listen)):
                break
        except OSError:
            assert time.monotonic() < deadline, "the port stayed bound after the last sink closed"
            time.sleep(0.05)


def test_url_printed_and_another_address_than_loopback_warned_about(private, capfd):
    port = _free_port()
    s = web.WebSink(f"127.0.0.1:{port}", token_file=str(private / "a"))
    s.close()
    err = capfd.readouterr().err
    assert f"ecapture: web view: http://127.0.0.1:{port}/?token={s.server.token}\n" in err
    assert "loopback" not in err
    s = web.WebSink(f"0.0.0.0:{port}", token_file=str(private / "b"))
    s.close()
    err = capfd.readouterr().err
    assert f"web view: http://0.0.0.0:{port}/?token=" in err
    assert f"warning: the web view listens on 0.0.0.0:{port}, not on loopback" in err


def test_port_in_use_is_the_sinks_error(private):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(OSError) as exc:
            web.WebSink(f"127.0.0.1:{port}", token_file=str(private / "t"))
        assert exc.value.errno == errno.EADDRINUSE


def test_a_stalled_browser_costs_only_its_own_records_counted_by_the_dispatcher(private, monkeypatch):
    """The server's loop is held still (as a browser that reads nothing holds its sender): the
    dispatcher's write never waits, the batches that find the queue full are counted as lost at
    stage sink.web, told to the profile's other sinks, and the page is told how many it missed."""
    monkeypatch.setattr(web, "QUEUE_BYTES", 2000)
    s = web.WebSink(f"127.0.0.1:{_free_port()}", token_file=str(private / "t"))
    out = jsonl.JsonlSink(str(private / "out.jsonl"))
    now = [time.time_ns()]
    d = dispatch.Dispatcher(lambda name: [s, out] if name == "p" else [], warn=lambda line: None,
                            clock=lambda: now[0])
    try:
        with _ws(s) as ws:
            assert json.loads(ws.recv(timeout=5))["kind"] == "hello"
            hold = threading.Event()
            s.server._loop.call_soon_threadsafe(hold.wait, 30)     # the loop thread stalls
            t0 = time.monotonic()
            for i in range(50):
                d.process([_record(i, padding="x" * 200)])
            assert time.monotonic() - t0 < 2.0
            lost = d.stats.losses[("p", "t", "sink.web")]
            assert 30 <= lost < 50
            hold.set()
            got, last = _records(ws, 50 - lost)
            assert [r["type"] for r in got] == ["bash.command"] * (50 - lost)
            # The page missed the same batches, with the loss records the dispatcher put ahead of them.
            assert last["missed"] >= lost
        now[0] += 2 * dispatch.LOSS_REPORT_NS
        d.process([_record(99)])                 # the other sinks are told about once a second
        told = [json.loads(line) for line in (private / "out.jsonl").read_text().splitlines()]
        losses = [r for r in told if r["type"] == "loss"]
        assert losses and sum(r["count"] for r in losses) == lost
        assert {r["stage"] for r in losses} == {"sink.web"}
    finally:
        s.close()
        out.close()
