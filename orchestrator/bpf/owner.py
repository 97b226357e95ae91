"""The one owner of libbcc: every compile, load, attach, table look-up and cleanup passes here.

libbcc is not thread safe. Tables shared between modules live in one global storage that every
compile adds to and every cleanup removes its own entries from (a SIGSEGV in
`TableStorage::iterator` was seen when a background compile met a cleanup; an exported name is
taken by its first export and kept until exit, see state.py), and every compile `chdir`s the
whole process into the kernel headers and back. So every call into libbcc runs under one lock,
bcc's own exit-time cleanups included. Reading and writing elements of a table already looked up
are plain bpf() syscalls on its map fd and need no lock: gate flips, filter writes, loss counters
and ring buffers stay off it, so a long compile never delays them.

A leaf module: it imports nothing of the project.
"""
from __future__ import annotations

import atexit
import os
import tempfile
import threading

_lock = threading.RLock()
_live: list = []          # modules not cleaned up yet, cleaned at exit under the lock
EXIT_WAIT_S = 60.0        # at exit, a compile in progress on another thread finishes first


class BccError(Exception):
    """A compile, load or attach failed; `str()` is one line for the user."""


def run(fn, *args, **kwargs):
    """Call `fn` (anything that reaches into libbcc) as the owner."""
    with _lock:
        return fn(*args, **kwargs)


def compile(text: str, cflags: list[str]):
    """Compile and load `text` into a new bcc module; compiler output never reaches fd 2."""
    import bcc  # Debian's python3-bpfcc; imported late so pure commands work without it

    with _lock:
        quiet = _QuietStderr()
        try:
            with quiet:
                module = bcc.BPF(text=text.encode(), cflags=cflags)
        except Exception as exc:   # bcc raises bare Exception on compile errors
            errors = [ln.strip() for ln in quiet.text.splitlines() if "error" in ln]
            raise BccError("; ".join(errors[:3]) or first_line(exc)) from None
        # bcc registers every module's cleanup with atexit, where it would run without our lock.
        atexit.unregister(module.cleanup)
        _live.append(module)
        return module


def load_func(module, name: str, tracepoint: bool, classifier: bool = False) -> int:
    """Load one program of `module` (a kprobe, a tracepoint, or a TC classifier); its fd."""
    import bcc

    with _lock:
        try:
            with _QuietStderr():
                kind = bcc.BPF.SCHED_CLS if classifier else bcc.BPF.TRACEPOINT if tracepoint else bcc.BPF.KPROBE
                return module.load_func(name.encode(), kind).fd
        except Exception as exc:
            raise BccError(first_line(exc)) from None


def table(module, name: str):
    """Look a table up once; its element operations are then safe from any thread."""
    with _lock:
        return module[name.encode()]


def attach_uprobe(module, path: str, symbol: str, fn_name: str, pid: int, on_return: bool) -> None:
    with _lock:
        try:
            with _QuietStderr():
                attach = module.attach_uretprobe if on_return else module.attach_uprobe
                attach(name=path.encode(), sym=symbol.encode(), fn_name=fn_name.encode(), pid=pid)
        except Exception as exc:
            raise BccError(first_line(exc)) from None


def attach_uprobe_at(module, path: str, address: int, fn_name: str, pid: int) -> None:
    """A uprobe at a virtual address of the file (bcc turns it into the file offset)."""
    with _lock:
        try:
            with _QuietStderr():
                module.attach_uprobe(name=path.encode(), addr=address, fn_name=fn_name.encode(), pid=pid)
        except Exception as exc:
            raise BccError(first_line(exc)) from None


def attach_tracepoint(module, tracepoint: str, fn_name: str) -> None:
    with _lock:
        try:
            with _QuietStderr():
                module.attach_tracepoint(tp=tracepoint.encode(), fn_name=fn_name.encode())
        except Exception as exc:
            raise BccError(first_line(exc)) from None


def detach_tracepoints(module) -> None:
    """Detach every tracepoint and raw tracepoint `module` attached; its programs and tables stay."""
    with _lock:
        for tp in list(module.tracepoint_fds):
            module.detach_tracepoint(tp)
        for tp in list(module.raw_tracepoint_fds):
            module.detach_raw_tracepoint(tp)


def attach_tracepoints_again(module) -> None:
    """Attach again what bcc's autoload attached at compile (detach_tracepoints): by its naming,
    program tracepoint__CATEGORY__EVENT on CATEGORY:EVENT, raw_tracepoint__EVENT on EVENT."""
    from bcc.libbcc import lib

    with _lock:
        try:
            for i in range(lib.bpf_num_functions(module.module)):
                name = lib.bpf_function_name(module.module, i)
                if name.startswith(b"tracepoint__"):
                    tp = name[len(b"tracepoint__"):].replace(b"__", b":")
                    if tp not in module.tracepoint_fds:
                        module.attach_tracepoint(tp=tp, fn_name=name)
                elif name.startswith(b"raw_tracepoint__"):
                    tp = name[len(b"raw_tracepoint__"):]
                    if tp not in module.raw_tracepoint_fds:
                        module.attach_raw_tracepoint(tp=tp, fn_name=name)
        except Exception as exc:
            raise BccError(first_line(exc)) from None


def cleanup(module) -> None:
    """Detach everything `module` attached and free it (best effort; once).

    Detaching a uprobe waits out a kernel grace period (0.1 s or more each), which under the
    lock would hold every compile back for seconds. Its two calls are plain perf-event and
    tracefs syscalls that never touch bcc's shared storage, so they run first, unlocked."""
    from bcc.libbcc import lib

    with _lock:
        if module not in _live:
            return
        _live.remove(module)
        uprobes = dict(module.uprobe_fds)
        for ev_name in uprobes:         # forgotten by the module (its cleanup skips them) and by
            module._del_uprobe_fd(ev_name)   # bcc's count of open probes (capped at 1000)
    for ev_name, fd in uprobes.items():
        lib.bpf_close_perf_event_fd(fd)
        lib.bpf_detach_uprobe(ev_name)
    with _lock:
        try:
            module.cleanup()
        except Exception:
            pass


def live_modules() -> int:
    return len(_live)


@atexit.register
def _cleanup_at_exit() -> None:
    # Registered when this module is imported, before any module exists; atexit runs handlers
    # last-in first-out, but bcc's own were unregistered, so this is the only bcc cleanup at exit.
    if not _lock.acquire(timeout=EXIT_WAIT_S):
        return
    for module in list(_live):
        cleanup(module)


def first_line(exc: BaseException) -> str:
    lines = (str(exc).strip() or type(exc).__name__).splitlines()
    return lines[0] if len(lines) == 1 else lines[-1]


class _QuietStderr:
    """bcc and LLVM print warnings straight to fd 2; keep them off the user's terminal.

    The captured text is kept on `.text` for error messages. It redirects the whole process's fd 2
    (callers hold the owner lock), so `ecapture apply` prints its own messages to a copy of fd 2
    made at start (cli.apply).
    """
    text = ""

    def __enter__(self):
        if os.environ.get("ECAPTURE_BCC_DEBUG"):
            return self
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
        return False
