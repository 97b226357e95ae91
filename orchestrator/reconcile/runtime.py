"""Running targets: load, switch generations, unload; each target's visible state and last error.

A target is a set of trampolines (its uprobes, attached once) and the generation of programs
they tail-call. Switching generation is one program-table update per program: every probe
hit runs exactly one generation, and calls entered under one generation are completed by
the next through the shared stash. The new generation's records are released only after the
old one is drained, so nothing is lost, duplicated or reordered. Kernel loss counters become
`loss` records.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from orchestrator.bpf import loader, trampoline
from orchestrator.pipeline import events

DRAIN_INTERVAL_S = 0.01
# After a program table update a hit already inside the old program may still be writing;
# BPF programs run for microseconds, this is ample.
SWITCH_GRACE_S = 0.02


@dataclass
class RunningTarget:
    probe_set: object
    slot: int
    generation: int
    state: str = "pending"      # pending | running | failed | stopped
    last_error: str = ""
    loaded: loader.LoadedTarget | None = None
    trampoline: trampoline.Trampoline | None = None
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
        self._slots: dict = {}           # key → slot number, kept for the life of the process
        self._generations: dict = {}     # key → last generation number used
        self._loss_lock = threading.Lock()
        self._background: list[threading.Thread] = []   # generations closing, trampolines detaching
        dispatcher.periodic.append(self.collect_losses)

    def _slot(self, key) -> int:
        if key not in self._slots:
            self._slots[key] = len(self._slots) + 1
        return self._slots[key]

    # ---- loading
    def load(self, probe_set, hold: bool) -> RunningTarget:
        """Load a new generation (and, if its attach points are new, attach trampolines with an empty
        table). Nothing runs it until `switch`/`start` installs it. A failed load leaves nothing."""
        key = probe_set.key
        generation = self._generations.get(key, 0) + 1
        self._generations[key] = generation
        rt = RunningTarget(probe_set, self._slot(key), generation)
        if not hold:
            rt.released.set()
        live = self.targets.get(key)
        if live is not None and live.trampoline is not None and \
                live.trampoline.identity == trampoline.identity(probe_set):
            rt.trampoline = live.trampoline
        else:
            try:
                rt.trampoline = trampoline.Trampoline(probe_set).attach()
            except loader.LoadError as exc:
                rt.state, rt.last_error = "failed", str(exc)
                return rt
        lt = loader.LoadedTarget(probe_set, slot=rt.slot, generation=generation)
        try:
            lt.load()
        except loader.LoadError as exc:
            rt.state, rt.last_error = "failed", str(exc)
            if rt.trampoline is not (live.trampoline if live else None):
                rt.trampoline.close()
            return rt
        rt.loaded, rt.state, rt.started_at = lt, "running", time.time()
        rt.thread = threading.Thread(target=self._poll, args=(rt,), daemon=True,
                                     name=f"poll-{probe_set.profile}/{probe_set.target.name}#{generation}")
        rt.thread.start()
        return rt

    def _poll(self, rt: RunningTarget) -> None:
        lt = rt.loaded
        pending: list = []
        source = rt.probe_set
        decode = events.decode
        append = pending.append

        def take(raw: bytes) -> None:
            append(decode(raw, source))

        # Records are written without wakeups (probes.c.j2): drain on a timer.
        while not rt.stop_flag.wait(DRAIN_INTERVAL_S):
            lt.drain(take)
            if pending and rt.released.is_set():
                self.dispatcher.submit(pending[:])
                pending.clear()
        # Stopping: no trampoline runs this generation any more.
        lt.drain(take)
        rt.released.wait()
        if pending:
            self.dispatcher.submit(pending[:])
            pending.clear()
        self._collect(rt)
        rt.drained.set()
        lt.close()
        rt.state = "stopped"

    # ---- switching
    def start(self, probe_set) -> RunningTarget:
        """A new target: load it and make it live at once."""
        rt = self.load(probe_set, hold=False)
        if rt.state == "running":
            self.switch([(None, rt)])
        return rt

    def switch(self, pairs) -> None:
        """Make each (old, new) pair's new generation live (both loaded; new ones held).

        Each trampoline table is pointed at the new programs; old generations are then drained,
        and only then are the new generations' records released: per-connection order holds.
        """
        old_trampolines = []
        for old, new in pairs:
            if old is not None and old.trampoline is not new.trampoline:
                old.trampoline.clear()        # attach points changed: the old uprobes go idle
                old_trampolines.append(old.trampoline)
            new.trampoline.install(new.loaded)
        retiring = [old for old, _ in pairs if old is not None and old.state == "running"]
        if retiring:
            time.sleep(SWITCH_GRACE_S)
        for old in retiring:
            self._retire(old)
        for old, new in pairs:
            new.released.set()
            self.targets[new.key] = new
        for tramp in old_trampolines:
            self._in_background(tramp.close)

    def discard(self, rt: RunningTarget) -> None:
        """Roll back a loaded generation that was never installed."""
        live = self.targets.get(rt.key)
        if rt.state == "running":
            self._retire(rt)
        if rt.trampoline is not None and (live is None or rt.trampoline is not live.trampoline):
            self._in_background(rt.trampoline.close)

    def stop(self, key) -> None:
        rt = self.targets.pop(key, None)
        if rt is None:
            return
        if rt.trampoline is not None:
            rt.trampoline.clear()
            time.sleep(SWITCH_GRACE_S)
            self._in_background(rt.trampoline.close)
        if rt.state == "running":
            self._retire(rt)

    def _retire(self, rt: RunningTarget) -> None:
        """Deliver its last records; it is unloaded in the background."""
        rt.released.set()
        rt.stop_flag.set()
        rt.drained.wait(30)
        if rt.thread is not None:
            self._keep_background(rt.thread)

    def _in_background(self, fn) -> None:
        # Detaching uprobes waits out kernel grace periods (~0.1 s each): off the switch's path.
        t = threading.Thread(target=fn, name="ecapture-close", daemon=True)
        t.start()
        self._keep_background(t)

    def _keep_background(self, t: threading.Thread) -> None:
        self._background = [b for b in self._background if b.is_alive()] + [t]

    def stop_all(self) -> None:
        for key in list(self.targets):
            self.stop(key)
        for t in self._background:
            t.join(60)
        self._background.clear()

    # ---- losses
    def collect_losses(self) -> None:
        for rt in list(self.targets.values()):
            if rt.state == "running":
                self._collect(rt)

    def _collect(self, rt: RunningTarget) -> None:
        with self._loss_lock:
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
