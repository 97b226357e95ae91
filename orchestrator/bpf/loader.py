"""Load a target's program: compile it, seed its process scope, open its ring buffer; write its filters.

The programs are not attached here: the target's trampolines (bpf/trampoline.py) tail-call
whichever program is installed. One loaded program runs any number of generations: each is a
filter configuration written to its maps (write_filters, open_gate). This module is the single
Python owner of `templates/kern/probes.c.j2` programs.
"""
from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field

from orchestrator.bpf import discovery, layout, owner, render, ringreader, state


FILTER_TABLES = ("filter_gate", "filter_conf", "filter_uids", "filter_comms", "filter_ports", "filter_cgroups")


def program_names(index: int, hook) -> list[tuple[int, str]]:
    """(trampoline table index, generation program name) for hook `index`: index 2*i is hook i's
    entry program, 2*i+1 its return program (bpf/trampoline.py tail-calls them by index)."""
    out = [(2 * index, f"hook_{index}_entry")]
    if hook.on == "return":
        out.append((2 * index + 1, f"hook_{index}_return"))
    return out


class LoadError(Exception):
    """Compiling or attaching a target failed; nothing of it stays attached."""


@dataclass
class AttachPoint:
    path: str
    symbol: str
    kind: str           # uprobe | uretprobe
    pid: int            # -1: every process mapping the file


@dataclass
class LoadedTarget:
    probe_set: object        # a plan.model.ProbeSet (bpf does not import plan)
    target_no: int = 0       # the target's number: keeps its calls apart in the shared stash
    bpf: object = None
    program_fds: dict = field(default_factory=dict)   # trampoline table index → program fd
    tables: dict = field(default_factory=dict)        # name → bcc table, looked up at load
    reader: ringreader.RingReader | None = None
    losses_seen: dict = field(default_factory=dict)   # stage → kernel counter already reported
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> "LoadedTarget":
        """Compile and load every program, seed the scope, open the ring buffer; all or nothing."""
        ps = self.probe_set
        try:
            state.shared()    # the extern tables must exist before the program that uses them
        except owner.BccError as exc:
            raise LoadError(f"cannot create the shared kernel state: {exc}") from None
        text = render.program(ps.rendered, self.target_no)
        try:
            self.bpf = owner.compile(text, render.cflags())
        except owner.BccError as exc:
            raise LoadError(f"compile failed: {exc}") from None
        try:
            for i, hook in enumerate(ps.hooks):
                for idx, name in program_names(i, hook):
                    self.program_fds[idx] = owner.load_func(self.bpf, name, tracepoint=hook.probe == "syscall")
            # Looked up once here, as the owner: element operations later need no lock.
            names = ["events", "lost", *FILTER_TABLES] + (["scope"] if ps.scope_paths else [])
            self.tables = {name: owner.table(self.bpf, name) for name in names}
            if ps.scope_paths:
                self._seed_scope()
            self.reader = ringreader.RingReader(self.tables["events"].map_fd, ps.target.ring_buffer_kib * 1024)
        except Exception as exc:
            self.close()
            raise LoadError(f"load failed: {owner.first_line(exc)}") from None
        return self

    def _seed_scope(self):
        table = self.tables["scope"]
        for pid in discovery.running_instances(self.probe_set.scope_real):
            table[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)

    def write_filters(self, slot: int, generation: int, values: dict) -> None:
        """Write filter configuration `slot` (0 or 1) for `generation`; nothing reads
        it until `open_gate(slot)`. `values` come from render.lane_values (validated numbers)."""
        assert slot in (0, 1)
        # A return probe completing a call admitted by this slot's previous configuration checks
        # its generation before and after reading the values: invalidate it before rewriting them.
        confs = self.tables["filter_conf"]
        stale = confs.Leaf()
        stale.slot, stale.gen = slot, 0
        confs[ctypes.c_int(slot)] = stale
        for name, key_field, wanted in (("filter_uids", "uid", values["uids"]),
                                        ("filter_comms", "comm", [bytes(c) for c in values["comm"]]),
                                        ("filter_ports", "port", values["ports"]),
                                        ("filter_cgroups", "id", values["cgroups"] or ())):
            table = self.tables[name]
            for key in [k for k in table.keys() if k.slot == slot]:
                del table[key]
            for value in wanted:
                key = table.Key()
                key.slot = slot
                setattr(key, key_field, value)
                table[key] = ctypes.c_uint8(1)
        confs = self.tables["filter_conf"]
        conf = confs.Leaf()
        conf.slot, conf.gen = slot, generation & 0xFFFFFFFF
        conf.uids, conf.comm, conf.ports = bool(values["uids"]), bool(values["comm"]), bool(values["ports"])
        conf.cgroups = values["cgroups"] is not None     # on with no ids: nothing matches until a path exists
        conf.max_bytes = values["max_bytes"]
        confs[ctypes.c_int(slot)] = conf

    def open_gate(self, slot: int) -> None:
        """Every hit from now on reads configuration `slot` (one map write)."""
        assert slot in (0, 1)
        self.tables["filter_gate"][ctypes.c_int(0)] = ctypes.c_uint32(slot)

    def losses(self) -> dict[str, int]:
        """Kernel-side loss counters, summed over CPUs, by stage."""
        with self._lock:     # a closed module's fd numbers may already name something else
            table = self.tables.get("lost")
            if table is None or self._closed:
                return {}
            return {stage: sum(int(v) for v in table.getvalue(ctypes.c_int(slot)))
                    for slot, stage in layout.LOSS_STAGES.items()}

    def ring_fill(self) -> tuple[int, int] | None:
        """(bytes waiting in the ring buffer, its size), or None once closed."""
        with self._lock:
            if self.reader is None or self._closed:
                return None
            return self.reader.used(), self.reader.size

    def drain_all(self) -> list:
        """Every record waiting in the ring buffer, in order."""
        with self._lock:
            if self.reader is None or self._closed:
                return []
            return self.reader.read_all()

    def wait_for_records(self, timeout: float) -> bool:
        """Sleep until the kernel says records wait in the ring buffer, interrupt_wait() is called,
        or `timeout` seconds pass (ringreader.RingReader.wait). False, at once, once closed."""
        with self._lock:
            reader = None if self._closed else self.reader
        if reader is None:
            return False
        reader.wait(timeout)
        return True

    def interrupt_wait(self) -> None:
        with self._lock:
            if self.reader is not None and not self._closed:
                self.reader.interrupt()

    def close(self) -> None:
        with self._lock:
            if self._closed or self.bpf is None:
                self._closed = True
                return
            self._closed = True
            if self.reader is not None:
                self.reader.close()
                self.reader = None
            owner.cleanup(self.bpf)
