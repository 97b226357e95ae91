"""The reconciler without root: a fake runtime (no bcc) and a fake clock (no sleeping).

Covers what issue 8 found by reading the code: a rename whose load fails must keep the old
name running; a temporary failure (library or process not there yet, a failed compile) is
retried without an edit; status answers while a reload holds the runtime lock; the control
server survives any request.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

import pytest

from orchestrator.bpf import discovery
from orchestrator.plan import build, diff, model
from orchestrator.reconcile import control, reconciler
from tests.unit.test_plan_diff import fake_resolve


@dataclass
class FakeRunning:
    probe_set: object
    generation: int
    state: str = "running"
    last_error: str = ""
    lane: object = None
    started_at: float = 0.0
    how: str = "compiled"

    @property
    def key(self):
        return self.probe_set.key

    @property
    def digest(self):
        return self.probe_set.digest


@dataclass
class FakeRuntime:
    fail_loads: set = field(default_factory=set)      # target names whose load fails
    lock: threading.RLock = field(default_factory=threading.RLock)
    targets: dict = field(default_factory=dict)
    loads: int = 0

    hows: list = field(default_factory=list)          # plan.diff's decision for each replacement

    def view(self, rt):
        ps = rt.probe_set
        return diff.Running(rt.key, ps.digest, ps.kernel_digest, ps.attach_identity, ps.program_key)

    def load(self, ps, how=None):
        self.loads += 1
        self.hows.append(how)
        if ps.target.name in self.fail_loads:
            return FakeRunning(ps, self.loads, state="failed", last_error="compile failed: out of memory")
        return FakeRunning(ps, self.loads)

    def discard(self, rt):
        rt.state = "stopped"

    def switch(self, pairs):
        for old, new in pairs:
            self.targets[new.key] = new

    def stop(self, key):
        self.targets.pop(key, None)

    def stop_all(self):
        self.targets.clear()


class FakeDispatcher:
    class stats:
        events: dict = {}
        losses: dict = {}

    def call_soon(self, fn):
        fn()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


PROFILE = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: {name}}}
spec:
  targets:
    - {{name: web, kind: openssl, binary: /usr/sbin/nginx}}
  sinks: [{{type: stdout}}]
"""


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(build.render, "possible_cpus", lambda: 4)
    os.chmod(tmp_path, 0o700)
    path = tmp_path / "p.yaml"
    path.write_text(PROFILE.format(name="one"))
    runtime, clock, lines = FakeRuntime(), Clock(), []
    resolver = {"fn": fake_resolve}

    def planner(profile):
        return build.plan_profile(profile, resolve=lambda t: resolver["fn"](t))

    rec = reconciler.Reconciler([str(path)], runtime, FakeDispatcher(), lines.append, lines.append,
                                planner=planner, clock=clock)
    return rec, runtime, clock, path, resolver, lines


def _names(runtime):
    return sorted(runtime.targets)


def test_rename_whose_load_fails_keeps_the_old_name_running(setup):
    rec, runtime, clock, path, _, lines = setup
    rec.reconcile()
    assert _names(runtime) == [("one", "web")]
    runtime.fail_loads.add("web")
    path.write_text(PROFILE.format(name="two") + "# edited\n")
    rec.reconcile()
    assert _names(runtime) == [("one", "web")], "the old name stopped although the new one never ran"
    assert any("the last good generation keeps running" in ln for ln in lines)
    runtime.fail_loads.clear()
    clock.now += 60                  # the compile failure is temporary: retried without an edit
    assert rec.retry_due()
    rec.reconcile()
    assert _names(runtime) == [("two", "web")]
    assert any("renamed from one" in ln for ln in lines)


def test_a_library_not_found_yet_is_retried_without_an_edit(setup):
    rec, runtime, clock, path, resolver, lines = setup

    def missing(target):
        raise discovery.DiscoveryError("binary", "/usr/sbin/nginx: no libssl* among its DT_NEEDED and no "
                                                 "running instance maps one")
    resolver["fn"] = missing
    rec.reconcile()
    assert runtime.targets == {}
    assert not rec.retry_due()              # backoff: not at once
    clock.now += 0.3
    rec.reconcile()
    assert runtime.targets == {}            # still missing; said once, not at every retry
    assert sum("no libssl" in ln for ln in lines) == 1
    resolver["fn"] = fake_resolve           # a process that maps it appears
    clock.now += reconciler.PLAN_RETRY_CAP_S
    assert rec.retry_due()
    rec.reconcile()
    assert _names(runtime) == [("one", "web")]
    clock.now += 3600
    assert not rec.retry_due()              # nothing left to retry


def test_an_invalid_file_waits_for_an_edit(setup):
    rec, runtime, clock, path, _, lines = setup
    path.write_text("apiVersion: ecapture/v1\nkind: Nope\n")
    rec.reconcile()
    clock.now += 3600
    assert not rec.retry_due()
    n = len(lines)
    rec.reconcile()
    assert len(lines) == n                  # unchanged file: not read and reported again


def test_a_replaced_library_makes_the_target_replanned(setup, tmp_path):
    rec, runtime, clock, path, resolver, lines = setup
    lib = tmp_path / "libssl.so.3"
    lib.write_bytes(b"v1")

    def on_copy(target):
        res = fake_resolve(target)
        return discovery.Resolution(str(lib), res.hooks, res.missing_optional, res.scope_paths, res.scope_real,
                                    res.how)
    resolver["fn"] = on_copy
    rec.reconcile()
    (rt,) = runtime.targets.values()
    assert not rec.retry_due()
    new = tmp_path / "libssl.new"
    new.write_bytes(b"v2")
    os.rename(new, lib)                      # what a package upgrade does
    assert rec.retry_due()
    rec.reconcile()
    (rt2,) = runtime.targets.values()
    assert rt2 is not rt and rt2.probe_set.attach_file == model.file_identity(str(lib))
    assert any("replaced web" in ln for ln in lines)


def test_untrusted_profile_is_refused_unless_insecure(setup, tmp_path):
    rec, runtime, clock, path, _, lines = setup
    os.chmod(path, 0o666)
    rec.reconcile()
    assert runtime.targets == {}
    assert any("writable by" in ln and "--insecure-profiles" in ln for ln in lines)
    said = len(lines)
    clock.now += 60
    rec.reconcile()                          # retried (someone may be fixing it), said only once
    assert runtime.targets == {} and len(lines) == said
    rec.insecure_profiles = True
    clock.now += 60
    rec.reconcile()
    assert _names(runtime) == [("one", "web")]


def test_status_answers_while_a_reload_holds_the_lock(setup):
    rec, runtime, *_ = setup
    rec.reconcile()
    answers = []
    with runtime.lock:      # a reload compiling for seconds
        t = threading.Thread(target=lambda: answers.append(rec.status()))
        t.start()
        t.join(5)
    assert answers, "status waited for the reload"
    (profile,) = answers[0]["profiles"]
    assert profile["state"] == "ok" and profile["targets"][0]["name"] == "web"


@pytest.mark.parametrize("line", [b"[]", b"42", b"null", b'"status"', b"{\"cmd\": []}", b"{", b"\xff\xfe",
                                  b'{"cmd": "nope"}', b""])
def test_control_answers_any_request_with_a_value(line):
    server = control.ControlServer({"status": lambda: {"ok": 1}}, path="/nonexistent/sock")
    answer = server.answer(line)
    assert answer["ok"] is False and answer["error"]
    json.dumps(answer)


def test_control_survives_a_failing_handler_and_keeps_serving(tmp_path):
    def broken():
        raise KeyError("boom")
    server = control.ControlServer({"status": broken, "ping": lambda: "pong"}, path=str(tmp_path / "c.sock"))
    assert server.start() is None
    try:
        assert control.request("status", str(tmp_path / "c.sock")) is None     # an error answer
        import socket
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(tmp_path / "c.sock"))
            s.sendall(b"[]\n")
            assert json.loads(s.makefile("rb").readline())["ok"] is False
        assert control.request("ping", str(tmp_path / "c.sock")) == "pong"     # still serving
    finally:
        server.close()


def test_an_editor_save_dance_is_one_change():
    from orchestrator.reconcile import watcher
    clock = Clock()
    d = watcher.Debouncer(0.025, clock=clock)
    assert not d.take()                               # nothing happened
    # vim: write the backup, rename the file away, write the new one, chmod it
    for dt in (0.0, 0.004, 0.006, 0.002):
        clock.now += dt
        d.poke()
        assert not d.take()
    clock.now += 0.024
    assert not d.take() and 0 < d.quiet_for() <= 0.001 + 1e-9
    clock.now += 0.002
    assert d.take()                                    # once the burst is over
    assert not d.take()                                # and only once
    clock.now += 10
    d.poke()                                           # a ConfigMap swap much later: a new burst
    clock.now += 0.03
    assert d.take()


def test_a_sink_that_cannot_open_keeps_the_last_good_generation_and_is_retried(setup, tmp_path):
    rec, runtime, clock, path, _, lines = setup
    rec.reconcile()
    (rt,) = runtime.targets.values()
    (tmp_path / "victim").write_text("")
    out = tmp_path / "out.jsonl"
    out.symlink_to(tmp_path / "victim")               # apply refuses to write through it
    path.write_text(PROFILE.format(name="one").replace("[{type: stdout}]", f"[{{type: jsonl, path: {out}}}]"))
    rec.reconcile()
    assert list(runtime.targets.values()) == [rt]     # nothing replaced, nothing stopped
    assert any("symbolic link" in ln for ln in lines)
    out.unlink()
    clock.now += 60                                   # temporary: retried without an edit
    assert rec.retry_due()
    rec.reconcile()
    assert out.exists() and rec.files[str(path)].state == "ok"


@pytest.mark.parametrize("edit, how", [
    ("    - {name: web, kind: openssl, binary: /usr/sbin/nginx, filters: {comm: [curl]}}", diff.EXPRESS),
    ("    - {name: web, kind: openssl, binary: /usr/sbin/nginx, max_bytes: 128}", diff.EXPRESS),
    ("    - {name: web, kind: openssl, binary: /usr/sbin/nginx, ring_buffer_kib: 64}", diff.COMPILE),
    ("    - {name: web, kind: openssl, binary: /usr/sbin/nginx, filters: {pids: [1]}}", diff.REATTACH),
])
def test_each_edit_is_loaded_the_way_plan_diff_decided(setup, edit, how):
    rec, runtime, clock, path, _, lines = setup
    rec.reconcile()
    assert runtime.hows == [None]           # a new target: nothing to decide
    path.write_text(PROFILE.format(name="one").replace(
        "    - {name: web, kind: openssl, binary: /usr/sbin/nginx}", edit))
    rec.reconcile()
    assert runtime.hows == [None, how]
    assert any("replaced web" in ln for ln in lines)
