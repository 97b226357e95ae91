"""File watching (watchdog adapter): any change to a profile in the watched paths, debounced,
calls `on_change` once. No logic here beyond deciding which file events matter."""
from __future__ import annotations

import os
import threading
import time

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

try:
    from watchdog.observers import inotify as _inotify
    from watchdog.observers import inotify_c as _inotify_c
except ImportError:                 # not Linux: watchdog's default observer, every event
    _inotify = _inotify_c = None

from orchestrator import threadname, workdir

DEBOUNCE_S = 0.025


def _relevant(path: str) -> bool:
    name = os.path.basename(path)
    # Profiles themselves, and Kubernetes ConfigMap's `..data` symlink swap.
    return name.endswith((".yaml", ".yml")) or name.startswith("..")


def _observer():
    """An inotify observer that is not told of writes (IN_MODIFY) or opens: a sink writing into a
    profile's folder (`path: out.jsonl` next to the profile) would otherwise wake three watchdog
    threads per batch, about a tenth of apply's CPU under load (bench/README.md "overhead").
    A saved profile still shows as closed-after-write, created, moved or deleted, and a chmod or
    chown (how a refused, untrusted profile gets fixed) as an attribute change."""
    emitter = getattr(_inotify, "InotifyEmitter", None)
    if emitter is None or not hasattr(emitter, "get_event_mask_from_filter") \
            or not hasattr(_inotify_c, "WATCHDOG_ALL_EVENTS"):
        return Observer()
    c = _inotify_c.InotifyConstants
    mask = _inotify_c.WATCHDOG_ALL_EVENTS & ~(c.IN_MODIFY | c.IN_OPEN | c.IN_CLOSE_NOWRITE)

    class ProfileEmitter(emitter):
        def get_event_mask_from_filter(self):
            return mask

    observer = _inotify.InotifyObserver()
    observer._emitter_class = ProfileEmitter
    return observer


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "Watcher"):
        self.watcher = watcher

    def on_any_event(self, event):
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        if event.event_type in ("opened", "closed_no_write"):
            return
        if any(p and _relevant(os.fsdecode(p)) for p in paths):
            self.watcher.poke()


class Debouncer:
    """When a burst of file events is over: `quiet_for()` says how long to wait yet (0: call now).
    Pure but for its clock, so the editor save dances are tested without sleeping."""

    def __init__(self, debounce_s: float = DEBOUNCE_S, clock=time.monotonic):
        self.debounce_s = debounce_s
        self.clock = clock
        self.pending = False
        self._last = 0.0

    def poke(self) -> None:
        self._last = self.clock()
        self.pending = True

    def quiet_for(self) -> float:
        return max(0.0, self.debounce_s - (self.clock() - self._last)) if self.pending else 0.0

    def take(self) -> bool:
        """True once per burst, when it is over."""
        if not self.pending or self.quiet_for() > 0:
            return False
        self.pending = False
        return True


class Watcher:
    def __init__(self, paths, on_change, debounce_s: float = DEBOUNCE_S):
        self.on_change = on_change
        self._observer = _observer()
        self._debouncer = Debouncer(debounce_s)
        self._dirty = threading.Event()
        self._stop = threading.Event()
        dirs = set()
        for p in paths:
            p = workdir.absolute(p)
            dirs.add(p if os.path.isdir(p) else os.path.dirname(p))
        for d in sorted(dirs):
            self._observer.schedule(_Handler(self), d, recursive=False)
        self._thread = threading.Thread(target=self._run, name="ecapture-watch", daemon=True)

    def poke(self) -> None:
        self._debouncer.poke()
        self._dirty.set()

    def start(self) -> None:
        self._observer.start()
        self._thread.start()

    def _run(self) -> None:
        threadname.name_this_thread()
        while not self._stop.is_set():
            if not self._dirty.wait(0.5):
                continue
            self._dirty.clear()
            # Quiet period: editors and ConfigMap swaps make several events per save.
            while not self._stop.is_set() and not self._debouncer.take():
                if self._dirty.wait(self._debouncer.quiet_for() or self._debouncer.debounce_s):
                    self._dirty.clear()
            if not self._stop.is_set():
                self.on_change()

    def stop(self) -> None:
        self._stop.set()
        self._dirty.set()
        self._observer.stop()
        self._observer.join(5)
        self._thread.join(5)
