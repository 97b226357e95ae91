"""The ring-buffer walk of orchestrator/bpf/ringreader.py, in Python and in C (ring_accel), on a
ring laid out in memory the way the kernel maps it: both must hand over the same records and leave
the same consumer position, across wraps, busy and discarded records. (The real ring buffer:
tests/kernel/test_ringreader.py.)"""
from __future__ import annotations

import ctypes
import random
import struct

import pytest

from orchestrator import fastpath
from orchestrator.bpf import ringreader

PAGE = 4096


class FakeRing:
    """The kernel's mapping of a ring buffer: consumer page; producer page, then the data area twice."""

    def __init__(self, size: int):
        self.size = size
        self.consumer = bytearray(PAGE)
        self.data = bytearray(PAGE + 2 * size)
        self.prod = 0

    def _put(self, pos: int, blob: bytes) -> None:
        for i, b in enumerate(blob):
            at = (pos + i) & (self.size - 1)
            self.data[PAGE + at] = b
            self.data[PAGE + self.size + at] = b

    def free(self) -> int:
        return self.size - (self.prod - self.consumer_pos())

    def consumer_pos(self) -> int:
        return struct.unpack_from("<Q", self.consumer)[0]

    def commit(self, payload: bytes, busy: bool = False, discard: bool = False) -> int:
        word = len(payload) | (ringreader.BUSY if busy else 0) | (ringreader.DISCARD if discard else 0)
        pos = self.prod
        self._put(pos, struct.pack("<II", word, 0) + payload)
        self.prod += (len(payload) + 8 + 7) & ~7
        struct.pack_into("<Q", self.data, 0, self.prod)
        return pos

    def unbusy(self, pos: int, length: int) -> None:
        self._put(pos, struct.pack("<I", length))

    def reader(self) -> ringreader.RingReader:
        r = object.__new__(ringreader.RingReader)
        r.size, r.mask, r._page = self.size, self.size - 1, PAGE
        r._consumer, r._data = self.consumer, self.data
        r._consumer_pos = ctypes.c_uint64.from_buffer(self.consumer)
        r._words = memoryview(self.data).cast("Q")
        return r


@pytest.fixture(params=["python", "c"])
def accel(request, monkeypatch):
    if request.param == "python":
        monkeypatch.setattr(ringreader, "ring_accel", None)
    elif ringreader.ring_accel is None:
        assert fastpath.mode != "compiled", "the compiled build must bring ring_accel"
        pytest.skip("ring_accel is not built (Python mode)")
    return request.param


def test_records_across_many_wraps_in_order(accel):
    ring = FakeRing(4096)
    reader = ring.reader()
    rng = random.Random(7)
    sent, got = [], []
    for n in range(3000):
        payload = n.to_bytes(4, "little") + bytes(rng.randrange(0, 300))
        while ring.free() < len(payload) + 16:
            got += reader.read_all()
        ring.commit(payload)
        sent.append(payload)
        if rng.random() < 0.1:
            got += reader.read_all()
    got += reader.read_all()
    assert got == sent
    assert ring.consumer_pos() == ring.prod


def test_a_busy_record_holds_back_those_after_it_and_discarded_ones_are_skipped(accel):
    ring = FakeRing(4096)
    reader = ring.reader()
    ring.commit(b"first")
    ring.commit(b"dropped", discard=True)
    busy_at = ring.commit(b"later", busy=True)
    ring.commit(b"after")
    assert reader.read_all() == [b"first"]
    assert ring.consumer_pos() == busy_at
    assert reader.read_all() == []
    ring.unbusy(busy_at, len(b"later"))
    assert reader.read_all() == [b"later", b"after"]
    assert ring.consumer_pos() == ring.prod


def test_python_and_c_agree_on_the_same_ring():
    if ringreader.ring_accel is None:
        pytest.skip("ring_accel is not built (Python mode)")
    rng = random.Random(11)
    rings = [FakeRing(8192), FakeRing(8192)]
    for n in range(500):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 200)))
        discard = rng.random() < 0.05
        for ring in rings:
            while ring.free() < len(payload) + 16:
                ring.reader().read_all()
            ring.commit(payload, discard=discard)
    py_out: list = []
    rings[0].reader().read(py_out.append)
    c_out = rings[1].reader().read_all()
    assert py_out == c_out
    assert rings[0].consumer_pos() == rings[1].consumer_pos()


def test_c_refuses_a_record_longer_than_the_ring():
    if ringreader.ring_accel is None:
        pytest.skip("ring_accel is not built (Python mode)")
    ring = FakeRing(4096)
    struct.pack_into("<II", ring.data, PAGE, 5000, 0)
    struct.pack_into("<Q", ring.data, 0, 5008)
    with pytest.raises(RuntimeError, match="5000 bytes"):
        ring.reader().read_all()
    assert ring.consumer_pos() == 0


def test_c_hands_over_the_records_before_a_bad_one_then_refuses_it():
    if ringreader.ring_accel is None:
        pytest.skip("ring_accel is not built (Python mode)")
    ring = FakeRing(4096)
    ring.commit(b"good")
    bad_at = ring.prod
    struct.pack_into("<II", ring.data, PAGE + bad_at, 5000, 0)
    struct.pack_into("<Q", ring.data, 0, bad_at + 5008)
    assert ring.reader().read_all() == [b"good"]
    assert ring.consumer_pos() == bad_at
    with pytest.raises(RuntimeError, match="5000 bytes"):
        ring.reader().read_all()


def test_c_checks_its_arguments():
    if ringreader.ring_accel is None:
        pytest.skip("ring_accel is not built (Python mode)")
    ring = FakeRing(4096)
    with pytest.raises(ValueError):
        ringreader.ring_accel.drain(ring.data, ring.consumer, PAGE, 4095 - 1)     # not a power of two - 1
    with pytest.raises(ValueError):
        ringreader.ring_accel.drain(ring.data[:PAGE], ring.consumer, PAGE, 4095)  # smaller than the ring
    with pytest.raises(BufferError):
        ringreader.ring_accel.drain(ring.data, bytes(PAGE), PAGE, 4095)          # consumer not writable
