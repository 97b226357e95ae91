"""The dispatcher: one thread that takes decoded event batches in ring-buffer order,
routes each to its connection's worker and hands the records to the profile's sinks.

Pollers block when its queue is full, so overload backs up into the kernel ring
buffer, whose drops are counted there; nothing is dropped here without a count.
"""
from __future__ import annotations

import collections
import queue
import threading
import time

from orchestrator.bpf import layout
from orchestrator.pipeline import connections, events

IDLE_EVICT_NS = 60 * 1_000_000_000


class Stats:
    def __init__(self):
        self.events = collections.Counter()      # (profile, target) → events decoded
        self.records = collections.Counter()     # record type → count
        self.losses = collections.Counter()      # (profile, target, stage) → count

    def loss_total(self) -> int:
        return sum(self.losses.values())


class Dispatcher:
    def __init__(self, sinks_for, clock=time.time_ns, idle_evict_ns: int = IDLE_EVICT_NS, max_batches: int = 4096):
        self._sinks_for = sinks_for              # profile name → list of sinks
        self._clock = clock
        self._idle_evict_ns = idle_evict_ns
        self._queue: queue.Queue = queue.Queue(maxsize=max_batches)
        self._workers: dict = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_sweep = 0
        self.stats = Stats()
        self.periodic = []                       # callables run about once a second on this thread
        self.sink_errors: list[str] = []

    # ---- producer side (poller threads)
    def submit(self, batch: list) -> None:
        self._queue.put(batch)

    def submit_records(self, records: list) -> None:
        """Records made outside the event path (loss, lifecycle); ordered with the events."""
        if threading.current_thread() is self._thread:
            self.process(records)
        else:
            self._queue.put(records)

    def call_soon(self, fn) -> None:
        """Run `fn` on the dispatcher thread after everything submitted so far."""
        self._queue.put([fn])

    # ---- consumer side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ecapture-dispatch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain everything queued, flush connections, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        else:
            self._drain()
        self.flush_all()

    def _run(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                self._tick()
                continue
            self.process(batch)
            self._tick()

    def _drain(self):
        while True:
            try:
                self.process(self._queue.get_nowait())
            except queue.Empty:
                return

    def _tick(self):
        now = self._clock()
        if now - self._last_sweep < 1_000_000_000:
            return
        self._last_sweep = now
        for fn in list(self.periodic):
            fn()
        self.evict_idle(now)

    def process(self, batch: list) -> None:
        by_profile: dict[str, list] = {}
        per_source = collections.Counter()
        now = self._clock()
        route = self._route
        for item in batch:
            if callable(item):
                item()            # control work ordered with the records (e.g. closing replaced sinks)
                continue
            if isinstance(item, events.Record):
                profile = item.fields.get("profile") if item.event is None else item.event.source.profile
                by_profile.setdefault(profile, []).append(item)
                continue
            source = item.source
            per_source[source.key] += 1
            route(item, by_profile.setdefault(source.profile, []), now)
        self.stats.events.update(per_source)
        for records in by_profile.values():
            self.stats.records.update(r.type for r in records)
        for profile, records in by_profile.items():
            if records:
                for sink in self._sinks_for(profile):
                    try:
                        sink.write(records)
                    except Exception as exc:   # a full disk must not stop capture: count it
                        self.stats.losses[(profile, "*", f"sink.{type(sink).__name__}")] += len(records)
                        self.sink_errors.append(f"{profile}: {type(sink).__name__}: {exc}")

    def _route(self, ev: events.Event, out: list, now: int) -> None:
        if ev.record == layout.RECORD_DATA:
            key = (ev.source.key, ev.pid, ev.session or ev.fd)
            worker = self._workers.get(key)
            if worker is None:
                worker = connections.ConnectionWorker(key, ev.source.parsers, ev.source.target.filters.ports)
                self._workers[key] = worker
            worker.last_seen = now
            worker.handle(ev, out)
        elif ev.record == layout.RECORD_COMMAND:
            text, _ = events.text_or_base64(ev.payload)
            if text.strip():
                out.append(events.Record("bash.command", ev, {"command": text, "truncated": ev.truncated}))
        elif ev.record == layout.RECORD_CALL:
            out.append(events.Record("uprobe.call", ev, _call_fields(ev)))

    def evict_idle(self, now: int) -> None:
        stale = [k for k, w in self._workers.items() if now - w.last_seen > self._idle_evict_ns]
        for key in stale:
            worker = self._workers.pop(key)
            out: list = []
            worker.finish(out)
            if out:
                self.process(out)

    def flush_all(self) -> None:
        out: list = []
        for worker in self._workers.values():
            worker.finish(out)
        self._workers.clear()
        if out:
            self.process(out)

    @property
    def worker_count(self) -> int:
        return len(self._workers)


def _scalar(raw: int, typ: str) -> int:
    """Registers hold 64 bits; a C int/unsigned is the low 32 of them."""
    if typ in ("int", "uint"):
        raw &= 0xFFFFFFFF
        return raw - (1 << 32) if typ == "int" and raw >= 1 << 31 else raw
    raw &= 0xFFFFFFFFFFFFFFFF
    return raw - (1 << 64) if typ == "long" and raw >= 1 << 63 else raw


def _call_fields(ev: events.Event) -> dict:
    hook = ev.source.hooks[ev.hook]
    args: dict = {}
    for index, name, typ in hook.scalars:
        args[name] = _scalar(ev.ret if index == "ret" else ev.args[index], typ)
    if hook.payload is not None and hook.name:
        text, enc = events.text_or_base64(ev.payload)
        args[hook.name] = text
        if enc:
            args[f"{hook.name}_encoding"] = enc
        if ev.truncated:
            args[f"{hook.name}_truncated"] = True
    fields = {"symbol": hook.symbol, "on": hook.on, "args": args}
    if hook.on == "return":
        fields["ret"] = ev.ret
    return fields
