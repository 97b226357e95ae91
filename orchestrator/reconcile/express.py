"""A target's express lane: its loaded program, whose uid, comm, cgroup and port filters and max_bytes are map values.

Compiling costs hundreds of milliseconds (clang), which would be most of a reload. So every
target runs one compiled program per shape (attach points and program text), and each
generation of the target is a filter configuration in that program's maps: an edit that changes
only those values writes them into the spare configuration and flips the gate (one map write:
every hit reads the gate once, so each hit belongs to exactly one generation). Records carry
their generation (`gen` in the header), so one ring buffer serves any number of such switches
in order. An edit that changes the program compiles a new lane; the runtime switches the
trampolines to it and drains this one first (runtime.py).

Measured before making this the only program (bench/README.md): a program with the filters
compiled in ran no faster (0.0 % apart over 6 rounds, run-to-run spread 6.8 %).

A call belongs to the generation that admitted it at entry, even when another lane's return
probe completes it (hooks.c.j2). When the kernel cannot apply that generation's port filter and
max_bytes any more, it flags the record and `decode` applies them here, with the values of the
record's own generation (`Sources`: one registry per target, shared by all its lanes).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from orchestrator import threadname
from orchestrator.bpf import loader, render
from orchestrator.pipeline import events

DRAIN_INTERVAL_S = 0.01
IDLE_WAIT_S = 1.0       # an idle lane sleeps until the kernel wakes it; this bounds only a lost wakeup
KEPT_SOURCES = 64      # generations whose records may still be unread; far more than a drain needs


class Sources:
    """A target's generations whose records may still be unread: generation mod 2^16 → probe set.
    All its lanes share one, as a call entered under one of them may be completed, and recorded,
    by another."""

    def __init__(self):
        self._by_gen: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()     # written by the reconciler, read by poll threads

    def put(self, generation: int, probe_set) -> None:
        with self._lock:
            self._by_gen.pop(generation & 0xFFFF, None)
            self._by_gen[generation & 0xFFFF] = probe_set
            while len(self._by_gen) > KEPT_SOURCES:
                self._by_gen.popitem(last=False)

    def get(self, gen: int, default=None):
        return self._by_gen.get(gen, default)

    @property
    def by_gen(self):
        """generation mod 2^16 → probe set, read without the lock (a dict read is atomic)."""
        return self._by_gen

    def newest(self, default=None):
        with self._lock:
            return next(reversed(self._by_gen.values()), default)

    def __len__(self) -> int:
        return len(self._by_gen)


def decode(raw: bytes, sources: Sources, fallback) -> events.Event | None:
    """Decode a record with the probe set of the generation that made it (`fallback` if unknown).
    None: a record the kernel left to userspace that its generation's port filter rejects."""
    out: list = []
    events.decode_lane([raw], sources.by_gen, sources.newest, fallback, out)
    return out[0] if out else None


class ExpressLane:
    def __init__(self, loaded: loader.LoadedTarget, dispatcher, grace_s: float, sources: Sources | None = None,
                 clock=time.monotonic, sleep=time.sleep):
        self.loaded = loaded
        self.dispatcher = dispatcher
        self.grace_s = grace_s
        self.clock, self.sleep = clock, sleep     # injectable: tests/unit/test_express.py
        ps = loaded.probe_set
        self.program_key = ps.program_key      # what it can run: plan.model.ProbeSet.program_key
        self.sources = Sources() if sources is None else sources   # the target's: see Sources
        self.live_slot = 0
        self.armed = False            # a configuration is live: records may come
        self.flipped_at = 0.0
        self.held = False             # records wait: the generation before is still draining
        self._pending: list = []
        self._lock = threading.Lock()     # one drain + submit at a time, so batches stay in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True,
                                        name=f"ecapture-lane-{ps.target.name}@{ps.profile}")

    def start(self) -> "ExpressLane":
        self._thread.start()
        return self

    def fits(self, probe_set) -> bool:
        """Can this lane run `probe_set`? Same attach points and the same program but for filter values
        and max_bytes."""
        return probe_set.program_key == self.program_key

    # ---- switching
    def arm(self, probe_set, generation: int) -> None:
        """Make `probe_set` (generation `generation`) the lane's live configuration."""
        # The spare slot was live until the last flip; a hit that read the gate just before it may
        # still be reading that slot's values for a few microseconds.
        wait = self.grace_s - (self.clock() - self.flipped_at)
        if wait > 0:
            self.sleep(wait)
        slot = 1 - self.live_slot if self.armed else 0
        self.sources.put(generation, probe_set)
        self.loaded.write_filters(slot, generation, render.lane_values(probe_set.target, probe_set.cgroups))
        self.loaded.open_gate(slot)
        self.live_slot, self.armed, self.flipped_at = slot, True, self.clock()

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        self.flush()

    def flush(self) -> int:
        """Submit every record written so far (unless held); how many records were read."""
        with self._lock:
            raws = self.loaded.drain_all()
            events.decode_lane(raws, self.sources.by_gen, self.sources.newest,
                               self.loaded.probe_set, self._pending)
            if self._pending and not self.held:
                self.dispatcher.submit(self._pending)
                self._pending = []
            return len(raws)

    def idle(self) -> None:
        """No trampoline runs the lane any more: deliver what it wrote and forget its configurations."""
        self.held = False
        self.flush()
        self.armed = False

    def _poll(self) -> None:
        threadname.name_this_thread()
        # While records come, drain on a timer: they gather into batches, and the kernel wakes no
        # one for a record written while earlier ones wait (event.h). Once a drain finds none,
        # sleep until the kernel wakes the ring's readers for the next record: an idle lane
        # costs no CPU.
        while not self._stop.is_set():
            if self.flush():
                self._stop.wait(DRAIN_INTERVAL_S)
            elif not self.loaded.wait_for_records(IDLE_WAIT_S):
                self._stop.wait(DRAIN_INTERVAL_S)      # closed under us: only stop is left

    def close(self) -> None:
        self._stop.set()
        self.loaded.interrupt_wait()
        if self._thread.is_alive():
            self._thread.join(5)
        self.loaded.close()
