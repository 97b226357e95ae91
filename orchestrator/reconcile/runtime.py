"""Running targets: load, switch generations, unload; each target's visible state and last error.

A target is a set of trampolines (its uprobes, attached once) and the program they tail-call:
its express lane (express.py), whose filters and max_bytes are map values. A generation is one
filter configuration in a lane. Replacing a generation is, cheapest first (plan.diff decides):

- parsers or filter values changed: the lane's gate flips to a configuration written with the
  new values (a few map writes, no compile);
- the program changed: a new lane is compiled and the trampolines' program table is pointed at
  it, one atomic update per program; the old lane is drained before the new one's records are
  released, so nothing is lost, duplicated or reordered;
- the attach points changed: the same, on new trampolines.

Calls entered under one generation are completed by the next through the shared stash.
Records are decoded by the generation stamped in them (express.Sources, one per target): a
call entered under one generation and completed by the next belongs to the first. Kernel loss
counters become `loss` records.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from orchestrator.bpf import loader, trampoline
from orchestrator.pipeline import events
from orchestrator.plan import diff
from orchestrator.reconcile import express

DRAIN_INTERVAL_S = express.DRAIN_INTERVAL_S
# After a program table update a hit already inside the old program may still be writing;
# BPF programs run for microseconds, this is ample.
SWITCH_GRACE_S = 0.02
# Trampolines left idle by an edit of attach points stay attached this long, so that an edit back
# reuses them instead of compiling and attaching again (detaching waits a kernel grace period per
# uprobe, 1-4 s for a target, off bcc's lock: owner.cleanup); an idle uprobe still traps, so not
# longer.
PARKED_CLOSE_S = 3.0


@dataclass
class RunningTarget:
    probe_set: object
    target_no: int            # the target's number for the life of the process (ECAP_TARGET)
    generation: int           # its filter configuration's number (records carry it, mod 2^16)
    state: str = "pending"      # pending | running | failed | stopped
    last_error: str = ""
    lane: express.ExpressLane | None = None       # the loaded program this generation runs in
    trampoline: trampoline.Trampoline | None = None
    started_at: float = 0.0
    how: str = "compiled"     # how this generation came to be, for the reload log

    @property
    def key(self):
        return self.probe_set.key

    @property
    def digest(self):
        return self.probe_set.digest

    @property
    def loaded(self) -> loader.LoadedTarget | None:
        return self.lane.loaded if self.lane is not None else None


class Runtime:
    def __init__(self, dispatcher, log=lambda line: None, warn=lambda line: None):
        self.dispatcher = dispatcher
        self.log, self.warn = log, warn
        self.lock = threading.RLock()    # held by whoever changes what runs
        self.targets: dict = {}          # key → live RunningTarget
        self._target_nos: dict = {}      # key → target number, kept for the life of the process
        self._generations: dict = {}     # key → last generation number used
        self._sources: dict = {}         # key → express.Sources: generation → probe set, for decoding
        self._parked: dict = {}          # key → {trampoline identity: idle Trampoline}, see PARKED_CLOSE_S
        self._loss_lock = threading.Lock()
        self._background: list[threading.Thread] = []   # lanes closing, trampolines detaching
        dispatcher.periodic.append(self.collect_losses)

    def key_of(self, target_no: int):
        """(profile, target) of a target number, or None (any thread: the table only grows)."""
        for key, no in list(self._target_nos.items()):
            if no == target_no:
                return key
        return None

    def _target_no(self, key) -> int:
        if key not in self._target_nos:
            self._target_nos[key] = len(self._target_nos) + 1
        return self._target_nos[key]

    def sources(self, key) -> express.Sources:
        if key not in self._sources:
            self._sources[key] = express.Sources()
        return self._sources[key]

    def _next_generation(self, key) -> int:
        self._generations[key] = self._generations.get(key, 0) + 1
        return self._generations[key]

    # ---- loading
    def view(self, rt: RunningTarget) -> diff.Running:
        """What plan.diff needs to decide how `rt` is replaced."""
        ps = rt.probe_set
        return diff.Running(rt.key, ps.digest, ps.kernel_digest, ps.attach_identity, ps.program_key)

    def load(self, probe_set, how: str | None = None) -> RunningTarget:
        """Make a new generation ready; nothing runs it until `switch` installs it. A failed load
        leaves nothing.

        `how` is plan.diff's decision for a replacement (made under `lock`, from `view`). With
        PARSERS or EXPRESS nothing is compiled: the generation is a configuration of the running
        lane, written when `switch` makes it live. Otherwise a new lane is compiled (on the
        running trampolines for COMPILE; on new, or parked, ones for REATTACH or a new target)."""
        key = probe_set.key
        live = self.targets.get(key)
        if how in (diff.PARSERS, diff.EXPRESS) and live is not None and live.lane is not None \
                and live.lane.fits(probe_set):
            return RunningTarget(probe_set, live.target_no, self._next_generation(key), state="running",
                                 lane=live.lane, trampoline=live.trampoline, started_at=time.time(),
                                 how=diff.WORDS[how])
        rt = RunningTarget(probe_set, self._target_no(key), self._next_generation(key),
                           how=diff.WORDS.get(how, "compiled"))
        with self.lock:      # the close timer takes it too
            parked = self._parked.get(key, {}).pop(probe_set.attach_identity, None)
        if live is not None and live.trampoline is not None and \
                live.trampoline.identity == probe_set.attach_identity:
            rt.trampoline = live.trampoline
            if parked is not None:
                self._in_background(parked.close)
        elif parked is not None:
            rt.trampoline = parked          # attach points edited back: its uprobes are still there
        else:
            try:
                rt.trampoline = trampoline.Trampoline(probe_set).attach()
            except loader.LoadError as exc:
                rt.state, rt.last_error = "failed", str(exc)
                return rt
        lt = loader.LoadedTarget(probe_set, target_no=rt.target_no)
        try:
            lt.load()
        except loader.LoadError as exc:
            rt.state, rt.last_error = "failed", str(exc)
            if rt.trampoline is not (live.trampoline if live else None):
                rt.trampoline.close()
            return rt
        rt.lane = express.ExpressLane(lt, self.dispatcher, SWITCH_GRACE_S, sources=self.sources(key)).start()
        rt.state, rt.started_at = "running", time.time()
        return rt

    # ---- switching
    def start(self, probe_set) -> RunningTarget:
        """A new target: load it and make it live at once."""
        rt = self.load(probe_set)
        if rt.state == "running":
            self.switch([(None, rt)])
        return rt

    def switch(self, pairs) -> None:
        """Make each (old, new) pair's new generation live (loaded by `load`).

        Within one lane the gate flip is the whole switch. Otherwise each trampoline table is
        pointed at the new lane, whose records are held until the old lane is drained: per-
        connection order holds.
        """
        with self.lock:
            old_trampolines, retiring, held, clear_after = [], [], [], []
            for old, new in pairs:
                if old is not None and new.lane is old.lane:
                    new.lane.arm(new.probe_set, new.generation)
                    old.state = "stopped"
                    continue
                if old is not None and old.trampoline is not new.trampoline:
                    # Attach points changed: the old uprobes go idle. Emptying a program table takes
                    # the kernel ~5 ms per entry (tail-call sites are re-patched), so hits between
                    # clearing the old table and filling the new one would be lost: when the two
                    # sets of uprobes record each call exactly once anyway, fill first, then clear.
                    if _overlap_safe(old.probe_set, new.probe_set):
                        clear_after.append(old.trampoline)
                    else:
                        old.trampoline.clear()
                    old_trampolines.append((new.key, old.trampoline))
                if old is not None:
                    new.lane.hold()
                    held.append(new.lane)
                new.lane.arm(new.probe_set, new.generation)
                new.trampoline.install(new.loaded)
                if old is not None and old.state == "running":
                    retiring.append(old)
            for tramp in clear_after:
                tramp.clear()
            if retiring:
                time.sleep(SWITCH_GRACE_S)
            for old in retiring:
                self._retire(old)
            for lane in held:
                lane.release()
            for _, new in pairs:
                self.targets[new.key] = new
            for key, tramp in old_trampolines:
                self._park(key, tramp)

    def _park(self, key, tramp) -> None:
        """Keep an idle (cleared) trampoline attached for PARKED_CLOSE_S, then close it."""
        parked = self._parked.setdefault(key, {})
        previous = parked.pop(tramp.identity, None)
        if previous is not None and previous is not tramp:
            self._in_background(previous.close)
        parked[tramp.identity] = tramp

        def close_if_still_parked():
            with self.lock:
                if self._parked.get(key, {}).get(tramp.identity) is not tramp:
                    return
                del self._parked[key][tramp.identity]
            tramp.close()

        timer = threading.Timer(PARKED_CLOSE_S, close_if_still_parked)
        timer.daemon = True
        timer.start()

    def _close_parked(self, key) -> None:
        for tramp in self._parked.pop(key, {}).values():
            self._in_background(tramp.close)

    def discard(self, rt: RunningTarget) -> None:
        """Roll back a loaded generation that was never installed."""
        live = self.targets.get(rt.key)
        if rt.lane is not None and (live is None or rt.lane is not live.lane):
            self._in_background(rt.lane.close)      # nothing ran it
        if rt.trampoline is not None and (live is None or rt.trampoline is not live.trampoline):
            self._in_background(rt.trampoline.close)

    def stop(self, key) -> None:
        with self.lock:
            self._close_parked(key)
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
        """No trampoline runs its lane any more: deliver its last records, then unload it in the
        background."""
        rt.lane.idle()
        self._collect(rt)
        rt.state = "stopped"
        self._in_background(rt.lane.close)

    def _in_background(self, fn) -> None:
        # Detaching uprobes waits out kernel grace periods (~0.1 s each): off the switch's path.
        t = threading.Thread(target=fn, name="ecapture-close", daemon=True)
        t.start()
        self._background = [b for b in self._background if b.is_alive()] + [t]

    def stop_all(self) -> None:
        with self.lock:
            for key in list(self.targets):
                self.stop(key)
            for key in list(self._parked):
                self._close_parked(key)
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
            seen = rt.loaded.losses_seen     # per loaded program: generations of a lane share it
            records = []
            for stage, total in counters.items():
                delta = total - seen.get(stage, 0)
                if delta > 0:
                    seen[stage] = total
                    ps = rt.probe_set
                    self.dispatcher.stats.losses[(ps.profile, ps.target.name, stage)] += delta
                    records.append(events.Record("loss", None, {"profile": ps.profile, "target": ps.target.name,
                                                                "stage": stage, "count": delta}))
        if records:
            self.dispatcher.submit_records(records)


def _overlap_safe(old_ps, new_ps) -> bool:
    """Can both trampolines run for a moment without recording a call twice? Yes when every hook
    records at return (the shared stash entry is claimed once, by whichever return probe runs
    first) or records nothing, and both have the same hooks in the same order (the stash is keyed
    by hook index): attach points that differ only by pid scope or library file."""
    points = [(h.symbol, h.on, h.probe) for h in old_ps.hooks]
    return points == [(h.symbol, h.on, h.probe) for h in new_ps.hooks] and \
        all(h.on == "return" or h.record == 0 for h in new_ps.hooks)
