"""Functions found by the strings they are called with: the key-log routine of statically linked,
stripped BoringSSL (checked against a build that still has its symbols)."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from orchestrator.bpf import anchors, discovery
from orchestrator.profile import models

TOOLS = Path(__file__).resolve().parents[2] / ".tools"
CFFI = TOOLS / "curl_cffi" / "curl_cffi" / "_wrapper.abi3.so"
GRPC = next(iter(glob.glob(str(TOOLS / "grpcio" / "grpc" / "_cython" / "cygrpc*.so"))), None)


def _symbol(path, name_part: str) -> int:
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        (addr,) = {s["st_value"] for s in symtab.iter_symbols() if name_part in s.name and s["st_value"]}
        return addr


@pytest.mark.skipif(not CFFI.exists(), reason="make setup installs curl_cffi into .tools/")
def test_the_label_anchor_finds_the_routine_the_symbol_table_names():
    anchor = anchors.keylog_function(str(CFFI))
    assert anchor is not None and anchor.address == _symbol(CFFI, "ssl_log_secret")
    assert {"CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET"} <= set(anchor.labels) and anchor.references >= 4


@pytest.mark.skipif(GRPC is None, reason="make setup installs grpcio into .tools/")
def test_stripped_static_boringssl_gives_secrets_only_and_kind_tls_says_how():
    anchor = anchors.keylog_function(GRPC)
    assert anchor is not None and len(anchor.labels) >= 5          # every TLS 1.3 secret leads there
    res = discovery.resolve(models.Target("g", "boringssl", binary="/usr/bin/python3.11", library=GRPC))
    assert [h.symbol for h in res.hooks] == ["ssl_log_secret"] and res.addresses == ((anchor.address, ()),)
    assert "no symbol SSL_write, SSL_read, SSL_do_handshake: secrets only" in res.how
    assert res.hooks[0].random_path == (0x30, 0x30)        # ssl->s3->client_random, from the routine's code
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("g", "tls", binary=GRPC))
    assert "without symbols" in exc.value.message and "key-log function at" in exc.value.message
    assert "kind: boringssl, openssl or gnutls" in exc.value.message


def test_files_without_labels_or_damaged_give_nothing(tmp_path):
    assert anchors.keylog_function("/bin/ls") is None
    junk = tmp_path / "junk.so"
    junk.write_bytes(os.urandom(4096))
    assert anchors.keylog_function(str(junk)) is None
    assert anchors.keylog_function(str(tmp_path / "missing")) is None


LIBSSL3 = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
LIBGNUTLS = "/usr/lib/x86_64-linux-gnu/libgnutls.so.30"
BORINGSSL = "/usr/lib/x86_64-linux-gnu/android/libssl.so.0"


def test_openssl_3s_single_label_counts_only_with_callers_to_back_it():
    # OpenSSL 3 passes its TLS 1.3 labels through variables: one direct LEA+call (CLIENT_RANDOM)
    anchor = anchors.keylog_function(LIBSSL3)
    assert anchor is not None and anchor.labels == ("CLIENT_RANDOM",)
    with open(LIBSSL3, "rb") as f:
        text = ELFFile(f).get_section_by_name(".text")
        code, base = text.data(), text["sh_addr"]
    assert anchors._direct_calls(code, base, anchor.address) >= anchors.MIN_CALLERS
    labels = anchors._label_addresses(ELFFile(open(LIBSSL3, "rb")))
    assert anchors._most_called(code, base, labels) == anchor
    assert anchors._direct_calls(code, base, anchor.address + 1) == 0        # no calls into its middle


@pytest.mark.parametrize("path, stack, expected", [
    (LIBSSL3, "openssl", ((), 0x160, "SSL_get_client_random")),
    (LIBGNUTLS, "gnutls", ((), 0x50, "gnutls_session_get_random")),
    (BORINGSSL, "boringssl", ((0x30,), 0x30, "SSL_get_client_random")),
])
def test_client_random_place_from_the_librarys_accessor(path, stack, expected):
    anchor = anchors.keylog_function(path)
    found = anchors.client_random(path, stack, anchor.address)
    assert (found.derefs, found.offset, found.found_by) == expected


@pytest.mark.parametrize("path", [LIBSSL3, BORINGSSL, str(CFFI)])
def test_the_key_log_routines_own_code_agrees_with_the_accessor(path):
    if not os.path.exists(path):
        pytest.skip("make setup installs curl_cffi into .tools/")
    anchor = anchors.keylog_function(path)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        from_routine = anchors._trace_random(elf, anchor.address)
        from_accessor = anchors._trace_random(elf, anchors._function_address(elf, "SSL_get_client_random"))
    assert from_routine is not None and from_routine == from_accessor


def test_no_client_random_without_an_accessor_or_a_routine(tmp_path):
    assert anchors.client_random("/bin/ls", "openssl", None) is None
    assert anchors.client_random(str(tmp_path / "missing"), "openssl", None) is None
