"""BoringSSL linked statically into a Python extension (the curl_cffi wheel's _wrapper.abi3.so,
whose SSL_read/SSL_write are local symbols in .symtab): curl_cffi's requests, as Chrome makes them
(HTTP/2 by ALPN), to an nginx serving HTTP/2."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CFFI = ROOT / ".tools" / "curl_cffi"
WRAPPER = CFFI / "curl_cffi" / "_wrapper.abi3.so"

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: cffi}}
spec:
  targets:
    - name: cffi
      kind: {kind}
      {where}
  parsers: [http1, http2]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
"""

pytestmark = pytest.mark.skipif(not WRAPPER.exists(), reason="make setup installs curl_cffi into .tools/")


@pytest.fixture(scope="module")
def h2_nginx():
    from tests.support.nginx import NginxServer
    with NginxServer(workers=1, http2=True) as server:
        yield server


@pytest.mark.parametrize("kind, where", [
    ("boringssl", f"binary: /usr/bin/python3.11\n      library: {WRAPPER}"),
    ("tls", f"binary: {WRAPPER}"),          # kind tls on the module itself: BoringSSL linked in
])
def test_curl_cffi_requests(apply_profile, h2_nginx, kind, where):
    nginx_server = h2_nginx
    script = ("import sys\nfrom curl_cffi import requests\n"
              "for p in ('/cffi/one', '/cffi/two'):\n"
              "    r = requests.get(sys.argv[1] + p, verify=False, impersonate='chrome')\n"
              "    print(r.status_code, r.http_version)\n")
    with apply_profile(PROFILE.format(kind=kind, where=where)) as cap:
        run = subprocess.run(["/usr/bin/python3.11", "-c", script, nginx_server.url], capture_output=True, text=True,
                             timeout=60, env={**os.environ, "PYTHONPATH": str(CFFI)})
        assert run.returncode == 0, run.stderr
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 2, 20), cap.stderr
    reqs, resps = cap.records("http.request"), cap.records("http.response")
    assert [r["path"] for r in reqs] == ["/cffi/one", "/cffi/two"]
    assert {r["version"] for r in reqs + resps} == {"HTTP/2"}, run.stdout      # HTTP/2 over BoringSSL
    assert [r["status"] for r in resps] == [200, 200] or [r["status"] for r in resps] == [404, 404]
    for r in reqs + resps:
        assert r["tls"] == "boringssl" and r["comm"].startswith("python3")
        assert r["conn"]["remote"].endswith(f":{nginx_server.port}")
    assert cap.records("loss") == []
