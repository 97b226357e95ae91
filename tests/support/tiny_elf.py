"""Tiny ELF files written by hand, so discovery is tested for machines this host is not: any
machine, class, byte order and e_flags, with DT_NEEDED, DT_RUNPATH and defined function symbols
laid out as pyelftools (and discovery's layout checks) read them. They are never run or loaded.
"""
from __future__ import annotations

import struct
from pathlib import Path

E_MACHINE = {"EM_386": 3, "EM_MIPS": 8, "EM_PPC64": 21, "EM_S390": 22, "EM_ARM": 40, "EM_X86_64": 62,
             "EM_AARCH64": 183, "EM_RISCV": 243}
ET_EXEC, ET_DYN = 2, 3
SHT_PROGBITS, SHT_STRTAB, SHT_DYNAMIC, SHT_DYNSYM = 1, 3, 6, 11
DT_NULL, DT_NEEDED, DT_RUNPATH = 0, 1, 29
STT_FUNC_GLOBAL = (1 << 4) | 2
TEXT_ADDR = 0x1000


class _Strings:
    def __init__(self):
        self.data = bytearray(b"\0")

    def add(self, s: str) -> int:
        offset = len(self.data)
        self.data += s.encode() + b"\0"
        return offset


def write(path: Path, machine: str = "EM_AARCH64", elfclass: int = 64, little_endian: bool = True,
          flags: int = 0, e_type: int = ET_DYN, needed: tuple[str, ...] = (), runpath: str | None = None,
          functions: tuple[str, ...] = ()) -> Path:
    """Write an ELF file: header, .text, .dynstr, .dynsym, .dynamic, .shstrtab, section table."""
    e = "<" if little_endian else ">"
    wide = elfclass == 64
    word = "Q" if wide else "I"
    dynstr, shstr = _Strings(), _Strings()
    sym_names = [dynstr.add(f) for f in functions]
    dyn_entries = [(DT_NEEDED, dynstr.add(n)) for n in needed]
    if runpath is not None:
        dyn_entries.append((DT_RUNPATH, dynstr.add(runpath)))
    dyn_entries.append((DT_NULL, 0))

    def sym(name: int, info: int, shndx: int, value: int) -> bytes:
        if wide:
            return struct.pack(e + "IBBHQQ", name, info, 0, shndx, value, 16)
        return struct.pack(e + "IIIBBH", name, value, 16, info, 0, shndx)

    text = b"\xc3" * 16
    dynsym = sym(0, 0, 0, 0) + b"".join(sym(n, STT_FUNC_GLOBAL, 1, TEXT_ADDR) for n in sym_names)
    dynamic = b"".join(struct.pack(e + ("qQ" if wide else "iI"), tag, val) for tag, val in dyn_entries)
    # (name, type, data, link, entsize)
    sections = [(".text", SHT_PROGBITS, text, 0, 0), (".dynstr", SHT_STRTAB, bytes(dynstr.data), 0, 0),
                (".dynsym", SHT_DYNSYM, dynsym, 2, len(sym(0, 0, 0, 0))),
                (".dynamic", SHT_DYNAMIC, dynamic, 2, 16 if wide else 8)]
    names = [shstr.add(s[0]) for s in sections]
    shstrtab_name = shstr.add(".shstrtab")
    sections.append((".shstrtab", SHT_STRTAB, bytes(shstr.data), 0, 0))
    names.append(shstrtab_name)

    ehsize = 64 if wide else 52
    body, offsets = bytearray(), []
    for _name, _type, data, _link, _entsize in sections:
        while (ehsize + len(body)) % 8:
            body.append(0)
        offsets.append(ehsize + len(body))
        body += data
    while (ehsize + len(body)) % 8:
        body.append(0)
    shoff = ehsize + len(body)
    shdr = "IIQQQQIIQQ" if wide else "IIIIIIIIII"
    table = struct.pack(e + shdr, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    for (name, stype, data, link, entsize), name_off, offset in zip(sections, names, offsets):
        addr = TEXT_ADDR if name == ".text" else 0
        info = 1 if stype == SHT_DYNSYM else 0
        table += struct.pack(e + shdr, name_off, stype, 0, addr, offset, len(data), link, info, 8, entsize)
    shnum = len(sections) + 1
    ident = b"\x7fELF" + bytes([1 if not wide else 2, 1 if little_endian else 2, 1, 0]) + bytes(8)
    header = ident + struct.pack(e + "HHI" + word * 3 + "IHHHHHH", e_type, E_MACHINE[machine], 1, 0, 0, shoff,
                                 flags, ehsize, 0, 0, len(table) // shnum, shnum, shnum - 1)
    assert len(header) == ehsize
    path = Path(path)
    path.write_bytes(header + bytes(body) + table)
    return path
