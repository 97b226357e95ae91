"""Hot reload with real probes: edits, new and deleted files, ConfigMap swaps and bad edits,
under a generator making a known number of TLS writes."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kernel.conftest import ROOT

GENERATOR = str(ROOT / "tests" / "support" / "tls_generator.py")
PYTHON = "/usr/bin/python3.11"
LIBSSL = "/lib/x86_64-linux-gnu/libssl.so.3"


def profile(name: str, comm: list[str], extra: str = "", jsonl: str = "{jsonl}", target_extra: str = "") -> str:
    return f"""apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: {name}}}
spec:
  targets:
    - name: gen
      kind: openssl
      binary: {PYTHON}
      library: {LIBSSL}
      filters: {{comm: [{', '.join(comm)}]{extra}}}{target_extra}
  parsers: []
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}
"""


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                   check=True, capture_output=True)
    return str(d / "c.pem"), str(d / "k.pem")


class Generator:
    def __init__(self, cert, comm: str, count: int, interval: float, go: Path | None = None):
        cmd = [PYTHON, GENERATOR, "--comm", comm, "--count", str(count), "--interval", str(interval),
               "--cert", cert[0], "--key", cert[1]]
        if go is not None:
            cmd += ["--go", str(go)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("ready "), line
        self.pid = int(line.split()[1])
        self.comm = comm

    def wait(self, timeout=120) -> int:
        out = self.proc.stdout.read()
        assert self.proc.wait(timeout) == 0
        return int(out.split()[-1])

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def writes(cap, comm: str) -> list[str]:
    return [r["data"] for r in cap.records("data") if r["direction"] == "write" and r["comm"] == comm]


def wait_records(cap, pred, timeout=15.0) -> bool:
    return cap.wait_for(pred, timeout=timeout)


def test_filter_rewrites_under_load_lose_and_duplicate_nothing(apply_profile, cert, tmp_path):
    count, edits = 6000, 10
    go = tmp_path / "go"
    gen = Generator(cert, "gen-a", count, 0.002, go)
    try:
        with apply_profile(profile("load", ["gen-a"])) as cap:
            path = tmp_path / "profile.yaml"
            go.touch()
            for i in range(edits):
                time.sleep(0.2)
                extra = ", uids: [0]" if i % 2 else ""
                path.write_text(profile("load", ["gen-a", f"other-{i}"], extra, jsonl=str(cap.jsonl)))
                # one reload per edit, each while the generator writes
                assert _wait_for(lambda: cap.stderr.count("reloaded load") == i + 1, 20), cap.stderr
            assert gen.proc.poll() is None, "the generator finished before the edits: make it longer"
            assert gen.wait() == count
            assert wait_records(cap, lambda rs: len([r for r in rs if r.get("comm") == "gen-a"
                                                     and r.get("direction") == "write"]) >= count)
            time.sleep(0.5)
        got = writes(cap, "gen-a")
        assert got == [f"wgen-a:{i:08d}\n" for i in range(count)]      # all, once each, in order
        err = cap.stderr
        assert err.count("replaced gen (gen ") == edits, err
        assert cap.records("loss") == []
    finally:
        gen.kill()


@pytest.mark.parametrize("how", ["express", "compile"])
def test_switching_comm_filter_takes_effect_and_is_timed(apply_profile, cert, tmp_path, how):
    """A comm edit alone is a gate flip in the running program; with a new ring buffer size it
    compiles a new program. Either way the new filter is in force within seconds."""
    a = Generator(cert, "gen-a", 0, 0.002)
    b = Generator(cert, "gen-b", 0, 0.002)
    extra = "" if how == "express" else "\n      ring_buffer_kib: 512"
    try:
        with apply_profile(profile("switch", ["gen-a"])) as cap:
            assert wait_records(cap, lambda rs: any(r.get("comm") == "gen-a" for r in rs))
            assert not writes(cap, "gen-b")
            path = tmp_path / "profile.yaml"
            written = time.time_ns()
            path.write_text(profile("switch", ["gen-b"], jsonl=str(cap.jsonl), target_extra=extra))
            assert wait_records(cap, lambda rs: any(r.get("comm") == "gen-b" for r in rs))
            first_b = min(r["ts"] for r in cap.records("data") if r["comm"] == "gen-b")
            assert f"replaced gen (gen 2, {'express lane, no compile' if how == 'express' else 'compile'})" \
                in cap.stderr, cap.stderr
            assert _target_status("switch")["filters_in_force"]["comm"] == ["gen-b"]
            # a uid filter nobody matches stops capture: the program really filters on the new values
            path.write_text(profile("switch", ["gen-b"], ", uids: [4242]", jsonl=str(cap.jsonl), target_extra=extra))
            assert _wait_for(lambda: cap.stderr.count("reloaded switch") == 2), cap.stderr
            time.sleep(0.3)
            stopped = len(cap.records("data"))
            time.sleep(1.0)
            assert len(cap.records("data")) == stopped
        switch_ms = (first_b - written) / 1e6
        print(f"\nfilter switch ({how}) took effect {switch_ms:.0f} ms after the file was written")
        assert 0 < switch_ms < 5000
        a_after = [r for r in cap.records("data") if r["comm"] == "gen-a" and r["ts"] > first_b + 200_000_000]
        assert a_after == []          # the old filter is gone
    finally:
        a.kill()
        b.kill()


def test_filter_and_program_edits_lose_nothing(apply_profile, cert, tmp_path):
    """Filter edits (gate flips in the running program), an edit that changes the program itself
    (a new program, switched to with the old one drained first), and filter and max_bytes edits in
    the new program: every write of the generator arrives once, in order."""
    count = 5000
    go = tmp_path / "go"
    gen = Generator(cert, "gen-a", count, 0.002, go)
    path = tmp_path / "profile.yaml"

    def edit(n: int, comm: list[str], extra: str = "", target_extra: str = "", how: str = "express lane") -> None:
        path.write_text(profile("hand", comm, extra, jsonl=str(cap.jsonl), target_extra=target_extra))
        assert _wait_for(lambda: cap.stderr.count("reloaded hand") == n, 30), cap.stderr
        line = [ln for ln in cap.stderr.splitlines() if "reloaded hand" in ln][-1]
        assert how in line, line

    try:
        with apply_profile(profile("hand", ["gen-a"])) as cap:
            go.touch()
            edit(1, ["gen-a", "other-1"])
            assert _target_status("hand")["generation"] == 2
            edit(2, ["gen-a"], ", uids: [0]")
            # a new ring buffer size is a new program
            edit(3, ["gen-a"], ", uids: [0]", "\n      ring_buffer_kib: 512", how="(gen 4, compile)")
            # max_bytes is a map value: with the filters, no compile
            edit(4, ["gen-a", "other-4"], "", "\n      ring_buffer_kib: 512\n      max_bytes: 4096")
            assert gen.proc.poll() is None, "the generator finished before the edits: make it longer"
            assert gen.wait() == count
            assert wait_records(cap, lambda rs: len([r for r in rs if r.get("comm") == "gen-a"
                                                     and r.get("direction") == "write"]) >= count)
            time.sleep(0.5)
        assert writes(cap, "gen-a") == [f"wgen-a:{i:08d}\n" for i in range(count)]
        assert cap.records("loss") == []
        assert "Traceback" not in cap.stderr
    finally:
        gen.kill()


def _target_status(profile_name: str) -> dict:
    import json

    from tests.kernel.conftest import ECAPTURE
    out = subprocess.run([ECAPTURE, "status", "--json"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    (p,) = [p for p in json.loads(out.stdout)["profiles"] if p["profile"] == profile_name]
    (t,) = p["targets"]
    return t


def test_profiles_added_and_deleted_in_a_watched_directory(cert, tmp_path, apply_dir):
    a = Generator(cert, "gen-a", 0, 0.002)
    b = Generator(cert, "gen-b", 0, 0.002)
    try:
        d = tmp_path / "profiles"
        d.mkdir()
        (d / "a.yaml").write_text(profile("pa", ["gen-a"], jsonl=str(tmp_path / "a.jsonl")))
        with apply_dir(d) as cap:
            a_out, b_out = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
            assert _wait_file_has(a_out, "wgen-a:")
            (d / "b.yaml").write_text(profile("pb", ["gen-b"], jsonl=str(b_out)))
            assert _wait_file_has(b_out, "wgen-b:")
            (d / "a.yaml").unlink()
            assert _wait_for(lambda: "removed pa" in cap.stderr)
            size = a_out.stat().st_size
            time.sleep(1.0)
            assert a_out.stat().st_size == size      # nothing more for the deleted profile
            assert _wait_file_grows(b_out)           # the other one goes on
    finally:
        a.kill()
        b.kill()


def test_configmap_style_symlink_swap(cert, tmp_path, apply_dir):
    a = Generator(cert, "gen-a", 0, 0.002)
    b = Generator(cert, "gen-b", 0, 0.002)
    try:
        d = tmp_path / "cm"
        out = tmp_path / "out.jsonl"
        (d / "..2026_01").mkdir(parents=True)
        (d / "..2026_01" / "p.yaml").write_text(profile("cm", ["gen-a"], jsonl=str(out)))
        os.symlink("..2026_01", d / "..data")
        os.symlink("..data/p.yaml", d / "p.yaml")
        with apply_dir(d) as cap:
            assert _wait_file_has(out, "wgen-a:")
            (d / "..2026_02").mkdir()
            (d / "..2026_02" / "p.yaml").write_text(profile("cm", ["gen-b"], jsonl=str(out)))
            os.symlink("..2026_02", d / "..data_tmp")
            os.rename(d / "..data_tmp", d / "..data")     # the atomic swap kubelet does
            assert _wait_file_has(out, "wgen-b:")
            assert "reloaded cm" in cap.stderr
    finally:
        a.kill()
        b.kill()


@pytest.mark.parametrize("bad", ["invalid", "attach"])
def test_bad_edit_keeps_the_last_generation_capturing(apply_profile, cert, tmp_path, bad):
    gen = Generator(cert, "gen-a", 0, 0.002)
    try:
        with apply_profile(profile("keep", ["gen-a"])) as cap:
            assert wait_records(cap, lambda rs: any(r.get("comm") == "gen-a" for r in rs))
            path = tmp_path / "profile.yaml"
            if bad == "invalid":
                path.write_text(profile("keep", ["gen-a"], jsonl=str(cap.jsonl)).replace("kind: openssl",
                                                                                          "kind: opensssl"))
                expect = "profile.yaml:7:13: spec.targets[0].kind: must be one of"
            else:   # no such process: attaching a pid-scoped uprobe fails
                path.write_text(profile("keep", ["gen-a"], ", pids: [4000000]", jsonl=str(cap.jsonl)))
                expect = "change rolled back; the last good generation keeps running"
            assert _wait_for(lambda: expect in cap.stderr), cap.stderr
            n = len(writes(cap, "gen-a"))
            assert wait_records(cap, lambda rs: len([r for r in rs if r.get("comm") == "gen-a"]) > n + 20)
        assert "Traceback" not in cap.stderr
    finally:
        gen.kill()


def _wait_for(pred, timeout=15.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def _wait_file_has(path: Path, text: str) -> bool:
    return _wait_for(lambda: path.exists() and text in path.read_text())


def _wait_file_grows(path: Path) -> bool:
    size = path.stat().st_size
    return _wait_for(lambda: path.stat().st_size > size)


@pytest.fixture
def apply_dir(tmp_path):
    """`ecapture apply DIR` until the block ends; yields an object with `.stderr`."""
    from contextlib import contextmanager

    from tests.kernel.conftest import ECAPTURE, Capture

    @contextmanager
    def run(directory: Path):
        ready = tmp_path / "ready-dir"
        err_path, out_path = tmp_path / "dir-stderr.txt", tmp_path / "dir-stdout.txt"
        with open(err_path, "w") as err, open(out_path, "w") as out:
            proc = subprocess.Popen([ECAPTURE, "apply", str(directory), "--ready-file", str(ready)],
                                    stdout=out, stderr=err)
        cap = Capture(proc, tmp_path / "none.jsonl", err_path, out_path)
        try:
            assert _wait_for(lambda: ready.exists() or proc.poll() is not None, 60) and ready.exists(), cap.stderr
            yield cap
        finally:
            proc.send_signal(2)
            cap.returncode = proc.wait(30)

    return run


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v", "-s"]))


def test_status_and_plan_talk_to_the_running_apply(apply_profile, cert, tmp_path):
    import json
    import stat

    from tests.kernel.conftest import ECAPTURE
    gen = Generator(cert, "gen-a", 0, 0.002)
    try:
        with apply_profile(profile("stat", ["gen-a"])) as cap:
            assert wait_records(cap, lambda rs: any(r.get("comm") == "gen-a" for r in rs))
            sock = os.environ.get("ECAPTURE_SOCKET", "/run/ecapture/apply.sock")
            assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
            assert stat.S_IMODE(os.stat(os.path.dirname(sock)).st_mode) == 0o700
            out = subprocess.run([ECAPTURE, "status", "--json"], capture_output=True, text=True, timeout=10)
            assert out.returncode == 0, out.stderr
            st = json.loads(out.stdout)
            (p,) = [p for p in st["profiles"] if p["profile"] == "stat"]
            (t,) = p["targets"]
            assert p["state"] == "ok" and t["state"] == "running" and t["generation"] == 1
            assert t["library"] == LIBSSL and "SSL_write_ex:return" in t["symbols"] and t["events"] > 0
            human = subprocess.run([ECAPTURE, "status"], capture_output=True, text=True, timeout=10)
            assert "stat" in human.stdout and "gen 1" in human.stdout
            # plan against the running apply: same file → unchanged; an edited copy → replace
            path = tmp_path / "profile.yaml"
            plan = subprocess.run([ECAPTURE, "plan", str(path)], capture_output=True, text=True, timeout=30)
            assert "unchanged stat/gen" in plan.stdout, plan.stdout
            edited = tmp_path / "edited" / "profile.yaml"
            edited.parent.mkdir()
            edited.write_text(profile("stat", ["gen-b"], jsonl=str(cap.jsonl)))
            plan = subprocess.run([ECAPTURE, "plan", str(edited)], capture_output=True, text=True, timeout=30)
            assert "replace stat/gen" in plan.stdout, plan.stdout
            # plan says a comm (and max_bytes) edit needs no compile; a ring buffer size edit does
            plan = subprocess.run([ECAPTURE, "plan", str(edited)], capture_output=True, text=True, timeout=30)
            assert "replace stat/gen (express lane, no compile)" in " ".join(plan.stdout.split()), plan.stdout
            edited.write_text(profile("stat", ["gen-b"], target_extra="\n      max_bytes: 4096", jsonl=str(cap.jsonl)))
            plan = subprocess.run([ECAPTURE, "plan", str(edited)], capture_output=True, text=True, timeout=30)
            assert "replace stat/gen (express lane, no compile)" in " ".join(plan.stdout.split()), plan.stdout
            edited.write_text(profile("stat", ["gen-a"], target_extra="\n      ring_buffer_kib: 512",
                                      jsonl=str(cap.jsonl)))
            plan = subprocess.run([ECAPTURE, "plan", str(edited)], capture_output=True, text=True, timeout=30)
            assert "replace stat/gen (compile)" in plan.stdout and "express lane" not in plan.stdout, plan.stdout
        assert not os.path.exists(sock)
        down = subprocess.run([ECAPTURE, "status"], capture_output=True, text=True, timeout=10)
        assert down.returncode == 3 and "no running" in down.stderr
    finally:
        gen.kill()


def test_compile_error_on_reload_keeps_the_last_generation(cert, tmp_path):
    """A generation that bcc cannot compile (real compiler, broken C) rolls back: the running one stays."""
    import dataclasses

    from orchestrator.bpf import render, state
    from orchestrator.pipeline import dispatch
    from orchestrator.plan import build
    from orchestrator.reconcile import reconciler, runtime

    path = tmp_path / "profile.yaml"
    out = tmp_path / "out.jsonl"
    path.write_text(profile("broken", ["gen-a"], jsonl=str(out)))
    passes = []

    def planner(prof):
        sets, failed = build.plan_profile(prof)
        passes.append(prof)
        if len(passes) > 1:   # every reload after the first renders C that does not compile
            sets = [dataclasses.replace(ps, rendered=render.Rendered(ps.rendered.text + "\nthis is not C;\n",
                                                                     "broken"))
                    for ps in sets]
        return sets, failed

    warnings: list[str] = []
    disp = dispatch.Dispatcher(lambda name: rec.sinks.get(name, ()))
    rt = runtime.Runtime(disp)
    rec = reconciler.Reconciler([str(path)], rt, disp, log=lambda _l: None, warn=warnings.append, planner=planner)
    disp.start()
    gen = Generator(cert, "gen-a", 0, 0.002)
    try:
        rec.reconcile()
        assert _wait_for(lambda: out.exists() and "wgen-a:" in out.read_text())
        path.write_text(profile("broken", ["gen-a", "gen-x"], jsonl=str(out)))
        rec.reconcile()
        assert any("compile failed" in w for w in warnings), warnings
        assert any("the last good generation keeps running" in w for w in warnings)
        status = rec.status()["profiles"][0]
        assert status["state"] == "error" and status["targets"][0]["generation"] == 1
        size = out.stat().st_size
        assert _wait_for(lambda: out.stat().st_size > size + 1000)   # generation 1 still captures
    finally:
        gen.kill()
        rec.close()
        disp.stop()
        state.close()
