"""Userspace fallback for connections the kernel did not see being made (they predate the capture).

Maps /proc/PID/fd/N → socket inode → /proc/PID/net/tcp{,6}. Used once per connection.
"""
from __future__ import annotations

import ipaddress
import os
import struct


def _parse_addr(hexaddr: str):
    ip_hex, port_hex = hexaddr.split(":")
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        ip = str(ipaddress.IPv4Address(struct.pack("<I", struct.unpack(">I", raw)[0])))
    else:
        words = struct.unpack(">4I", raw)
        addr = ipaddress.IPv6Address(struct.pack("<4I", *words))
        ip = str(addr.ipv4_mapped or addr)
    return ip, int(port_hex, 16)


def lookup(pid: int, fd: int):
    """((local ip, port), (remote ip, port)) of a TCP socket fd, or None."""
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not target.startswith("socket:["):
        return None
    inode = target[8:-1]
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{name}") as f:
                next(f, None)
                for line in f:
                    parts = line.split()
                    if len(parts) > 9 and parts[9] == inode:
                        return _parse_addr(parts[1]), _parse_addr(parts[2])
        except OSError:
            continue
    return None
