"""Functions found without symbols, by the strings they are called with.

A TLS library logs its secrets through one routine (BoringSSL and OpenSSL: ssl_log_secret),
called with the NSS key-log labels ("CLIENT_RANDOM", "CLIENT_HANDSHAKE_TRAFFIC_SECRET", ...).
In a stripped build the routine has no name, but the labels are still in .rodata and the code
that passes them loads their address with a RIP-relative LEA just before the call. So: find each
label, find the LEAs that load it, decode forward to the next direct call, and take the call
target most of the labels lead to.

Reads only the file (bounded by its sections); a file without the labels is a plain "not found".
"""
from __future__ import annotations

import collections
import re
import struct
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from orchestrator.bpf import golang

KEYLOG_LABELS = (b"CLIENT_RANDOM", b"CLIENT_EARLY_TRAFFIC_SECRET", b"CLIENT_HANDSHAKE_TRAFFIC_SECRET",
                 b"SERVER_HANDSHAKE_TRAFFIC_SECRET", b"CLIENT_TRAFFIC_SECRET_0", b"SERVER_TRAFFIC_SECRET_0",
                 b"EXPORTER_SECRET")
# lea r64, [rip + disp32]: REX.W (48, or 4c for r8-r15), 8d, ModRM with mod 00 and r/m 101
_LEA_RIP = re.compile(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", re.DOTALL)
MAX_TEXT = 256 << 20
CALL_WINDOW = 64          # bytes decoded after a LEA to find the call it prepares
MIN_LABELS = 2            # distinct labels that must lead to the same function


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
    for m in _LEA_RIP.finditer(code):
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
    if len(by_target[best]) < MIN_LABELS:
        return None          # one label leading somewhere is not evidence enough
    return Anchor(best, tuple(sorted(by_target[best])), sites[best])
