"""bcc has one owner: start, an edit, a compile on the watcher's thread, SIGINT; 20 times.

Before bcc had one owner, `apply` died with SIGSEGV in libbcc (`TableStorage::iterator`) when
stopped after reloads (modules compiled and closed on several threads), and relative paths
resolved during a compile (bcc `chdir`s into the kernel headers) went wrong. Each cycle here
runs a fresh `apply` whose JSONL sink has a relative path, makes a filter edit, then an edit
that compiles a new program on the watcher's thread (while old programs close in the
background), and stops it with SIGINT in the middle of that. Every cycle must exit 0 with its summary, put
its records where the path says, and hold every write of the two writers between the first and
the last it captured, once each, in order.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.kernel.conftest import ECAPTURE
from tests.kernel.test_reload import Generator, _wait_for, cert, profile  # noqa: F401  (fixture)

CYCLES = 20
COMMS = ("owner-a", "owner-b")     # names no other test's writers use
KERNEL_SOURCE = Path(f"/lib/modules/{os.uname().release}/source")


def _profile(comm: list[str], max_bytes: int, ring_kib: int = 256) -> str:
    return profile("stress", comm, jsonl="out/records.jsonl",
                   target_extra=f"\n      max_bytes: {max_bytes}\n      ring_buffer_kib: {ring_kib}")


def _contiguous(datas: list[str]) -> bool:
    numbers = [int(d.split(":")[1]) for d in datas]
    return numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers else True


def _cycle(workdir: Path, i: int, pids: list[int]) -> None:
    workdir.mkdir()
    profile = workdir / "stress.yaml"
    profile.write_text(_profile(list(COMMS), 4096))
    err_path = workdir / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([ECAPTURE, "apply", "stress.yaml", "--ready-file", "ready"],
                                cwd=workdir, stdout=subprocess.DEVNULL, stderr=err)
    out = workdir / "out" / "records.jsonl"
    try:
        assert _wait_for(lambda: (workdir / "ready").exists() or proc.poll() is not None, 60), err_path.read_text()
        assert proc.poll() is None, err_path.read_text()
        assert _wait_for(lambda: out.exists() and out.stat().st_size > 0, 20), err_path.read_text()
        # A filter edit (map writes), then an edit of max_bytes and the ring size (a compile on the
        # watcher's thread), then stop while that is under way: at a different moment each cycle.
        profile.write_text(_profile([*COMMS, f"other-{i}"], 4096))
        time.sleep(0.1 + 0.05 * (i % 5))
        profile.write_text(_profile(list(COMMS), 2048 + 64 * i, 512))
        time.sleep(0.05 * (i % 7))
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err_path.read_text()
    assert rc == 0, f"cycle {i}: exit {rc}\n{stderr}"
    assert "stopped after" in stderr and "Traceback" not in stderr, f"cycle {i}: no summary\n{stderr}"
    assert "../" not in stderr, f"cycle {i}: a path was resolved against bcc's working directory\n{stderr}"
    records = [json.loads(line) for line in out.read_text().splitlines()]
    writes = [r for r in records if r["type"] == "data" and r["direction"] == "write"]
    assert writes, f"cycle {i}: nothing captured\n{stderr}"
    for pid in pids:
        datas = [r["data"] for r in writes if r["pid"] == pid]
        assert _contiguous(datas), f"cycle {i}: pid {pid}'s writes have gaps or duplicates"
    assert [r for r in records if r["type"] == "loss"] == [], f"cycle {i}: losses"


def test_start_edit_sigint_twenty_times(cert, tmp_path):  # noqa: F811
    writers = [Generator(cert, comm, 0, 0.002) for comm in COMMS]
    stray = KERNEL_SOURCE / "out"
    try:
        for i in range(CYCLES):
            _cycle(tmp_path / f"cycle{i:02d}", i, [w.pid for w in writers])
            assert not stray.exists(), "a relative sink path was opened inside bcc's working directory"
    finally:
        for w in writers:
            w.kill()
