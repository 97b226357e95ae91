"""Running targets: load, switch generations, unload; each target's visible state and last error.

One live `RunningTarget` per (profile, target) key, each owning a gate slot that stays the
same across its generations. A generation switch (see `switch`) hands every probe hit to
exactly one generation and releases the new generation's records only after the old one
is drained, so nothing is lost, duplicated or reordered. Kernel loss counters become
`loss` records.
"""
from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

from orchestrator.bpf import loader, state
from orchestrator.pipeline import events

DRAIN_INTERVAL_S = 0.01
# After the gate flips and the old generation is retired, a program already past its checks
# may still be writing; BPF programs run for microseconds, this is ample.
RETIRE_GRACE_S = 0.02


@dataclass
class RunningTarget:
    probe_set: object
    slot: int
    generation: int
    state: str = "pending"      # pending | running | failed | stopped
    last_error: str = ""
    loaded: loader.LoadedTarget | None = None
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    drained: threading.Event = field(default_factory=threading.Event)   # its last record is submitted
    losses_seen: dict = field(default_factory=dict)
    started_at: float = 0.0

    @property
    def key(self):
        return self.probe_set.key

    @property
    def digest(self):
        return self.probe_set.digest


class Runtime:
    def __init__(self, dispatcher):
        self.dispatcher = dispatcher
        self.targets: dict = {}          # key → live RunningTarget
        self._slots: dict = {}           # key → gate slot, kept for the life of the process
        self._generations: dict = {}     # key → last generation number used
        self._loss_lock = threading.Lock()
        self._retiring: list[RunningTarget] = []    # old generations still detaching
        dispatcher.periodic.append(self.collect_losses)

    # ---- generations
    def _slot(self, key) -> int:
        if key not in self._slots:
            used = set(self._slots.values())
            free = next((s for s in range(1, state.SLOTS) if s not in used), None)
            if free is None:
                raise loader.LoadError(f"more than {state.SLOTS - 1} targets")
            self._slots[key] = free
        return self._slots[key]

    def load(self, probe_set, hold: bool) -> RunningTarget:
        """Compile and attach a new generation with its gate still closed. With `hold`, its
        records wait for `release()`. A failed load leaves nothing attached (state `failed`)."""
        key = probe_set.key
        try:
            slot = self._slot(key)
        except loader.LoadError as exc:
            return RunningTarget(probe_set, 0, 0, state="failed", last_error=str(exc))
        generation = self._generations.get(key, 0) + 1
        self._generations[key] = generation
        rt = RunningTarget(probe_set, slot, generation)
        if not hold:
            rt.released.set()
        pending: list = []
        source = probe_set
        string_at = ctypes.string_at
        decode = events.decode

        def on_sample(_ctx, data, size):
            pending.append(decode(string_at(data, size), source))

        lt = loader.LoadedTarget(probe_set, slot=slot, generation=generation)
        try:
            lt.load(on_event=on_sample)
        except loader.LoadError as exc:
            rt.state, rt.last_error = "failed", str(exc)
            return rt
        rt.loaded, rt.state, rt.started_at = lt, "running", time.time()
        rt.thread = threading.Thread(target=self._poll, args=(rt, pending), daemon=True,
                                     name=f"poll-{probe_set.profile}/{probe_set.target.name}#{generation}")
        rt.thread.start()
        return rt

    def _poll(self, rt: RunningTarget, pending: list) -> None:
        lt = rt.loaded
        # Records are written without wakeups (probes.c.j2): drain on a timer.
        while not rt.stop_flag.wait(DRAIN_INTERVAL_S):
            lt.drain()
            if pending and rt.released.is_set():
                self.dispatcher.submit(pending[:])
                pending.clear()
        # Stopping: the generation is retired (it writes nothing more) or its probes are going.
        lt.drain()
        rt.released.wait()
        if pending:
            self.dispatcher.submit(pending[:])
            pending.clear()
        rt.drained.set()
        # Detaching waits out the kernel's uprobe grace periods: off the switch's critical path.
        lt.detach_probes()
        lt.drain()
        if pending:
            self.dispatcher.submit(pending[:])
            pending.clear()
        self._collect(rt)
        lt.close()
        rt.state = "stopped"

    def start(self, probe_set) -> RunningTarget:
        """A new target: load, open its gate, make it live."""
        rt = self.load(probe_set, hold=False)
        if rt.state == "running":
            state.shared().open_gate(rt.slot, rt.generation)
        self.targets[rt.key] = rt
        return rt

    def switch(self, pairs) -> None:
        """Make each (old, new) pair's new generation live; both are loaded, new ones held.

        Gates flip first (new calls go to the new generations), then the old generations are
        retired (their in-flight calls complete under the new ones), drained, and only then
        are the new generations' records released: per-connection order holds.
        """
        shared = state.shared()
        for old, new in pairs:
            shared.open_gate(new.slot, new.generation)
        retiring = [old for old, _ in pairs if old is not None and old.state == "running"]
        for old in retiring:
            shared.retire(old.slot, old.generation)
        if retiring:
            time.sleep(RETIRE_GRACE_S)
        for old in retiring:
            self._retire(old)
        for old, new in pairs:
            new.released.set()
            self.targets[new.key] = new

    def discard(self, rt: RunningTarget) -> None:
        """Roll back a loaded generation whose gate never opened (it completed no call)."""
        if rt.state == "running":
            self._retire(rt)

    def stop(self, key) -> None:
        rt = self.targets.pop(key, None)
        if rt is None:
            return
        if rt.state == "running":
            shared = state.shared()
            shared.open_gate(rt.slot, 0)
            shared.retire(rt.slot, rt.generation)
            time.sleep(RETIRE_GRACE_S)
            self._retire(rt)

    def _retire(self, rt: RunningTarget) -> None:
        """Deliver its last records; its probes are detached in the background."""
        rt.released.set()
        rt.stop_flag.set()
        rt.drained.wait(30)
        self._retiring.append(rt)

    def wait_detached(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for rt in self._retiring:
            if rt.thread is not None:
                rt.thread.join(max(0.0, deadline - time.monotonic()))
        self._retiring = [rt for rt in self._retiring if rt.thread is not None and rt.thread.is_alive()]

    def stop_all(self) -> None:
        for key in list(self.targets):
            self.stop(key)
        self.wait_detached()

    # ---- losses
    def collect_losses(self) -> None:
        for rt in list(self.targets.values()):
            if rt.state == "running":
                self._collect(rt)

    def _collect(self, rt: RunningTarget) -> None:
        with self._loss_lock:
            self._collect_locked(rt)

    def _collect_locked(self, rt: RunningTarget) -> None:
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
