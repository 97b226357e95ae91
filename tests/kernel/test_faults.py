"""Faults with real programs: `ecapture apply` killed with SIGKILL mid-capture, a JSONL sink on a
full disk, the captured program restarted. Checked by what a user sees: records in the files,
lines of the exit summary, and what is left in the kernel."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import uprobe_events_of
from tests.support import bpf_objects
from tests.support import jsonl as jsonl_file
from tests.support.nginx import NginxServer, curl, curl_loop

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: faults}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
      filters: {{ports: [{port}]}}
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{{jsonl}}"}}
{more_sinks}"""


def _profile(port: int, more_sinks: str = "") -> str:
    return PROFILE.format(port=port, more_sinks=more_sinks)


def _paths(records, type_="http.request") -> list[str]:
    return [r["path"] for r in records if r["type"] == type_]


def _http_path(record) -> str:
    """The request path an http.request or http.response record is about ("" for other records)."""
    if record["type"] == "http.request":
        return record["path"]
    if record["type"] == "http.response":
        return record["request"]["path"]
    return ""


def _wait(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def _got_response(cap, path: str, timeout: float = 10.0) -> bool:
    return cap.wait_for(lambda rs: any(r["type"] == "http.response" and r["request"]["path"] == path for r in rs),
                        timeout)


# ---------------------------------------------------------------- kill -9
def test_kill_9_mid_capture_leaves_nothing_and_a_new_apply_captures(apply_profile, nginx_server):
    profile = _profile(nginx_server.port)
    with apply_profile(profile) as cap:
        assert curl(nginx_server.url + "/before-kill").returncode == 0
        assert _got_response(cap, "/before-kill"), cap.stderr
        dead = cap.proc.pid
        held = bpf_objects.held_ids(dead)
        assert held["prog"] and held["map"] and held["perf_event"] != {0}, held
        with curl_loop(lambda i: f"{nginx_server.url}/during/{i}") as sent:
            assert _wait(lambda: len(sent) >= 3, 30)
            cap.proc.send_signal(signal.SIGKILL)
            cap.proc.wait(timeout=10)
            n = len(sent)
            assert _wait(lambda: len(sent) >= n + 3, 30)    # nginx keeps serving with the probes gone
    assert cap.returncode == -signal.SIGKILL
    # Nothing of the dead process is left in the kernel: no tracefs uprobe entries, and none of its
    # programs or maps (they would be kept alive by a leftover perf event, link or holder).
    assert uprobe_events_of(dead) == []
    progs_left, maps_left = bpf_objects.wait_gone(held["prog"], held["map"], timeout=10)
    assert progs_left == set() and maps_left == set()
    assert curl(nginx_server.url + "/between").returncode == 0

    with apply_profile(profile) as cap2:
        assert curl(nginx_server.url + "/after-kill").returncode == 0
        assert _got_response(cap2, "/after-kill"), cap2.stderr
    assert cap2.returncode == 0, cap2.stderr
    assert "/after-kill" in _paths(cap2.records())
    assert "/between" not in _paths(cap2.records())
    assert "Traceback" not in cap2.stderr
    assert uprobe_events_of(cap2.proc.pid) == []


# ---------------------------------------------------------------- full disk
@pytest.fixture
def small_tmpfs(tmp_path):
    """A 64 KiB tmpfs, mounted for this test only."""
    mnt = tmp_path / "small"
    mnt.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)], check=True, timeout=10)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], timeout=10)


def _fill(path: Path) -> None:
    """Write `path` until the file system is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = b"f" * 4096
        while True:
            try:
                if os.write(fd, chunk) == 0:
                    return
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return
    finally:
        os.close(fd)


def test_full_disk_sink_counts_losses_others_keep_capturing_and_it_resumes(apply_profile, nginx_server,
                                                                           small_tmpfs, tmp_path):
    small = small_tmpfs / "small.jsonl"
    filler = small_tmpfs / "filler"
    _fill(filler)
    profile = _profile(nginx_server.port, f'    - {{type: jsonl, path: "{small}"}}\n')
    with apply_profile(profile) as cap:
        for i in range(3):
            assert curl(f"{nginx_server.url}/full/{i}").returncode == 0
        assert _got_response(cap, "/full/2"), cap.stderr
        # The other sink is told, with loss records naming the failing sink.
        assert cap.wait_for(lambda rs: any(r["type"] == "loss" and r["stage"] == "sink.jsonl" for r in rs), 10)
        assert small.stat().st_size == 0            # nothing, not half a record
        filler.unlink()                             # space is back
        for i in range(2):
            assert curl(f"{nginx_server.url}/after/{i}").returncode == 0
        assert _wait(lambda: any(_http_path(r) == "/after/1" and r["type"] == "http.response"
                                 for r in jsonl_file.read(small, finished=False)), 10), cap.stderr
        assert _got_response(cap, "/after/1")
    assert cap.returncode == 0, cap.stderr

    good = cap.records()
    assert _paths(good) == [f"/full/{i}" for i in range(3)] + [f"/after/{i}" for i in range(2)]
    told = [r for r in good if r["type"] == "loss"]
    assert told and all(r["stage"] == "sink.jsonl" and r["target"] == "web" and r["sink"] == f"jsonl {small}"
                        for r in told)
    lost = sum(r["count"] for r in told)

    # The recovered file: a loss record saying what it lacks, then the new records, every line whole.
    mine = jsonl_file.read(small, finished=True)
    assert mine[0]["type"] == "loss" and mine[0]["stage"] == "sink.jsonl" and mine[0]["count"] == lost
    assert _paths(mine) == [f"/after/{i}" for i in range(2)]
    assert [r["type"] for r in mine[1:] if r["type"] != "tls.secret"] == ["http.request", "http.response"] * 2
    # exactly what the other sink has and this one lacks: the /full/* requests and responses, and
    # the TLS secrets of their connections
    lacking = [r for r in good if r["type"] != "loss"][:sum(1 for r in good if r["type"] != "loss") - len(mine) + 1]
    assert lost == len(lacking) and sum(_http_path(r).startswith("/full/") for r in lacking) == 6
    assert {r["type"] for r in lacking} == {"http.request", "http.response", "tls.secret"}

    # The exit summary lists the loss; the failure was warned about once, not once per batch.
    assert f"loss: faults/web sink.jsonl: {lost}" in cap.stderr, cap.stderr
    warned = [ln for ln in cap.stderr.splitlines() if "cannot write" in ln and str(small) in ln]
    assert len(warned) == 1, cap.stderr


# ---------------------------------------------------------------- the captured program restarts
def test_restarted_nginx_is_still_captured_without_a_profile_edit(apply_profile):
    with NginxServer(workers=1) as srv:
        with apply_profile(_profile(srv.port)) as cap:
            assert curl(srv.url + "/before-restart").returncode == 0
            assert _got_response(cap, "/before-restart"), cap.stderr
            old_master, old_workers = srv.master_pid, set(srv.worker_pids())
            srv.restart()
            new_workers = set(srv.worker_pids())
            assert srv.master_pid != old_master and not new_workers & old_workers
            for i in range(3):
                assert curl(f"{srv.url}/after-restart/{i}").returncode == 0
            _got_response(cap, "/after-restart/2", timeout=10)
        recs = cap.records()
        assert cap.returncode == 0, cap.stderr
        assert _paths(recs) == ["/before-restart"] + [f"/after-restart/{i}" for i in range(3)], cap.stderr
        after = [r for r in recs if r["type"] == "http.request" and r["path"].startswith("/after-restart/")]
        assert {r["pid"] for r in after} <= new_workers
