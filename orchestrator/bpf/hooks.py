"""Hooks: the one machinery every target kind is made of.

A hook is a function to probe, when to record (entry or return), which arguments to
read and how the record is labelled. `kind: uprobe` targets spell one hook out in
YAML; the built-in kinds (`openssl`, `gnutls`, `bash`, `zsh`, ...) are tables of the same
hooks below.
"""
from __future__ import annotations

from dataclasses import dataclass

from orchestrator.profile import models

RET = models.RET

# Record kinds: the numbers are part of the kernel ABI (common.h RECORD_*).
RECORD_NONE = 0       # records nothing: a TLS handshake, watched to learn the session's socket
RECORD_DATA = 1       # TLS/socket plaintext: `data` records with a direction
RECORD_COMMAND = 2    # a shell command line: `bash.command`
RECORD_CALL = 3       # a generic function call: `uprobe.call`
RECORD_SECRET = 4     # a TLS secret handed to the library's key-log routine: `tls.secret`

DIR_NONE, DIR_READ, DIR_WRITE = 0, 1, 2

# How the length of a `bytes` payload is found.
LEN_ARG = "arg"        # another argument's value
LEN_RET = "ret"        # the return value
LEN_DEREF = "deref"    # a size_t the argument points to (SSL_read_ex's *readbytes)


@dataclass(frozen=True)
class Payload:
    """The one variable-length value a hook copies out (a string or a byte buffer)."""
    source: int | str           # arg index or RET
    type: str                   # string | bytes | iovec (an array of NSPR PRIOVec; length_from: their count)
                                # | go_keylog (writeKeyLog's label, client random and secret)
                                # | c_keylog (a C key-log routine's label and secret, the client random
                                #   read from its session: Hook.random_path)
    length_kind: str | None = None
    length_from: int | None = None   # arg index for LEN_ARG / LEN_DEREF
    length32: bool = False           # the length argument is a C int: only its low 32 bits count


@dataclass(frozen=True)
class Hook:
    symbol: str
    on: str                                  # entry | return
    record: int
    direction: int = DIR_NONE
    scalars: tuple[tuple[int | str, str, str], ...] = ()  # (index, name, int|uint), at most 6
    payload: Payload | None = None
    name: str | None = None                  # payload's name in uprobe.call records
    session_arg: int | None = None           # arg identifying a TLS session: its fd is learnt from syscalls
    success: str | None = None               # "ret>0" | "ret==1": only record successful calls
    optional: bool = False                   # a library may lack it (e.g. the _ex pair before OpenSSL 1.1.1)
    ret32: bool = False                      # returns a C int: sign-extend the low 32 bits
    probe: str = "uprobe"                    # uprobe: a function in an ELF file; syscall: syscalls:sys_{enter,exit}_<symbol>
    fd_arg: int | None = None                # arg holding a socket fd: its connection is looked up in the kernel
    known_sockets_only: bool = False         # only fds seen being connected/accepted (read/write also serve files)
    stack: str | None = None                 # the TLS stack whose plaintext it records (the records' `tls` field)
    abi: str = "c"                           # c | go: Go's register ABI, goroutine-matched, returns at RET offsets
    layered_arg: int | None = None           # NSPR: only calls whose PRFileDesc (this arg) is a layer, not a plain fd
    fd_path: tuple[int, ...] = ()            # the fd is behind pointers: offsets followed from arg fd_arg
    unless: str | None = None                # not probed when the file has this symbol too (it would record twice)
    locate: str | None = None                # "keylog": found by its key-log labels (anchors), not by symbol
    random_path: tuple[int, ...] = ()        # c_keylog: pointers followed from the session, then the
                                             # client random's offset (anchors.RandomPath; set by discovery)

    @property
    def needs_conn(self) -> bool:
        return self.session_arg is not None or self.fd_arg is not None


def _tls(symbol: str, direction: int, ex: bool, stack: str = "openssl") -> Hook:
    # SSL_read(ssl, buf, num) -> n ; SSL_read_ex(ssl, buf, num, size_t *readbytes) -> 1/0
    length = Payload(1, "bytes", LEN_DEREF, 3) if ex else Payload(1, "bytes", LEN_RET)
    return Hook(symbol, "return", RECORD_DATA, direction, payload=length, session_arg=0,
                success="ret==1" if ex else "ret>0", optional=ex, ret32=True, stack=stack)


def _nspr(symbol: str, direction: int, optional: bool = False, payload: Payload | None = None) -> Hook:
    # PR_Read/PR_Write(fd, buf, amount) and PR_Recv/PR_Send(fd, buf, amount, flags, timeout) -> PRInt32.
    # Only on a layered PRFileDesc (SSL_ImportFD pushes the SSL layer on top of the socket): the
    # process's plain sockets and files (identity PR_NSPR_IO_LAYER) are not TLS.
    return Hook(symbol, "return", RECORD_DATA, direction, payload=payload or Payload(1, "bytes", LEN_RET),
                session_arg=0, success="ret>0", ret32=True, optional=optional, stack="nss", layered_arg=0)


def _gnutls(symbol: str, direction: int, optional: bool = False, unless: str | None = None) -> Hook:
    # gnutls_record_send2(session, data, size, pad, flags) / gnutls_record_recv(session, data, size) -> ssize_t
    return Hook(symbol, "return", RECORD_DATA, direction, payload=Payload(1, "bytes", LEN_RET), session_arg=0,
                success="ret>0", optional=optional, unless=unless, stack="gnutls")


def _sock(syscall: str, direction: int, known_only: bool) -> Hook:
    # read(fd, buf, n) / write / recvfrom / sendto: the bytes are known when the call returns.
    return Hook(syscall, "return", RECORD_DATA, direction, payload=Payload(1, "bytes", LEN_RET), success="ret>0",
                probe="syscall", fd_arg=0, known_sockets_only=known_only)


# crypto/tls.Conn's first field is `conn net.Conn`: its data word (+8) points at a *net.TCPConn,
# whose first field is `fd *netFD`; netFD starts with poll.FD, whose Sysfd follows a 16-byte fdMutex.
GO_CONN_FD = (8, 0, 16)


def _go(symbol: str, direction: int) -> Hook:
    # (*Conn).Read/Write(b []byte) (n int, err error): receiver AX, b.ptr BX, b.len CX; n in AX at a RET.
    # A write is recorded on entry (past the stack check, so once per call: golang._body), before its
    # bytes can be answered; another goroutine's read of the answer would otherwise race its return.
    if direction == DIR_WRITE:
        return Hook(symbol, "entry", RECORD_DATA, direction, payload=Payload(1, "bytes", LEN_ARG, 2),
                    fd_arg=0, fd_path=GO_CONN_FD, abi="go", stack="gotls")
    return Hook(symbol, "return", RECORD_DATA, direction, payload=Payload(1, "bytes", LEN_RET), success="ret>0",
                fd_arg=0, fd_path=GO_CONN_FD, abi="go", stack="gotls")


def _keylog(stack: str, routine: str) -> Hook:
    # The library's key-log routine(session, label, secret, secret_len), called for every secret
    # whether or not the program asked for a key log: `tls.secret` records. Not exported: located by
    # the labels it is called with; the client random is read from the session (anchors.py).
    return Hook(routine, "entry", RECORD_SECRET, payload=Payload(2, "c_keylog", LEN_ARG, 3, length32=True),
                session_arg=0, optional=True, stack=stack, locate="keylog")


BUILTIN: dict[str, tuple[Hook, ...]] = {
    "openssl": (
        _tls("SSL_write", DIR_WRITE, False),
        _tls("SSL_read", DIR_READ, False),
        _tls("SSL_write_ex", DIR_WRITE, True),
        _tls("SSL_read_ex", DIR_READ, True),
        # Data already buffered during the handshake is read without a syscall; the handshake's own
        # syscalls tell which socket a new session uses.
        Hook("SSL_do_handshake", "return", RECORD_NONE, session_arg=0),
        _keylog("openssl", "ssl_log_secret"),
    ),
    # BoringSSL keeps OpenSSL's data functions (without the _ex pair in older builds).
    "boringssl": (
        _tls("SSL_write", DIR_WRITE, False, "boringssl"),
        _tls("SSL_read", DIR_READ, False, "boringssl"),
        _tls("SSL_write_ex", DIR_WRITE, True, "boringssl"),
        _tls("SSL_read_ex", DIR_READ, True, "boringssl"),
        Hook("SSL_do_handshake", "return", RECORD_NONE, session_arg=0),
        _keylog("boringssl", "ssl_log_secret"),
    ),
    "nss": (
        _nspr("PR_Write", DIR_WRITE),
        _nspr("PR_Read", DIR_READ),
        _nspr("PR_Send", DIR_WRITE, optional=True),
        _nspr("PR_Recv", DIR_READ, optional=True),
        # PR_Writev(fd, const PRIOVec *iov, PRInt32 iov_size, PRIntervalTime timeout) -> bytes written
        _nspr("PR_Writev", DIR_WRITE, optional=True, payload=Payload(1, "iovec", LEN_ARG, 2)),
    ),
    "gnutls": (
        # gnutls_record_send is a jump into gnutls_record_send2 (3.6.3+): probe one of them.
        _gnutls("gnutls_record_send2", DIR_WRITE, optional=True),
        _gnutls("gnutls_record_send", DIR_WRITE, unless="gnutls_record_send2"),
        _gnutls("gnutls_record_recv", DIR_READ),
        _gnutls("gnutls_record_recv_seq", DIR_READ, optional=True),
        Hook("gnutls_handshake", "return", RECORD_NONE, session_arg=0),
        _keylog("gnutls", "_gnutls_call_keylog_func"),
    ),
    "gotls": (
        _go("crypto/tls.(*Conn).Write", DIR_WRITE),
        _go("crypto/tls.(*Conn).Read", DIR_READ),
        # (*Config).writeKeyLog(label string, clientRandom, secret []byte) is called for every secret
        # whether or not the program set a KeyLogWriter: tls.secret records, no offsets needed.
        Hook("crypto/tls.(*Config).writeKeyLog", "entry", RECORD_SECRET, payload=Payload(1, "go_keylog"),
             abi="go", optional=True, stack="gotls"),
    ),
    # Plaintext socket I/O. recvfrom/sendto are socket-only; read/write count only for TCP sockets
    # whose connect/accept was seen. (readv/writev and recvmsg/sendmsg are not covered yet.)
    "socket": (
        _sock("recvfrom", DIR_READ, False),
        _sock("sendto", DIR_WRITE, False),
        _sock("read", DIR_READ, True),
        _sock("write", DIR_WRITE, True),
    ),
    # readline() returns the line the user typed.
    "bash": (Hook("readline", "return", RECORD_COMMAND, payload=Payload(RET, "string")),),
    # zleentry(ZLE_CMD_READ, ...) returns the line the user entered (metafied, with its newline);
    # its other commands return NULL.
    "zsh": (Hook("zleentry", "return", RECORD_COMMAND, payload=Payload(RET, "string"), success="ret>0"),),
}

# Kinds whose records belong to a connection: models.CONNECTION_KINDS (profile validation uses it).
# Kinds made of syscall tracepoints rather than uprobes: nothing to find in an ELF file.
SYSCALL_KINDS = ("socket",)
# `kind: tls` looks for these stacks, in this order, and attaches the first it finds.
TLS_STACKS = ("gotls", "boringssl", "openssl", "gnutls", "nss")
# A libssl exporting this is BoringSSL (OpenSSL has no strict cipher lists).
BORINGSSL_MARKER = "SSL_CTX_set_strict_cipher_list"

# Kinds whose probes go into Go code: found by name in .symtab or .gopclntab, returns at RET offsets.
GO_KINDS = ("gotls",)

# Where a kind's probes go when the profile names only a program.
LIBRARY_SONAMES = {"openssl": ("libssl.so",), "boringssl": ("libssl.so",), "gnutls": ("libgnutls.so",),
                   "nss": ("libnspr4.so",)}
DEFAULT_BINARY = {"bash": "/bin/bash", "zsh": "/bin/zsh"}


SCALAR_TYPES = ("int", "uint", "long", "ulong")


def hooks_for(target: models.Target) -> tuple[Hook, ...]:
    if target.kind == "tls":
        return ()          # discovery decides which stack's hooks (TLS_STACKS)
    if target.kind in BUILTIN:
        return tuple(h for h in BUILTIN[target.kind] if _captured(h, target.capture))
    return (_uprobe_hook(target),)


def _captured(h: Hook, capture) -> bool:
    """Is the hook needed for what the target captures? (Session learning serves both.)"""
    if h.record == RECORD_SECRET:
        return "secrets" in capture
    if h.record == RECORD_DATA and h.stack is not None:
        return "data" in capture
    return True


def _uprobe_hook(t: models.Target) -> Hook:
    scalars = tuple((a.index, a.name, a.type) for a in t.args if a.type in SCALAR_TYPES)
    payload, name = None, None
    for a in t.args:
        if a.type in ("string", "bytes"):
            name = a.name
            if a.type == "string":
                payload = Payload(a.index, "string")
            elif a.length_arg == RET:
                payload = Payload(a.index, "bytes", LEN_RET)
            else:
                length_type = next((b.type for b in t.args if b.index == a.length_arg), "long")
                payload = Payload(a.index, "bytes", LEN_ARG, a.length_arg, length32=length_type in ("int", "uint"))
    ret_type = next((a.type for a in t.args if a.index == RET), None)
    return Hook(t.symbol, t.on, RECORD_CALL, scalars=scalars, payload=payload, name=name,
                ret32=ret_type in ("int", "uint"))
