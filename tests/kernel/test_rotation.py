"""JSONL rotation under load and SIGHUP reopening, with the real `ecapture apply`, nginx and curl:
no record lost, none split across files, none twice, old files 0600 and bounded by `keep`."""
from __future__ import annotations

import collections
import gzip
import os
import re
import signal
import stat
import subprocess
import time
from pathlib import Path

from tests.support import jsonl as jsonl_file
from tests.support.nginx import curl

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: rotation-test}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
  parsers: [http1]
  sinks:
{sinks}
"""
CLIENTS = 4
REQUESTS_EACH = 400           # requests per curl process, on one keep-alive connection
MAX_BYTES = 64_000            # ~1.4 MB of http records: ~20 rotations
KEEP = 60


def _read(path: Path, strict: bool = True) -> list[dict]:
    data = path.read_bytes()
    return jsonl_file.parse(gzip.decompress(data) if path.name.endswith(".gz") else data, strict, path)


def _files(jsonl: Path) -> tuple[list[Path], list[Path]]:
    """(old files oldest first, every file of the sink oldest first)."""
    old = [p for p in jsonl.parent.iterdir() if re.fullmatch(re.escape(jsonl.name) + r"\.\d+(\.gz)?", p.name)]
    old.sort(key=lambda p: -int(p.name[len(jsonl.name) + 1:].split(".")[0]))
    return old, old + [jsonl]


def _responses_seen(jsonl: Path) -> int:
    """While apply runs: a file may be compressed (both names exist for a moment) or rotated
    between listing and reading; count each record once, by its sequence number."""
    seqs = set()
    for p in _files(jsonl)[1]:
        try:
            seqs.update(r["seq"] for r in _read(p, strict=False) if r["type"] == "http.response")
        except (OSError, EOFError, gzip.BadGzipFile):
            pass
    return len(seqs)


def _summary_records(stderr: str) -> collections.Counter:
    """Record counts from apply's exit line `stopped after ...; records: type=n, ...`."""
    m = re.search(r"stopped after .* event\(s\); records: (.*)", stderr)
    assert m, stderr
    return collections.Counter({k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split(", "))})


def _http_paths(pcap: Path, port: int) -> list[str]:
    out = subprocess.run(["tshark", "-n", "-r", str(pcap), "-d", f"tcp.port=={port},http", "-Y", "http.request",
                          "-T", "fields", "-e", "http.request.uri"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _wait(predicate, timeout: float, what: str, cap) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout} s\n{cap.stderr}")


def test_rotation_under_load_loses_and_splits_nothing(apply_profile, nginx_server, tmp_path):
    sinks = (f'    - {{type: jsonl, path: "{{jsonl}}", '
             f'rotate: {{max_bytes: {MAX_BYTES}, keep: {KEEP}, compress: true}}}}')
    total = CLIENTS * REQUESTS_EACH
    with apply_profile(PROFILE.format(sinks=sinks)) as cap:
        clients = [subprocess.Popen(["curl", "-sS", "-k", "--http1.1", "--noproxy", "*", "-o", "/dev/null",
                                     f"{nginx_server.url}/rot/{c}/[1-{REQUESTS_EACH}]"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for c in range(CLIENTS)]
        for proc in clients:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
        _wait(lambda: _responses_seen(cap.jsonl) >= total, 120, f"{total} responses in the files", cap)
    assert cap.returncode == 0, cap.stderr
    old, every = _files(cap.jsonl)
    assert 5 <= len(old) <= KEEP, [p.name for p in old]
    assert all(p.name.endswith(".gz") for p in old), [p.name for p in old]   # compressed, none failed
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".partial", ".next"))]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in every)
    records = [r for p in every for r in _read(p)]          # each line parses whole: none split
    counted = collections.Counter(r["type"] for r in records)
    assert counted == _summary_records(cap.stderr), cap.stderr     # none lost at a rotation
    assert counted["http.request"] == counted["http.response"] == total
    seqs = [r["seq"] for r in records if r["type"] != "loss"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)     # in order across files, none twice
    assert sorted(r["path"] for r in records if r["type"] == "http.request") == \
        sorted(f"/rot/{c}/{i}" for c in range(CLIENTS) for i in range(1, REQUESTS_EACH + 1))


def test_sighup_reopens_renamed_files(apply_profile, nginx_server, tmp_path):
    keys, pcap = tmp_path / "keys.log", tmp_path / "plain.pcapng"
    sinks = (f'    - {{type: jsonl, path: "{{jsonl}}"}}\n    - {{type: keylog, path: "{keys}"}}\n'
             f'    - {{type: pcapng, path: "{pcap}", source: plaintext}}')
    with apply_profile(PROFILE.format(sinks=sinks)) as cap:
        for i in range(5):
            assert curl(f"{nginx_server.url}/before/{i}").returncode == 0     # a connection (handshake) each
        _wait(lambda: sum(r["type"] == "http.response" for r in cap.records()) >= 5, 20, "5 responses", cap)
        _wait(lambda: keys.exists() and len(keys.read_text().splitlines()) >= 5, 20, "5 secrets", cap)
        renamed, keys_renamed = tmp_path / "out.jsonl.old", tmp_path / "keys.log.old"
        os.rename(cap.jsonl, renamed)               # what logrotate does, then its postrotate: kill -HUP
        os.rename(keys, keys_renamed)
        pcap_renamed = tmp_path / "plain.pcapng.old"
        os.rename(pcap, pcap_renamed)
        cap.proc.send_signal(signal.SIGHUP)
        _wait(lambda: "SIGHUP: reopened 3 file(s)" in cap.stderr, 20, "the reopen line", cap)
        assert cap.jsonl.exists() and keys.exists() and pcap.exists()
        for i in range(7):
            assert curl(f"{nginx_server.url}/after/{i}").returncode == 0
        _wait(lambda: sum(r["type"] == "http.response" for r in cap.records()) >= 7, 20, "7 new responses", cap)
        _wait(lambda: len(keys.read_text().splitlines()) >= 7, 20, "7 new secrets", cap)
    assert cap.returncode == 0, cap.stderr
    assert cap.proc.returncode == 0
    before, after = _read(renamed), _read(cap.jsonl)
    assert [r["path"] for r in before if r["type"] == "http.request"] == [f"/before/{i}" for i in range(5)]
    assert [r["path"] for r in after if r["type"] == "http.request"] == [f"/after/{i}" for i in range(7)]
    counted = collections.Counter(r["type"] for r in before + after)
    assert counted == _summary_records(cap.stderr), cap.stderr      # none lost at the reopen
    for p in (cap.jsonl, keys, pcap):
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
    # each pcapng file stands alone (its own section header and interface), as tshark reads it
    assert _http_paths(pcap_renamed, nginx_server.port) == [f"/before/{i}" for i in range(5)]
    assert _http_paths(pcap, nginx_server.port) == [f"/after/{i}" for i in range(7)]
    old_secrets, new_secrets = keys_renamed.read_text(), keys.read_text()
    for text in (old_secrets, new_secrets):
        assert text.endswith("\n") and all(len(ln.split()) == 3 for ln in text.splitlines())
    assert not set(old_secrets.splitlines()) & set(new_secrets.splitlines())
    assert counted["tls.secret"] == len(old_secrets.splitlines()) + len(new_secrets.splitlines())
