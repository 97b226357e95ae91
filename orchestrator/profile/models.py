"""Frozen, typed models of a validated profile. Nothing here touches the file system."""
from __future__ import annotations

from dataclasses import dataclass, field

RET = "ret"  # an arg index meaning "the return value"

# Kinds whose records belong to a connection (and so can be filtered by port).
CONNECTION_KINDS = ("openssl", "boringssl", "gnutls", "nss", "gotls", "tls", "socket")
TLS_KINDS = ("openssl", "boringssl", "gnutls", "nss", "gotls", "tls")


@dataclass(frozen=True)
class Filters:
    pids: tuple[int, ...] = ()
    uids: tuple[int, ...] = ()
    comm: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    cgroups: tuple[str, ...] = ()     # cgroup v2 paths relative to the cgroup2 mount, each with everything under it


@dataclass(frozen=True)
class Arg:
    index: int | str          # 0..5 or RET
    name: str
    type: str                 # int | uint | string | bytes
    length_arg: int | str | None = None


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    binary: str | None = None
    library: str | None = None
    symbol: str | None = None
    on: str = "entry"
    args: tuple[Arg, ...] = ()
    filters: Filters = field(default_factory=Filters)
    max_bytes: int = 16384
    ring_buffer_kib: int = 8192
    capture: tuple[str, ...] = ("data", "secrets")   # TLS kinds: the plaintext, the TLS secrets, or both
    line: int = 1             # where the target starts in its file, for messages
    index: int = field(default=0, compare=False)          # position in spec.targets
    field_marks: tuple = field(default=(), compare=False)  # (field, line, col) of each key, for messages

    def mark(self, field: str) -> tuple[int, int]:
        for name, line, col in self.field_marks:
            if name == field:
                return line, col
        return self.line, 1


@dataclass(frozen=True)
class Sink:
    type: str
    options: tuple[tuple[str, object], ...] = ()

    def option(self, name: str, default=None):
        return dict(self.options).get(name, default)


DEFAULT_REDACT_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")


@dataclass(frozen=True)
class Redact:
    """`spec.redact`, all rules merged (names as first written, unique case-insensitively)."""
    headers: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    fields: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()    # RE2 syntax, checked by the loader
    sql: bool = False                 # string and number literals of SQL statements

    def summary(self) -> list[str]:
        """One line per kind of rule in force, for `plan`; ["off"] when there is none."""
        lines = [f"{label}: {', '.join(values)}" for label, values in (
            ("headers", self.headers), ("query parameters", self.query), ("body fields", self.fields),
            ("regex", tuple(f"'{p}'" for p in self.patterns))) if values]
        if self.sql:
            lines.append("SQL literals")
        return lines or ["off"]


DEFAULT_REDACT = Redact(headers=DEFAULT_REDACT_HEADERS)


@dataclass(frozen=True)
class Profile:
    name: str
    path: str
    targets: tuple[Target, ...]
    parsers: tuple[str, ...] | None      # None: auto-detect
    sinks: tuple[Sink, ...]
    source_digest: str = ""
    redact: Redact = DEFAULT_REDACT      # absent in the file: the defaults; `redact: []`: Redact()
