"""The dispatcher: one thread that takes decoded event batches in ring-buffer order,
routes each to its connection's worker and hands the records to the profile's sinks.

Pollers block when its queue is full, so overload backs up into the kernel ring
buffer, whose drops are counted there; nothing is dropped here without a count.

A sink that cannot write (a full disk, ...) costs only its own records: the other sinks of the
profile keep receiving everything. Its failed records are counted as losses at stage
`sink.<kind>` (per target), told to the other sinks as `loss` records about once a second,
and to the sink itself, ahead of its next records, once it writes again. Failures are counted
per sink and error kind, and warned about at most once per WARN_INTERVAL_NS per sink.
"""
from __future__ import annotations

import collections
import errno
import gc
import queue
import sys
import threading
import time
from typing import Any, Final

from orchestrator import threadname
from orchestrator.bpf import layout
from orchestrator.pipeline import connections, events

# Compiled, a Final is a C static: no module lookup per event.
_RECORD_DATA: Final = layout.RECORD_DATA
_RECORD_COMMAND: Final = layout.RECORD_COMMAND
_RECORD_CALL: Final = layout.RECORD_CALL
_RECORD_SECRET: Final = layout.RECORD_SECRET

IDLE_EVICT_NS = 60 * 1_000_000_000
MAX_QUEUED_BYTES = 128 << 20                 # events waiting for the dispatcher, payloads + EVENT_OVERHEAD each
EVENT_OVERHEAD = 1024                        # what a decoded event costs in memory besides its payload
WARN_INTERVAL_NS = 10 * 1_000_000_000        # at most one warning line per failing sink this often
LOSS_REPORT_NS = 1_000_000_000               # sink losses go out as `loss` records this often


class Stats:
    def __init__(self):
        self.events = collections.Counter()      # (profile, target) → events decoded
        self.records = collections.Counter()     # record type → count
        self.records_by_target = collections.Counter()   # (profile, target, record type) → count
        self.losses = collections.Counter()      # (profile, target, stage) → count

    def loss_total(self) -> int:
        return sum(self.losses.values())


class Dispatcher:
    def __init__(self, sinks_for, clock=time.time_ns, idle_evict_ns: int = IDLE_EVICT_NS, max_batches: int = 4096,
                 warn=None, warn_interval_ns: int = WARN_INTERVAL_NS, max_queued_bytes: int = MAX_QUEUED_BYTES):
        self._sinks_for = sinks_for              # profile name → list of sinks
        self._clock = clock
        self._idle_evict_ns = idle_evict_ns
        self._queue: queue.Queue = queue.Queue(maxsize=max_batches)   # (bytes it holds, batch)
        # The queue is bounded in bytes too: a poller waits for room, so an overload backs up into
        # the kernel ring buffer (whose drops are counted) instead of into this process's memory.
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._workers: dict = {}
        self._consumer: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_sweep = 0
        self.stats = Stats()
        self.periodic: list = []                 # callables run about once a second on this thread
        self.warn = warn or _stderr_warn         # one line for people (rate-limited per sink)
        self._warn_interval_ns = warn_interval_ns
        self._sink_health: dict = {}             # sink object → _SinkHealth, only for sinks that failed
        self._sink_totals: dict = {}             # (profile, sink label, error kind) → [failures, records, last]
        self._sink_reported = 0                  # clock of the last `loss` records about sinks
        self._raw: dict[Any, Any] = {}                     # profile → [(event, conn)] of this batch, or False: no taker

    # ---- producer side (poller threads)
    def submit(self, batch: list) -> None:
        """Queue decoded events; waits while the queue holds max_queued_bytes (see __init__)."""
        size = EVENT_OVERHEAD * len(batch)
        for ev in batch:
            size += len(ev.payload)
        consumer = self._consumer
        with self._room:
            # Never wait on the dispatcher's own thread (it would wait for itself), nor without one.
            while (self._queued_bytes and self._queued_bytes + size > self._max_queued_bytes
                   and consumer is not None and consumer.is_alive() and threading.current_thread() is not consumer):
                self._room.wait(0.5)
            self._queued_bytes += size
        self._queue.put((size, batch))

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    def submit_records(self, records: list) -> None:
        """Records made outside the event path (loss, lifecycle); ordered with the events."""
        if threading.current_thread() is self._consumer:
            self.process(records)
        else:
            self._queue.put((0, records))

    def call_soon(self, fn) -> None:
        """Run `fn` on the dispatcher thread after everything submitted so far."""
        self._queue.put((0, [fn]))

    # ---- consumer side
    def start(self) -> None:
        tune_gc()
        self._consumer = threading.Thread(target=self._run, name="ecapture-dispatch", daemon=True)
        self._consumer.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Drain everything queued, flush connections, then stop."""
        self._stop.set()
        if self._consumer is not None:
            self._consumer.join(timeout)
        else:
            self._drain()
        self.flush_all()

    def _run(self) -> None:
        threadname.name_this_thread()
        while True:
            try:
                size, batch = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                self._tick()
                continue
            try:
                self.process(batch)
            finally:
                self._release(size)
            self._tick()

    def _release(self, size: int) -> None:
        if size:
            with self._room:
                self._queued_bytes -= size
                self._room.notify_all()

    def _drain(self):
        while True:
            try:
                size, batch = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                self.process(batch)
            finally:
                self._release(size)

    def _tick(self):
        now = self._clock()
        if now - self._last_sweep < 1_000_000_000:
            return
        self._last_sweep = now
        for fn in list(self.periodic):
            fn()
        self.evict_idle(now)
        if self._sink_health:
            self._sink_housekeeping(now)

    def process(self, batch: list) -> None:
        by_profile: dict[Any, list] = {}
        per_source: dict = {}      # (a Counter would call its Python __missing__ for each new key)
        now = self._clock()
        # Events come in runs from one source: what the route needs of it is looked up once a run.
        source: Any = None
        skey: Any = None
        sprofile: Any = None
        out: list = []
        run = 0
        for item in batch:
            if callable(item):
                item()            # control work ordered with the records (e.g. closing replaced sinks)
                continue
            if isinstance(item, events.Record):
                profile = item.fields.get("profile") if item.event is None else item.event.source.profile
                by_profile.setdefault(profile, []).append(item)
                continue
            ev: events.Event = item       # (typed: native field reads and a native call, compiled)
            if ev.source is not source:
                if run:
                    per_source[skey] = per_source.get(skey, 0) + run
                source = ev.source
                skey = source.key
                sprofile = source.profile
                out = by_profile.setdefault(sprofile, [])
                run = 0
            run += 1
            self._route(ev, out, now, skey, sprofile)
        if run:
            per_source[skey] = per_source.get(skey, 0) + run
        self.stats.events.update(per_source)
        self._count(by_profile)
        raw_by_profile, self._raw = self._raw, {}
        health = self._sink_health
        for profile, records in by_profile.items():
            if records:
                for sink in self._sinks_for(profile):
                    if health and sink in health:
                        self._write_failing(profile, sink, records, now)
                        continue
                    try:
                        sink.write(records)
                    except Exception as exc:   # a full disk must not stop capture: count it
                        self._sink_failed(profile, sink, records, exc, now)
        for profile, items in raw_by_profile.items():
            if items:
                for sink in self._sinks_for(profile):
                    if hasattr(sink, "write_data"):
                        try:
                            sink.write_data(items)
                        except Exception as exc:     # counted per target, like records a sink lost
                            self._sink_failed(profile, sink, [events.Record("data", ev, {}) for ev, _ in items],
                                              exc, now)
        if health and now - self._sink_reported >= LOSS_REPORT_NS:
            self._sink_housekeeping(now)

    def _route(self, ev: events.Event, out: list, now: int, skey: Any, sprofile: Any) -> None:
        """`skey`, `sprofile`: ev.source.key and ev.source.profile."""
        if ev.record == _RECORD_DATA:
            key = (skey, ev.pid, ev.session or ev.fd)
            worker: connections.ConnectionWorker | None = self._workers.get(key)
            if worker is None:
                worker = connections.ConnectionWorker(key, ev.source.parsers, ev.source.target.filters.ports)
                self._workers[key] = worker
            worker.last_seen = now
            worker.handle(ev, out)
            raw: Any = self._raw.get(sprofile)
            if raw is None:
                raw = self._raw[sprofile] = \
                    [] if any(hasattr(s, "write_data") for s in self._sinks_for(sprofile)) else False
            if raw is not False and not worker.excluded:
                raw.append((ev, worker.conn))       # the plaintext itself, for sinks that take it
        elif ev.record == _RECORD_COMMAND:
            shell = ev.source.target.kind           # bash | zsh
            payload = _unmetafy(ev.payload).rstrip(b"\n") if shell == "zsh" else ev.payload
            text, _ = events.text_or_base64(payload)
            if text.strip():
                out.append(events.Record(f"{shell}.command", ev, {"command": text, "truncated": ev.truncated}))
        elif ev.record == _RECORD_CALL:
            out.append(events.Record("uprobe.call", ev, _call_fields(ev)))
        elif ev.record == _RECORD_SECRET:
            secret = _secret_fields(ev)
            if secret is not None:
                out.append(events.Record("tls.secret", ev, secret, ev.conn_tuple()))
            else:       # the kernel could not read the label, random or secret: say so, never drop it quietly
                src = ev.source
                self.stats.losses[(src.profile, src.target.name, "secret.unreadable")] += 1
                out.append(events.Record("loss", None, {"profile": src.profile, "target": src.target.name,
                                                        "stage": "secret.unreadable", "count": 1}))

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
        if self._sink_health:
            self._report_sink_losses(self._clock())

    # ---- sinks that fail
    @property
    def sink_errors(self) -> list[str]:
        """One line per profile, sink and error kind (bounded however long a sink keeps failing)."""
        return [f"{profile}: {label}: {kind} x{failures}, {records} record(s) not written (last: {last})"
                for (profile, label, kind), (failures, records, last) in sorted(self._sink_totals.items())]

    def _sink_failed(self, profile, sink, records, exc, now) -> None:
        h = self._sink_health.get(sink)
        if h is None:
            h = self._sink_health[sink] = _SinkHealth(profile, sink)
        kind = _error_kind(exc)
        last = (exc.strerror if isinstance(exc, OSError) else None) or str(exc) or type(exc).__name__
        total = self._sink_totals.setdefault((profile, h.label, kind), [0, 0, ""])
        total[0] += 1
        total[1] += len(records)
        total[2] = last
        h.failing = True
        h.last_error = f"{last} ({kind})" if kind != type(exc).__name__ else f"{kind}: {last}"
        h.failures_since[kind] += 1
        per_target = collections.Counter(
            r.event.source.target.name if r.event is not None else r.fields.get("target", "*") for r in records)
        h.lacking.update(per_target)
        h.unreported.update(per_target)
        h.records_since += len(records)
        for target, n in per_target.items():
            self.stats.losses[(profile, target, h.stage)] += n
        self._maybe_warn(h, now)

    def _write_failing(self, profile, sink, records, now) -> None:
        """A sink that failed before: the loss record for what it lacks goes first, in the same write."""
        h = self._sink_health[sink]
        if not h.failing:
            try:
                sink.write(records)
            except Exception as exc:
                self._sink_failed(profile, sink, records, exc, now)
            return
        told = [events.Record("loss", None, {"profile": profile, "target": target, "stage": h.stage, "count": n,
                                             "sink": h.label})
                for target, n in h.lacking.items()]
        try:
            sink.write(told + records)
        except Exception as exc:
            self._sink_failed(profile, sink, records, exc, now)
            return
        self._count_losses(profile, told)
        h.lacking.clear()
        h.failing = False
        h.recovered = True
        self._maybe_warn(h, now)

    def _count(self, by_profile: dict) -> None:
        """stats.records and records_by_target for a batch's records: counted per source in plain
        dicts keyed by the (interned) type, the Counters updated once a batch."""
        counts: dict[Any, dict[str, int]] = {}
        last_src: Any = None
        per_type: dict[str, int] = {}
        for profile, records in by_profile.items():
            for r in records:
                ev = r.event
                if ev is None:
                    src: Any = (profile, r.fields.get("target", ""))
                    per_type = counts.setdefault(src, {})
                    last_src = None
                elif ev.source is not last_src:
                    last_src = ev.source
                    per_type = counts.setdefault((profile, last_src.target.name), {})
                t = r.type
                per_type[t] = per_type.get(t, 0) + 1
        by_type = self.stats.records
        by_target = self.stats.records_by_target
        for (profile, target), per in counts.items():
            for t, n in per.items():
                by_type[t] += n
                by_target[(profile, target, t)] += n

    def _count_losses(self, profile: str, told: list) -> None:
        """Loss records made here (no event): counted by the target they are about."""
        self.stats.records["loss"] += len(told)
        for r in told:
            self.stats.records_by_target[(profile, r.fields.get("target", ""), "loss")] += 1

    def _maybe_warn(self, h, now) -> None:
        if not (h.failures_since or h.recovered):
            return
        if h.last_warn is not None and now - h.last_warn < self._warn_interval_ns:
            return      # said later, with the counts of everything in between
        failures = sum(h.failures_since.values())
        counts = (f"{failures} failed write(s) ({', '.join(f'{k} x{n}' for k, n in sorted(h.failures_since.items()))})"
                  f", {h.records_since} record(s) lost")
        if h.failing and not h.announced:
            line = (f"{h.profile}: sink {h.label} cannot write: {h.last_error}; {h.records_since} record(s) lost so "
                    f"far (counted as losses at {h.stage}), the other sinks keep capturing")
        elif h.failing:
            line = f"{h.profile}: sink {h.label} still cannot write: {h.last_error}; {counts} since the last message"
        elif failures:
            line = f"{h.profile}: sink {h.label} writes again; before that {counts} since the last message " \
                   f"(last error: {h.last_error})"
        else:
            line = f"{h.profile}: sink {h.label} writes again"
        h.announced = h.failing
        h.last_warn = now
        h.failures_since.clear()
        h.records_since = 0
        h.recovered = False
        try:
            self.warn(line)
        except Exception:
            pass

    def _report_sink_losses(self, now) -> None:
        """`loss` records about failing sinks, to the profile's other sinks."""
        self._sink_reported = now
        by_profile: dict = {}
        for h in self._sink_health.values():
            if h.unreported:
                recs = by_profile.setdefault(h.profile, [])
                for target, n in h.unreported.items():
                    recs.append((h.sink, events.Record("loss", None, {"profile": h.profile, "target": target,
                                                                      "stage": h.stage, "count": n,
                                                                      "sink": h.label})))
                h.unreported.clear()
        for profile, pairs in by_profile.items():
            sinks = self._sinks_for(profile)
            for sink in sinks:
                recs = [r for about, r in pairs if about is not sink]
                if not recs:
                    continue
                h = self._sink_health.get(sink)
                if h is not None and h.failing:
                    continue   # it will get what it lacks as one loss record when it writes again
                try:
                    sink.write(recs)
                except Exception as exc:
                    self._sink_failed(profile, sink, recs, exc, now)
                    continue
                self._count_losses(profile, recs)

    def _sink_housekeeping(self, now) -> None:
        self._report_sink_losses(now)
        live = {id(s) for p in {h.profile for h in self._sink_health.values()} for s in self._sinks_for(p)}
        for sink, h in list(self._sink_health.items()):
            self._maybe_warn(h, now)
            if id(sink) not in live and not h.unreported:      # replaced or closed by a reload
                del self._sink_health[sink]
            elif not (h.failing or h.unreported or h.failures_since or h.recovered or h.last_warn is None) \
                    and now - h.last_warn >= self._warn_interval_ns:
                del self._sink_health[sink]                     # healthy again and all said: fast path

    @property
    def worker_count(self) -> int:
        return len(self._workers)


class _SinkHealth:
    """What one sink lacks and what has not been said about it yet."""

    def __init__(self, profile, sink):
        self.profile = profile
        self.sink = sink
        kind = getattr(sink, "kind", None) or type(sink).__name__.lower().removesuffix("sink") or "sink"
        path = getattr(sink, "path", None)
        self.stage = f"sink.{kind}"
        self.label = f"{kind} {path}" if path else kind
        self.failing = False
        self.recovered = False
        self.last_error = ""
        self.announced = False                       # this failure was warned about
        self.lacking = collections.Counter()         # target → records the sink lacks since it failed
        self.unreported = collections.Counter()      # target → lost records not yet told to the other sinks
        self.failures_since = collections.Counter()  # error kind → failed writes since the last warning
        self.records_since = 0
        self.last_warn = None


GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer cyclic garbage collections while events flow. Events, records and parser state are
    freed by reference counting (they form no cycles), yet each allocation counts towards the
    next collection, which walks every tracked object: at the default threshold (700) they cost
    about a tenth of the dispatcher's time. What exists when capture starts (bcc, LLVM, modules)
    is frozen out of the walk."""
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    if gen0 < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def _stderr_warn(line: str) -> None:
    print(f"ecapture: {line}", file=sys.stderr, flush=True)


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


# Where hooks.c.j2's go_keylog payload puts each part (lengths in args[0..2]).
KEYLOG_LABEL, KEYLOG_RANDOM, KEYLOG_SECRET = 0, 64, 96


def _secret_fields(ev: events.Event) -> dict | None:
    """A tls.secret record: the NSS key-log label, client random and secret (lower-case hex)."""
    n_label, n_random, n_secret = ev.args[0], ev.args[1], ev.args[2]
    p = ev.payload
    label = p[KEYLOG_LABEL:KEYLOG_LABEL + n_label]
    if not label or not label.replace(b"_", b"").isalnum() or n_random != 32 or n_secret == 0:
        return None
    return {"label": label.decode("ascii"), "client_random": p[KEYLOG_RANDOM:KEYLOG_RANDOM + n_random].hex(),
            "secret": p[KEYLOG_SECRET:KEYLOG_SECRET + n_secret].hex()}


ZSH_META = 0x83


def _unmetafy(line: Any) -> Any:
    """zsh keeps special bytes in its strings as Meta followed by the byte XOR 32 (zsh.h)."""
    if ZSH_META not in line:
        return line
    out, i = bytearray(), 0
    while i < len(line):
        if line[i] == ZSH_META:
            if i + 1 < len(line):       # a Meta cut off at the end stands for nothing
                out.append(line[i + 1] ^ 32)
            i += 2
        else:
            out.append(line[i])
            i += 1
    return bytes(out)
