"""Go executables: their Go version, where their functions are, and where those functions return.

Functions are found by name in `.symtab` or, when the binary is stripped (`-ldflags='-s -w'`),
in the function table of `.gopclntab` that the Go runtime itself needs (Go 1.16 and later
layouts; PIE and non-PIE). Go code must never get a uretprobe (it rewrites the return address on
a stack that Go may move), so each function's RET instructions are found by decoding it with
capstone: a uprobe at each is the function's return.

Every read is bounded by the file and its sections; a damaged file is a GoError, never a crash.
"""
from __future__ import annotations

import functools
import os
import stat
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

MAGICS = {0xFFFFFFFA: (1, 16), 0xFFFFFFF0: (1, 18), 0xFFFFFFF1: (1, 20)}   # pcHeader.magic → first Go version
PCLNTAB_SECTIONS = (".gopclntab", ".data.rel.ro.gopclntab")
SCAN_SECTIONS = (".data.rel.ro", ".rodata", ".noptrdata")    # where an externally linked binary keeps it
MAX_FUNCS = 2_000_000
MAX_FUNCTION_BYTES = 1 << 20
BUILDINFO_MAGIC = b"\xff Go buildinf:"


class GoError(Exception):
    """Not a Go executable we can read, or a function not in it: the message says what was looked for."""


@dataclass(frozen=True)
class GoFunction:
    name: str
    entry: int                 # virtual address
    end: int                   # virtual address just past its last byte
    returns: tuple[int, ...]   # virtual addresses of its RET instructions
    found_by: str              # ".symtab" | ".gopclntab"
    body: int = 0              # first instruction past the stack-growth check (see _body), else entry


@dataclass(frozen=True)
class GoBinary:
    path: str
    version: str               # "go1.22.10", or "" when the build info cannot be read
    arch: str                  # "amd64"
    functions: dict            # name → GoFunction, only those asked for


def open_regular(path: str):
    """Open a file named by a profile for reading: never blocking on a FIFO swapped in, and only a
    regular file (discovery has checked its ELF layout against its size before)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    f = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise OSError(f"{path}: not a regular file")
    return f


def is_go(path: str) -> bool:
    """Does this ELF file carry Go build info or a Go function table?"""
    try:
        with open_regular(path) as f:
            elf = ELFFile(f)
            names = {s.name for s in elf.iter_sections()}
            return ".go.buildinfo" in names or any(n in names for n in PCLNTAB_SECTIONS) or \
                elf.get_section_by_name(".note.go.buildid") is not None
    except Exception:
        return False


def inspect(path: str, wanted: tuple[str, ...]) -> GoBinary:
    st = os.stat(path)
    return _inspect(path, st.st_mtime_ns, st.st_ino, tuple(sorted(wanted)))


@functools.lru_cache(maxsize=32)
def _inspect(path: str, _mtime: int, _ino: int, wanted: tuple[str, ...]) -> GoBinary:
    try:
        with open_regular(path) as f:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                raise GoError(f"{path}: Go on {elf['e_machine']} is not supported yet (amd64 only)")
            version = _build_version(elf)
            found = _from_symtab(elf, wanted)
            how = {name: ".symtab" for name in found}
            missing = [n for n in wanted if n not in found]
            if missing:
                table = _from_pclntab(elf, path, set(missing))
                found.update(table)
                how.update({name: ".gopclntab" for name in table})
            functions = {}
            for name, (entry, end) in found.items():
                rets, body = _decode(elf, path, name, entry, end)
                functions[name] = GoFunction(name, entry, end, rets, how[name], body)
            return GoBinary(path, version, "amd64", functions)
    except GoError:
        raise
    except (OSError, ValueError, struct.error) as exc:
        raise GoError(f"{path}: cannot read it as a Go executable ({exc})") from None
    except Exception as exc:     # pyelftools raises many types on damaged input
        raise GoError(f"{path}: damaged ELF file ({type(exc).__name__}: {exc})"[:300]) from None


def _build_version(elf: ELFFile) -> str:
    """The Go version from `.go.buildinfo` (Go 1.18+ keeps it inline; older builds point at it)."""
    sec = elf.get_section_by_name(".go.buildinfo")
    if sec is None:
        return ""
    data = sec.data()[:4096]
    if not data.startswith(BUILDINFO_MAGIC) or len(data) < 32:
        return ""
    flags = data[15]
    if not flags & 2:
        return ""             # pre-1.18 layout: the version is behind a pointer; not needed to attach
    n, pos = _uvarint(data, 32)
    return data[pos:pos + n].decode("ascii", "replace") if 0 < n < 64 else ""


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 63:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return 0, pos


def _from_symtab(elf: ELFFile, wanted) -> dict:
    sec = elf.get_section_by_name(".symtab")
    if sec is None:
        return {}
    out = {}
    wanted = set(wanted)
    for sym in sec.iter_symbols():
        if sym.name in wanted and sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
            out[sym.name] = (sym["st_value"], sym["st_value"] + sym["st_size"])
    return out


def _pclntab(elf: ELFFile) -> tuple[bytes, int]:
    """The function table's bytes, and the virtual address they start at."""
    for name in PCLNTAB_SECTIONS:
        sec = elf.get_section_by_name(name)
        if sec is not None and sec["sh_type"] != "SHT_NOBITS":
            return sec.data(), sec["sh_addr"]
    for name in SCAN_SECTIONS:
        sec = elf.get_section_by_name(name)
        if sec is None or sec["sh_type"] == "SHT_NOBITS":
            continue
        data = sec.data()
        for magic in MAGICS:
            needle = struct.pack("<I", magic) + b"\x00\x00\x01\x08"     # pad, pad, minLC 1, ptrSize 8
            at = data.find(needle)
            while at >= 0 and at % 8:
                at = data.find(needle, at + 1)
            if at >= 0:
                return data[at:], sec["sh_addr"] + at
    raise GoError("no Go function table (.gopclntab): not a Go executable, or a Go older than 1.16")


def _from_pclntab(elf: ELFFile, path: str, wanted: set) -> dict:
    try:
        data, _ = _pclntab(elf)
    except GoError as exc:
        raise GoError(f"{path}: {exc}") from None
    magic, pad1, pad2, min_lc, ptr_size = struct.unpack_from("<IBBBB", data, 0)
    if magic not in MAGICS or (pad1, pad2, ptr_size) != (0, 0, 8):
        raise GoError(f"{path}: unknown Go function table (magic {magic:#x})")
    go18 = MAGICS[magic] >= (1, 18)
    words = struct.unpack_from("<8Q", data, 8)
    nfunc = words[0]
    if go18:
        text_start, funcname_off, _cu, _file, _pc, pcln_off = words[2:8]
    else:
        text_start = 0
        funcname_off, _cu, _file, _pc, pcln_off = words[1:6]
    if not 0 < nfunc <= MAX_FUNCS:
        raise GoError(f"{path}: implausible Go function table ({nfunc} functions)")
    if go18 and text_start == 0:
        # A PIE keeps textStart as a relocation: the runtime's text starts where .text does.
        text = elf.get_section_by_name(".text")
        text_start = text["sh_addr"] if text is not None else 0
    entry_size = 8 if go18 else 16
    table = pcln_off
    if table + (nfunc + 1) * entry_size > len(data):
        raise GoError(f"{path}: its Go function table runs past the end of its section")
    out = {}
    for i in range(nfunc):
        if go18:
            entry_off, func_off = struct.unpack_from("<II", data, table + i * 8)
            next_entry = struct.unpack_from("<I", data, table + (i + 1) * 8)[0]
            entry, end = text_start + entry_off, text_start + next_entry
            name_off = struct.unpack_from("<i", data, pcln_off + func_off + 4)[0]
        else:
            entry, func_off = struct.unpack_from("<QQ", data, table + i * 16)
            end = struct.unpack_from("<Q", data, table + (i + 1) * 16)[0]
            name_off = struct.unpack_from("<i", data, pcln_off + func_off + 8)[0]
        start = funcname_off + name_off
        stop = data.find(b"\0", start, start + 1024)
        if start < 0 or stop < 0:
            continue
        name = data[start:stop].decode("utf-8", "replace")
        if name in wanted:
            out[name] = (entry, end)
            if len(out) == len(wanted):
                break
    return out


def _decode(elf: ELFFile, path: str, name: str, entry: int, end: int) -> tuple[tuple[int, ...], int]:
    """The function's RET addresses, and its body: the first instruction past the stack check.

    A Go function starts by comparing the stack pointer with its goroutine's stack guard (R14
    holds the g) and, when the stack must grow, calls runtime.morestack and then starts over from
    its first instruction: a probe there fires twice for such a call, one past the check once."""
    import capstone

    if not 0 < end - entry <= MAX_FUNCTION_BYTES:
        raise GoError(f"{path}: {name} has an implausible size ({end - entry} bytes)")
    code = _read_vaddr(elf, entry, end - entry)
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    insns = list(md.disasm_lite(code, entry))
    rets = tuple(addr for addr, _size, mnemonic, _ops in insns if mnemonic == "ret")
    if not rets:
        raise GoError(f"{path}: no RET instruction found in {name}")
    return rets, _body(insns, entry)


def _body(insns, entry: int) -> int:
    checked = False
    for addr, size, mnemonic, ops in insns[:4]:
        if mnemonic == "cmp" and "r14" in ops:
            checked = True
        elif checked and mnemonic.startswith("j") and mnemonic != "jmp":
            return addr + size
    return entry


def _read_vaddr(elf: ELFFile, vaddr: int, size: int) -> bytes:
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr and vaddr + size <= seg["p_vaddr"] + seg["p_filesz"]:
            stream = elf.stream
            stream.seek(seg["p_offset"] + vaddr - seg["p_vaddr"])
            data = stream.read(size)
            if len(data) == size:
                return data
    raise GoError(f"address {vaddr:#x} (+{size}) is not in a loaded segment of the file")


def file_offset(path: str, vaddr: int) -> int:
    """Where a virtual address of the file lies in it: what a uprobe is attached at."""
    with open_regular(path) as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return seg["p_offset"] + vaddr - seg["p_vaddr"]
    raise GoError(f"{path}: address {vaddr:#x} is not in a loaded segment")
