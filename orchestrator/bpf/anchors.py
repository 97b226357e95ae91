"""Functions found without symbols, by the strings they are called with, and the struct offset
of the client random read from the library's own code.

A TLS library logs its secrets through one routine (OpenSSL and BoringSSL: ssl_log_secret,
GnuTLS: _gnutls_call_keylog_func), called as (session, label, secret, secret length) with the
NSS key-log labels ("CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", ...). The routine is not
exported and, in a stripped build, has no name; but the labels are in .rodata and the code that
passes one loads its address into the label argument (RSI) with a RIP-relative LEA just before
the call. So: find each label, find the LEAs that load it into RSI, decode forward to the next
direct call, and take the call target the labels lead to.

The routine is not given the client random: it reads it from the session. Where in the session
is learnt from an accessor the library exports for it (SSL_get_client_random,
gnutls_session_get_random), or, without one, from the routine itself, by following the session
pointer through the instructions to the address handed on as the client random. No table of
offsets per library version.

Reads only the file (bounded by its sections); a file without the labels is a plain "not found".
"""
from __future__ import annotations

import collections
import functools
import os
import re
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from orchestrator.bpf import golang

KEYLOG_LABELS = (b"CLIENT_RANDOM", b"CLIENT_EARLY_TRAFFIC_SECRET", b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                 b"SERVER_HANDSHAKE_TRAFFIC_SECRET", b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0",
                 b"EXPORTER_SECRET")
# lea rsi, [rip + disp32]: REX.W, 8d, ModRM mod 00, reg 110 (rsi: the second argument), r/m 101
_LEA_RSI_RIP = re.compile(rb"\x48\x8d\x35", re.DOTALL)
MAX_TEXT = 256 << 20
CALL_WINDOW = 64          # bytes decoded after a LEA to find the call it prepares
MIN_LABELS = 2            # distinct labels that must lead to the same function...
MIN_CALLERS = 3           # ...or one label, and the function called from this many places


@dataclass(frozen=True)
class Anchor:
    address: int                  # virtual address of the function
    labels: tuple[str, ...]       # the labels whose references lead to it
    references: int               # how many LEA+call sites do

    def describe(self) -> str:
        return (f"key-log function at {self.address:#x}: called with {', '.join(self.labels)} "
                f"({self.references} call sites)")


def keylog_function(path: str) -> Anchor | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _keylog_function(path, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=64)
def _keylog_function(path: str, _mtime_ns: int, _size: int) -> Anchor | None:
    try:
        with golang.open_regular(path) as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                return None
            labels = _label_addresses(elf)
            text = elf.get_section_by_name(".text")
            if not labels or text is None or text["sh_size"] > MAX_TEXT:
                return None
            return _most_called(text.data(), text["sh_addr"], labels)
    except Exception:       # a damaged file: nothing found, never a crash
        return None


def _label_addresses(elf: ELFFile) -> dict[int, str]:
    """Virtual address → label, for each key-log label stored as its own NUL-terminated string."""
    out = {}
    for sec in elf.iter_sections():
        if sec.name not in (".rodata", ".rodata.str1.1", ".rodata.str1.8", ".data.rel.ro") or \
                sec["sh_type"] == "SHT_NOBITS":
            continue
        data = sec.data()
        for label in KEYLOG_LABELS:
            for m in re.finditer(re.escape(label) + b"\0", data):
                if m.start() == 0 or data[m.start() - 1] == 0:
                    out[sec["sh_addr"] + m.start()] = label.decode()
    return out


def _most_called(code: bytes, base: int, labels: dict[int, str]) -> Anchor | None:
    import capstone

    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    by_target: dict[int, set] = collections.defaultdict(set)
    sites: collections.Counter = collections.Counter()
    for m in _LEA_RSI_RIP.finditer(code):
        at = m.start()
        if at + 7 > len(code):
            break
        disp = struct.unpack_from("<i", code, at + 3)[0]
        target = base + at + 7 + disp
        label = labels.get(target)
        if label is None:
            continue
        for addr, _size, mnemonic, ops in md.disasm_lite(code[at:at + CALL_WINDOW], base + at):
            if mnemonic == "call":
                if ops.startswith("0x"):
                    callee = int(ops, 16)
                    by_target[callee].add(label)
                    sites[callee] += 1
                break
            if mnemonic in ("ret", "jmp"):
                break
    if not by_target:
        return None
    best = max(by_target, key=lambda t: (len(by_target[t]), sites[t]))
    if len(by_target[best]) < MIN_LABELS and (len(by_target) > 1 or _direct_calls(code, base, best) < MIN_CALLERS):
        # One label alone (OpenSSL 3 passes its TLS 1.3 labels through variables) is evidence only
        # when no other function is called with one and the code calls this one from elsewhere too.
        return None
    return Anchor(best, tuple(sorted(by_target[best])), sites[best])


def _direct_calls(code: bytes, base: int, target: int) -> int:
    """How many `call rel32` instructions in the code reach `target` (by byte pattern: an estimate)."""
    n = 0
    for m in re.finditer(rb"\xe8", code):
        at = m.start()
        if at + 5 <= len(code) and base + at + 5 + struct.unpack_from("<i", code, at + 1)[0] == target:
            n += 1
    return n


@dataclass(frozen=True)
class RandomPath:
    """Where the client random is, from the session pointer: follow `derefs` (load a pointer at
    each offset in turn), then add `offset`."""
    derefs: tuple[int, ...]
    offset: int
    found_by: str

    def describe(self) -> str:
        expr = "session"
        for d in self.derefs:
            expr = f"*({expr}+{d:#x})"
        return f"client random at {expr}+{self.offset:#x} (from {self.found_by})"


# Accessors that hand out the client random, by the stack whose session they take.
RANDOM_ACCESSORS = {"openssl": "SSL_get_client_random", "boringssl": "SSL_get_client_random",
                    "gnutls": "gnutls_session_get_random"}
TRACE_INSNS = 400          # instructions followed from a function's start
MAX_FIELD = 1 << 16        # offsets beyond this are not a struct field
_CALLER_SAVED = ("rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11")


def client_random(path: str, stack: str, keylog_address: int | None) -> RandomPath | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _client_random(path, st.st_mtime_ns, st.st_size, stack, keylog_address)


@functools.lru_cache(maxsize=64)
def _client_random(path: str, _mtime_ns: int, _size: int, stack: str, keylog_address: int | None):
    try:
        with golang.open_regular(path) as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                return None
            accessor = RANDOM_ACCESSORS.get(stack)
            address = _function_address(elf, accessor) if accessor else None
            if address is not None:
                found = _trace_random(elf, address)
                if found is not None:
                    return RandomPath(found[0], found[1], accessor)
            if keylog_address is not None:
                found = _trace_random(elf, keylog_address)
                if found is not None:
                    return RandomPath(found[0], found[1], "the key-log function's own code")
    except Exception:       # a damaged file: nothing found, never a crash
        return None
    return None


def _function_address(elf: ELFFile, name: str) -> int | None:
    for table in (".dynsym", ".symtab"):
        sec = elf.get_section_by_name(table)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            continue
        for sym in sec.get_symbol_by_name(name) or ():
            if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                return sym["st_value"]
    return None


def _reg64(name: str) -> str:
    """The 64-bit register a register name is part of (eax → rax, r8d → r8)."""
    if name.startswith("r") and name[1:2].isdigit():
        return "r" + "".join(ch for ch in name[1:] if ch.isdigit())
    base = {"al": "ax", "bl": "bx", "cl": "cx", "dl": "dx", "sil": "si", "dil": "di", "bpl": "bp", "spl": "sp"}
    core = name[1:] if name[0] in "re" and len(name) == 3 else name
    core = base.get(core, core)
    return "r" + core


def _trace_random(elf: ELFFile, address: int):
    """(derefs, offset) of the first address derived from the function's first argument that the
    function hands on as a buffer: passed as a call's second argument (memcpy's source, a hex
    writer's input), stored into the caller's memory, or read through. Decoded path by path from
    the entry: fall-through first, then the branches not taken, each block once."""
    import capstone

    text = elf.get_section_by_name(".text")
    lo, hi = text["sh_addr"], text["sh_addr"] + text["sh_size"]
    if not lo <= address < hi:
        return None
    code = text.data()
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    # register → (derefs, offset, computed): computed = an address made by lea/add, not a loaded value
    pending = collections.deque([(address, {"rdi": ((), 0, False)})])
    started, budget = set(), TRACE_INSNS
    while pending and budget > 0:
        pc, regs = pending.popleft()
        if pc in started:
            continue
        started.add(pc)
        while budget > 0:
            insns = list(md.disasm(code[pc - lo:pc - lo + 256], pc, count=32))
            if not insns:
                break
            step = _step_block(insns, regs, lo, hi, pending)
            budget -= len(insns)
            if isinstance(step, tuple):
                return step
            if step is None:
                break
            pc = step
    return None


def _step_block(insns, regs: dict, lo: int, hi: int, pending):
    """Run `insns` over `regs`: an answer (tuple), the next address to decode (int), or None when
    this path ends."""
    from capstone import x86

    for insn in insns:
        m, ops = insn.mnemonic, insn.operands
        if m == "ret":
            return None
        target = ops[0].imm if ops and ops[0].type == x86.X86_OP_IMM else None
        if m in ("call", "jmp"):
            arg = regs.get("rsi")
            if arg is not None and arg[2]:
                return _checked(arg)
            if m == "jmp":
                return target if target is not None and lo <= target < hi else None
            for r in _CALLER_SAVED:
                regs.pop(r, None)
            continue
        if m.startswith("j"):
            if target is not None and lo <= target < hi:
                pending.append((target, dict(regs)))
            continue
        mem = next((o.mem for o in ops if o.type == x86.X86_OP_MEM), None)
        base = _reg64(insn.reg_name(mem.base)) if mem is not None and mem.base else None
        index = mem.index if mem is not None else 0
        src = regs.get(base) if base else None
        loads = len(ops) == 2 and ops[1].type == x86.X86_OP_MEM
        if src is not None and (src[2] or index) and m.startswith("mov") and loads:
            # Read through a made address, or indexed (a loop over bytes): the buffer. A negative
            # displacement with an index is a copy's tail (memcpy inlined), not a field.
            return _checked((src[0], src[1] + (mem.disp if mem.disp > 0 or not index else 0), True))
        if m.startswith(("movdq", "movup", "vmovdq", "vmovup")) and src is not None and loads:
            return _checked((src[0], src[1] + mem.disp, True))     # 16 bytes at once: the buffer itself
        if m == "mov" and ops[0].type == x86.X86_OP_MEM and ops[1].type == x86.X86_OP_REG:
            value = regs.get(_reg64(insn.reg_name(ops[1].reg)))
            if value is not None and value[2] and src is None:
                return _checked(value)      # an address stored into memory we were handed
        dst = _reg64(insn.reg_name(ops[0].reg)) if ops and ops[0].type == x86.X86_OP_REG else None
        new = None
        if dst is not None:
            if m == "lea" and src is not None and not index:
                new = (src[0], src[1] + mem.disp, True)
            elif m == "mov" and src is not None and not index and ops[0].size == 8:
                new = (src[0] + (src[1] + mem.disp,), 0, False)
            elif m == "mov" and len(ops) == 2 and ops[1].type == x86.X86_OP_REG and ops[0].size == 8:
                new = regs.get(_reg64(insn.reg_name(ops[1].reg)))
            elif m == "add" and ops[1].type == x86.X86_OP_IMM and dst in regs:
                d, off, _ = regs[dst]
                new = (d, off + ops[1].imm, True)
        _, written = insn.regs_access()
        for r in written:
            regs.pop(_reg64(insn.reg_name(r)), None)
        if new is not None:
            regs[dst] = new
    last = insns[-1]
    return last.address + last.size


def _checked(path):
    derefs, offset, _ = path
    if len(derefs) > 3 or not 0 <= offset < MAX_FIELD or any(not 0 <= d < MAX_FIELD for d in derefs):
        return None
    return tuple(derefs), offset
