"""The shared kernel state of one apply process (templates/kern/state.c.j2): loaded once, first,
and kept until exit: the entry-to-return stash, connection tracking and per-process sequences
that every target and generation shares."""
from __future__ import annotations

import threading

from orchestrator.bpf import render

TEMPLATE = "state.c.j2"

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
