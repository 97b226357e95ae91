"""Read a BPF ring buffer through its memory mapping, without a callback per record.

The kernel's layout (kernel/bpf/ringbuf.c, as libbpf consumes it): page 0 holds the
consumer position (written by us), page 1 the producer position, then the data area mapped
twice in a row so that a record crossing the end reads contiguously. Each record starts
with an 8-byte header: length (bit 31 busy, bit 30 discarded) and a page offset; records
are 8-byte aligned.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import select
import struct

try:        # the compiled hot path's copy of `read_all` (scripts/build_fast.py; fastpath.py)
    from orchestrator.bpf import ring_accel
except ImportError:
    ring_accel = None

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
RELEASE_EVERY_MASK = 63      # release the space read every 64 records (see read)
_u32 = struct.Struct("<I")


class RingReader:
    def __init__(self, map_fd: int, size: int):
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self.size = size
        self.mask = size - 1
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._page = page
        # The consumer position must change in one 8-byte store: struct.pack_into zeroes its
        # target before writing, and a kernel that reads 0 there sees a full ring and drops.
        self._consumer_pos = ctypes.c_uint64.from_buffer(self._consumer)
        # The producer position must be read in one 8-byte load too: struct's "<Q" reads byte by
        # byte and could combine old and new bytes into a position past what was written.
        self._words = memoryview(self._data).cast("Q")
        # wait(): the kernel wakes the ring's pollers (see event.h), interrupt() an eventfd
        self._epoll = select.epoll()
        self._wakeup = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(map_fd, select.EPOLLIN)
        self._epoll.register(self._wakeup, select.EPOLLIN)

    def read(self, take) -> int:
        """Call `take(bytes)` for every committed record, in order; returns how many.

        The space read is released every 64 records and at the end, not after each record as
        libbpf does: every reserve in the kernel reads the consumer position, so each write
        pulled its cache line over to this CPU and back."""
        data, page, mask = self._data, self._page, self.mask
        consumer = self._consumer_pos
        cons = consumer.value
        prod = self._words[0]
        n = 0
        unpack_u32 = _u32.unpack_from
        try:
            while cons < prod:
                off = page + (cons & mask)
                word = unpack_u32(data, off)[0]
                if word & BUSY:
                    break                  # reserved, not yet committed: later records wait for it
                length = word & ~(BUSY | DISCARD)
                if not word & DISCARD:
                    take(data[off + HEADER:off + HEADER + length])     # a copy: the space is free now
                    n += 1
                    if not n & RELEASE_EVERY_MASK:
                        consumer.value = cons + ((length + HEADER + 7) & ~7)
                cons += (length + HEADER + 7) & ~7
        finally:
            consumer.value = cons
        return n

    def read_all(self) -> list:
        """Every committed record, in order, as a list: `read` without a call per record (in C
        when the compiled hot path is in use)."""
        if ring_accel is not None:
            return ring_accel.drain(self._data, self._consumer, self._page, self.mask)
        out: list = []
        self.read(out.append)
        return out

    def used(self) -> int:
        """Bytes the kernel has reserved or written that are not read yet, for metrics: two loads,
        so a write or read in between makes it a moment old, never out of range."""
        return max(0, min(self.size, self._words[0] - self._consumer_pos.value))

    def wait(self, timeout: float) -> None:
        """Sleep until the kernel wakes the ring's readers (it has records to read: the kernel wakes
        them for a record written to a ring read to its end), interrupt() is called, or `timeout`
        seconds pass. Returns at once while records wait."""
        try:
            for fd, _ in self._epoll.poll(timeout):
                if fd == self._wakeup:
                    os.eventfd_read(self._wakeup)
        except (OSError, ValueError):       # closed meanwhile, or the interrupt already read
            pass

    def interrupt(self) -> None:
        """End a wait() in progress (or make the next one return at once)."""
        if self._wakeup >= 0:
            os.eventfd_write(self._wakeup, 1)

    def close(self) -> None:
        self._epoll.close()
        os.close(self._wakeup)
        self._wakeup = -1
        del self._consumer_pos          # the mappings cannot close while views export them
        self._words.release()
        self._consumer.close()
        self._data.close()
