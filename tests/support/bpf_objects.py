"""Which BPF programs and maps a process holds, and whether they still exist in the kernel,
without bpftool: ids from /proc/PID/fdinfo, existence through bpf(BPF_*_GET_FD_BY_ID). Needs root."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import platform
import struct
import time
from pathlib import Path

_SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(platform.machine(), 321)
BPF_PROG_GET_FD_BY_ID = 13
BPF_MAP_GET_FD_BY_ID = 14

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def held_ids(pid: int) -> dict[str, set[int]]:
    """{"prog": ids, "map": ids} of the BPF programs and maps `pid` has open, and its perf-event fd count
    under "perf_event" (as a one-element set of the count, for symmetry)."""
    progs, maps, perf = set(), set(), 0
    base = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(base):
        try:
            link = os.readlink(base / fd)
        except OSError:
            continue
        if link == "anon_inode:[perf_event]":
            perf += 1
        if not link.startswith("anon_inode:bpf-"):
            continue
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for line in info.splitlines():
            key, _, value = line.partition(":")
            if key == "prog_id":
                progs.add(int(value))
            elif key == "map_id":
                maps.add(int(value))
    return {"prog": progs, "map": maps, "perf_event": {perf}}


def _exists(cmd: int, ident: int) -> bool:
    attr = ctypes.create_string_buffer(struct.pack("=III", ident, 0, 0), 12)
    fd = _libc.syscall(_SYS_BPF, cmd, attr, 12)
    if fd >= 0:
        os.close(fd)
        return True
    err = ctypes.get_errno()
    if err == errno.ENOENT:
        return False
    raise OSError(err, f"bpf(GET_FD_BY_ID {ident}): {os.strerror(err)}")


def prog_exists(prog_id: int) -> bool:
    return _exists(BPF_PROG_GET_FD_BY_ID, prog_id)


def map_exists(map_id: int) -> bool:
    return _exists(BPF_MAP_GET_FD_BY_ID, map_id)


def wait_gone(progs, maps, timeout: float = 10.0) -> tuple[set[int], set[int]]:
    """Wait (bounded) until none of these programs and maps exist; returns those still there."""
    deadline = time.monotonic() + timeout
    while True:
        left_p = {p for p in progs if prog_exists(p)}
        left_m = {m for m in maps if map_exists(m)}
        if (not left_p and not left_m) or time.monotonic() > deadline:
            return left_p, left_m
        time.sleep(0.1)
