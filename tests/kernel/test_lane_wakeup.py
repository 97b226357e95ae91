"""An idle express lane sleeps until the kernel wakes it for a record: no polling timer while
nothing is captured, and no record waits for one."""
from __future__ import annotations

import os
import threading
import time

from orchestrator.bpf import loader, state, trampoline
from orchestrator.plan import build
from orchestrator.profile import load
from orchestrator.reconcile import express
from tests.support.nginx import curl

PROFILE = os.path.join(os.path.dirname(__file__), "..", "..", "profiles", "nginx-tls.yaml")


class _Dispatcher:
    def __init__(self, marker: bytes):
        self.marker, self.events, self.arrived = marker, [], threading.Event()

    def submit(self, batch):
        self.events.extend(batch)
        if any(self.marker in ev.payload for ev in batch):
            self.arrived.set()


def test_an_idle_lane_sleeps_until_the_kernel_wakes_it_for_a_record(nginx_server, monkeypatch):
    # Only the kernel's wakeup can end an idle wait this long within the test.
    monkeypatch.setattr(express, "IDLE_WAIT_S", 120.0)
    (ps,), failed = build.plan_profile(load.load_file(PROFILE))
    assert failed == []
    state.shared()
    tramp = trampoline.Trampoline(ps).attach()
    lt = loader.LoadedTarget(ps, target_no=1).load()
    drained: list[int] = []
    drain_all = lt.drain_all

    def counted():
        out = drain_all()
        drained.append(len(out))
        return out

    lt.drain_all = counted
    disp = _Dispatcher(b"GET /wake-up")
    lane = express.ExpressLane(lt, disp, grace_s=0.0)
    lane.arm(ps, 1)
    tramp.install(lt)
    lane.start()
    try:
        time.sleep(1.0)
        # A lane draining on its 10 ms timer would have looked about 100 times by now.
        assert len(drained) <= 3, drained
        assert curl(nginx_server.url + "/wake-up").returncode == 0
        assert disp.arrived.wait(30), [ev.payload[:40] for ev in disp.events]
        assert sum(drained) >= 2            # the request and the response, read when woken
    finally:
        tramp.close()
        lane.close()
        state.close()                       # as the tests after this one expect it
    assert lt.wait_for_records(5) is False  # closed: no wait at all
