"""The shared kernel state of one apply process (templates/kern/state.c.j2): loaded once, first,
and kept until exit: the entry-to-return stash, connection tracking and per-process sequences
that every target and generation shares."""
from __future__ import annotations

import threading

from orchestrator.bpf import owner, render

TEMPLATE = "state.c.j2"

_lock = threading.Lock()
_state = None


class SharedState:
    def __init__(self):
        self.bpf = owner.compile(render.kernel_template(TEMPLATE), render.cflags())


def shared() -> SharedState:
    """The process's shared state, created on first use (needs root and bcc); raises owner.BccError."""
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
            owner.cleanup(_state.bpf)
            _state = None
