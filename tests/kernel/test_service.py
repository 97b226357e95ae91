"""The systemd service's behaviour without systemd (issue 14): `ecapture apply` on a profiles folder
with exactly the unit's capabilities (setpriv: the bounding set systemd gives a root service, and
no new privileges) captures nginx's TLS plaintext; and `ecapture reload` (the unit's ExecReload)
reads the folder, retries and reopens files, even when no watcher told apply of a change."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ECAPTURE
from tests.support import jsonl as jsonl_file
from tests.support.nginx import curl
from tests.unit.test_packaging import unit

PROFILE = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: {name}}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: {jsonl}}}
"""
CAP_NUMBERS = {"CAP_DAC_READ_SEARCH": 2, "CAP_NET_ADMIN": 12, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21,
               "CAP_SYS_RESOURCE": 24, "CAP_PERFMON": 38, "CAP_BPF": 39}     # linux/capability.h
BROKEN = PROFILE.replace("      binary: /usr/sbin/nginx\n", "      binary: /usr/sbin/nginx\n      max_byte: 1\n")


def _caps(pid: int, field: str) -> int:
    line = next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith(field + ":"))
    return int(line.split()[1], 16)


def _paths(jsonl: Path) -> list[str]:
    return [r.get("path") for r in jsonl_file.read(jsonl, finished=False) if r["type"] == "http.request"]


def _captured(jsonl: Path, url: str, path: str, timeout: float = 20.0) -> bool:
    """curl `path` until its request shows in `jsonl` (the first may race the attach)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert curl(url + path).returncode == 0
        if path in _paths(jsonl):
            return True
        time.sleep(0.3)
    return False


class Apply:
    """`ecapture apply FOLDER` with its own control socket, optionally under setpriv."""

    def __init__(self, tmp_path: Path, folder: Path, args=(), wrapper=()):
        self.env = {**os.environ, "ECAPTURE_SOCKET": str(tmp_path / "run" / "apply.sock")}
        self.stderr_path = tmp_path / "apply.stderr"
        ready = tmp_path / "ready"
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([*wrapper, ECAPTURE, "apply", str(folder), "--ready-file", str(ready), *args],
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path, env=self.env)
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert self.proc.poll() is None, f"apply exited {self.proc.returncode}: {self.stderr}"
            assert time.monotonic() < deadline, f"apply not ready after 90 s: {self.stderr}"
            time.sleep(0.1)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def ecapture(self, *args) -> subprocess.CompletedProcess:
        return subprocess.run([ECAPTURE, *args], capture_output=True, text=True, env=self.env, timeout=320)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)      # what systemctl stop sends
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def folder(tmp_path) -> Path:
    d = tmp_path / "profiles.d"
    d.mkdir(mode=0o755)
    return d


def test_the_units_capabilities_are_enough_to_capture(tmp_path, folder, nginx_server):
    caps = unit()["Service"]["CapabilityBoundingSet"].split()
    bounding = ",".join(["-all"] + ["+" + c.removeprefix("CAP_").lower() for c in caps])
    jsonl = tmp_path / "web.jsonl"
    (folder / "web.yaml").write_text(PROFILE.format(name="web", jsonl=jsonl))
    wrapper = ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs", "--"]
    apply = Apply(tmp_path, folder, wrapper=wrapper)
    try:
        # Really restricted: the unit's set (less what this machine's own bounding set lacks).
        wanted = sum(1 << CAP_NUMBERS[c] for c in caps) & _caps(os.getpid(), "CapBnd")
        assert _caps(apply.proc.pid, "CapEff") == wanted
        assert _captured(jsonl, nginx_server.url, "/service/caps"), apply.stderr
        status = apply.ecapture("status")
        assert status.returncode == 0 and "web" in status.stdout, status.stderr
    finally:
        code = apply.stop()
    assert code == 0, apply.stderr
    assert "Traceback" not in apply.stderr


def test_reload_reads_the_folder_retries_and_reopens(tmp_path, folder, nginx_server):
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    (folder / "first.yaml").write_text(PROFILE.format(name="first", jsonl=first))
    apply = Apply(tmp_path, folder, args=["--no-watch"])      # only reload can tell it of a change
    try:
        assert _captured(first, nginx_server.url, "/reload/0"), apply.stderr
        (folder / "second.yaml").write_text(PROFILE.format(name="second", jsonl=second))
        time.sleep(1.0)
        assert not second.exists()                             # no watcher: nothing happened yet
        ok = apply.ecapture("reload")
        assert ok.returncode == 0, ok.stderr
        assert f"{folder / 'second.yaml'}: second ok" in ok.stderr and f"{folder / 'first.yaml'}: first ok" in ok.stderr
        assert _captured(second, nginx_server.url, "/reload/1"), apply.stderr

        # Output files are reopened, as on SIGHUP: after a rename a new file appears at the path.
        first.rename(tmp_path / "first.jsonl.1")
        assert apply.ecapture("reload").returncode == 0
        assert _captured(first, nginx_server.url, "/reload/2"), apply.stderr
        assert "/reload/2" not in _paths(tmp_path / "first.jsonl.1")

        # A broken profile: reload fails and says where; what ran keeps running.
        (folder / "broken.yaml").write_text(BROKEN.format(name="broken", jsonl=tmp_path / "broken.jsonl"))
        bad = apply.ecapture("reload")
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "broken.yaml:9:" in bad.stderr and "max_byte" in bad.stderr and "Traceback" not in bad.stderr
        assert _captured(second, nginx_server.url, "/reload/3"), apply.stderr

        # Deleted files stop their targets at the next reload too.
        (folder / "second.yaml").unlink()
        (folder / "broken.yaml").unlink()
        assert apply.ecapture("reload").returncode == 0
        assert _captured(first, nginx_server.url, "/reload/4"), apply.stderr
        assert "/reload/4" not in _paths(second)
    finally:
        code = apply.stop()
    assert code == 0, apply.stderr


def test_reload_without_a_running_apply_says_so(tmp_path):
    proc = subprocess.run([ECAPTURE, "reload"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "ECAPTURE_SOCKET": str(tmp_path / "none.sock")})
    assert proc.returncode == 3 and "no running `ecapture apply` answers" in proc.stderr
