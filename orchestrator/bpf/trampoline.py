"""Trampolines: the uprobes of a target, attached once, that tail-call its current generation.

Owner of `templates/kern/trampoline.c.j2`. Program table index 2*i is hook i's entry program,
2*i+1 its return program (loader.program_names). `install()` points every index at a loaded
generation's programs.
Attached all-or-nothing; `close()` detaches (each detach waits out a kernel grace period).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from orchestrator.bpf import loader, owner, render

TEMPLATE = "trampoline.c.j2"


@dataclass
class Trampoline:
    probe_set: object
    bpf: object = None
    progs: object = None                            # its program table, looked up once
    attached: list = field(default_factory=list)    # loader.AttachPoint

    @property
    def identity(self) -> str:
        """Targets with the same identity share trampolines (plan.model.ProbeSet.attach_identity)."""
        return self.probe_set.attach_identity

    def attach(self) -> "Trampoline":
        ps = self.probe_set
        entries = [idx for i, h in enumerate(ps.hooks) for idx, _ in loader.program_names(i, h)]
        text = render.kernel_template(TEMPLATE, slots=max(2 * len(ps.hooks), 1), entries=entries)
        try:
            self.bpf = owner.compile(text, render.cflags())
            self.progs = owner.table(self.bpf, "progs")
        except owner.BccError as exc:
            raise loader.LoadError(f"trampoline compile failed: {exc}") from None
        try:
            for i, hook in enumerate(ps.hooks):
                # A tracepoint cannot be scoped to a pid at attach time: the programs filter.
                for pid in (-1,) if hook.probe == "syscall" else ps.target.filters.pids or (-1,):
                    for idx, _ in loader.program_names(i, hook):
                        kind = "uprobe" if idx % 2 == 0 else "uretprobe"
                        try:
                            if hook.probe == "syscall":
                                kind = f"syscalls:sys_{'enter' if idx % 2 == 0 else 'exit'}_{hook.symbol}"
                                owner.attach_tracepoint(self.bpf, kind, f"tramp_{idx}")
                            elif ps.addresses and ps.addresses[i] is not None:
                                # Found by address (Go code, a routine found by its labels): a uprobe at
                                # the entry, and one at each RET for the return.
                                entry, returns = ps.addresses[i]
                                kind = "uprobe" if idx % 2 == 0 else f"uprobe at {len(returns)} RET"
                                for addr in (entry,) if idx % 2 == 0 else returns:
                                    owner.attach_uprobe_at(self.bpf, ps.attach_path, addr, f"tramp_{idx}", pid)
                            else:
                                owner.attach_uprobe(self.bpf, ps.attach_path, hook.symbol, f"tramp_{idx}", pid,
                                                    on_return=kind == "uretprobe")
                        except owner.BccError as exc:
                            raise loader.LoadError(
                                f"cannot attach {kind} {hook.symbol} in {ps.attach_path}"
                                f"{'' if pid < 0 else f' (pid {pid})'}: {exc}") from None
                        self.attached.append(loader.AttachPoint(ps.attach_path, hook.symbol, kind, pid))
        except loader.LoadError:
            self.close()
            raise
        return self

    def install(self, generation: loader.LoadedTarget) -> None:
        """From now on every hit runs `generation`'s programs (one atomic update per program)."""
        for idx, fd in generation.program_fds.items():
            self.progs[ctypes.c_int(idx)] = ctypes.c_int(fd)

    def clear(self) -> None:
        """No generation: hits return at once."""
        for i, hook in enumerate(self.probe_set.hooks):
            for idx, _ in loader.program_names(i, hook):
                try:
                    del self.progs[ctypes.c_int(idx)]
                except KeyError:
                    pass

    def close(self) -> None:
        if self.bpf is None:
            return
        owner.cleanup(self.bpf)
        self.bpf = None
        self.progs = None
        self.attached.clear()
