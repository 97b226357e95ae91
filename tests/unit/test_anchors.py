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
def test_stripped_static_boringssl_fails_the_target_saying_what_it_found():
    anchor = anchors.keylog_function(GRPC)
    assert anchor is not None and len(anchor.labels) >= 5          # every TLS 1.3 secret leads there
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("g", "boringssl", binary="/usr/bin/python3.11", library=GRPC))
    assert "no function symbol 'SSL_write'" in exc.value.message and f"{anchor.address:#x}" in exc.value.message
    with pytest.raises(discovery.DiscoveryError) as exc:
        discovery.resolve(models.Target("g", "tls", binary=GRPC))
    assert "without symbols" in exc.value.message and "key-log function at" in exc.value.message


def test_files_without_labels_or_damaged_give_nothing(tmp_path):
    assert anchors.keylog_function("/bin/ls") is None
    junk = tmp_path / "junk.so"
    junk.write_bytes(os.urandom(4096))
    assert anchors.keylog_function(str(junk)) is None
    assert anchors.keylog_function(str(tmp_path / "missing")) is None


def test_one_label_alone_is_not_evidence(tmp_path):
    # OpenSSL 3 passes most labels through tables: its single direct LEA+call is not taken as the routine
    assert anchors.keylog_function("/usr/lib/x86_64-linux-gnu/libssl.so.3") is None
