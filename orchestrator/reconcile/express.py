"""A target's express lane: a loaded generation whose uid, comm and port filters are map values.

Compiling a generation costs hundreds of milliseconds (clang), which is most of a reload. The
lane is compiled once per target shape, in the background, and kept loaded but idle. An edit
that changes only those filter values is applied through it without compiling: write the new
values into the lane's spare configuration, flip its gate (one map write: every hit reads the
gate once, so each hit belongs to exactly one generation), and, if the lane was idle, point
the trampolines at it. Records carry their generation (`gen` in the header), so one ring
buffer serves any number of such switches in order. Once the filters have settled, the
runtime compiles a generation with them built in and switches back to it (runtime.py).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

from orchestrator.bpf import layout, loader, render, trampoline
from orchestrator.pipeline import events

DRAIN_INTERVAL_S = 0.01
KEPT_SOURCES = 64      # generations whose records may still be unread; far more than a drain needs


class ExpressLane:
    def __init__(self, loaded: loader.LoadedTarget, dispatcher, grace_s: float):
        self.loaded = loaded
        self.dispatcher = dispatcher
        self.grace_s = grace_s
        ps = loaded.probe_set
        self.fit_key = fit_key(ps)
        self.sources: OrderedDict[int, object] = OrderedDict()   # generation mod 2^16 → probe set
        self.live_slot = 0
        self.armed = False            # a configuration is live: records may come
        self.flipped_at = 0.0
        self.held = False             # records wait: the generation before is still draining
        self._pending: list = []
        self._lock = threading.Lock()     # one drain + submit at a time, so batches stay in order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True,
                                        name=f"express-{ps.profile}/{ps.target.name}")

    def start(self) -> "ExpressLane":
        self._thread.start()
        return self

    def fits(self, probe_set) -> bool:
        """Can this lane run `probe_set`? Same attach points and the same program but for filter values."""
        return fit_key(probe_set) == self.fit_key

    # ---- switching
    def arm(self, probe_set, generation: int) -> None:
        """Make `probe_set` (generation `generation`) the lane's live configuration."""
        # The spare slot was live until the last flip; a hit that read the gate just before it may
        # still be reading that slot's values for a few microseconds.
        wait = self.grace_s - (time.monotonic() - self.flipped_at)
        if wait > 0:
            time.sleep(wait)
        slot = 1 - self.live_slot if self.armed else 0
        self.sources[generation & 0xFFFF] = probe_set
        while len(self.sources) > KEPT_SOURCES:
            self.sources.popitem(last=False)
        self.loaded.write_filters(slot, generation, render.filter_values(probe_set.target))
        self.loaded.open_gate(slot)
        self.live_slot, self.armed, self.flipped_at = slot, True, time.monotonic()

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False
        self.flush()

    def flush(self) -> None:
        """Submit every record written so far (unless held)."""
        with self._lock:
            self.loaded.drain(self._take)
            if self._pending and not self.held:
                self.dispatcher.submit(self._pending)
                self._pending = []

    def idle(self) -> None:
        """No trampoline runs the lane any more: deliver what it wrote and forget its configurations."""
        self.held = False
        self.flush()
        self.armed = False

    def _take(self, raw: bytes) -> None:
        gen = raw[layout.GEN_OFFSET] | raw[layout.GEN_OFFSET + 1] << 8
        source = self.sources.get(gen)
        if source is None:    # not expected: attribute it to the newest configuration
            source = next(reversed(self.sources.values()), self.loaded.probe_set)
        self._pending.append(events.decode(raw, source))

    def _poll(self) -> None:
        # The programs write without wakeups (probes.c.j2): drain on a timer.
        while not self._stop.wait(DRAIN_INTERVAL_S):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self.loaded.close()


def fit_key(probe_set) -> str | None:
    """Probe sets with equal keys can share an express lane."""
    if probe_set.express is None:
        return None
    return f"{trampoline.identity(probe_set)}:{probe_set.express.digest}"
