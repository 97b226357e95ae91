"""The shared kernel state of one apply process (templates/kern/state.c.j2): loaded once, first,
and kept until exit: the entry-to-return stash, connection tracking and per-process sequences
that every target and generation shares.

Its tables are compiled once per process and freed only at exit (owner's exit cleanup). bcc
keeps a module's exported tables in its process-wide storage by name, takes the first export of
a name and never drops it: the tables of a second state compiled in the same process would stay
unexported, and every later generation would resolve the first state's closed fds. So `close()`
only detaches the state's tracepoints, and `shared()` after it attaches them again to the same
tables.
"""
from __future__ import annotations

import threading

from orchestrator.bpf import owner, render

TEMPLATE = "state.c.j2"

_lock = threading.Lock()
_state = None           # the state in use
_closed = None          # the state after close(): tables kept, tracepoints detached


class SharedState:
    def __init__(self):
        self.bpf = owner.compile(render.kernel_template(TEMPLATE), render.cflags())


def shared() -> SharedState:
    """The process's shared state, created on first use (needs root and bcc); raises owner.BccError."""
    global _state, _closed
    with _lock:
        if _state is None:
            if _closed is not None:
                owner.attach_tracepoints_again(_closed.bpf)
                _state, _closed = _closed, None
            else:
                _state = SharedState()
        return _state


def close() -> None:
    """Detach the connection-tracking tracepoints (at exit; the tables go with the process)."""
    global _state, _closed
    with _lock:
        if _state is not None:
            owner.detach_tracepoints(_state.bpf)
            _state, _closed = None, _state
