"""Running targets: load, poll, unload; each target's visible state and last error.

One `RunningTarget` per (profile, target): its loaded BPF, its poller thread and its
state (`pending`, `running`, `failed`, `stopped`). Loss counters read from the kernel
become `loss` records.
"""
from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

from orchestrator.bpf import loader
from orchestrator.pipeline import events


@dataclass
class RunningTarget:
    probe_set: object
    state: str = "pending"
    last_error: str = ""
    loaded: loader.LoadedTarget | None = None
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    losses_seen: dict = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def key(self):
        return self.probe_set.key

    @property
    def digest(self):
        return self.probe_set.digest


DRAIN_INTERVAL_S = 0.01


class Runtime:
    def __init__(self, dispatcher, log=print):
        self.dispatcher = dispatcher
        self.targets: dict = {}
        self.log = log
        dispatcher.periodic.append(self.collect_losses)

    def start(self, probe_set) -> RunningTarget:
        """Load and attach a probe set; on failure the target is `failed` and nothing stays attached."""
        rt = RunningTarget(probe_set)
        pending: list = []
        source = probe_set
        string_at = ctypes.string_at
        decode = events.decode

        def on_sample(_ctx, data, size):
            pending.append(decode(string_at(data, size), source))

        lt = loader.LoadedTarget(probe_set)
        try:
            lt.load(on_event=on_sample)
        except loader.LoadError as exc:
            rt.state, rt.last_error = "failed", str(exc)
            self.targets[rt.key] = rt
            return rt
        rt.loaded, rt.state, rt.started_at = lt, "running", time.time()
        rt.thread = threading.Thread(target=self._poll, args=(rt, pending), daemon=True,
                                     name=f"poll-{probe_set.profile}/{probe_set.target.name}")
        rt.thread.start()
        self.targets[rt.key] = rt
        return rt

    def _poll(self, rt: RunningTarget, pending: list) -> None:
        lt = rt.loaded
        # Records are written without wakeups (probes.c.j2): drain on a timer.
        while not rt.stop_flag.wait(DRAIN_INTERVAL_S):
            lt.drain()
            if pending:
                self.dispatcher.submit(pending[:])
                pending.clear()
        # Stopping: no new events once the probes are gone; deliver what the ring holds.
        lt.detach_probes()
        lt.drain()
        if pending:
            self.dispatcher.submit(pending[:])
            pending.clear()

    def stop(self, key) -> None:
        rt = self.targets.pop(key, None)
        if rt is None:
            return
        if rt.thread is not None:
            rt.stop_flag.set()
            rt.thread.join(10)
        if rt.loaded is not None:
            self._collect(rt)
            rt.loaded.close()
        rt.state = "stopped"

    def stop_all(self) -> None:
        for key in list(self.targets):
            self.stop(key)

    def collect_losses(self) -> None:
        for rt in list(self.targets.values()):
            if rt.state == "running":
                self._collect(rt)

    def _collect(self, rt: RunningTarget) -> None:
        try:
            counters = rt.loaded.losses()
        except Exception:
            return
        records = []
        for stage, total in counters.items():
            delta = total - rt.losses_seen.get(stage, 0)
            if delta > 0:
                rt.losses_seen[stage] = total
                ps = rt.probe_set
                self.dispatcher.stats.losses[(ps.profile, ps.target.name, stage)] += delta
                records.append(events.Record("loss", None, {"profile": ps.profile, "target": ps.target.name,
                                                            "stage": stage, "count": delta}))
        if records:
            self.dispatcher.submit_records(records)
