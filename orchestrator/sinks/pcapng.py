"""pcapng block encoder: sans-IO functions that return the bytes of one block each.

Owns the byte layout of the four blocks ecapture writes (draft-ietf-opsawg-pcapng):
Section Header, Interface Description (if_tsresol=9, so every timestamp is in ns),
Enhanced Packet (with an optional opt_comment) and Decryption Secrets (TLS key log).
Always little-endian; every body and option value padded to 32 bits; option lists end
with opt_endofopt; a block with no options has no option list at all.

Written here rather than taken from PyPI: python-pcapng 2.1 and scapy's PcapNgWriter
write SHB/IDB/EPB but no Decryption Secrets Block, scapy's writer fixes timestamps at
microseconds and both open files by name, whereas sinks must write through the fd that
`safefile.open_private` checked. The four blocks are ~60 lines of struct.pack.
"""
from __future__ import annotations

import struct

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
DSB_TYPE = 0x0000000A
BYTE_ORDER_MAGIC = 0x1A2B3C4D
SECRETS_TLS_KEYLOG = 0x544C534B     # "TLSK": NSS key log lines

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101                  # raw IPv4/IPv6, version told by the first nibble

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9

_U32 = struct.Struct("<I")
_OPT = struct.Struct("<HH")
_EPB = struct.Struct("<IIIII")


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def options(opts) -> bytes:
    """Encode (code, value bytes) pairs, then opt_endofopt; b"" for no options."""
    out = b"".join(_OPT.pack(code, len(value)) + _pad(value) for code, value in opts)
    return out + _OPT.pack(OPT_ENDOFOPT, 0) if out else b""


def block(block_type: int, body: bytes, opts: bytes = b"") -> bytes:
    """Type, total length, body padded to 32 bits, options, total length again."""
    body = _pad(body) + opts
    total = _U32.pack(12 + len(body))
    return _U32.pack(block_type) + total + body + total


def section_header(appl: str | None = "ecapture") -> bytes:
    """SHB, version 1.0, section length unknown (-1)."""
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return block(SHB_TYPE, body, options([(SHB_USERAPPL, appl.encode())] if appl else []))


def interface_description(linktype: int, snaplen: int = 0, name: str | None = None) -> bytes:
    """IDB with if_tsresol=9 (10^-9 s). snaplen 0 means no limit."""
    opts = [(IF_NAME, name.encode())] if name else []
    opts.append((IF_TSRESOL, b"\x09"))
    return block(IDB_TYPE, struct.pack("<HHI", linktype, 0, snaplen), options(opts))


def enhanced_packet(if_id: int, ts_ns: int, data: bytes, orig_len: int | None = None,
                    comment: str | None = None) -> bytes:
    """EPB: `data` as captured, `orig_len` the length on the wire (default: len(data))."""
    head = _EPB.pack(if_id, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF, len(data),
                     len(data) if orig_len is None else orig_len)
    opts = options([(OPT_COMMENT, comment.encode("utf-8"))]) if comment else b""
    return block(EPB_TYPE, head + data, opts)


_EPB_HEAD = struct.Struct("<IIIIIII")
_PADS = (b"", b"\0\0\0", b"\0\0", b"\0")


def comment_options(comment: str) -> bytes:
    """The encoded options of a packet comment, to pass to `packet` for many packets."""
    return options([(OPT_COMMENT, comment.encode("utf-8"))])


def packet(if_id: int, ts_ns: int, data: bytes, orig_len: int, opts: bytes = b"") -> bytes:
    """enhanced_packet with its options already encoded: the per-packet path of a busy capture."""
    pad = _PADS[len(data) & 3]
    total = 32 + len(data) + len(pad) + len(opts)
    return b"".join((_EPB_HEAD.pack(EPB_TYPE, total, if_id, (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF,
                                    len(data), orig_len), data, pad, opts, _U32.pack(total)))


def decryption_secrets(lines, secrets_type: int = SECRETS_TLS_KEYLOG) -> bytes:
    """DSB carrying NSS key log lines (str or bytes, with or without their newline)."""
    text = b"".join((ln if isinstance(ln, bytes) else ln.encode("ascii")).rstrip(b"\r\n") + b"\n"
                    for ln in lines)
    return block(DSB_TYPE, struct.pack("<II", secrets_type, len(text)) + text)
