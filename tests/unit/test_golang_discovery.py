"""TLS-stack discovery without root: Go functions and their RETs (.symtab and .gopclntab),
damaged Go files, `kind: tls` on this machine's programs, RUNPATH, and the nss hook table."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from orchestrator.bpf import discovery, golang, hooks, render
from orchestrator.profile import models
from tests.support import gobuild

GO = "/usr/bin/go"
READ, WRITE = "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"
WANTED = (READ, WRITE)


@pytest.fixture(scope="module")
def gobins(tmp_path_factory):
    """variant → path of the gotls test program built by Debian's Go 1.19 (default has .symtab,
    pie-stripped only .gopclntab)."""
    if not os.path.exists(GO):
        pytest.skip("no /usr/bin/go (golang-go is installed by make setup)")
    cache = tmp_path_factory.mktemp("gocache")
    out = tmp_path_factory.mktemp("gobin")
    return {v: str(gobuild.build(GO, v, out / v, cache)) for v in ("default", "pie-stripped")}


def _skip_unless(path):
    if not os.path.exists(path):
        pytest.skip(f"{path} is not installed")


@pytest.mark.parametrize("variant, found_by", [("default", ".symtab"), ("pie-stripped", ".gopclntab")])
def test_go_tls_functions_their_rets_and_body(gobins, variant, found_by):
    path = gobins[variant]
    go = golang.inspect(path, WANTED)
    assert golang.is_go(path)
    assert go.version.startswith("go1.19") and go.arch == "amd64"
    assert set(go.functions) == set(WANTED)
    with open(path, "rb") as f:
        data = f.read()
    for name, fn in go.functions.items():
        assert fn.name == name and fn.found_by == found_by
        assert fn.entry < fn.end and fn.returns
        assert all(fn.entry <= r < fn.end for r in fn.returns)
        assert fn.entry < fn.body < fn.entry + 32          # past the `cmp rsp, [r14+16]; jbe` check
        for r in fn.returns:
            assert data[golang.file_offset(path, r)] == 0xC3, f"{name}: no RET at {r:#x}"


def test_symtab_entry_agrees_with_nm_and_with_the_pclntab_parser(gobins):
    path = gobins["default"]
    if not shutil.which("nm"):
        pytest.skip("no nm (binutils)")
    out = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    entries = {}
    for line in out.splitlines():
        m = re.fullmatch(r"([0-9a-f]+) [Tt] (.+)", line)
        if m and m.group(2) in WANTED:
            entries[m.group(2)] = int(m.group(1), 16)
    assert set(entries) == set(WANTED)
    go = golang.inspect(path, WANTED)
    assert {n: f.entry for n, f in go.functions.items()} == entries
    # The stripped-binary path, run on the same file: .gopclntab gives the same entries.
    with open(path, "rb") as f:
        table = golang._from_pclntab(ELFFile(f), path, set(WANTED))
    assert {n: entry for n, (entry, _end) in table.items()} == entries
    assert all(table[n][1] >= go.functions[n].end for n in WANTED)     # next function's entry, padding included


def test_missing_go_function_and_a_non_go_binary(gobins, monkeypatch):
    go = golang.inspect(gobins["pie-stripped"], (READ, "main.noSuchFunction"))
    assert set(go.functions) == {READ}
    res = discovery.resolve(models.Target("g", "gotls", binary=gobins["pie-stripped"]))
    keylog = "crypto/tls.(*Config).writeKeyLog"
    assert res.attach_path == gobins["pie-stripped"] and [h.symbol for h in res.hooks] == [WRITE, READ, keylog]
    assert len(res.addresses) == 3
    fns = golang.inspect(gobins["pie-stripped"], WANTED + (keylog,)).functions
    assert res.addresses == ((fns[WRITE].body, ()), (fns[READ].body, fns[READ].returns),
                             (fns[keylog].body, ()))   # writes and secrets on entry only
    assert "gopclntab" in res.how

    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("g", "gotls", binary="/bin/ls"))
    assert exc.value.field == "binary" and ".gopclntab" in exc.value.message
    assert not golang.is_go("/bin/ls")

    extra = hooks._go("main.noSuchFunction", hooks.DIR_READ)
    monkeypatch.setitem(hooks.BUILTIN, "gotls", hooks.BUILTIN["gotls"] + (extra,))
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("g", "gotls", binary=gobins["default"]))
    assert exc.value.field == "binary"
    assert "main.noSuchFunction" in exc.value.message and ".gopclntab" in exc.value.message


def _damaged(gobins, tmp_path):
    rand = tmp_path / "random"
    rand.write_bytes(os.urandom(100_000))
    trunc = tmp_path / "truncated"
    trunc.write_bytes(Path(gobins["default"]).read_bytes()[:65536])
    nomagic = tmp_path / "nomagic"
    shutil.copy(gobins["pie-stripped"], nomagic)
    with open(nomagic, "r+b") as f:
        elf = ELFFile(f)
        sec = next(s for n in golang.PCLNTAB_SECTIONS if (s := elf.get_section_by_name(n)) is not None)
        f.seek(sec["sh_offset"])
        assert int.from_bytes(f.read(4), "little") in golang.MAGICS
        f.seek(sec["sh_offset"])
        f.write(b"\0\0\0\0")
    return {"random": str(rand), "truncated": str(trunc), "nomagic": str(nomagic)}


def test_damaged_go_files_are_go_errors(gobins, tmp_path):
    for what, path in _damaged(gobins, tmp_path).items():
        with pytest.raises(golang.GoError) as exc:
            golang.inspect(path, WANTED)
        assert path in str(exc.value), what
        with pytest.raises(discovery.DiscoveryError) as exc:
            discovery.resolve(models.Target("g", "gotls", binary=path))
        assert exc.value.field == "binary", what
        with pytest.raises(discovery.DiscoveryError):        # kind: tls finds no stack in it either
            discovery.resolve(models.Target("g", "tls", binary=path))
    with pytest.raises(golang.GoError, match=r"magic 0x0"):
        golang.inspect(str(tmp_path / "nomagic"), WANTED)


@pytest.mark.parametrize("program, stack", [
    ("/usr/bin/wget", "gnutls"), ("/usr/bin/tstclnt", "nss"), ("/usr/bin/bssl-tool", "boringssl"),
    ("/usr/bin/curl", "openssl"),
])
def test_kind_tls_finds_the_stack_of_system_programs(program, stack):
    _skip_unless(program)
    res = discovery.resolve(models.Target("t", "tls", binary=program))
    assert res.hooks[0].stack == stack
    assert res.how.startswith(f"kind tls found {stack}: ")
    assert {h.stack for h in res.hooks if h.record == hooks.RECORD_DATA} == {stack}
    if stack == "boringssl":
        assert res.attach_path.endswith("android/libssl.so.0")      # bssl-tool's RUNPATH, not the system libssl
    if stack == "openssl":
        assert "also uses gnutls" in res.how                       # libcurl → librtmp → libgnutls


def test_kind_tls_finds_go_and_rejects_a_program_without_tls(gobins):
    res = discovery.resolve(models.Target("t", "tls", binary=gobins["default"]))
    assert res.hooks[0].stack == "gotls" and res.how.startswith("kind tls found gotls")
    assert len(res.addresses) == len(hooks.BUILTIN["gotls"])
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("t", "tls", binary="/bin/ls"))
    assert exc.value.field == "binary" and "no TLS stack" in exc.value.message


def test_runpath():
    assert discovery.runpath("/bin/ls") == ()
    _skip_unless("/usr/bin/bssl-tool")
    assert discovery.runpath("/usr/bin/bssl-tool") == ("/usr/lib/x86_64-linux-gnu/android",)


def test_nss_hooks_and_their_program(monkeypatch):
    nss = hooks.BUILTIN["nss"]
    assert nss and all(h.layered_arg == 0 and h.stack == "nss" for h in nss)
    writev = next(h for h in nss if h.symbol == "PR_Writev")
    assert writev.payload.type == "iovec" and writev.payload.length_from == 2
    assert writev.direction == hooks.DIR_WRITE
    monkeypatch.setattr(render, "possible_cpus", lambda: 4)
    text = render.render("p", models.Target("n", "nss", binary="/usr/bin/tstclnt"), nss).text
    assert text.count("identity == 0") == len(nss)          # every NSPR hook skips plain fds
    assert "i < IOV_RECORDED" in text                        # PR_Writev's per-buffer loop
    openssl = render.render("p", models.Target("o", "openssl", binary="/usr/bin/curl"), hooks.BUILTIN["openssl"][:5]).text
    assert "identity == 0" not in openssl and "i < IOV_RECORDED" not in openssl
