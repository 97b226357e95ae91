"""Load one generation of a target: compile its programs, seed its process scope, open its ring buffer.

The programs are not attached here: the target's trampolines (bpf/trampoline.py) tail-call
whichever generation is installed. This module is the single Python owner of
`templates/kern/probes.c.j2` programs.
"""
from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass, field

from orchestrator.bpf import discovery, layout, render, ringreader, state, trampoline
from orchestrator.plan import model as plan_model


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
    probe_set: plan_model.ProbeSet
    slot: int = 0            # the target's number: keeps its calls apart in the shared stash
    generation: int = 1
    express: bool = False    # the express-lane variant: uid/comm/port filters read from maps
    bpf: object = None
    program_fds: dict = field(default_factory=dict)   # trampoline table index → program fd
    reader: ringreader.RingReader | None = None
    losses_seen: dict = field(default_factory=dict)   # stage → kernel counter already reported
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def load(self) -> "LoadedTarget":
        """Compile and load every program, seed the scope, open the ring buffer; all or nothing."""
        import bcc  # Debian's python3-bpfcc; imported late so pure commands work without it

        ps = self.probe_set
        try:
            state.shared()    # the extern tables must exist before the program that uses them
        except Exception as exc:
            raise LoadError(f"cannot create the shared kernel state: {_first_line(exc)}") from None
        quiet = _quiet_stderr()
        try:
            with quiet:
                text = render.program(ps.express if self.express else ps.rendered, self.slot, self.generation)
                self.bpf = bcc.BPF(text=text.encode(), cflags=render.cflags())
                for i, hook in enumerate(ps.hooks):
                    for idx, name in trampoline.program_names(i, hook):
                        kind = bcc.BPF.TRACEPOINT if hook.probe == "syscall" else bcc.BPF.KPROBE
                        self.program_fds[idx] = self.bpf.load_func(name.encode(), kind).fd
        except Exception as exc:  # bcc raises bare Exception on compile/load errors
            self.close()
            errors = [ln for ln in getattr(quiet, "text", "").splitlines() if "error" in ln]
            raise LoadError(f"compile failed: {'; '.join(errors[:3]) or _first_line(exc)}") from None
        try:
            if ps.scope_paths:
                self._seed_scope()
            self.reader = ringreader.RingReader(self.bpf[b"events"].map_fd, ps.target.ring_buffer_kib * 1024)
        except Exception as exc:
            self.close()
            raise LoadError(f"load failed: {_first_line(exc)}") from None
        return self

    def _seed_scope(self):
        table = self.bpf[b"scope"]
        for pid in discovery.running_instances(self.probe_set.scope_real):
            table[ctypes.c_uint32(pid)] = ctypes.c_uint8(1)

    def write_filters(self, slot: int, generation: int, values: dict) -> None:
        """Express lane: write filter configuration `slot` (0 or 1) for `generation`; nothing reads
        it until `open_gate(slot)`. `values` come from render.filter_values (validated numbers)."""
        assert self.express and slot in (0, 1)
        for name, key_field, wanted in (("filter_uids", "uid", values["uids"]),
                                        ("filter_comms", "comm", [bytes(c) for c in values["comm"]]),
                                        ("filter_ports", "port", values["ports"])):
            table = self.bpf[name.encode()]
            for key in [k for k in table.keys() if k.slot == slot]:
                del table[key]
            for value in wanted:
                key = table.Key()
                key.slot = slot
                setattr(key, key_field, value)
                table[key] = ctypes.c_uint8(1)
        confs = self.bpf[b"filter_conf"]
        conf = confs.Leaf()
        conf.slot, conf.gen = slot, generation & 0xFFFFFFFF
        conf.uids, conf.comm, conf.ports = bool(values["uids"]), bool(values["comm"]), bool(values["ports"])
        confs[ctypes.c_int(slot)] = conf

    def open_gate(self, slot: int) -> None:
        """Express lane: every hit from now on reads configuration `slot` (one map write)."""
        assert self.express and slot in (0, 1)
        self.bpf[b"filter_gate"][ctypes.c_int(0)] = ctypes.c_uint32(slot)

    def losses(self) -> dict[str, int]:
        """Kernel-side loss counters, summed over CPUs, by stage."""
        if self.bpf is None:
            return {}
        table = self.bpf[b"lost"]
        out = {}
        for slot, stage in layout.LOSS_STAGES.items():
            out[stage] = sum(int(v) for v in table.getvalue(ctypes.c_int(slot)))
        return out

    def drain(self, take) -> int:
        """`take(bytes)` for every record waiting in the ring buffer, in order."""
        if self.reader is None or self._closed:
            return 0
        return self.reader.read(take)

    def close(self) -> None:
        with self._lock:
            if self._closed or self.bpf is None:
                self._closed = True
                return
            self._closed = True
            if self.reader is not None:
                self.reader.close()
                self.reader = None
            try:
                self.bpf.cleanup()
            except Exception:
                pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0] if len(text.splitlines()) == 1 else text.splitlines()[-1]


class _quiet_stderr:
    """bcc and LLVM print warnings straight to fd 2; keep them off the user's terminal.

    Captured text is kept on `.text` for error messages. It redirects the whole process's fd 2
    (one compile at a time: the lock), so `ecapture apply` prints its own messages to a copy of
    fd 2 made at start (cli.apply).
    """
    _lock = threading.Lock()

    def __enter__(self):
        if os.environ.get("ECAPTURE_BCC_DEBUG"):
            return self
        self._lock.acquire()
        import tempfile
        self._tmp = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if os.environ.get("ECAPTURE_BCC_DEBUG"):
            return False
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        self.text = self._tmp.read().decode(errors="replace")
        self._tmp.close()
        self._lock.release()
        return False
