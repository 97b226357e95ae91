"""Running targets: load, switch generations, unload; each target's visible state and last error.

A target is a set of trampolines (its uprobes, attached once) and the generation of programs
they tail-call. Switching generation is one program-table update per program: every probe
hit runs exactly one generation, and calls entered under one generation are completed by
the next through the shared stash. The new generation's records are released only after the
old one is drained, so nothing is lost, duplicated or reordered. Kernel loss counters become
`loss` records.

Every live target also gets an express lane (express.py), compiled in the background: an edit
of only its uid, comm or port filters switches through the lane in milliseconds instead of
compiling. A generation with those filters compiled in is then built in the background once
the edits have settled for SPECIALISE_AFTER_S, and replaces the lane the same lossless way.
max_bytes is a lane value too.

An edit of only `parsers` (userspace) compiles nothing: the running programs go on, and the
records they stamp are decoded with the new probe set from the next drain on. Records are
decoded by the generation stamped in them (express.Sources, one per target): a call entered
under one generation and completed by the next belongs to the first.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from orchestrator.bpf import loader, trampoline
from orchestrator.pipeline import events
from orchestrator.plan import diff
from orchestrator.reconcile import express

DRAIN_INTERVAL_S = express.DRAIN_INTERVAL_S    # the same cadence for compiled generations and lanes
# After a program table update a hit already inside the old program may still be writing;
# BPF programs run for microseconds, this is ample.
SWITCH_GRACE_S = 0.02
# Filters edited through the express lane get compiled in once they have been left alone this long.
# Two seconds, not one: that compile cannot be interrupted, and an edit arriving during it waits
# for it (bcc compiles one at a time). Edits in a burst come closer together than this; measured
# in bench/reload.py's mixed series (attach-point edits p99 1550 ms with 1 s, 969 ms with 2 s).
SPECIALISE_AFTER_S = 2.0
# Trampolines left idle by an edit of attach points stay attached this long, so that an edit back
# reuses them instead of compiling and attaching again (detaching waits a kernel grace period per
# uprobe, 1-4 s for a target, off bcc's lock: owner.cleanup); an idle uprobe still traps, so not
# longer.
PARKED_CLOSE_S = 3.0


@dataclass
class RunningTarget:
    probe_set: object
    target_no: int            # the target's number for the life of the process (ECAP_TARGET)
    generation: int
    state: str = "pending"      # pending | running | failed | stopped
    last_error: str = ""
    loaded: loader.LoadedTarget | None = None
    lane: express.ExpressLane | None = None   # set: this generation runs in the target's express lane
    trampoline: trampoline.Trampoline | None = None
    thread: threading.Thread | None = None
    stop_flag: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    drained: threading.Event = field(default_factory=threading.Event)   # its last record is submitted
    started_at: float = 0.0
    stamp: int = 0            # the generation compiled into its programs (records carry it); 0: `generation`
    relabel_of: "RunningTarget | None" = None   # runs `relabel_of`'s programs with another probe set
    how: str = "compiled"     # how this generation came to be, for the reload log

    def __post_init__(self):
        if not self.stamp:
            self.stamp = self.generation

    @property
    def key(self):
        return self.probe_set.key

    @property
    def digest(self):
        return self.probe_set.digest


class Runtime:
    def __init__(self, dispatcher, log=lambda line: None, warn=lambda line: None, express_lanes: bool = True,
                 compile_filters_in: bool = True):
        self.dispatcher = dispatcher
        self.log, self.warn = log, warn
        self.lock = threading.RLock()    # held by whoever changes what runs (reconciler, lane worker)
        self.targets: dict = {}          # key → live RunningTarget
        self.lanes: dict = {}            # key → express.ExpressLane (live or idle)
        self.lane_errors: dict = {}      # key → why its lane could not be built
        self._target_nos: dict = {}           # key → target number, kept for the life of the process
        self._generations: dict = {}     # key → last generation number used
        self._sources: dict = {}         # key → express.Sources: generation → probe set, for decoding
        self._parked: dict = {}          # key → {trampoline identity: idle Trampoline}, see PARKED_CLOSE_S
        self._loss_lock = threading.Lock()
        self._background: list[threading.Thread] = []   # generations closing, trampolines detaching
        self.express_lanes = express_lanes
        self.compile_filters_in = compile_filters_in   # False: a target on its lane stays there (bench)
        self._jobs = _Jobs(self._run_job) if express_lanes else None
        dispatcher.periodic.append(self.collect_losses)

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
        ps, lane = rt.probe_set, self.lanes.get(rt.key)
        return diff.Running(rt.key, ps.digest, ps.kernel_digest, ps.attach_identity, on_lane=rt.lane is not None,
                            lane_key=lane.fit_key if lane is not None else None)

    def load(self, probe_set, hold: bool, how: str | None = None) -> RunningTarget:
        """Load a new generation (and, if its attach points are new, attach trampolines with an empty
        table). Nothing runs it until `switch`/`start` installs it. A failed load leaves nothing.

        `how` is plan.diff's decision for a replacement (made under `lock`, from `view`). With
        PARSERS the running programs go on, decoded with `probe_set`. With EXPRESS nothing is
        compiled: the generation is
        the lane with `probe_set`'s filter values, written when `switch` makes it live. When it
        cannot (attach points or the program changed), the replacement is compiled as the target's
        new express lane, so that the edits that follow need no compile either; its filters get
        compiled in once they settle, as after any lane edit."""
        key = probe_set.key
        live = self.targets.get(key)
        lane = self.lanes.get(key)
        if live is not None and self._jobs is not None:
            # A compile for filters that are about to change would only delay this one (bcc
            # compiles one at a time): the switch queues what the new generation needs.
            self._jobs.cancel(key)
        if how == diff.PARSERS and live is not None and live.lane is None and live.loaded is not None:
            # Only userspace changed (parsers): the running programs go on, with the new probe set.
            return RunningTarget(probe_set, live.target_no, self._next_generation(key), state="running",
                                 loaded=live.loaded, trampoline=live.trampoline, thread=live.thread,
                                 stop_flag=live.stop_flag, released=live.released, drained=live.drained,
                                 started_at=time.time(), stamp=live.stamp, relabel_of=live,
                                 how="parsers only, no compile")
        if how == diff.EXPRESS and live is not None and lane is not None:
            rt = RunningTarget(probe_set, self._target_no(key), self._next_generation(key), state="running",
                               loaded=lane.loaded, lane=lane, trampoline=live.trampoline, started_at=time.time(),
                               how="express lane, no compile")
            rt.released.set()     # the lane holds its own records while the generation before drains
            return rt
        rt = RunningTarget(probe_set, self._target_no(key), self._next_generation(key))
        self.sources(key).put(rt.generation, probe_set)
        if not hold:
            rt.released.set()
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
        if self.express_lanes and live is not None and probe_set.express is not None:
            lt = loader.LoadedTarget(probe_set, target_no=rt.target_no, generation=1, express=True)
            try:
                lt.load()
            except loader.LoadError:
                pass           # compiled filters below: the lane is an optimisation
            else:
                rt.lane = express.ExpressLane(lt, self.dispatcher, SWITCH_GRACE_S, sources=self.sources(key)).start()
                rt.loaded, rt.state, rt.started_at = lt, "running", time.time()
                rt.how = "compiled as its new express lane"
                rt.released.set()     # the lane holds its own records while the generation before drains
                return rt
        lt = loader.LoadedTarget(probe_set, target_no=rt.target_no, generation=rt.generation)
        try:
            lt.load()
        except loader.LoadError as exc:
            rt.state, rt.last_error = "failed", str(exc)
            if rt.trampoline is not (live.trampoline if live else None):
                rt.trampoline.close()
            return rt
        self._run(rt, lt)
        return rt

    def _run(self, rt: RunningTarget, lt: loader.LoadedTarget) -> None:
        rt.loaded, rt.state, rt.started_at = lt, "running", time.time()
        ps = rt.probe_set
        rt.thread = threading.Thread(target=self._poll, args=(rt,), daemon=True,
                                     name=f"poll-{ps.profile}/{ps.target.name}#{rt.generation}")
        rt.thread.start()

    def _poll(self, rt: RunningTarget) -> None:
        lt = rt.loaded
        pending: list = []
        fallback = rt.probe_set
        sources = self.sources(rt.key)     # read per record: a parsers edit relabels a generation
        decode = express.decode
        append = pending.append

        def take(raw: bytes) -> None:
            ev = decode(raw, sources, fallback)
            if ev is not None:
                append(ev)

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

        Each trampoline table is pointed at the new programs (or, within a live express lane, its
        gate is flipped); old generations are then drained, and only then are the new
        generations' records released: per-connection order holds.
        """
        with self.lock:
            old_trampolines, retiring, lanes_held, clear_after, lanes_replaced = [], [], [], [], []
            for old, new in pairs:
                if new.relabel_of is not None:
                    # The same programs decoded with another probe set from the next drain on.
                    self.sources(new.key).put(new.stamp, new.probe_set)
                    old.state = "stopped"
                    ps = new.probe_set
                    self.log(f"{ps.profile}/{ps.target.name}: parsers changed, generation {new.stamp}'s "
                             f"programs run on (no compile)")
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
                lane_was_live = old is not None and new.lane is not None and old.lane is new.lane
                if lane_was_live:
                    new.lane.arm(new.probe_set, new.generation)   # the gate flip is the whole switch
                    old.state = "stopped"
                    continue
                if new.lane is not None:
                    previous = self.lanes.get(new.key)
                    if previous is not new.lane:          # a lane compiled as this replacement
                        self.lanes[new.key] = new.lane
                        self.lane_errors.pop(new.key, None)
                        if previous is not None:
                            lanes_replaced.append(previous)
                    new.lane.hold()
                    new.lane.arm(new.probe_set, new.generation)
                    lanes_held.append(new.lane)
                new.trampoline.install(new.loaded)
                if old is not None and old.state == "running":
                    retiring.append(old)
            for tramp in clear_after:
                tramp.clear()
            if retiring:
                time.sleep(SWITCH_GRACE_S)
            for old in retiring:
                self._retire(old)
            for lane in lanes_replaced:
                self._in_background(lane.close)
            for lane in lanes_held:
                lane.release()
            for old, new in pairs:
                new.released.set()
                self.targets[new.key] = new
                self._after_switch(new)
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

    def _after_switch(self, rt: RunningTarget) -> None:
        if self._jobs is None:
            return
        lane = self.lanes.get(rt.key)
        if rt.lane is not None:
            if self.compile_filters_in:
                self._jobs.put(rt.key, "specialise", SPECIALISE_AFTER_S)
        elif lane is None or not lane.fits(rt.probe_set):
            if lane is not None:               # idle, and made for other attach points or program
                del self.lanes[rt.key]
                self._in_background(lane.close)
            self._jobs.put(rt.key, "lane", 0.0)

    def discard(self, rt: RunningTarget) -> None:
        """Roll back a loaded generation that was never installed."""
        live = self.targets.get(rt.key)
        if live is not None and self._jobs is not None and live.state == "running":
            self._after_switch(live)     # what `load` cancelled for it
        if rt.relabel_of is not None:
            return          # it loaded nothing
        if rt.lane is not None:
            # nothing was written to the lane yet; one compiled for this replacement goes
            if self.lanes.get(rt.key) is not rt.lane:
                self._in_background(rt.lane.close)
        elif rt.state == "running":
            self._retire(rt)
        if rt.trampoline is not None and (live is None or rt.trampoline is not live.trampoline):
            self._in_background(rt.trampoline.close)

    def stop(self, key) -> None:
        with self.lock:
            self._close_parked(key)
            rt = self.targets.pop(key, None)
            lane = self.lanes.pop(key, None)
            if self._jobs is not None:
                self._jobs.cancel(key)
            if rt is not None:
                if rt.trampoline is not None:
                    rt.trampoline.clear()
                    time.sleep(SWITCH_GRACE_S)
                    self._in_background(rt.trampoline.close)
                if rt.state == "running":
                    self._retire(rt)
            if lane is not None:
                self._in_background(lane.close)

    def _retire(self, rt: RunningTarget) -> None:
        """Deliver its last records; it is unloaded in the background."""
        if rt.lane is not None:       # the lane stays loaded, idle, for the next filter edit
            rt.lane.idle()
            self._collect(rt)
            rt.state = "stopped"
            return
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
        """Not under `lock`: a lane job finishing its compile needs the lock to end."""
        if self._jobs is not None:
            self._jobs.close()
        with self.lock:
            for key in list(self.targets):
                self.stop(key)
            for key in list(self.lanes):
                self._in_background(self.lanes.pop(key).close)
            for key in list(self._parked):
                self._close_parked(key)
        for t in self._background:
            t.join(60)
        self._background.clear()

    # ---- express lanes (run by the job thread)
    def _run_job(self, key, kind: str) -> None:
        try:
            if kind == "lane":
                self._build_lane(key)
            elif kind == "specialise":
                self._specialise(key)
        except Exception as exc:   # a bug here must not end capture: the lane is an optimisation
            if kind == "lane":
                self.lane_errors[key] = f"{type(exc).__name__}: {exc}"
            self.warn(f"{key[0]}/{key[1]}: express lane {kind} failed: {type(exc).__name__}: {exc}")

    def _build_lane(self, key) -> None:
        with self.lock:
            live = self.targets.get(key)
            if live is None or (key in self.lanes and self.lanes[key].fits(live.probe_set)):
                return
            ps, target_no = live.probe_set, live.target_no
        lt = loader.LoadedTarget(ps, target_no=target_no, generation=1, express=True)
        try:
            lt.load()       # compiles outside the lock: edits meanwhile take the compiling path
        except loader.LoadError as exc:
            self.lane_errors[key] = str(exc)
            self.warn(f"{ps.profile}/{ps.target.name}: no express lane, filter edits will compile: {exc}")
            return
        lane = express.ExpressLane(lt, self.dispatcher, SWITCH_GRACE_S, sources=self.sources(key))
        with self.lock:
            live = self.targets.get(key)
            if live is None or not lane.fits(live.probe_set) or \
                    (key in self.lanes and self.lanes[key].fits(live.probe_set)):
                self._in_background(lt.close)
                return
            self.lane_errors.pop(key, None)
            self.lanes[key] = lane.start()

    def _specialise(self, key) -> None:
        with self.lock:
            live = self.targets.get(key)
            if live is None or live.lane is None:
                return
            ps, target_no, generation = live.probe_set, live.target_no, self._next_generation(key)
            self.sources(key).put(generation, ps)
        lt = loader.LoadedTarget(ps, target_no=target_no, generation=generation)
        try:
            lt.load()
        except loader.LoadError as exc:
            self.warn(f"{ps.profile}/{ps.target.name}: filters stay in the express lane: {exc}")
            return
        with self.lock:
            if self.targets.get(key) is not live:     # edited meanwhile: a newer job is queued
                self._in_background(lt.close)
                return
            rt = RunningTarget(ps, target_no, generation, trampoline=live.trampoline)
            self._run(rt, lt)
            self.switch([(live, rt)])
        self.log(f"{ps.profile}/{ps.target.name}: generation {generation} has its filters compiled in")

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


class JobQueue:
    """Which background job on express lanes runs next. Pure but for its clock: each job is due
    after a delay, and a newer job for a target replaces its pending one (so a burst of edits
    compiles once, after the last)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.due: dict = {}      # key → (due time, kind)

    def put(self, key, kind: str, delay_s: float) -> None:
        self.due[key] = (self.clock() + delay_s, kind)

    def cancel(self, key) -> None:
        self.due.pop(key, None)

    def take(self):
        """(key, kind) of the job due first, removed; None when none is due yet."""
        now = self.clock()
        ready = [(due, key) for key, (due, _) in self.due.items() if due <= now]
        if not ready:
            return None
        key = min(ready, key=lambda item: item[0])[1]
        return key, self.due.pop(key)[1]

    def wait_s(self) -> float | None:
        """How long until the next job is due (None: no job)."""
        soonest = min((due for due, _ in self.due.values()), default=None)
        return None if soonest is None else max(0.0, soonest - self.clock())


class _Jobs:
    """Runs a JobQueue's jobs, one at a time, on one background thread."""

    def __init__(self, run):
        self._run = run
        self._queue = JobQueue()
        self._cv = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def put(self, key, kind: str, delay_s: float) -> None:
        with self._cv:
            if self._closed:
                return
            self._queue.put(key, kind, delay_s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="ecapture-lanes", daemon=True)
                self._thread.start()
            self._cv.notify()

    def cancel(self, key) -> None:
        with self._cv:
            self._queue.cancel(key)

    def _loop(self) -> None:
        while True:
            with self._cv:
                job = None
                while not self._closed and job is None:
                    job = self._queue.take()
                    if job is None:
                        self._cv.wait(self._queue.wait_s())
                if self._closed:
                    return
            self._run(*job)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._queue.due.clear()
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(30)    # a compile in progress cannot be interrupted
