"""JSON Lines sink: one record per line (DESIGN.md event contract), one write per batch;
rotation (`rotate:`, see `sinks.rotate`) between batches, and `reopen` (SIGHUP) for logrotate.

Files are opened by `safefile.open_private` (mode 0600, no links followed, folders checked).
"""
from __future__ import annotations

import os
import time

import msgspec

from orchestrator import safefile
from orchestrator.pipeline import events
from orchestrator.sinks import rotate

ROTATE_RETRY_NS = 5 * 1_000_000_000     # after a failed rotation, the next attempt waits this long
FIRST_LINE_MAX = 1 << 16


class JsonlSink:
    kind = "jsonl"

    def __init__(self, path: str, rotation: rotate.Policy | None = None, clock=time.time_ns, warn=None):
        self.path = path
        self.rotation = rotation
        self._clock = clock
        self._warn = warn or rotate.warn
        self._fd = safefile.open_private(path)
        self._size, self._started_ns = self._measure(self._fd)
        # msgspec encodes ~6x faster than the json module; UTF-8 out, keys in insertion order.
        self._encode = msgspec.json.Encoder().encode
        self.rotations = 0
        self.rotate_failures = 0
        self._retry_at = 0
        self.old_files = None
        if rotation is not None:
            folder, base = os.path.split(path)
            self._staging = os.path.join(folder, f".{base}.next")
            self.old_files = rotate.OldFiles.of(path, rotation.keep, rotation.compress, warn=self._warn)

    def write(self, records) -> None:
        """Append one batch whole or not at all, with os.write on the raw fd (no Python buffer).

        On a short write or an error (ENOSPC, EFBIG, EIO, ...) the file is truncated back to its
        size before the batch and the error is raised: the dispatcher counts the batch as lost
        and the next batch is tried again, so writing resumes by itself once space is freed.
        Buffering failed batches for a retry was rejected: while a disk stays full that memory
        grows without bound, and the records would reach the file late and out of order.

        With rotation the file is rotated before a batch, never within one: no record is split
        or lost at a rotation. A rotation that fails leaves the batch in the current file.
        """
        data = events.json_lines(records, self._encode)
        if self.rotation is not None:
            now = self._clock()
            if now >= self._retry_at and self.rotation.due(self._size, self._started_ns, len(data), now):
                self._rotate(now)
        safefile.write_whole(self._fd, data)
        self._size += len(data)

    def _rotate(self, now: int) -> None:
        try:
            fd = safefile.open_private(self._staging, truncate=True)
        except OSError as exc:
            self._rotation_failed(now, exc)
            return
        try:
            retired = self.old_files.retire(self.path)
            os.rename(self._staging, self.path)
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(self._staging)
            except OSError:
                pass
            self._rotation_failed(now, exc)
            return
        os.close(self._fd)
        self._fd, self._size, self._started_ns = fd, 0, now
        self.rotations += 1
        if self.rotate_failures and self._retry_at:
            self._warn(f"jsonl {self.path}: rotates again (after {self.rotate_failures} failed attempt(s))")
        self._retry_at = 0
        self.old_files.compress_later(retired)

    def _rotation_failed(self, now: int, exc: OSError) -> None:
        self.rotate_failures += 1
        if not self._retry_at:       # said once per spell of failures; the records go on to the current file
            self._warn(f"jsonl {self.path}: cannot rotate: {exc.strerror or exc}; writing on to the current file, "
                       f"retrying every {ROTATE_RETRY_NS // 1_000_000_000} s")
        self._retry_at = now + ROTATE_RETRY_NS

    def reopen(self) -> None:
        """Open the path again (SIGHUP, after logrotate renamed the file away): a new file there
        from now on. If that fails the error is raised and the sink keeps its current file."""
        fd = safefile.open_private(self.path)
        old, self._fd = self._fd, fd
        os.close(old)
        self._size, self._started_ns = self._measure(fd)

    def _measure(self, fd: int) -> tuple[int, int]:
        """(size, when its first record was made): a file appended to keeps its age across restarts."""
        st = os.fstat(fd)
        started = self._clock()
        if st.st_size:
            try:
                head = _first_line(self.path, st)
                ts = msgspec.json.decode(head).get("ts")
                if isinstance(ts, int) and 0 < ts <= started:
                    started = ts
            except (OSError, ValueError, AttributeError):
                pass      # not one of our lines (or too long): its age counts from now
        return st.st_size, started

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _first_line(path: str, st: os.stat_result) -> bytes:
    """The first line of the file `st` describes (the fd we write is write-only), read through
    no link and only if `path` still names that file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        here = os.fstat(fd)
        if (here.st_dev, here.st_ino) != (st.st_dev, st.st_ino):
            raise OSError(f"{path} was replaced")
        return os.pread(fd, FIRST_LINE_MAX, 0).split(b"\n", 1)[0]
    finally:
        os.close(fd)
