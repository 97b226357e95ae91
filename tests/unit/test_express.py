"""Express lanes without root: which edits a lane can take (ProbeSet.program_key), how filter
values are typed for its maps, how its records are attributed to generations, and the runtime's
switches between lanes with a fake program and fake trampolines. The lane running in the kernel
is tested in tests/kernel/test_reload.py."""
from __future__ import annotations

import dataclasses
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
def test_uid_comm_and_port_values_do_not_change_the_program(filters):
    base, edited = _plan(WEB), _plan(_with(**filters))
    assert edited.digest != base.digest and edited.kernel_digest != base.kernel_digest   # a new generation ...
    assert edited.program_key == base.program_key                   # ... that the same lane can run
    assert edited.rendered.text == base.rendered.text


@pytest.mark.parametrize("change", [{"max_bytes": 4096}, {"max_bytes": 16}, {"max_bytes": 65536}])
def test_max_bytes_does_not_change_the_program(change):
    edited = _plan(dataclasses.replace(WEB, **change))
    assert edited.kernel_digest != _plan(WEB).kernel_digest
    assert edited.program_key == _plan(WEB).program_key
    assert "#define MAX_BYTES 65536" in edited.rendered.text          # the bound: the schema maximum


def test_parsers_change_the_digest_but_not_the_kernel_digest():
    base = _plan(WEB)
    edited = dataclasses.replace(base, parsers=("http2",))
    assert edited.digest != base.digest and edited.kernel_digest == base.kernel_digest


@pytest.mark.parametrize("change", [
    {"filters": models.Filters(pids=(100,))}, {"ring_buffer_kib": 64},
])
def test_program_and_attach_changes_need_another_lane(change):
    assert _plan(dataclasses.replace(WEB, **change)).program_key != _plan(WEB).program_key


def test_program_holds_no_filter_value_but_the_pids():
    text = _plan(_with(pids=(4242,), uids=(3131,), comm=("zzzzz",), ports=(5151,))).rendered.text
    assert "tgid == 4242" in text                 # pids are where the trampolines attach
    assert "3131" not in text and "5151" not in text and "zzzzz" not in text
    assert "filter_gate" in text and "fc->gen" in text


def test_filter_values_are_typed_for_the_maps():
    values = render.filter_values(_with(uids=(0, 33), comm=("nginx",), ports=(443,)))
    assert values == {"pids": [], "uids": [0, 33], "comm": [list(b"nginx\0")], "ports": [443], "cgroups": None}
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

    def drain_all(self):
        out, self.raw = self.raw, []
        return out

    def wait_for_records(self, timeout):
        """No kernel to wake the lane: a short sleep, as a timer would."""
        time.sleep(min(timeout, 0.01))
        return True

    def interrupt_wait(self):
        pass

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


class _Clock:
    def __init__(self):
        self.now, self.slept = 100.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_lane_waits_out_the_grace_before_rewriting_a_configuration():
    ps, clock = _plan(WEB), _Clock()
    lane = express.ExpressLane(_Ring(ps), _Dispatcher(), grace_s=0.05, clock=clock, sleep=clock.sleep)
    lane.arm(ps, 1)
    assert clock.slept == []          # nothing was live: no hit can be reading a configuration
    clock.now += 0.01
    lane.arm(ps, 2)
    assert clock.slept == [0.04]      # the rest of the grace since the last flip
    clock.now += 1
    lane.arm(ps, 3)
    assert clock.slept == [0.04]


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


class _Loaded(_Ring):
    """A loaded program without bcc: its ring, filter maps and loss counters."""
    made: list = []

    def __init__(self, probe_set, target_no=0):
        super().__init__(probe_set)
        self.target_no, self.losses_seen, self.closed = target_no, {}, False
        _Loaded.made.append(self)

    def load(self):
        return self

    def losses(self):
        return {}

    def close(self):
        self.closed = True


class _Trampoline:
    def __init__(self, probe_set):
        self.identity, self.installed, self.closed = probe_set.attach_identity, None, False

    def attach(self):
        return self

    def install(self, loaded):
        self.installed = loaded

    def clear(self):
        self.installed = None

    def close(self):
        self.closed = True


class _RecordingDispatcher(_Dispatcher):
    periodic: list = []

    def submit_records(self, records):
        self.batches.append(records)


@pytest.fixture
def fake_kernel(monkeypatch):
    _Loaded.made = []
    monkeypatch.setattr(runtime.loader, "LoadedTarget", _Loaded)
    monkeypatch.setattr(runtime.trampoline, "Trampoline", _Trampoline)
    monkeypatch.setattr(runtime, "SWITCH_GRACE_S", 0.0)
    disp = _RecordingDispatcher()
    rt_ = runtime.Runtime(disp)
    yield rt_, disp
    rt_.stop_all()


def _replace(rt_, edited):
    live = rt_.targets[edited.key]
    how = runtime.diff.how_to_replace(rt_.view(live), edited)
    new = rt_.load(edited, how=how)
    rt_.switch([(live, new)])
    return how, live, new


def test_filter_and_parsers_edits_flip_the_gate_of_the_running_program(fake_kernel):
    rt_, _ = fake_kernel
    base = _plan(_with(comm=("a",)))
    first = rt_.start(base)
    (loaded,) = _Loaded.made
    assert first.trampoline.installed is loaded and loaded.writes == [("conf", 0, 1, [list(b"a\0")]), ("gate", 0)]
    how, live, new = _replace(rt_, _plan(_with(comm=("b",))))
    assert how == runtime.diff.EXPRESS and new.how == "express lane, no compile"
    how, _, newer = _replace(rt_, dataclasses.replace(new.probe_set, parsers=("http2",)))
    assert how == runtime.diff.PARSERS and newer.how == "parsers only, no compile"
    assert len(_Loaded.made) == 1 and newer.lane is first.lane           # nothing compiled
    assert loaded.writes[2:] == [("conf", 1, 2, [list(b"b\0")]), ("gate", 1),
                                 ("conf", 0, 3, [list(b"b\0")]), ("gate", 0)]
    assert (live.state, new.state, newer.state) == ("stopped", "stopped", "running")
    assert rt_.sources(base.key).get(3).parsers == ("http2",)      # records stamped 3 decode with it


def test_a_program_edit_compiles_a_lane_and_drains_the_old_one_first(fake_kernel):
    rt_, disp = fake_kernel
    base = _plan(WEB)
    first = rt_.start(base)
    old = _Loaded.made[0]
    old.raw = [_raw(b"old", gen=1, seq=1)]       # written by the old program, not read yet
    edited = _plan(dataclasses.replace(WEB, ring_buffer_kib=64))
    live = rt_.targets[base.key]
    how = runtime.diff.how_to_replace(rt_.view(live), edited)
    assert how == runtime.diff.COMPILE
    new = rt_.load(edited, how=how)
    fresh = _Loaded.made[1]
    assert new.trampoline is first.trampoline and new.lane is not first.lane   # same uprobes, new program

    def install(loaded):          # hits run the new program at once
        first.trampoline.installed = loaded
        loaded.raw.append(_raw(b"new", gen=2, seq=2))

    first.trampoline.install = install
    rt_.switch([(live, new)])
    new.lane.flush()
    assert [ev.payload for batch in disp.batches for ev in batch] == [b"old", b"new"]
    assert first.trampoline.installed is fresh and live.state == "stopped" and rt_.targets[base.key] is new
    rt_.stop_all()
    assert old.closed and fresh.closed and first.trampoline.closed


def test_a_failed_compile_leaves_the_running_generation_alone(fake_kernel, monkeypatch):
    rt_, _ = fake_kernel
    base = _plan(WEB)
    first = rt_.start(base)

    def fail(self):
        raise runtime.loader.LoadError("compile failed: out of memory")

    monkeypatch.setattr(_Loaded, "load", fail)
    edited = _plan(dataclasses.replace(WEB, ring_buffer_kib=64))
    new = rt_.load(edited, how=runtime.diff.COMPILE)
    assert new.state == "failed" and "out of memory" in new.last_error
    rt_.discard(new)
    assert rt_.targets[base.key] is first and first.trampoline.installed is first.loaded
    assert not first.trampoline.closed and not first.loaded.closed
