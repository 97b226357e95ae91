"""Trampolines: the uprobes of a target, attached once, that tail-call its current generation.

Owner of `templates/kern/trampoline.c.j2`. Program table index 2*i is hook i's entry program,
2*i+1 its return program. `install()` points every index at a loaded generation's programs.
Attached all-or-nothing; `close()` detaches (each detach waits out a kernel grace period).
"""
from __future__ import annotations

import ctypes
import hashlib
from dataclasses import dataclass, field

from orchestrator.bpf import loader, render

TEMPLATE = "trampoline.c.j2"


def identity(probe_set) -> str:
    """Targets with the same identity can share trampolines: same file, hooks and pid scope."""
    points = "|".join(f"{h.symbol}:{h.on}" for h in probe_set.hooks)
    pids = ",".join(map(str, probe_set.target.filters.pids))
    return hashlib.sha256(f"{probe_set.attach_path}|{points}|{pids}".encode()).hexdigest()[:16]


def program_names(index: int, hook) -> list[tuple[int, str]]:
    """(table index, generation program name) for hook `index`."""
    out = [(2 * index, f"hook_{index}_entry")]
    if hook.on == "return":
        out.append((2 * index + 1, f"hook_{index}_return"))
    return out


@dataclass
class Trampoline:
    probe_set: object
    bpf: object = None
    attached: list = field(default_factory=list)    # loader.AttachPoint

    @property
    def identity(self) -> str:
        return identity(self.probe_set)

    def attach(self) -> "Trampoline":
        import bcc

        ps = self.probe_set
        entries = [idx for i, h in enumerate(ps.hooks) for idx, _ in program_names(i, h)]
        text = render._env().get_template(TEMPLATE).render(slots=max(2 * len(ps.hooks), 1), entries=entries)
        quiet = loader._quiet_stderr()
        try:
            with quiet:
                self.bpf = bcc.BPF(text=text.encode(), cflags=render.cflags())
        except Exception as exc:
            raise loader.LoadError(f"trampoline compile failed: {loader._first_line(exc)}") from None
        try:
            for i, hook in enumerate(ps.hooks):
                # A tracepoint cannot be scoped to a pid at attach time: the programs filter.
                for pid in (-1,) if hook.probe == "syscall" else ps.target.filters.pids or (-1,):
                    for idx, _ in program_names(i, hook):
                        kind = "uprobe" if idx % 2 == 0 else "uretprobe"
                        try:
                            with loader._quiet_stderr():
                                if hook.probe == "syscall":
                                    kind = f"syscalls:sys_{'enter' if idx % 2 == 0 else 'exit'}_{hook.symbol}"
                                    self.bpf.attach_tracepoint(tp=kind.encode(), fn_name=f"tramp_{idx}".encode())
                                else:
                                    fn = self.bpf.attach_uprobe if kind == "uprobe" else self.bpf.attach_uretprobe
                                    fn(name=ps.attach_path.encode(), sym=hook.symbol.encode(),
                                       fn_name=f"tramp_{idx}".encode(), pid=pid)
                        except Exception as exc:
                            raise loader.LoadError(
                                f"cannot attach {kind} {hook.symbol} in {ps.attach_path}"
                                f"{'' if pid < 0 else f' (pid {pid})'}: {loader._first_line(exc)}") from None
                        self.attached.append(loader.AttachPoint(ps.attach_path, hook.symbol, kind, pid))
        except loader.LoadError:
            self.close()
            raise
        return self

    def install(self, generation: loader.LoadedTarget) -> None:
        """From now on every hit runs `generation`'s programs (one atomic update per program)."""
        table = self.bpf.get_table(b"progs")
        for idx, fd in generation.program_fds.items():
            table[ctypes.c_int(idx)] = ctypes.c_int(fd)

    def clear(self) -> None:
        """No generation: hits return at once."""
        table = self.bpf.get_table(b"progs")
        for i, hook in enumerate(self.probe_set.hooks):
            for idx, _ in program_names(i, hook):
                try:
                    del table[ctypes.c_int(idx)]
                except KeyError:
                    pass

    def close(self) -> None:
        if self.bpf is None:
            return
        try:
            self.bpf.cleanup()
        except Exception:
            pass
        self.bpf = None
        self.attached.clear()
