"""pcapng sinks, read back with Debian's tshark.

Packets (`interfaces: [lo]`): the TC classifier captures the targets' connections, their TLS
secrets go in Decryption Secrets Blocks, and tshark prints the requests with no key file given:
OpenSSL (nginx, with curl as the client) over TLS 1.3 and 1.2, HTTP/1.1 and HTTP/2, and Go.
Plaintext (`source: plaintext`): synthesized packets that tshark dissects as HTTP/2, MySQL and
PostgreSQL. And the classifier's hygiene as apply runs it: status shows it, stop and a reload
without the sink remove it, a killed apply's filter is removed at the next start."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ECAPTURE
from tests.support import gobuild, listen
from tests.support.databases import MariaDB, Postgres
from tests.support.nginx import NginxServer, free_port

TSHARK = "/usr/bin/tshark"
pytestmark = pytest.mark.skipif(not os.path.exists(TSHARK), reason="make setup installs tshark")

PACKETS = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: pkt}}
spec:
  targets:
    - name: web
      kind: {kind}
      binary: {binary}
  parsers: []
  sinks:
    - {{type: pcapng, path: "{pcap}", interfaces: [lo]}}
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def tshark(pcap: Path, *args: str) -> list[str]:
    out = subprocess.run([TSHARK, "-n", "-r", str(pcap), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [ln for ln in out.stdout.splitlines() if ln.strip()]


def ecapture_filters() -> list[str]:
    """Our cls_bpf filters on lo, as tc shows them (an independent witness)."""
    out = subprocess.run(["tc", "filter", "show", "dev", "lo", "egress"], capture_output=True, text=True)
    return [ln for ln in out.stdout.splitlines() if "ecapture:" in ln]


@pytest.fixture(scope="module")
def h2_nginx():
    with NginxServer(workers=1, http2=True) as server:
        yield server


def _check_packets_file(pcap: Path, paths: list[str], field: str, comm: str) -> None:
    assert stat.S_IMODE(os.stat(pcap).st_mode) == 0o600
    assert sorted(tshark(pcap, "-Y", "http.request or http2.headers.path", "-T", "fields", "-e", field)) == \
        sorted(paths)
    comments = tshark(pcap, "-T", "fields", "-e", "frame.comment")
    assert comments and all(f"comm={comm}" in c and "profile=pkt target=web" in c for c in comments), comments[:3]
    # loopback packets once: no segment seen twice
    assert tshark(pcap, "-Y", "tcp.analysis.retransmission or tcp.analysis.duplicate_ack") == []


@pytest.mark.parametrize("tls, http", [("1.3", "1.1"), ("1.2", "1.1"), ("1.3", "2")])
def test_nginx_packets_decrypt_with_no_key_file(apply_profile, nginx_server, h2_nginx, tmp_path, tls, http):
    server = h2_nginx if http == "2" else nginx_server
    pcap = tmp_path / "out.pcapng"
    paths = [f"/pkt/{tls}/{http}/{i}" for i in range(3)]
    version = ["--tlsv1.3"] if tls == "1.3" else ["--tlsv1.2", "--tls-max", "1.2"]
    with apply_profile(PACKETS.format(kind="openssl", binary="/usr/sbin/nginx", pcap=pcap)) as cap:
        status = json.loads(subprocess.run([ECAPTURE, "status", "--json"], capture_output=True, text=True).stdout)
        assert status["packet_capture"] == [{"interface": "lo", "directions": ["egress"], "sinks": 1}], status
        assert len(ecapture_filters()) == 1
        for p in paths:
            out = subprocess.run(["curl", "-sk", *version, "--http2" if http == "2" else "--http1.1",
                                  f"https://127.0.0.1:{server.port}{p}"], capture_output=True, timeout=30)
            assert out.returncode == 0, out.stderr
        assert cap.wait_for(lambda rs: sum(r["type"] == "tls.secret" for r in rs) >= 3, 20), cap.stderr
    assert cap.returncode == 0, cap.stderr
    assert ecapture_filters() == []              # stop took the classifier off
    field = "http2.headers.path" if http == "2" else "http.request.uri"
    _check_packets_file(pcap, paths, field, "nginx")
    if http == "2":
        assert tshark(pcap, "-Y", "http2.type == 1 and http2.headers.status == 404 or "
                                  "http2.headers.status == 200", "-T", "fields", "-e", "frame.number")


def test_a_long_connection_is_kept_past_its_handshake(apply_profile, nginx_server, tmp_path):
    """40 requests on one keep-alive connection: far more packets than a young connection's 16, so
    the ones after its handshake are there only because the probes claimed it in the kernel."""
    pcap = tmp_path / "out.pcapng"
    paths = [f"/long/{i}" for i in range(40)]
    with apply_profile(PACKETS.format(kind="openssl", binary="/usr/sbin/nginx", pcap=pcap)) as cap:
        out = subprocess.run(["curl", "-sk", "--http1.1", *(f"{nginx_server.url}{p}" for p in paths)],
                             capture_output=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert cap.wait_for(lambda rs: any(r["type"] == "tls.secret" for r in rs), 20), cap.stderr
    ports = {ln for ln in tshark(pcap, "-Y", "http.request", "-T", "fields", "-e", "tcp.srcport")}
    assert len(ports) == 1                       # one connection carried them all
    _check_packets_file(pcap, paths, "http.request.uri", "nginx")


@pytest.fixture(scope="module")
def go_server_binary(tmp_path_factory):
    out = tmp_path_factory.mktemp("gotls")
    binary = gobuild.build(gobuild.toolchains()["go1.19-debian"], "pie-stripped", out / "gotls", out / "cache")
    cert, key = out / "c.pem", out / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return binary, cert, key


@pytest.mark.parametrize("tls, http", [("1.3", "1.1"), ("1.2", "1.1"), ("1.3", "2")])
def test_go_packets_decrypt_with_no_key_file(apply_profile, go_server_binary, tmp_path, tls, http):
    binary, cert, key = go_server_binary
    port = free_port()
    pcap = tmp_path / "out.pcapng"
    paths = [f"/go/{tls}/{http}/{i}" for i in range(3)]
    env = {**os.environ, "GOTLS_TLS12": "1" if tls == "1.2" else "0"}
    with apply_profile(PACKETS.format(kind="gotls", binary=binary, pcap=pcap)) as cap:
        server = listen.start_server([str(binary), "serve", str(cert), str(key), f"127.0.0.1:{port}"], port, env=env)
        try:
            for p in paths:
                out = subprocess.run(["curl", "-sk", "--http2" if http == "2" else "--http1.1",
                                      f"https://127.0.0.1:{port}{p}"], capture_output=True, timeout=30)
                assert out.returncode == 0, out.stderr
            per_handshake = 1 if tls == "1.2" else 4
            assert cap.wait_for(lambda rs: sum(r["type"] == "tls.secret" for r in rs) >= 3 * per_handshake, 20), \
                cap.stderr
        finally:
            server.kill()
    _check_packets_file(pcap, paths, "http2.headers.path" if http == "2" else "http.request.uri", binary.name)


PLAINTEXT = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: plain}}
spec:
  targets:
    - name: t
      kind: {kind}
      {where}
  sinks:
    - {{type: pcapng, path: "{pcap}", source: plaintext}}
    - {{type: jsonl, path: "{{jsonl}}"}}
"""


def test_plaintext_http2_from_tls_dissects(apply_profile, h2_nginx, tmp_path):
    pcap = tmp_path / "plain.pcapng"
    with apply_profile(PLAINTEXT.format(kind="openssl", where="binary: /usr/sbin/nginx", pcap=pcap)) as cap:
        for i in range(2):
            assert subprocess.run(["curl", "-sk", "--http2", f"https://127.0.0.1:{h2_nginx.port}/plain/{i}"],
                                  capture_output=True, timeout=30).returncode == 0
        assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= 2, 20), cap.stderr
    # the plaintext of port 443-less TLS: tshark is told the port speaks HTTP/2
    paths = tshark(pcap, "-d", f"tcp.port=={h2_nginx.port},http2", "-Y", "http2.headers.path", "-T", "fields",
                   "-e", "http2.headers.path")
    assert sorted(paths) == ["/plain/0", "/plain/1"]
    comments = tshark(pcap, "-T", "fields", "-e", "frame.comment")
    assert all("comm=nginx" in c and "profile=plain target=t" in c for c in comments)
    assert stat.S_IMODE(os.stat(pcap).st_mode) == 0o600


def test_plaintext_mysql_and_postgres_dissect(apply_profile, tmp_path):
    pcap_my, pcap_pg = tmp_path / "my.pcapng", tmp_path / "pg.pcapng"
    with MariaDB() as my:
        with apply_profile(PLAINTEXT.format(kind="socket", where="filters: {comm: [mariadb]}", pcap=pcap_my)) as cap:
            my.client("SELECT 41 + 1 AS answer; SELECT 'pcapng' AS word")
            assert cap.wait_for(lambda rs: sum(r["type"] == "mysql.result" for r in rs) >= 2, 20), cap.stderr
        queries = tshark(pcap_my, "-d", f"tcp.port=={my.port},mysql", "-Y", "mysql.query", "-T", "fields",
                         "-e", "mysql.query")
        assert "SELECT 41 + 1 AS answer" in queries and "SELECT 'pcapng' AS word" in queries
    with Postgres() as pg:
        with apply_profile(PLAINTEXT.format(kind="socket", where="filters: {comm: [psql]}", pcap=pcap_pg),
                           name="pg.yaml") as cap:
            pg.client("SELECT 41 + 1 AS answer;")
            assert cap.wait_for(lambda rs: any(r["type"] == "pg.result" for r in rs), 20), cap.stderr
        queries = tshark(pcap_pg, "-d", f"tcp.port=={pg.port},pgsql", "-Y", "pgsql.query", "-T", "fields",
                         "-e", "pgsql.query")
        assert any("SELECT 41 + 1 AS answer" in q for q in queries), queries


def test_reload_without_the_sink_removes_the_classifier(apply_profile, nginx_server, tmp_path):
    pcap = tmp_path / "out.pcapng"
    text = PACKETS.format(kind="openssl", binary="/usr/sbin/nginx", pcap=pcap)
    with apply_profile(text) as cap:
        assert len(ecapture_filters()) == 1
        profile = cap.jsonl.parent / "profile.yaml"
        profile.write_text(text.replace(f'    - {{type: pcapng, path: "{pcap}", interfaces: [lo]}}\n', ""))
        deadline = time.monotonic() + 20
        while ecapture_filters() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ecapture_filters() == [], cap.stderr
        status = json.loads(subprocess.run([ECAPTURE, "status", "--json"], capture_output=True, text=True).stdout)
        assert status["packet_capture"] == []


def test_a_killed_applys_classifier_is_removed_at_the_next_start(apply_profile, nginx_server, tmp_path):
    pcap = tmp_path / "out.pcapng"
    text = PACKETS.format(kind="openssl", binary="/usr/sbin/nginx", pcap=pcap)
    with apply_profile(text) as cap:
        assert len(ecapture_filters()) == 1
        cap.proc.send_signal(signal.SIGKILL)
        cap.proc.wait()
    left = ecapture_filters()
    assert len(left) == 1                       # a filter outlives the process that added it
    with apply_profile(text.replace("out.pcapng", "again.pcapng"), name="again.yaml") as cap:
        filters = ecapture_filters()
        assert len(filters) == 1 and filters != left, filters        # the stale one gone, ours in place
        assert "removed" in cap.stderr and "lo egress" in cap.stderr
    assert ecapture_filters() == []
