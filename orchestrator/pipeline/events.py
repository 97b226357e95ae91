"""Decoded kernel events and the records made from them.

`decode()` turns one ring-buffer sample into an `Event` with a single precompiled
`struct.unpack_from`. A `Record` holds what a sink needs and builds its dict only
when a sink asks (`to_dict`), so records no sink serialises cost little.
"""
from __future__ import annotations

import base64
import ipaddress
import time
from typing import Any, Final

import msgspec

from orchestrator import cgroups
from orchestrator.bpf import layout

try:        # the compiled build's C helper (fastpath.EXTENSIONS); Python mode searches a lower-cased copy
    from orchestrator.parsers.http1_accel import find_any_lower as _find_any_lower  # type: ignore[import-not-found]
except ImportError:
    _find_any_lower = None  # type: ignore[assignment]

try:
    from librt.strings import read_i16_le as _read_i16, read_i32_le as _read_i32, read_i64_le as _read_i64
except ImportError:         # librt comes with the compiled build's tools (mypy); Python needs none
    _read_i16 = _read_i32 = _read_i64 = None  # type: ignore[assignment]

_unpack = layout.HEADER.unpack_from
_HEADER_SIZE = layout.HEADER_SIZE
# CLOCK_MONOTONIC (bpf_ktime_get_ns) → ns since the epoch.
MONO_TO_EPOCH_NS = time.time_ns() - time.monotonic_ns()


class Event:
    __slots__ = ("ts", "seq", "session", "ret", "args", "pid", "tid", "uid", "fd", "len", "truncated",
                 "hook", "record", "direction", "family", "lport", "rport", "laddr", "raddr", "comm",
                 "cgroup", "payload", "source")
    # Typed attributes: mypyc (scripts/build_fast.py) compiles them into a C struct.
    ts: int
    seq: int
    session: int
    ret: int
    args: tuple
    pid: int
    tid: int
    uid: int
    fd: int
    len: int
    truncated: bool
    hook: int
    record: int
    direction: int
    family: int
    lport: int
    rport: int
    laddr: Any
    raddr: Any
    comm: str
    cgroup: int               # cgroup v2 id of the task (0: unknown)
    payload: Any
    source: Any

    def conn_tuple(self):
        """((local ip, port), (remote ip, port)) or None when the kernel did not know it."""
        if not self.family:
            return None
        return (_ip(self.family, self.laddr), self.lport), (_ip(self.family, self.raddr), self.rport)


def decode(raw: Any, source: Any) -> Event:
    """`source` is the probe set the sample came from (target, hooks)."""
    if _NATIVE_READS and type(raw) is bytes:
        return _decode_native(raw, source)
    (ts, seq, session, ret, a0, a1, a2, a3, a4, a5, pid, tid, uid, fd, ln, cap, hook, record, direction,
     flags, _gen, family, lport, rport, _pad, laddr, raddr, comm, cgroup) = _unpack(raw)
    ev = Event()
    ev.ts = ts + MONO_TO_EPOCH_NS
    ev.seq = seq
    ev.session = session
    ev.ret = ret
    ev.args = (a0, a1, a2, a3, a4, a5)
    ev.pid = pid
    ev.tid = tid
    ev.uid = uid
    ev.fd = fd
    ev.len = ln
    ev.truncated = bool(flags & layout.FLAG_TRUNCATED)
    ev.hook = hook
    ev.record = record
    ev.direction = direction
    ev.family = family
    ev.lport = lport
    ev.rport = rport
    ev.laddr = laddr
    ev.raddr = raddr
    ev.comm = _comm(comm)
    ev.cgroup = cgroup
    ev.payload = raw[_HEADER_SIZE:_HEADER_SIZE + cap]
    ev.source = source
    return ev


# Compiled (mypyc), librt's byte readers become single loads and the fields go straight into the
# Event's C struct: no tuple of Python ints in between, which was a third of an HTTP/1 event's cost.
# As Python they are slower than struct, so the Python build keeps struct (same fields, checked
# by tests/unit/test_fastpath.py).
_NATIVE_READS = type(decode).__name__ == "builtin_function_or_method" and _read_i64 is not None
_U64 = 1 << 64
_FLAG_TRUNCATED: Final = layout.FLAG_TRUNCATED
_NO_ARGS: tuple = ()
_RECORD_DATA = layout.RECORD_DATA


def _u64(raw: bytes, at: int) -> int:
    v: int = _read_i64(raw, at)
    return v + _U64 if v < 0 else v


def _u32(raw: bytes, at: int) -> int:
    v: int = _read_i32(raw, at)
    return v & 0xFFFFFFFF


def _u16(raw: bytes, at: int) -> int:
    v: int = _read_i16(raw, at)
    return v & 0xFFFF


def _decode_native(raw: bytes, source: Any) -> Event:
    if len(raw) < _HEADER_SIZE:
        _unpack(raw)        # raises struct.error, as the Python build does
    ev = Event()
    ev.ts = _u64(raw, 0) + MONO_TO_EPOCH_NS
    ev.seq = _u64(raw, 8)
    ev.session = _u64(raw, 16)
    ev.ret = _read_i64(raw, 24)
    record = raw[106]
    ev.record = record
    # Only call and secret records use the arguments; six big ints are not free.
    ev.args = _NO_ARGS if record == _RECORD_DATA else \
        (_u64(raw, 32), _u64(raw, 40), _u64(raw, 48), _u64(raw, 56), _u64(raw, 64), _u64(raw, 72))
    ev.pid = _u32(raw, 80)
    ev.tid = _u32(raw, 84)
    ev.uid = _u32(raw, 88)
    ev.fd = _read_i32(raw, 92)
    ev.len = _u32(raw, 96)
    cap = _u32(raw, 100)
    ev.hook = _u16(raw, 104)
    ev.direction = raw[107]
    ev.truncated = bool(raw[108] & _FLAG_TRUNCATED)
    family = _u16(raw, 112)
    ev.family = family
    ev.lport = _u16(raw, 114)
    ev.rport = _u16(raw, 116)
    ev.laddr = raw[120:136]
    ev.raddr = raw[136:152]
    ev.comm = _comm(raw[152:168])
    ev.cgroup = _u64(raw, 168)
    ev.payload = raw[_HEADER_SIZE:_HEADER_SIZE + cap]
    ev.source = source
    return ev


_comms: dict[bytes, str] = {}


def _comm(raw: bytes) -> str:
    """The task's comm (16 bytes, NUL-padded) as text; the few distinct ones are kept."""
    text = _comms.get(raw)
    if text is None:
        text = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        if len(_comms) > 4096:
            _comms.clear()
        _comms[raw] = text
    return text


_GEN_AT: Final = layout.GEN_OFFSET
_FLAGS_AT: Final = layout.FLAGS_OFFSET
_FLAG_DEFERRED: Final = layout.FLAG_DEFERRED


def decode_lane(raws: list, by_gen: Any, newest: Any, fallback: Any, out: list) -> None:
    """An express lane's records (reconcile/express.py), decoded in order onto `out`, each with the
    probe set of the generation that made it: `by_gen.get(gen mod 2^16)`, else `newest(fallback)`.
    A record the kernel left to userspace (FLAG_DEFERRED) gets its generation's port filter and
    max_bytes here: one the ports reject is left out."""
    for raw in raws:
        source = by_gen.get(raw[_GEN_AT] | raw[_GEN_AT + 1] << 8)
        if source is None:    # not expected: attribute it to the newest configuration
            source = newest(fallback)
        ev = decode(raw, source)
        if raw[_FLAGS_AT] & _FLAG_DEFERRED:
            target = source.target
            ports = target.filters.ports
            if ports and ev.family and ev.lport not in ports and ev.rport not in ports:
                continue
            if len(ev.payload) > target.max_bytes:
                ev.payload = ev.payload[:target.max_bytes]
                ev.truncated = True
        out.append(ev)


def latency_ms(ns: int) -> float:
    """round(ns / 1e6, 3), the records' `latency_ms`, without float rounding's decimal conversions
    where integers give the same double: away from a tie (ns % 1000 == 500) the decimal rounding
    of ns / 1e6 is that of the exact quotient (for |ns| < 10**15, the float's error is far below
    the 1 ns that separates the quotient from a tie), and m / 1000 is the double nearest m/1000.
    Ties, negative and huge values go through round() itself (-0.0 included)."""
    if 0 <= ns < 1_000_000_000_000_000 and ns % 1000 != 500:
        return ((ns + 500) // 1000) / 1000
    return round(ns / 1e6, 3)


def contains_any_lower(data: bytes, needles: tuple) -> bool:
    """Whether any of `needles` (lower-case ASCII bytes) is in data.lower(); in C, without the
    lower-cased copy, in the compiled build."""
    if _find_any_lower is not None:
        return bool(_find_any_lower(data, needles))
    low = data.lower()
    for n in needles:
        if n in low:
            return True
    return False


def redaction_candidates(records: list, needles: tuple | None) -> list:
    """The records of a batch that redaction (pipeline/redact.py) must look into: all of them but
    the HTTP records whose fields are still only their JSON text (`tail`) and whose lower-cased
    text holds none of `needles` (None: look into every record)."""
    if needles is None:
        return records
    out = []
    for r in records:
        rec: Record = r
        tail = rec.tail
        if tail is None or rec._fields is not None or not (rec.type == "http.request" or rec.type == "http.response") \
                or contains_any_lower(tail, needles):
            out.append(rec)
    return out


_decode_json = msgspec.json.Decoder().decode
_ip_cache: dict = {}


def _ip(family: int, raw: Any) -> str:
    key = (family, raw)
    text = _ip_cache.get(key)
    if text is None:
        if family == 2:
            text = str(ipaddress.IPv4Address(raw[:4]))
        elif family == 10:
            addr = ipaddress.IPv6Address(raw)
            text = str(addr.ipv4_mapped or addr)
        else:
            text = "?"
        if len(_ip_cache) > 4096:
            _ip_cache.clear()
        _ip_cache[key] = text
    return text


def endpoint(pair) -> str:
    ip, port = pair
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def text_or_base64(data: Any) -> tuple[str, str | None]:
    """(value, encoding): UTF-8 text as is, anything else base64."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


class Record:
    """One output record: `type` plus fields; the common fields come from the event that completed it.

    The record's own fields are a dict, or (`tail`) their JSON text without the braces, made by
    the compiled HTTP/1 path; `fields` then decodes it only when a sink asks for it."""
    __slots__ = ("type", "event", "_fields", "conn", "tail", "prefix")
    type: str
    event: Event | None
    _fields: dict | None
    conn: Any
    tail: bytes | None
    prefix: bytes | None          # record_prefix(event, conn), when its maker knows it

    def __init__(self, type_: str, event: Event | None, fields: dict | None, conn: Any = None,
                 tail: bytes | None = None, prefix: bytes | None = None):
        self.type = type_
        self.event = event
        # A record made outside the event path (loss, ...) is stamped once, when it is made.
        self._fields = fields if event is not None or fields is None or "ts" in fields \
            else {"ts": time.time_ns(), **fields}
        self.conn = conn          # ((lip, lport), (rip, rport)) or None
        self.tail = tail
        self.prefix = prefix

    @property
    def fields(self) -> dict:
        fields = self._fields
        if fields is None:
            fields = self._fields = _decode_json(b"{" + (self.tail or b"") + b"}")
        return fields

    def to_dict(self) -> dict:
        ev = self.event
        d: dict[str, Any] = {"type": self.type}
        if ev is not None:
            src = ev.source
            d.update(ts=ev.ts, seq=ev.seq, profile=src.profile, target=src.target.name,
                     pid=ev.pid, tid=ev.tid, comm=ev.comm, uid=ev.uid)
            if ev.cgroup:
                # The path, or None: the cgroup was removed before it could be named.
                path, container = cgroups.describe(ev.cgroup, ev.pid)
                d["cgroup"] = path
                if container is not None:
                    d["container_id"] = container
            if self.conn is not None:
                d["conn"] = {"local": endpoint(self.conn[0]), "remote": endpoint(self.conn[1])}
            if ev.record == layout.RECORD_DATA or ev.record == layout.RECORD_SECRET:
                if ev.fd >= 0:
                    d["fd"] = ev.fd
                stack = src.hooks[ev.hook].stack if ev.hook < len(src.hooks) else None
                if stack is not None:
                    d["tls"] = stack
        d.update(self.fields)
        return d

    def to_json(self, encode: Any) -> bytes:
        """`encode(self.to_dict())` (msgspec's JSON encoder), byte for byte, without building the
        dict: the fields this record shares with its connection's other records are encoded
        once per connection (see record_prefix) and the record's own fields are spliced in after them."""
        ev = self.event
        fields = self._fields
        # The tail stands for the fields only while nobody has asked for them: a dict handed out
        # may have been changed since.
        tail = self.tail if fields is None else None
        if ev is None or (tail is None and (not fields or not _PREFIX_KEYS.isdisjoint(fields))):
            return encode(self.to_dict())
        prefix = self.prefix
        if prefix is None:
            src = ev.source
            hooks = src.hooks
            stack = hooks[ev.hook].stack if ev.hook < len(hooks) else None
            # Everything record_prefix reads, by value: a reloaded target may reuse its names with other hooks.
            key = (src.profile, src.target.name, stack, ev.record, ev.fd, ev.pid, ev.tid, ev.comm, ev.uid, ev.cgroup,
                   self.conn)
            prefix = _prefixes.get(key)
            if prefix is None:
                prefix = record_prefix(ev, self.conn, encode)
                if len(_prefixes) > 4096:
                    _prefixes.clear()
                _prefixes[key] = prefix
        type_json = _type_json.get(self.type)
        if type_json is None:
            type_json = encode(self.type)
            if len(_type_json) < 1024:
                _type_json[self.type] = type_json
        if tail is not None:
            return b"".join((b'{"type":', type_json, b',"ts":', b"%d" % ev.ts, b',"seq":', b"%d" % ev.seq,
                             prefix, b",", tail, b"}"))
        return b"".join((b'{"type":', type_json, b',"ts":', b"%d" % ev.ts, b',"seq":', b"%d" % ev.seq,
                         prefix, b",", encode(fields)[1:]))


# to_dict's keys before the record's own fields; a record whose fields reuse one of them
# (to_dict then updates it in place) takes the slow path of to_json.
def json_lines(records: list, encode: Any) -> bytes:
    """The records' JSONL lines (`to_json`), each ending in a newline, as one bytes object."""
    lines = [r.to_json(encode) for r in records]
    lines.append(b"")
    return b"\n".join(lines)


_PREFIX_KEYS = frozenset({"type", "ts", "seq", "profile", "target", "pid", "tid", "comm", "uid", "cgroup", "container_id",
                          "conn", "fd", "tls"})
_prefixes: dict = {}
_type_json: dict = {}            # record type → its JSON string (msgspec's, so escapes agree)


def record_prefix(ev: Event, conn: Any, encode: Any) -> bytes:
    """The encoded `,"profile":...,"uid":...[,"cgroup":...[,"container_id":...]][,"conn":{...}][,"fd":...][,"tls":...]` that to_dict
    gives a record of `ev` on `conn`, for to_json."""
    d = Record("", ev, {}, conn).to_dict()
    for k in ("type", "ts", "seq"):
        del d[k]
    return b"," + encode(d)[1:-1]
