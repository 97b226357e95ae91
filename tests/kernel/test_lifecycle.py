"""Failure isolation, loss accounting and clean detach, with real probes."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time

import pytest
from orchestrator.bpf import loader, render, state, trampoline
from orchestrator.plan import build
from orchestrator.profile import load
from tests.kernel.conftest import ECAPTURE, perf_event_fds, uprobe_events_of
from tests.support.nginx import curl

TWO_TARGETS = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: mixed}
spec:
  targets:
    - name: broken
      kind: uprobe
      binary: /bin/true
      symbol: no_such_function_here
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
    - name: gone
      kind: openssl
      binary: /opt/nowhere/nginx
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""


def test_a_bad_target_fails_alone(apply_profile, nginx_server):
    with apply_profile(TWO_TARGETS) as cap:
        assert curl(nginx_server.url + "/still-here").returncode == 0
        assert cap.wait_for(lambda rs: any(r["type"] == "http.response" for r in rs))
    err = cap.stderr
    assert "profile.yaml:" in err and "spec.targets[0].symbol" in err and "no_such_function_here" in err
    assert "spec.targets[2].binary" in err and "/opt/nowhere/nginx" in err
    assert "Traceback" not in err
    assert [r["path"] for r in cap.records("http.request")] == ["/still-here"]
    assert "targets that did not run: mixed/broken, mixed/gone" in err


LOSSY = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: lossy}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
      ring_buffer_kib: 4
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""


def test_ring_buffer_drops_are_counted_and_reported(apply_profile, nginx_server):
    # A 4 KiB ring cannot hold a 16 KiB record: every large write of /big is dropped in the kernel.
    with apply_profile(LOSSY) as cap:
        for _ in range(3):
            assert curl(nginx_server.url + "/big").returncode == 0
        time.sleep(1.5)   # loss counters are read about once a second
    losses = cap.records("loss")
    assert losses and all(r["stage"] == "kernel.ringbuf" and r["target"] == "web" for r in losses)
    lost = sum(r["count"] for r in losses)
    assert lost >= 3 * (100000 // 16384)
    assert f"loss: lossy/web kernel.ringbuf: {lost}" in cap.stderr
    # What did arrive still has a per-process sequence with gaps where records were lost.
    workers = set(nginx_server.worker_pids())
    seqs = [r["seq"] for r in cap.records() if r["type"] != "loss" and r["pid"] in workers]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert seqs[-1] + 1 > len(seqs)   # gaps: the dropped records had sequence numbers too


def test_sigterm_detaches_everything(tmp_path, nginx_server):
    profile = tmp_path / "p.yaml"
    profile.write_text(TWO_TARGETS.replace("{jsonl}", str(tmp_path / "o.jsonl")))
    ready = tmp_path / "ready"
    proc = subprocess.Popen([ECAPTURE, "apply", str(profile), "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not ready.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists()
        assert perf_event_fds(proc.pid) > 0   # bcc attaches uprobes through the perf PMU, not tracefs
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert uprobe_events_of(proc.pid) == []


def test_trampolines_and_generations_release_everything(nginx_server):
    prof = load.load_file(os.path.join(os.path.dirname(__file__), "..", "..", "profiles", "nginx-tls.yaml"))
    (ps,), failed = build.plan_profile(prof)
    assert failed == []
    state.close()             # whatever an earlier test in this process left open
    empty = perf_event_fds()
    state.shared()            # the shared tables and connection tracepoints, created once
    before = perf_event_fds()
    assert before > empty
    tramp = trampoline.Trampoline(ps).attach()
    # an entry uprobe per hook, and a return uprobe per hook that records at return
    assert len(tramp.attached) == len(ps.hooks) + sum(h.on == "return" for h in ps.hooks)
    attached = perf_event_fds()
    assert attached > before
    gen = loader.LoadedTarget(ps, target_no=1).load()
    tramp.install(gen)
    gen2 = loader.LoadedTarget(ps, target_no=1).load()
    tramp.install(gen2)       # a switch attaches nothing
    assert perf_event_fds() == attached + 3 * 2  # each generation's own scope tracepoints (exec, fork, exit)
    gen.close()
    gen2.close()
    tramp.close()
    assert perf_event_fds() == before
    assert uprobe_events_of(os.getpid()) == []
    state.close()
    assert perf_event_fds() == empty


def test_generations_after_the_shared_state_was_closed_use_its_tables(nginx_server):
    # bcc resolves a generation's extern tables by name in a process-wide storage that keeps the
    # first export of each name: a shared state compiled again after close() left every new
    # generation with the closed tables' fds. Holding the freed fd numbers makes that visible.
    prof = load.load_file(os.path.join(os.path.dirname(__file__), "..", "..", "profiles", "nginx-tls.yaml"))
    (ps,), _ = build.plan_profile(prof)
    state.shared()
    empty_state = perf_event_fds()
    state.close()
    assert perf_event_fds() < empty_state            # its tracepoints are detached
    held = [os.open("/dev/null", os.O_RDONLY) for _ in range(64)]
    tramp = gen = None
    try:
        state.shared()
        assert perf_event_fds() == empty_state       # and attached again
        tramp = trampoline.Trampoline(ps).attach()
        gen = loader.LoadedTarget(ps, target_no=1).load()
        gen.write_filters(0, 1, render.lane_values(ps.target, ps.cgroups))   # as the express lane arms it
        gen.open_gate(0)
        tramp.install(gen)
        assert curl(nginx_server.url + "/after-close").returncode == 0
        deadline = time.monotonic() + 10
        seen = b""
        while b"GET /after-close" not in seen and time.monotonic() < deadline:
            seen += b"".join(gen.drain_all())
            time.sleep(0.05)
        assert b"GET /after-close" in seen
    finally:
        if gen is not None:
            gen.close()
        if tramp is not None:
            tramp.close()
        for fd in held:
            os.close(fd)
        state.close()


def test_attach_failure_rolls_back(nginx_server):
    prof = load.load_file(os.path.join(os.path.dirname(__file__), "..", "..", "profiles", "nginx-tls.yaml"))
    (ps,), _ = build.plan_profile(prof)
    from orchestrator.bpf import hooks
    bad = dataclasses.replace(ps, hooks=ps.hooks + (hooks.Hook("SSL_no_such_symbol", "entry", hooks.RECORD_CALL),),
                              addresses=ps.addresses + (None,) if ps.addresses else ())
    # The library has no such symbol: attaching it fails after the others attached.
    state.shared()
    before = perf_event_fds()
    with pytest.raises(loader.LoadError, match="SSL_no_such_symbol"):
        trampoline.Trampoline(bad).attach()
    assert perf_event_fds() == before
    assert uprobe_events_of(os.getpid()) == []
