"""TLS stacks and shells without root: hook tables found on this machine's real libraries, the
`tls` field of records, and zsh's metafied command lines."""
from __future__ import annotations

import os

import pytest

from orchestrator.bpf import discovery, hooks, layout
from orchestrator.pipeline import dispatch
from orchestrator.profile import models
from tests.unit.test_pipeline import REQ, RESP, _probe_set, _raw, _run

GNUTLS = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30"


@pytest.mark.skipif(not os.path.exists("/usr/bin/gnutls-cli"), reason="gnutls-bin is installed by make setup")
def test_gnutls_is_found_through_dt_needed_and_send_is_probed_once():
    res = discovery.resolve(models.Target("cli", "gnutls", binary="/usr/bin/gnutls-cli"))
    assert os.path.realpath(res.attach_path) == os.path.realpath(GNUTLS) and res.how.startswith("DT_NEEDED")
    symbols = [h.symbol for h in res.hooks]
    # gnutls_record_send jumps into gnutls_record_send2: probing both would record every write twice
    assert "gnutls_record_send2" in symbols and "gnutls_record_send" not in symbols
    assert {"gnutls_record_recv", "gnutls_handshake"} <= set(symbols)
    assert all(h.stack == "gnutls" for h in res.hooks if h.record == hooks.RECORD_DATA)
    assert res.scope_paths and res.scope_real == "/usr/bin/gnutls-cli"


def test_an_old_gnutls_without_send2_gets_gnutls_record_send(monkeypatch):
    symbols = frozenset({"gnutls_record_send", "gnutls_record_recv", "gnutls_handshake"})
    monkeypatch.setattr(discovery, "elf_info", lambda path: (symbols, ()))
    monkeypatch.setattr(discovery, "_require_file", lambda path, field: None)
    res = discovery.resolve(models.Target("x", "gnutls", library="/old/libgnutls.so.30"))
    assert [h.symbol for h in res.hooks] == ["gnutls_record_send", "gnutls_record_recv", "gnutls_handshake"]
    # the fake file has no code: no key-log routine is found in it either
    assert res.missing_optional == ("gnutls_record_send2", "gnutls_record_recv_seq", "_gnutls_call_keylog_func")


def test_data_and_http_records_name_their_tls_stack():
    for kind in ("openssl", "gnutls"):
        ps = _probe_set(kind=kind, target_hooks=hooks.BUILTIN[kind])
        read = next(i for i, h in enumerate(ps.hooks) if h.direction == hooks.DIR_READ)
        write = next(i for i, h in enumerate(ps.hooks) if h.direction == hooks.DIR_WRITE)
        recs = _run([_raw(REQ, seq=0, hook=read), _raw(RESP, seq=1, hook=write, direction=layout.DIR_WRITE),
                     _raw(b"\x00\x01binary", seq=2, hook=read, session=0xdef)], ps)
        assert [r["type"] for r in recs] == ["http.request", "http.response", "data"]
        assert {r["tls"] for r in recs} == {kind}
    socket_ps = _probe_set(kind="socket", target_hooks=hooks.BUILTIN["socket"])
    (rec,) = _run([_raw(b"\x00\x01", hook=0, session=0)], socket_ps)
    assert "tls" not in rec                     # plaintext sockets: no TLS stack


@pytest.mark.parametrize("line, unmetafied", [
    (b"echo hi\n", b"echo hi\n"),
    (b"printf '\x83\xa3x'", b"printf '\x83x'"),     # Meta + (0x83 ^ 32): the byte 0x83 itself
    (b"a\x83\x20b", b"a\x00b"),                      # a NUL inside a zsh string
    (b"ls\x83", b"ls"),                               # a Meta cut off at the end
])
def test_zsh_lines_are_unmetafied(line, unmetafied):
    assert dispatch._unmetafy(line) == unmetafied


def test_zsh_commands_are_zsh_command_records():
    ps = _probe_set(kind="zsh", target_hooks=hooks.BUILTIN["zsh"])
    (rec,) = _run([_raw("echo 'é'\n".encode(), hook=0, record=layout.RECORD_COMMAND, session=0)], ps)
    assert rec["type"] == "zsh.command" and rec["command"] == "echo 'é'"
    bash = _probe_set(kind="bash", target_hooks=hooks.BUILTIN["bash"])
    (rec,) = _run([_raw(b"ls -l", hook=0, record=layout.RECORD_COMMAND, session=0)], bash)
    assert rec["type"] == "bash.command" and rec["command"] == "ls -l"


def _secret_raw(label: bytes, random: bytes, secret: bytes, hook: int) -> bytes:
    payload = label.ljust(64, b"\0") + random.ljust(32, b"\0") + secret.ljust(64, b"\0")
    return _raw(payload, hook=hook, record=layout.RECORD_SECRET, session=0,
                args=(len(label), len(random), len(secret), 0, 0, 0))


def test_go_secrets_become_tls_secret_records_and_key_log_lines(tmp_path):
    import stat

    from orchestrator.sinks import keylog, stdout
    ps = _probe_set(kind="gotls", target_hooks=hooks.BUILTIN["gotls"])
    keylog_hook = next(i for i, h in enumerate(ps.hooks) if h.record == hooks.RECORD_SECRET)
    random, secret = bytes(range(32)), bytes(range(100, 148))
    recs_raw = [_secret_raw(b"CLIENT_HANDSHAKE_TRAFFIC_SECRET", random, secret, keylog_hook),
                _secret_raw(b"bad label!", random, secret, keylog_hook),           # not a key-log label
                _secret_raw(b"CLIENT_RANDOM", random[:16], secret, keylog_hook)]   # a client random is 32 bytes
    sink = keylog.KeylogSink(str(tmp_path / "keys.log"))
    d = dispatch.Dispatcher(lambda _p: [sink])
    from orchestrator.pipeline import events
    d.process([events.decode(r, ps) for r in recs_raw])
    d.flush_all()
    sink.close()
    text = (tmp_path / "keys.log").read_text()
    assert text == f"CLIENT_HANDSHAKE_TRAFFIC_SECRET {random.hex()} {secret.hex()}\n"
    assert stat.S_IMODE(os.stat(tmp_path / "keys.log").st_mode) == 0o600
    assert d.stats.losses[("prof", "web", "secret.unreadable")] == 2        # the two bad ones: counted
    (rec,) = _run(recs_raw[:1], ps)
    assert rec["type"] == "tls.secret" and rec["label"] == "CLIENT_HANDSHAKE_TRAFFIC_SECRET" and rec["tls"] == "gotls"
    assert rec["client_random"] == random.hex() and rec["secret"] == secret.hex()
    # the terminal shows secrets only when the sink asks for them
    import io
    quiet, loud = io.StringIO(), io.StringIO()
    records = [events.decode(recs_raw[0], ps)]
    out: list = []
    d2 = dispatch.Dispatcher(lambda _p: [])
    d2._route(records[0], out, 0, ps.key, ps.profile)
    stdout.StdoutSink(color="never", file=quiet).write(out)
    stdout.StdoutSink(color="never", file=loud, show_secrets=True).write(out)
    assert quiet.getvalue() == "" and secret.hex() in loud.getvalue()


def test_capture_chooses_the_hooks_and_session_learning_serves_both():
    def symbols(kind, capture):
        return [h.symbol for h in hooks.hooks_for(models.Target("t", kind, binary="/x", capture=capture))]
    assert symbols("openssl", ("secrets",)) == ["SSL_do_handshake", "ssl_log_secret"]
    assert "ssl_log_secret" not in symbols("openssl", ("data",)) and "SSL_read" in symbols("openssl", ("data",))
    assert symbols("gotls", ("secrets",)) == ["crypto/tls.(*Config).writeKeyLog"]
    assert symbols("socket", ("data",)) == symbols("socket", ("data", "secrets"))     # plaintext: not TLS
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("t", "nss", binary="/usr/bin/curl", capture=("secrets",)))
    assert exc.value.field == "capture" and "no key-log routine" in exc.value.message
