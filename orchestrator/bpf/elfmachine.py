"""Which machine an ELF file is built for, and where that machine's loader looks for libraries.

Owns the architecture side of library discovery: a program can only load libraries of its own
ELF machine, class, byte order and float ABI (the loader skips any other, as it does on a host
with both amd64 and i386 libraries), so every candidate library is checked against the program.
`ldconfig -p` tags each entry with its flavour ("libc6,x86-64", "libc6,AArch64", "libc6"); the
tags are only a hint for the order candidates are tried in (several machines share "64bit"), and
the ELF header decides. When neither RUNPATH nor the cache has a name, the loader's default
folders are tried: the machine's Debian multiarch folders, then lib64 or lib32, then lib.
"""
from __future__ import annotations

import functools
import os
import re
import stat
import sys
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

EF_ARM_ABI_FLOAT_SOFT, EF_ARM_ABI_FLOAT_HARD = 0x200, 0x400
EF_RISCV_FLOAT_ABI = {0x0: "soft-float", 0x2: "single-float", 0x4: "double-float", 0x6: "quad-float"}
EF_LOONGARCH_ABI = {0x1: "soft-float", 0x2: "single-float", 0x3: "double-float"}


@dataclass(frozen=True)
class Machine:
    """What a loader matches libraries by."""
    name: str               # pyelftools' e_machine: "EM_X86_64", "EM_AARCH64"; "EM_<n>" when it has no name
    elfclass: int           # 32 or 64
    little_endian: bool
    abi: str = ""           # float ABI where the machine has several (ARM, RISC-V, LoongArch); "" unknown

    def accepts(self, lib: Machine) -> bool:
        """Can a program of this machine load `lib`? (An unknown float ABI on either side matches.)"""
        return ((self.name, self.elfclass, self.little_endian) == (lib.name, lib.elfclass, lib.little_endian)
                and (not self.abi or not lib.abi or self.abi == lib.abi))

    def describe(self) -> str:
        return (f"{self.name.removeprefix('EM_').lower()} (ELF{self.elfclass}, "
                f"{'little' if self.little_endian else 'big'}-endian{', ' + self.abi if self.abi else ''})")


def machine_of_header(elf: ELFFile) -> Machine:
    name = elf["e_machine"]
    name = name if isinstance(name, str) else f"EM_{name}"
    flags = elf["e_flags"]
    abi = ""
    if name == "EM_ARM":
        abi = ("hard-float" if flags & EF_ARM_ABI_FLOAT_HARD else
               "soft-float" if flags & EF_ARM_ABI_FLOAT_SOFT else "")
    elif name == "EM_RISCV":
        abi = EF_RISCV_FLOAT_ABI[flags & 0x6]
    elif name == "EM_LOONGARCH":
        abi = EF_LOONGARCH_ABI.get(flags & 0x7, "")
    return Machine(name, elf.elfclass, elf.little_endian, abi)


@functools.lru_cache(maxsize=512)
def _machine_of(path: str, _identity: tuple) -> Machine | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO swapped in must not hang us
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            return machine_of_header(ELFFile(f))
        except Exception:       # not ELF, or damaged: pyelftools raises many types; not a library then
            return None


def machine_of(path: str) -> Machine | None:
    """The machine of an ELF file (symlinks followed); None when it is not a readable ELF file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return _machine_of(path, (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))


@functools.cache
def host() -> Machine:
    """The machine this Python runs as: what a program is taken to be when its own header is unreadable."""
    found = machine_of("/proc/self/exe") or machine_of(sys.executable)
    if found is None:
        raise RuntimeError("cannot read the ELF header of the running Python")
    return found


# ----------------------------------------------------------------------------- the loader's cache

@dataclass(frozen=True)
class CacheEntry:
    path: str
    tag: tuple[str, ...]    # ldconfig's flags: ("libc6", "x86-64"); hwcap and OS ABI notes left out


_LDCONFIG_LINE = re.compile(r"^\s+(\S+) \(([^)]*)\) => (/.*)$")

# The flags after "libc6," that glibc's ldconfig prints (elf/cache.c print_entry), and the machines
# each can mean. "64bit" alone is PowerPC, s390x, SPARC or MIPS; the header tells them apart.
_TAG_FITS = {
    "x86-64": lambda m: (m.name, m.elfclass) == ("EM_X86_64", 64),
    "x32": lambda m: (m.name, m.elfclass) == ("EM_X86_64", 32),
    "AArch64": lambda m: m.name == "EM_AARCH64",
    "IA-64": lambda m: m.name == "EM_IA_64",
    "hard-float": lambda m: m.name == "EM_ARM" and m.abi != "soft-float",
    "soft-float": lambda m: m.name in ("EM_ARM", "EM_RISCV", "EM_LOONGARCH") and m.abi in ("", "soft-float"),
    "double-float": lambda m: m.name in ("EM_RISCV", "EM_LOONGARCH") and m.abi in ("", "double-float"),
    "64bit": lambda m: m.elfclass == 64 and m.name in ("EM_PPC64", "EM_S390", "EM_SPARCV9", "EM_MIPS"),
    "N32": lambda m: m.name == "EM_MIPS" and m.elfclass == 32,
    "nan2008": lambda m: m.name == "EM_MIPS",
}


def parse_ldconfig(text: str) -> dict[str, tuple[CacheEntry, ...]]:
    """soname → its entries in `ldconfig -p` output, in the cache's order, of every machine."""
    cache: dict[str, list[CacheEntry]] = {}
    for line in text.splitlines():
        found = _LDCONFIG_LINE.match(line)
        if found:
            soname, flags, path = found.groups()
            tag = tuple(f.strip() for f in flags.split(", ")[0].split(","))
            cache.setdefault(soname, []).append(CacheEntry(path.strip(), tag))
    return {name: tuple(entries) for name, entries in cache.items()}


def tag_fits(tag: tuple[str, ...], machine: Machine) -> bool | None:
    """Does an ldconfig tag name `machine`? None when it does not say (not "libc6", or unknown)."""
    if not tag or tag[0] != "libc6":
        return None
    if len(tag) == 1:           # i386, 32-bit PowerPC, MIPS o32, s390 (31-bit): no flavour printed
        return machine.elfclass == 32
    fits = [_TAG_FITS[f](machine) if f in _TAG_FITS else None for f in tag[1:]]
    return None if None in fits else all(fits)


def by_hint(entries: tuple[CacheEntry, ...], machine: Machine) -> list[str]:
    """The cache's paths for one soname, those whose tag names `machine` first and those whose tag
    names another machine last (still tried: the tag is a hint, the ELF header decides)."""
    rank = {True: 0, None: 1, False: 2}
    return [e.path for e in sorted(entries, key=lambda e: rank[tag_fits(e.tag, machine)])]


# ----------------------------------------------------------------------------- the loader's default folders

def multiarch(machine: Machine) -> tuple[str, ...]:
    """Debian's multiarch triplets of a machine (the folder names under /lib and /usr/lib)."""
    little = machine.little_endian
    arm = {"hard-float": ("arm-linux-gnueabihf",), "soft-float": ("arm-linux-gnueabi",)}
    return {
        ("EM_X86_64", 64): ("x86_64-linux-gnu",),
        ("EM_X86_64", 32): ("x86_64-linux-gnux32",),
        ("EM_386", 32): ("i386-linux-gnu",),
        ("EM_AARCH64", 64): ("aarch64-linux-gnu",) if little else ("aarch64_be-linux-gnu",),
        ("EM_ARM", 32): arm.get(machine.abi, ("arm-linux-gnueabihf", "arm-linux-gnueabi")),
        ("EM_RISCV", 64): ("riscv64-linux-gnu",),
        ("EM_PPC64", 64): ("powerpc64le-linux-gnu",) if little else ("powerpc64-linux-gnu",),
        ("EM_PPC", 32): ("powerpc-linux-gnu",),
        ("EM_S390", 64): ("s390x-linux-gnu",),
        ("EM_SPARCV9", 64): ("sparc64-linux-gnu",),
        ("EM_MIPS", 64): ("mips64el-linux-gnuabi64",) if little else ("mips64-linux-gnuabi64",),
        ("EM_MIPS", 32): ("mipsel-linux-gnu",) if little else ("mips-linux-gnu",),
        ("EM_LOONGARCH", 64): ("loongarch64-linux-gnu",),
    }.get((machine.name, machine.elfclass), ())


def library_dirs(machine: Machine) -> tuple[str, ...]:
    """Where the loader looks when neither RUNPATH nor its cache has a library, for this machine."""
    dirs = [d for t in multiarch(machine) for d in (f"/lib/{t}", f"/usr/lib/{t}")]
    dirs += ["/lib64", "/usr/lib64"] if machine.elfclass == 64 else ["/lib32", "/usr/lib32"]
    return (*dirs, "/lib", "/usr/lib")
