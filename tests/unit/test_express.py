"""Express lanes without root: which edits a lane can take (its digest), how filter values are
typed for its maps, how its records are attributed to generations, and the background job queue.
The lane running in the kernel is tested in tests/kernel/test_reload.py."""
from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from orchestrator.bpf import layout, render
from orchestrator.plan import build
from orchestrator.reconcile import express, runtime
from orchestrator.profile import models
from tests.unit.test_pipeline import _raw
from tests.unit.test_plan_diff import WEB, _profile, fake_resolve


@pytest.fixture(autouse=True)
def four_cpus(monkeypatch):
    monkeypatch.setattr(render, "possible_cpus", lambda: 4)


def _plan(target, resolve=fake_resolve):
    (ps,), _ = build.plan_profile(_profile(target), resolve=resolve)
    return ps


def _with(**filters):
    return dataclasses.replace(WEB, filters=models.Filters(**filters))


@pytest.mark.parametrize("filters", [
    {"uids": (33,)}, {"comm": ("nginx", "worker-1")}, {"ports": (443, 8443)},
    {"uids": (0, 33), "comm": ("a",), "ports": (1,)},
])
def test_uid_comm_and_port_values_do_not_change_the_lane(filters):
    base, edited = _plan(WEB), _plan(_with(**filters))
    assert edited.digest != base.digest                    # a new generation ...
    assert edited.express.digest == base.express.digest    # ... that the same lane can run


@pytest.mark.parametrize("change", [{"max_bytes": 4096}, {"max_bytes": 16}, {"max_bytes": 65536}])
def test_max_bytes_does_not_change_the_lane(change):
    edited = _plan(dataclasses.replace(WEB, **change))
    assert edited.digest != _plan(WEB).digest
    assert edited.express.digest == _plan(WEB).express.digest
    assert "#define MAX_BYTES 65536" in edited.express.text          # the lane's bound
    assert f"#define MAX_BYTES {change['max_bytes']}" in edited.rendered.text   # compiled in, steady state


def test_parsers_change_the_digest_but_not_the_kernel_digest():
    base = _plan(WEB)
    edited = dataclasses.replace(base, parsers=("http2",))
    assert edited.digest != base.digest and edited.kernel_digest == base.kernel_digest
    assert _plan(dataclasses.replace(WEB, max_bytes=64)).kernel_digest != base.kernel_digest


@pytest.mark.parametrize("change", [
    {"filters": models.Filters(pids=(100,))}, {"ring_buffer_kib": 64},
])
def test_program_and_attach_changes_need_another_lane(change):
    assert _plan(dataclasses.replace(WEB, **change)).express.digest != _plan(WEB).express.digest


def test_lane_program_holds_no_filter_value_but_the_pids():
    text = _plan(_with(pids=(4242,), uids=(3131,), comm=("zzzzz",), ports=(5151,))).express.text
    assert "tgid == 4242" in text                 # pids are where the trampolines attach
    assert "3131" not in text and "5151" not in text and "comm_ok" not in text
    assert "filter_gate" in text and "fc->gen" in text


def test_filter_values_are_typed_for_the_maps():
    values = render.filter_values(_with(uids=(0, 33), comm=("nginx",), ports=(443,)))
    assert values == {"pids": [], "uids": [0, 33], "comm": [list(b"nginx\0")], "ports": [443]}
    target = dataclasses.replace(_with(ports=(443,)), max_bytes=512)
    assert render.lane_values(target) == render.filter_values(target) | {"max_bytes": 512}
    with pytest.raises(ValueError):
        render.filter_values(_with(comm=("a-name-longer-than-15",)))


class _Ring:
    """Stands in for the loaded program's ring buffer: hands out the raw records it is given."""

    def __init__(self, probe_set):
        self.probe_set = probe_set
        self.raw: list[bytes] = []
        self.writes: list = []

    def drain(self, take):
        for raw in self.raw:
            take(raw)
        n, self.raw = len(self.raw), []
        return n

    def write_filters(self, slot, generation, values):
        self.writes.append(("conf", slot, generation, values["comm"]))

    def open_gate(self, slot):
        self.writes.append(("gate", slot))


class _Dispatcher:
    def __init__(self):
        self.batches = []

    def submit(self, batch):
        self.batches.append(batch)


def test_lane_alternates_configurations_and_attributes_records_by_generation():
    a, b = _plan(_with(comm=("a",))), _plan(_with(comm=("b",)))
    ring, disp = _Ring(a), _Dispatcher()
    lane = express.ExpressLane(ring, disp, grace_s=0.0)
    assert lane.fits(b) and lane.fits(_plan(dataclasses.replace(WEB, max_bytes=64)))
    assert not lane.fits(_plan(dataclasses.replace(WEB, ring_buffer_kib=64)))
    lane.arm(a, 7)
    lane.arm(b, 8)
    lane.arm(a, 9 + 0x10000)        # the header holds the generation modulo 2^16
    assert ring.writes == [("conf", 0, 7, [list(b"a\0")]), ("gate", 0), ("conf", 1, 8, [list(b"b\0")]),
                           ("gate", 1), ("conf", 0, 9 + 0x10000, [list(b"a\0")]), ("gate", 0)]
    ring.raw = [_raw(b"", gen=7, seq=0), _raw(b"", gen=8, seq=1), _raw(b"", gen=9, seq=2)]
    lane.hold()
    lane.flush()
    assert disp.batches == []       # held: the generation before is still draining
    lane.release()
    (batch,) = disp.batches
    assert [(ev.seq, ev.source) for ev in batch] == [(0, a), (1, b), (2, a)]


def test_lane_waits_out_the_grace_before_rewriting_a_configuration():
    ps = _plan(WEB)
    lane = express.ExpressLane(_Ring(ps), _Dispatcher(), grace_s=0.05)
    lane.arm(ps, 1)
    t0 = time.monotonic()
    lane.arm(ps, 2)
    assert time.monotonic() - t0 >= 0.045


def test_jobs_run_once_due_and_a_newer_job_replaces_the_pending_one():
    ran, done = [], threading.Event()

    def run(key, kind):
        ran.append((key, kind, time.monotonic()))
        if len(ran) == 2:
            done.set()

    jobs = runtime._Jobs(run)
    t0 = time.monotonic()
    jobs.put("a", "specialise", 0.3)
    jobs.put("a", "lane", 0.1)            # replaces the pending specialise
    jobs.put("b", "lane", 0.0)
    jobs.put("c", "lane", 0.2)
    jobs.cancel("c")
    assert done.wait(5)
    time.sleep(0.4)
    jobs.close()
    assert [(k, kind) for k, kind, _ in ran] == [("b", "lane"), ("a", "lane")]
    assert ran[1][2] - t0 >= 0.09
    jobs.put("d", "lane", 0.0)            # closed: ignored
    time.sleep(0.05)
    assert len(ran) == 2


def _deferred(raw: bytes) -> bytes:
    flags = bytearray(raw)
    flags[layout.FLAGS_OFFSET] |= layout.FLAG_DEFERRED
    return bytes(flags)


def test_records_are_decoded_by_their_own_generation_and_deferred_ones_filtered_by_it():
    """A call entered under one generation and completed by another belongs to the first: the kernel
    flags it when it could not apply that generation's port filter and max_bytes (probes.c.j2)."""
    old = _plan(dataclasses.replace(_with(ports=(443,)), max_bytes=16))
    new = _plan(_with(ports=(8443,)))
    sources = express.Sources()
    sources.put(3, old)
    sources.put(4, new)
    payload = b"x" * 40
    ev = express.decode(_deferred(_raw(payload, gen=3, lport=443)), sources, new)
    assert ev.source is old and ev.payload == payload[:16] and ev.truncated     # old's max_bytes
    assert express.decode(_deferred(_raw(payload, gen=3, lport=8443, rport=1)), sources, new) is None
    ev = express.decode(_deferred(_raw(payload, gen=4, lport=8443, rport=1)), sources, old)
    assert ev.source is new and ev.payload == payload
    unknown_conn = express.decode(_deferred(_raw(payload, gen=4, family=0, lport=0, rport=0)), sources, old)
    assert unknown_conn is not None     # the connection worker filters once it resolves the address
    # not flagged: the kernel applied the generation's filters; nothing more is done here
    assert express.decode(_raw(payload, gen=3, lport=8443, rport=1), sources, new).payload == payload
    assert express.decode(_raw(b"", gen=9), sources, old).source is new           # unknown: the newest


def test_a_parsers_only_edit_runs_on_without_loading(monkeypatch):
    class _Disp:
        periodic: list = []

    rt_ = runtime.Runtime(_Disp(), express_lanes=False)
    base = _plan(WEB)
    live = runtime.RunningTarget(base, 1, 1, state="running", loaded=object(), trampoline=object())
    rt_.targets[base.key] = live
    rt_._generations[base.key] = 1
    monkeypatch.setattr(runtime.loader, "LoadedTarget", lambda *a, **k: pytest.fail("compiled"))
    edited = dataclasses.replace(base, parsers=("http2",))
    how = runtime.diff.how_to_replace(rt_.view(live), edited)
    assert how == runtime.diff.PARSERS
    new = rt_.load(edited, hold=True, how=how)
    assert new.relabel_of is live and new.loaded is live.loaded and new.stamp == 1 and new.generation == 2
    rt_.switch([(live, new)])
    assert rt_.targets[base.key] is new and live.state == "stopped" and new.state == "running"
    assert rt_.sources(base.key).get(1).parsers == ("http2",)      # records stamped 1 decode with it
