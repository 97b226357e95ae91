"""Kernel tests: real probes on real programs. Needs root, bcc, kernel headers and tracefs (`make setup`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ECAPTURE = str(ROOT / ".venv" / "bin" / "ecapture")
sys.path.insert(0, str(ROOT))

from orchestrator import preflight  # noqa: E402
from tests.support import jsonl as jsonl_file  # noqa: E402


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(scope="session", autouse=True)
def _kernel_ready():
    problems = preflight.problems()
    if problems:
        pytest.fail("kernel tests cannot run here: " + "; ".join(problems) + " (run `make setup`)")


class Capture:
    def __init__(self, proc, jsonl: Path, stderr_path: Path, stdout_path: Path):
        self.proc = proc
        self.jsonl = jsonl
        self.stderr_path = stderr_path
        self.stdout_path = stdout_path
        self.returncode = None

    def records(self, type_=None) -> list[dict]:
        out = jsonl_file.read(self.jsonl, finished=self.proc.poll() is not None)
        return [r for r in out if type_ is None or r["type"] == type_]

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate(self.records()):
                return True
            time.sleep(0.1)
        return False


@pytest.fixture
def apply_profile(tmp_path):
    """Run `ecapture apply` on a profile text (with `{jsonl}` replaced by a sink path) until the block ends."""

    @contextmanager
    def run(profile_text: str, name: str = "profile.yaml", extra_args=(), expect_ready=True):
        jsonl = tmp_path / "out.jsonl"
        path = tmp_path / name
        path.write_text(profile_text.replace("{jsonl}", str(jsonl)))
        ready = tmp_path / "ready"
        ready.unlink(missing_ok=True)   # a previous run in the same test left one
        jsonl.unlink(missing_ok=True)
        err_path, out_path = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
        with open(err_path, "w") as err, open(out_path, "w") as out:
            proc = subprocess.Popen([ECAPTURE, "apply", str(path), "--ready-file", str(ready), *extra_args],
                                    stdout=out, stderr=err, cwd=tmp_path)
        cap = Capture(proc, jsonl, err_path, out_path)
        try:
            deadline = time.time() + 60
            while expect_ready and not ready.exists():
                if proc.poll() is not None:
                    raise AssertionError(f"ecapture apply exited {proc.returncode}: {cap.stderr}")
                if time.time() > deadline:
                    raise AssertionError(f"ecapture apply not ready after 60 s: {cap.stderr}")
                time.sleep(0.05)
            yield cap
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                cap.returncode = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                cap.returncode = proc.wait()

    return run


@pytest.fixture(scope="module")
def nginx_server():
    from tests.support.nginx import NginxServer
    with NginxServer(workers=1) as server:
        yield server


def uprobe_events_of(pid: int) -> list[str]:
    """Lines of /sys/kernel/tracing/uprobe_events that bcc created for process `pid`."""
    text = Path("/sys/kernel/tracing/uprobe_events").read_text()
    return [ln for ln in text.splitlines() if f"_bcc_{pid}" in ln]


def perf_event_fds(pid: int = None) -> int:
    base = f"/proc/{pid or os.getpid()}/fd"
    n = 0
    for fd in os.listdir(base):
        try:
            if os.readlink(f"{base}/{fd}") == "anon_inode:[perf_event]":
                n += 1
        except OSError:
            pass
    return n
