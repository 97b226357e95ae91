"""Rotation of a sink's file: when to rotate (`Policy`), and the old files (`OldFiles`).

Naming is logrotate's: the file being written keeps its path, the newest old file is
`PATH.1`, the next `PATH.2`, ... up to `PATH.<keep>`; with `compress` an old file becomes
`PATH.N.gz` once compressed. At each rotation every old file moves up one number, and the
ones past `keep` are deleted.

Compression runs on a background thread (zlib leaves the GIL while it deflates), never on the
dispatcher's: a rotation itself is a few renames. The gzip file is written under a hidden
name (`.BASE.<id>.gz.partial`, opened by `safefile.open_private`: 0600, no link followed) and
renamed into place only when complete, then the plain file is removed; if anything fails the
plain file stays, and the failure is counted and reported. The thread is not a daemon, so an
`apply` that stops still finishes the compressions under way before it exits.
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import os
import re
import stat
import sys
import threading
import time
import weakref
from collections import deque

from orchestrator import safefile

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DURATION_PATTERN = r"^[1-9][0-9]*[smhdw]$"       # the schema's, for max_age given as text
COMPRESS_LEVEL = 6                               # gzip's own default: level 9 costs ~3x the CPU for ~1 % less
CHUNK = 1 << 20
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _stderr_warn(line: str) -> None:
    print(f"ecapture: {line}", file=sys.stderr, flush=True)


_warn = _stderr_warn


def configure(warn) -> None:
    """Where compression failures (found on a background thread) are reported: apply's warn."""
    global _warn
    _warn = warn


def warn(line: str) -> None:
    try:
        _warn(line)
    except Exception:
        pass


_module_warn = warn        # OldFiles takes a `warn` argument of its own


def parse_duration(value) -> float:
    """Seconds from an integer (seconds) or a text like "90s", "15m", "1h", "7d", "2w"."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"a duration must be positive, not {value!r}")
        return float(value)
    if isinstance(value, str) and re.match(DURATION_PATTERN, value):
        return float(int(value[:-1]) * DURATION_UNITS[value[-1]])
    raise ValueError(f"not a duration: {value!r} (seconds, or a number and one of s, m, h, d, w, e.g. \"1h\")")


@dataclasses.dataclass(frozen=True)
class Policy:
    """When the file is rotated: before a batch that would take it past `max_bytes` (a file that
    is still empty takes any batch whole), or before the first batch once it is `max_age_ns` old."""
    max_bytes: int | None = None
    max_age_ns: int | None = None
    keep: int = 5
    compress: bool = False

    @classmethod
    def from_options(cls, options) -> "Policy | None":
        """The profile's `rotate:` mapping (validated by the schema), or None for no rotation."""
        if not options:
            return None
        age = options.get("max_age")
        return cls(max_bytes=options.get("max_bytes"),
                   max_age_ns=None if age is None else int(parse_duration(age) * 1_000_000_000),
                   keep=options.get("keep", 5), compress=options.get("compress", False))

    def due(self, size: int, started_ns: int, incoming: int, now_ns: int) -> bool:
        if size == 0:
            return False          # an empty file is never rotated: a batch is never split, nor a file left empty
        if self.max_bytes is not None and size + incoming > self.max_bytes:
            return True
        return self.max_age_ns is not None and now_ns - started_ns >= self.max_age_ns


def old_name(path: str, n: int, compressed: bool = False) -> str:
    return f"{path}.{n}{'.gz' if compressed else ''}"


class _Old:
    """One old file, by its number; `suffixes` are those on disk: "" (plain) and/or ".gz"."""
    __slots__ = ("n", "suffixes", "gone", "id")
    _ids = itertools.count(1)

    def __init__(self, n: int, suffixes: set):
        self.n = n
        self.suffixes = suffixes
        self.gone = False
        self.id = next(self._ids)


class OldFiles:
    """The old files of one path: `retire` moves the current file in as PATH.1 (after moving
    the others up and deleting those past `keep`), and queues it for compression.

    Renames hold `_lock`, taken by the dispatcher (retire) and the compressor (its final rename)
    only for the renames themselves, so a file compressed while the others move up still lands
    at its current number. Get one with `of(path, ...)`: a sink rebuilt by a reload shares its
    predecessor's, whose compressions may still be under way.
    """
    _by_path: "weakref.WeakValueDictionary[str, OldFiles]" = weakref.WeakValueDictionary()
    _registry_lock = threading.Lock()

    @classmethod
    def of(cls, path: str, keep: int, compress: bool, warn=None) -> "OldFiles":
        with cls._registry_lock:
            old_files = cls._by_path.get(path)
            if old_files is None:
                old_files = cls._by_path[path] = cls(path, keep, compress, warn)
            else:
                with old_files._lock:
                    old_files.keep, old_files.compress = keep, compress
                    old_files._warn = warn or _module_warn
            return old_files

    def __init__(self, path: str, keep: int, compress: bool, warn=None):
        self.path = path
        self.keep = keep
        self.compress = compress
        self._warn = warn or _module_warn
        self.folder, self.base = os.path.split(path)
        self._lock = threading.Lock()
        self._jobs: deque = deque()
        self._worker: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self.compressed = 0
        self.compress_failures = 0
        self._old: dict[int, _Old] = self._scan()
        self._remove_partials()

    def _scan(self) -> dict:
        found: dict[int, _Old] = {}
        pattern = re.compile(re.escape(self.base) + r"\.([1-9][0-9]{0,8})(\.gz)?")
        try:
            names = os.listdir(self.folder)
        except OSError:
            return found
        for name in names:
            m = pattern.fullmatch(name)
            if m:
                n = int(m.group(1))
                found.setdefault(n, _Old(n, set())).suffixes.add(m.group(2) or "")
        return found

    def _remove_partials(self) -> None:
        """Compressions a killed apply left unfinished (their plain files are still there)."""
        pattern = re.compile(r"\." + re.escape(self.base) + r"\.[0-9]+\.gz\.partial")
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:
            if pattern.fullmatch(name):
                try:
                    os.unlink(os.path.join(self.folder, name))
                except OSError:
                    pass

    def retire(self, current: str) -> _Old | None:
        """Move `current` (the file just rotated out, closed or not) to PATH.1, or delete it when
        keep is 0; returns the new old file, for `compress_later` once nothing writes it."""
        with self._lock:
            try:
                os.lstat(current)
            except FileNotFoundError:
                return None        # renamed away by someone else (logrotate): only a new file starts
            for n, found in self._scan().items():       # what changed on disk since (a person, a copy)
                self._old.setdefault(n, found).suffixes |= found.suffixes
            for n in sorted(self._old, reverse=True):
                old = self._old.pop(n)
                if n + 1 > self.keep:
                    self._delete(old)
                    continue
                for s in sorted(old.suffixes):
                    try:
                        os.rename(old_name(self.path, n, s == ".gz"), old_name(self.path, n + 1, s == ".gz"))
                    except FileNotFoundError:
                        old.suffixes.discard(s)      # removed by someone else
                if not old.suffixes:
                    old.gone = True
                    continue
                old.n = n + 1
                self._old[n + 1] = old
            if self.keep == 0:
                os.unlink(current)
                return None
            os.rename(current, old_name(self.path, 1))
            newest = self._old[1] = _Old(1, {""})
            return newest

    def _delete(self, old: _Old) -> None:
        old.gone = True
        for s in old.suffixes:
            try:
                os.unlink(old_name(self.path, old.n, s == ".gz"))
            except FileNotFoundError:
                pass

    # ---- compression (background)
    def compress_later(self, old: _Old | None) -> None:
        if old is None or not self.compress:
            return
        with self._lock:
            self._jobs.append(old)
            if self._worker is None:
                self._worker = threading.Thread(target=self._compress_all, name="ecapture-compress")
                self._worker.start()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no compression is queued or running; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while self._worker is not None:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _compress_all(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    self._worker = None
                    self._idle.notify_all()
                    return
                old = self._jobs.popleft()
                if old.gone or "" not in old.suffixes:
                    continue
                source = old_name(self.path, old.n)
                try:
                    fd = os.open(source, _READ_FLAGS)     # opened under the lock: `source` is its name now
                except OSError as exc:
                    self._failed(source, exc)
                    continue
            try:
                self._compress(old, fd)
            except Exception as exc:      # whatever it is, the plain file stays: say so and go on
                self._failed(source, exc)
            finally:
                os.close(fd)

    def _compress(self, old: _Old, fd: int) -> None:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{old_name(self.path, old.n)} is not a regular file")
        partial = os.path.join(self.folder, f".{self.base}.{old.id}.gz.partial")
        out = safefile.open_private(partial, truncate=True)
        done = False
        try:
            with os.fdopen(out, "wb", closefd=False) as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=COMPRESS_LEVEL,
                                  mtime=int(st.st_mtime)) as gz:
                while chunk := os.read(fd, CHUNK):
                    gz.write(chunk)
            with self._lock:
                if not old.gone:
                    os.rename(partial, old_name(self.path, old.n, True))
                    done = True
                    old.suffixes.add(".gz")
                    os.unlink(old_name(self.path, old.n))
                    old.suffixes.discard("")
                    self.compressed += 1
        finally:
            os.close(out)
            if not done:
                try:
                    os.unlink(partial)
                except OSError:
                    pass

    def _failed(self, source: str, exc: BaseException) -> None:
        self.compress_failures += 1
        reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or type(exc).__name__
        self._warn(f"jsonl {self.path}: could not compress {source} ({reason}); it stays uncompressed "
                   f"({self.compress_failures} compression failure(s) so far)")
