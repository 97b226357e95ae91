"""The shared kernel state of one apply process (templates/kern/state.c.j2): loaded once, first,
and kept until exit. It owns the gate: slot → the generation allowed to start new calls."""
from __future__ import annotations

import ctypes
import threading

from orchestrator.bpf import render

TEMPLATE = "state.c.j2"
SLOTS = 1024

_lock = threading.Lock()
_state = None


class SharedState:
    def __init__(self):
        import bcc

        from orchestrator.bpf import loader
        text = render._env().get_template(TEMPLATE).render()
        quiet = loader._quiet_stderr()
        with quiet:
            self.bpf = bcc.BPF(text=text.encode(), cflags=render.cflags())
        self._gate = self.bpf[b"ecap_gate"]
        self._retired = self.bpf[b"ecap_retired"]

    def open_gate(self, slot: int, generation: int) -> None:
        """From now on only `generation` starts calls for `slot` (0 closes it)."""
        self._gate[ctypes.c_uint32(slot)] = ctypes.c_uint32(generation)

    def retire(self, slot: int, generation: int) -> None:
        """Calls entered under `generation` (or older) may now be completed by a newer one."""
        self._retired[ctypes.c_uint32(slot)] = ctypes.c_uint32(generation)

    def gate(self, slot: int) -> int:
        return self._gate[ctypes.c_uint32(slot)].value


def shared() -> SharedState:
    """The process's shared state, created on first use (needs root and bcc)."""
    global _state
    with _lock:
        if _state is None:
            _state = SharedState()
        return _state


def close() -> None:
    """Detach the connection-tracking tracepoints and free the shared tables (at exit)."""
    global _state
    with _lock:
        if _state is not None:
            _state.bpf.cleanup()
            _state = None
