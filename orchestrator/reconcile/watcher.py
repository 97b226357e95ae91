"""File watching (watchdog adapter): any change to a profile in the watched paths, debounced,
calls `on_change` once. No logic here beyond deciding which file events matter."""
from __future__ import annotations

import os
import threading
import time

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from orchestrator import workdir

DEBOUNCE_S = 0.025


def _relevant(path: str) -> bool:
    name = os.path.basename(path)
    # Profiles themselves, and Kubernetes ConfigMap's `..data` symlink swap.
    return name.endswith((".yaml", ".yml")) or name.startswith("..")


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: "Watcher"):
        self.watcher = watcher

    def on_any_event(self, event):
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        if event.event_type in ("opened", "closed_no_write"):
            return
        if any(p and _relevant(os.fsdecode(p)) for p in paths):
            self.watcher.poke()


class Watcher:
    def __init__(self, paths, on_change, debounce_s: float = DEBOUNCE_S):
        self.on_change = on_change
        self.debounce_s = debounce_s
        self._observer = Observer()
        self._dirty = threading.Event()
        self._last = 0.0
        self._stop = threading.Event()
        dirs = set()
        for p in paths:
            p = workdir.absolute(p)
            dirs.add(p if os.path.isdir(p) else os.path.dirname(p))
        for d in sorted(dirs):
            self._observer.schedule(_Handler(self), d, recursive=False)
        self._thread = threading.Thread(target=self._run, name="ecapture-watch", daemon=True)

    def poke(self) -> None:
        self._last = time.monotonic()
        self._dirty.set()

    def start(self) -> None:
        self._observer.start()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._dirty.wait(0.5):
                continue
            # Quiet period: editors and ConfigMap swaps make several events per save.
            while time.monotonic() - self._last < self.debounce_s:
                time.sleep(self.debounce_s / 4)
            self._dirty.clear()
            if not self._stop.is_set():
                self.on_change()

    def stop(self) -> None:
        self._stop.set()
        self._observer.stop()
        self._observer.join(5)
        self._thread.join(5)
