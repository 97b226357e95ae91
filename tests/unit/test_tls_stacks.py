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
    assert res.missing_optional == ("gnutls_record_send2", "gnutls_record_recv_seq")


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
