"""TLS secrets from the C libraries' key-log routines (found by their labels, the client random's
place read from the library's own code), proved against each program's own key log: every line
ecapture writes is a line of the program's file, and every line of the file is written.

OpenSSL: curl and Python's ssl (keylog_filename). GnuTLS: gnutls-cli. BoringSSL: bssl-tool (Debian's
shared library), curl_cffi (static, with symbols) and a stripped copy of curl_cffi (static, no
symbols: secrets only)."""
from __future__ import annotations

import collections
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ECAPTURE

TOOLS = Path(__file__).resolve().parents[2] / ".tools"
CFFI = TOOLS / "curl_cffi"
WRAPPER = CFFI / "curl_cffi" / "_wrapper.abi3.so"

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: secrets}}
spec:
  targets:
    - name: t
      kind: {kind}
      {where}
  parsers: []
  sinks:
    - {{type: keylog, path: "{keys}"}}
    - {{type: jsonl, path: "{{jsonl}}"}}
"""

TLS13_LABELS = {"CLIENT_HANDSHAKE_TRAFFIC_SECRET", "SERVER_HANDSHAKE_TRAFFIC_SECRET",
                "CLIENT_TRAFFIC_SECRET_0", "SERVER_TRAFFIC_SECRET_0"}


def _check(cap, keys: Path, own: Path, version: str, stack: str, comm_prefix: str) -> None:
    expected = own.read_text().splitlines()
    labels = {line.split()[0] for line in expected}
    if version == "tls12":
        assert labels == {"CLIENT_RANDOM"}
    else:
        assert TLS13_LABELS <= labels, labels
    captured = keys.read_text().splitlines()
    assert collections.Counter(captured) == collections.Counter(expected)     # every line, nothing else
    assert stat.S_IMODE(os.stat(keys).st_mode) == 0o600
    secrets = cap.records("tls.secret")
    assert secrets and all(r["tls"] == stack and r["comm"].startswith(comm_prefix) for r in secrets)
    assert "secret" not in cap.stdout          # nothing printed to the terminal
    assert cap.records("loss") == []


def _wait_lines(cap, own: Path, timeout: float = 20) -> None:
    n = len(own.read_text().splitlines())
    assert n > 0
    assert cap.wait_for(lambda rs: sum(r["type"] == "tls.secret" for r in rs) >= n, timeout), cap.stderr


@pytest.mark.parametrize("version", ["tls13", "tls12"])
def test_openssl_secrets_equal_curls_key_log(apply_profile, nginx_server, tmp_path, version):
    keys, own = tmp_path / "captured.keys", tmp_path / "curl.keys"
    profile = PROFILE.format(kind="openssl", where="binary: /usr/bin/curl", keys=keys)
    with apply_profile(profile) as cap:
        plan = subprocess.run([ECAPTURE, "plan", str(cap.jsonl.parent / "profile.yaml")], capture_output=True,
                              text=True).stdout
        assert "client random at session+0x" in plan and "from SSL_get_client_random" in plan, plan
        for i in range(2):
            args = ["--tls-max", "1.2"] if version == "tls12" else ["--tlsv1.3"]
            out = subprocess.run(["curl", "-sk", *args, f"{nginx_server.url}/k{i}"], capture_output=True,
                                 env={**os.environ, "SSLKEYLOGFILE": str(own)}, timeout=30)
            assert out.returncode == 0, out.stderr
        _wait_lines(cap, own)
    _check(cap, keys, own, version, "openssl", "curl")
    assert all(r["conn"]["remote"].endswith(f":{nginx_server.port}") for r in cap.records("tls.secret"))


def test_python_ssl_secrets_equal_its_keylog_filename(apply_profile, nginx_server, tmp_path):
    keys, own = tmp_path / "captured.keys", tmp_path / "python.keys"
    script = ("import ssl, sys, urllib.request\n"
              "ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE\n"
              "ctx.keylog_filename = sys.argv[2]\n"
              "for p in ('/py/1', '/py/2'):\n"
              "    try: urllib.request.urlopen(sys.argv[1] + p, context=ctx).read()\n"
              "    except Exception as e: print(e)\n")
    profile = PROFILE.format(kind="openssl", where="binary: /usr/bin/python3.11", keys=keys)
    with apply_profile(profile) as cap:
        out = subprocess.run(["/usr/bin/python3.11", "-c", script, nginx_server.url, str(own)], capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        own.write_text("".join(ln + "\n" for ln in own.read_text().splitlines() if not ln.startswith("#")))
        _wait_lines(cap, own)
    _check(cap, keys, own, "tls13", "openssl", "python3")


@pytest.mark.parametrize("version", ["tls13", "tls12"])
def test_gnutls_secrets_equal_gnutls_clis_key_log(apply_profile, nginx_server, tmp_path, version):
    keys, own = tmp_path / "captured.keys", tmp_path / "gnutls.keys"
    prio = "NORMAL:-VERS-ALL:+VERS-TLS1.2" if version == "tls12" else "NORMAL:-VERS-ALL:+VERS-TLS1.3"
    profile = PROFILE.format(kind="gnutls", where="binary: /usr/bin/gnutls-cli", keys=keys)
    with apply_profile(profile) as cap:
        for i in range(2):
            out = subprocess.run(["gnutls-cli", "--insecure", f"--priority={prio}", "-p", str(nginx_server.port),
                                  "127.0.0.1"], input=f"GET /g{i} HTTP/1.0\r\nHost: x\r\n\r\n".encode(),
                                 capture_output=True, env={**os.environ, "SSLKEYLOGFILE": str(own)}, timeout=30)
            assert b"HTTP/1.1" in out.stdout, out.stderr
        _wait_lines(cap, own)
    _check(cap, keys, own, version, "gnutls", "gnutls-cli")


def test_boringssl_shared_library_secrets_equal_bssl_tools_key_log(apply_profile, nginx_server, tmp_path):
    keys, own = tmp_path / "captured.keys", tmp_path / "bssl.keys"
    profile = PROFILE.format(kind="boringssl", where="binary: /usr/bin/bssl-tool", keys=keys)
    with apply_profile(profile) as cap:
        client = subprocess.Popen(["bssl-tool", "client", "-connect", f"127.0.0.1:{nginx_server.port}"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  env={**os.environ, "SSLKEYLOGFILE": str(own)})
        try:
            client.stdin.write(b"GET /bssl HTTP/1.0\r\nHost: x\r\n\r\n")
            client.stdin.flush()
            deadline = time.monotonic() + 20
            while not (own.exists() and len(own.read_text().splitlines()) >= 4) and time.monotonic() < deadline:
                time.sleep(0.1)
            _wait_lines(cap, own)
        finally:
            client.kill()
            client.wait()
    _check(cap, keys, own, "tls13", "boringssl", "bssl-tool")


CFFI_SCRIPT = ("import sys\nfrom curl_cffi import requests\n"
               "for p in ('/cffi/one', '/cffi/two'):\n"
               "    r = requests.get(sys.argv[1] + p, verify=False, impersonate='chrome')\n"
               "    print(r.status_code)\n")


@pytest.mark.skipif(not WRAPPER.exists(), reason="make setup installs curl_cffi into .tools/")
@pytest.mark.parametrize("build", ["static", "stripped"])
def test_static_boringssl_secrets_equal_curl_cffis_key_log(apply_profile, nginx_server, tmp_path, build):
    package = CFFI
    if build == "stripped":
        package = tmp_path / "cffi"
        shutil.copytree(CFFI, package, symlinks=True)
        wrapper = package / "curl_cffi" / WRAPPER.name
        subprocess.run(["strip", "--strip-all", str(wrapper)], check=True)
        out = subprocess.run(["nm", str(wrapper)], capture_output=True, text=True)
        assert "no symbols" in out.stderr, out.stdout[:200]
    wrapper = package / "curl_cffi" / WRAPPER.name
    keys, own = tmp_path / "captured.keys", tmp_path / "cffi.keys"
    profile = PROFILE.format(kind="boringssl", where=f"binary: /usr/bin/python3.11\n      library: {wrapper}",
                             keys=keys)
    with apply_profile(profile) as cap:
        plan = subprocess.run([ECAPTURE, "plan", str(cap.jsonl.parent / "profile.yaml")], capture_output=True,
                              text=True).stdout
        if build == "stripped":
            assert "secrets only" in plan and "from the key-log function's own code" in plan, plan
        else:
            assert "from SSL_get_client_random" in plan, plan
        run = subprocess.run(["/usr/bin/python3.11", "-c", CFFI_SCRIPT, nginx_server.url], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(package),
                                                         "SSLKEYLOGFILE": str(own)})
        assert run.returncode == 0, run.stderr
        _wait_lines(cap, own)
    _check(cap, keys, own, "tls13", "boringssl", "python3")
    if build == "static":
        assert all(r["conn"]["remote"].endswith(f":{nginx_server.port}") for r in cap.records("tls.secret"))
