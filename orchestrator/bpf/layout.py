"""Python mirror of `templates/kern/common.h` (struct event_header), decoded with one precompiled Struct.

The numbers shared with C (RECORD_*, DIR_*, FLAG_*, LOSS_*) have one copy per language: the
#defines of common.h/shared.h (what bcc compiles) and the constants below (hooks.py uses the same
values); tests/unit/test_render.py fails when either side has a number the other lacks or differs,
and compiles common.h with gcc to check the offsets.
"""
from __future__ import annotations

import struct

# ts seq session ret args[6] pid tid uid fd len cap hook record direction flags pad gen
# conn{family lport rport pad laddr[16] raddr[16]} comm[16] cgroup
HEADER = struct.Struct("<QQQq6QIIIiIIHBBBxHHHHH16s16s16sQ")
HEADER_SIZE = HEADER.size

FIELDS = ("ts", "seq", "session", "ret", "a0", "a1", "a2", "a3", "a4", "a5", "pid", "tid", "uid", "fd",
          "len", "cap", "hook", "record", "direction", "flags", "gen",
          "family", "lport", "rport", "_pad", "laddr", "raddr", "comm", "cgroup")
# Offsets of the C fields, checked against the compiled struct by a test.
C_OFFSETS = {"ts": 0, "seq": 8, "session": 16, "ret": 24, "args": 32, "pid": 80, "tid": 84, "uid": 88,
             "fd": 92, "len": 96, "cap": 100, "hook": 104, "record": 106, "direction": 107, "flags": 108, "gen": 110,
             "conn": 112, "comm": 152, "cgroup": 168}
GEN_OFFSET = C_OFFSETS["gen"]
FLAGS_OFFSET = C_OFFSETS["flags"]

RECORD_DATA, RECORD_COMMAND, RECORD_CALL, RECORD_SECRET = 1, 2, 3, 4
DIR_NONE, DIR_READ, DIR_WRITE = 0, 1, 2
FLAG_TRUNCATED = 1
FLAG_DEFERRED = 2       # shared.h: port filter and max_bytes left to userspace, by the record's generation
LOSS_RINGBUF, LOSS_STASH = 0, 1
LOSS_STAGES = {LOSS_RINGBUF: "kernel.ringbuf", LOSS_STASH: "kernel.stash"}
