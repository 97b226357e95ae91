"""Target discovery: which file to attach to, which symbols it has, which processes run it.

Reads ELF files (pyelftools), the dynamic linker cache (`ldconfig -p`) and /proc.
"""
from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
import stat
import subprocess
import time
from dataclasses import dataclass

from elftools.common import utils as elftools_utils
from elftools.common.exceptions import ELFError
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from orchestrator.bpf import anchors, golang, procroot
from orchestrator.bpf import elfmachine
from orchestrator.bpf import hooks as hooks_mod
from orchestrator.profile import models

FUNC_TYPES = ("STT_FUNC", "STT_GNU_IFUNC")
SYSCALLS = "syscalls"      # the attach "file" of syscall-tracepoint kinds
BIN_DIRS = ("/bin", "/usr/bin", "/sbin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin")


class DiscoveryError(Exception):
    """A target that cannot be attached: names the profile field at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Resolution:
    attach_path: str                 # the ELF file the uprobes go into
    hooks: tuple                     # hooks whose symbol exists there
    missing_optional: tuple[str, ...]
    scope_paths: tuple[str, ...]     # exec paths that put a process in scope; () = no scoping
    scope_real: str | None           # the program's real path, to find running instances
    how: str                         # how the attach path was found, for `plan`
    addresses: tuple = ()            # per hook: (entry, (return, ...)) virtual addresses or None (by symbol);
                                     # () = every hook by symbol
    namespace: procroot.Namespace | None = None   # the mount namespace the paths were resolved in; None: ours
    inside_path: str = ""            # attach_path as the processes of `namespace` see it


@dataclass(frozen=True)
class _InRoot:
    ns: procroot.Namespace
    cache: dict          # its loader's cache: soname → path inside it
    given: dict          # path through /proc/PID/root → the path the profile gave


# While a target is resolved in another mount namespace: that namespace. The path helpers below
# look files up there (the paths they get and give are made by procroot.locate).
_ROOT: contextvars.ContextVar = contextvars.ContextVar("discovery_root", default=None)


def _real(path: str) -> str:
    """The real path of a file: in another root the paths are already resolved (os.path.realpath
    would follow /proc/PID/root to wherever it points from here)."""
    return path if _ROOT.get() is not None else os.path.realpath(path)


MAX_SYMBOLS = 4_000_000     # symbols in all symbol tables of one file (libc has ~3 000)
MAX_SECTIONS = 100_000      # linked programs have tens; only hostile files claim more
MAX_ELF_SECONDS = 5.0       # wall-clock budget for reading one file's symbols


class _Damaged(Exception):
    """An ELF file whose tables do not fit in it (or that takes too long to read)."""


@functools.lru_cache(maxsize=256)
def _elf_info(path: str, mtime_ns: int):
    """(defined function symbols, DT_NEEDED) of an ELF file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)   # a FIFO swapped in must not hang us
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _Damaged("not a regular file")
        deadline = time.monotonic() + MAX_ELF_SECONDS
        elf = ELFFile(f)
        _check_layout(elf, f, st.st_size, deadline)
        symbols: set[str] = set()
        needed: list[str] = []
        for section in elf.iter_sections():
            _in_time(deadline)
            if section.header.sh_type in ("SHT_SYMTAB", "SHT_DYNSYM"):
                for n, sym in enumerate(section.iter_symbols()):
                    if n % 1024 == 0:
                        _in_time(deadline)
                    if sym["st_info"]["type"] in FUNC_TYPES and sym["st_shndx"] != "SHN_UNDEF" and sym.name:
                        symbols.add(sym.name.split("@")[0])
            elif isinstance(section, DynamicSection):
                for t in section.iter_tags():
                    _in_time(deadline)
                    if t.entry.d_tag == "DT_NEEDED":
                        needed.append(t.needed)
    return frozenset(symbols), tuple(needed)


def _in_time(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise _Damaged(f"reading it takes more than {MAX_ELF_SECONDS:g} s")


def _check_layout(elf: ELFFile, f, size: int, deadline: float) -> None:
    """Before iterating: the section table and every section's bytes lie inside the file, and the
    symbol tables hold a sane number of entries (a 36 KB file may claim millions of them)."""
    shoff, shentsize = elf["e_shoff"], elf["e_shentsize"]
    if shoff == 0:
        return
    entry = elf.structs.Elf_Shdr.sizeof()
    if shentsize != entry:
        raise _Damaged(f"section header size {shentsize} (expected {entry})")
    if shoff + entry > size:
        raise _Damaged("its section table starts past the end of the file")
    count = elf.num_sections()
    if count > MAX_SECTIONS:
        raise _Damaged(f"it claims {count} sections (at most {MAX_SECTIONS})")
    if shoff + count * entry > size:
        raise _Damaged(f"it claims {count} sections, more than fit in its {size} bytes")
    if elf["e_shstrndx"] >= count:
        raise _Damaged("its section-name table index is out of range")
    symbols, sym_size = 0, elf.structs.Elf_Sym.sizeof()
    for i in range(count):
        _in_time(deadline)
        h = elftools_utils.struct_parse(elf.structs.Elf_Shdr, f, stream_pos=shoff + i * entry)
        if h["sh_type"] != "SHT_NOBITS" and h["sh_offset"] + h["sh_size"] > size:
            raise _Damaged(f"section {i} ends at byte {h['sh_offset'] + h['sh_size']}, past the end of the file")
        if h["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM", "SHT_DYNAMIC"):
            if h["sh_link"] >= count:
                raise _Damaged(f"section {i} links to section {h['sh_link']}, which does not exist")
        if h["sh_type"] in ("SHT_SYMTAB", "SHT_DYNSYM"):
            if h["sh_entsize"] != sym_size:
                raise _Damaged(f"section {i} has symbol entries of {h['sh_entsize']} bytes (expected {sym_size})")
            symbols += h["sh_size"] // sym_size
            if symbols > MAX_SYMBOLS:
                raise _Damaged(f"it claims more than {MAX_SYMBOLS} symbols")


def elf_info(path: str):
    try:
        return _elf_info(path, os.stat(path).st_mtime_ns)
    except ELFError:
        raise DiscoveryError("", f"{path}: not an ELF file") from None
    except OSError as exc:
        raise DiscoveryError("", f"{path}: cannot read ({exc.strerror})") from None
    except _Damaged as exc:
        raise DiscoveryError("", f"{path}: not a usable ELF file: {exc}") from None
    except Exception as exc:    # pyelftools raises many types (struct, construct, Unicode...) on bad input
        raise DiscoveryError("", f"{path}: damaged ELF file ({type(exc).__name__}: {exc})"[:300]) from None


@functools.lru_cache(maxsize=1)
def _ld_cache() -> dict[str, tuple[elfmachine.CacheEntry, ...]]:
    """soname → the loader cache's entries for it, of every machine the host has libraries for."""
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return elfmachine.parse_ldconfig(out)


def runpath(path: str) -> tuple[str, ...]:
    """The folders an ELF file's DT_RUNPATH (or DT_RPATH) adds to the search, $ORIGIN expanded."""
    try:
        with golang.open_regular(path) as f:
            elf = ELFFile(f)
            dyn = elf.get_section_by_name(".dynamic")
            if not isinstance(dyn, DynamicSection):
                return ()
            for tag in dyn.iter_tags():
                if tag.entry.d_tag in ("DT_RUNPATH", "DT_RPATH"):
                    value = tag.runpath if tag.entry.d_tag == "DT_RUNPATH" else tag.rpath
                    origin = os.path.dirname(_real(path))
                    if _ROOT.get() is not None:
                        origin = _ROOT.get().ns.inside(origin)
                    return tuple(d.replace("$ORIGIN", origin).replace("${ORIGIN}", origin)
                                 for d in value.split(":") if d)
    except Exception:       # damaged files are reported by elf_info; no runpath then
        return ()
    return ()


def find_library(soname: str, extra_dirs: tuple[str, ...] = (),
                 machine: elfmachine.Machine | None = None) -> str | None:
    """Where the loader finds `soname` for a program of `machine` (default: the host's): the
    program's RUNPATH folders, the loader's cache, its default folders; a file of another machine
    is skipped, as the loader skips it."""
    machine = machine or elfmachine.host()
    if _ROOT.get() is not None:
        root = _ROOT.get()
        return procroot.find_library(root.ns, soname, extra_dirs, root.cache, elfmachine.library_dirs(machine),
                                     lambda path: _loadable(path, machine))
    candidates = [os.path.join(d, soname) for d in extra_dirs]
    candidates += elfmachine.by_hint(_ld_cache().get(soname, ()), machine)
    candidates += [os.path.join(d, soname) for d in elfmachine.library_dirs(machine)]
    for path in candidates:
        lib = elfmachine.machine_of(path)
        if lib is not None and machine.accepts(lib):
            return path
    return None


def _loadable(path: str, machine: elfmachine.Machine) -> bool:
    lib = elfmachine.machine_of(path)
    return lib is not None and machine.accepts(lib)


def program_machine(binary: str) -> elfmachine.Machine:
    """The machine a program is built for, which its libraries must match (the host's when unreadable)."""
    return elfmachine.machine_of(binary) or elfmachine.host()


def running_instances(real_path: str) -> list[int]:
    """PIDs of processes whose executable is the file `real_path` (compared by inode: a container's
    process names its executable by a path of its own root, /proc/PID/root/... reaches the same file)."""
    try:
        st = os.stat(real_path)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                exe = os.stat(f"/proc/{entry}/exe")
            except OSError:
                continue
            if (exe.st_ino, exe.st_dev) == (st.st_ino, st.st_dev):
                pids.append(int(entry))
    return pids


def mapped_library(pid: int, prefixes: tuple[str, ...]) -> str | None:
    if _ROOT.get() is not None:
        root = _ROOT.get()
        return procroot.mapped_library(root.ns, pid, prefixes, root.cache)
    try:
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if os.path.basename(path).startswith(prefixes):
                        return path
    except OSError:
        return None
    return None


def exec_aliases(path: str) -> tuple[str, ...]:
    """Paths by which a program is typically exec'd: itself, its real path, and links to it."""
    if _ROOT.get() is not None:
        root = _ROOT.get()
        return procroot.exec_aliases(root.ns, path, root.given.get(path, root.ns.inside(path)))
    stamps = []
    for d in BIN_DIRS + (os.path.dirname(path),):
        try:
            stamps.append(os.stat(d).st_mtime_ns)
        except OSError:
            stamps.append(0)
    return _exec_aliases(path, tuple(stamps))   # reloads re-plan often; bin dirs rarely change


@functools.lru_cache(maxsize=64)
def _exec_aliases(path: str, _dir_stamps: tuple) -> tuple[str, ...]:
    real = os.path.realpath(path)
    aliases = {path, real}
    dirs = set(BIN_DIRS) | {os.path.dirname(path), os.path.dirname(real)}
    for d in dirs:
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            full = os.path.join(d, name)
            if os.path.islink(full) and os.path.realpath(full) == real:
                aliases.add(full)
    # merged /usr: /bin/x and /usr/bin/x are one file reached by two names.
    for a in list(aliases):
        for d in BIN_DIRS:
            candidate = os.path.join(d, os.path.basename(a))
            if os.path.realpath(candidate) == real and os.path.realpath(d) == os.path.realpath(os.path.dirname(a)):
                aliases.add(candidate)
    return tuple(sorted(aliases))


def resolve(target: models.Target) -> Resolution:
    note = ""
    if _ROOT.get() is None:
        paths = tuple(p for p in (target.binary or hooks_mod.DEFAULT_BINARY.get(target.kind), target.library) if p)
        try:
            ns, note = procroot.namespace_for(target.filters, paths)
        except procroot.RootError as exc:
            raise DiscoveryError(exc.field, exc.message) from None
        if ns is not None:
            return _resolve_in_root(target, ns, note)
    res = _resolve(target)
    if note:
        res = dataclasses.replace(res, how=f"{res.how}; {note}")
    if not res.hooks:
        raise DiscoveryError("capture", f"{res.attach_path}: nothing to probe for capture "
                                        f"[{', '.join(target.capture)}] ({res.how})")
    return res


def _resolve_in_root(target: models.Target, ns: procroot.Namespace, note: str = "") -> Resolution:
    """A target whose processes run in another mount namespace (a container): its paths name files
    there. They are resolved inside its root and used through /proc/PID/root, so the uprobes go
    into the inode the container runs."""
    given = {}
    paths = {}
    default = hooks_mod.DEFAULT_BINARY.get(target.kind)
    for field, path in (("binary", target.binary or default), ("library", target.library)):
        if path:
            try:
                paths[field] = procroot.locate(ns, path, field)
            except procroot.RootError as exc:
                raise DiscoveryError(exc.field, exc.message) from None
            given[paths[field]] = path
    inner = dataclasses.replace(target, binary=paths.get("binary"), library=paths.get("library"))
    token = _ROOT.set(_InRoot(ns, procroot.ld_cache(ns), given))
    try:
        res = resolve(inner)
    finally:
        _ROOT.reset(token)
    inside = ns.inside(res.attach_path)
    if res.attach_path == SYSCALLS:
        fires = ""
    elif target.filters.pids:
        fires = "uprobes attached for the listed pids only"
    else:
        fires = ("the uprobes fire in every process that maps this file (in any container sharing it); "
                 "the kernel filter keeps only the target's processes")
    how = "; ".join(p for p in (res.how, f"resolved in {ns.describe()}: {inside}, attached as {res.attach_path}",
                                fires, note) if p)
    return dataclasses.replace(res, how=how, namespace=ns, inside_path=inside)


def _resolve(target: models.Target) -> Resolution:
    hooks = hooks_mod.hooks_for(target)
    if not hooks and target.kind != "tls":
        raise DiscoveryError("capture", f"kind {target.kind} has nothing to probe for capture "
                                        f"[{', '.join(target.capture)}]" +
                             (": its secrets are not captured (no key-log routine is located for it)"
                              if target.capture == ("secrets",) else ""))
    binary = target.binary or hooks_mod.DEFAULT_BINARY.get(target.kind)
    if target.kind in hooks_mod.SYSCALL_KINDS:
        if binary:
            _require_file(binary, "binary")
        return Resolution(attach_path=SYSCALLS, hooks=hooks, missing_optional=(),
                          scope_paths=exec_aliases(binary) if binary else (),
                          scope_real=_real(binary) if binary else None, how="syscall tracepoints")
    if target.kind == "tls":
        return _resolve_tls(target, binary)
    if target.kind in hooks_mod.GO_KINDS:
        return _resolve_go(binary, hooks)
    if target.library:
        attach, how, field = target.library, "library given", "library"
    elif target.kind in hooks_mod.LIBRARY_SONAMES:
        attach, how = _library_of(binary, hooks_mod.LIBRARY_SONAMES[target.kind], hooks)
        field = "binary"
    else:
        attach, how, field = binary, "binary", "binary"
    _require_file(attach, field)
    symbols, _ = _elf_info_for(attach, field)
    secrets_only = _secrets_only(attach, hooks, symbols, binary, how)
    if secrets_only is not None:
        return secrets_only
    found, missing_optional, addresses = [], [], []
    for h in hooks:
        if h.locate == "keylog":
            located, note = _keylog_hook(attach, h)
            how += f"; secrets: {note}"
            if located is None:
                missing_optional.append(h.symbol)
            else:
                found.append(located[0])
                addresses.append(located[1])
            continue
        if h.unless is not None and h.unless in symbols:
            continue
        if h.symbol in symbols:
            found.append(h)
            addresses.append(None)
        elif h.optional:
            missing_optional.append(h.symbol)
        else:
            raise DiscoveryError("symbol" if target.kind == "uprobe" else field,
                                 f"{attach}: no function symbol {h.symbol!r}" + _stripped_tls(attach, h))
    scoped = binary is not None and _real(attach) != _real(binary)
    return Resolution(
        attach_path=attach, hooks=tuple(found), missing_optional=tuple(missing_optional),
        scope_paths=exec_aliases(binary) if scoped else (),
        scope_real=_real(binary) if binary else None, how=how,
        addresses=tuple(addresses) if any(a is not None for a in addresses) else (),
    )


def _secrets_only(attach: str, hooks, symbols, binary, how: str) -> Resolution | None:
    """A TLS library without symbols (a stripped static build): its data functions cannot be
    found, but its key-log routine can: attach that alone (secrets for a key log or a pcapng)."""
    absent = [h.symbol for h in hooks if not h.optional and h.locate is None and h.symbol not in symbols]
    keylog = next((h for h in hooks if h.locate == "keylog"), None)
    if not absent or keylog is None:
        return None
    located, note = _keylog_hook(attach, keylog)
    if located is None:
        return None
    scoped = binary is not None and _real(attach) != _real(binary)
    return Resolution(attach_path=attach, hooks=(located[0],), missing_optional=tuple(absent),
                      scope_paths=exec_aliases(binary) if scoped else (),
                      scope_real=_real(binary) if binary else None,
                      how=f"{how}; no symbol {', '.join(absent)}: secrets only: {note}", addresses=(located[1],))


def _keylog_hook(path: str, hook):
    """((the hook with its client-random path, (address, ())), what was found) or (None, why not)."""
    anchor = anchors.keylog_function(path)
    if anchor is None:
        return None, "no key-log function found from the TLS key-log labels"
    random = anchors.client_random(path, hook.stack, anchor.address)
    if random is None:
        return None, f"{anchor.describe()}, but the client random's place in the session was not found"
    located = dataclasses.replace(hook, random_path=(*random.derefs, random.offset))
    return (located, (anchor.address, ())), f"{anchor.describe()}; {random.describe()}"


def _resolve_tls(target: models.Target, binary: str | None) -> Resolution:
    """`kind: tls`: which TLS stack(s) the program uses (Go's crypto/tls, a stack linked into it, or
    one it loads through DT_NEEDED); the first in hooks.TLS_STACKS is attached and `how` names
    them all."""
    if not binary:
        raise DiscoveryError("binary", "kind: tls needs `binary:`, the program to inspect")
    _require_file(binary, "binary")
    symbols, needed = _elf_info_for(binary, "binary")
    found: dict[str, str] = {}       # stack → where
    if golang.is_go(binary):
        try:
            go = golang.inspect(binary, tuple(h.symbol for h in hooks_mod.BUILTIN["gotls"]))
            if all(h.symbol in go.functions for h in hooks_mod.BUILTIN["gotls"] if not h.optional):
                found["gotls"] = f"Go crypto/tls in the executable ({go.version or 'Go'})"
        except golang.GoError:
            pass
    if {"SSL_read", "SSL_write"} <= symbols:
        found["boringssl" if hooks_mod.BORINGSSL_MARKER in symbols else "openssl"] = "linked into the executable"
    if "gnutls_record_recv" in symbols:
        found["gnutls"] = "linked into the executable"
    dirs, machine = runpath(binary), program_machine(binary)
    for stack, prefixes in (("openssl", ("libssl.so",)), ("gnutls", ("libgnutls.so",)), ("nss", ("libnspr4.so",))):
        hit = _needed_library(needed, prefixes, dirs=dirs, machine=machine)
        if hit and not (stack == "openssl" and {"boringssl", "openssl"} & found.keys()):
            lib_symbols, _ = elf_info(hit[0])
            if stack == "openssl" and hooks_mod.BORINGSSL_MARKER in lib_symbols:
                stack = "boringssl"
            if stack == "nss" and "SSL_ImportFD" not in _symbols_of_needed(needed, dirs, "libssl3.so", machine):
                continue      # NSPR without NSS's libssl3: no TLS on its fds
            found.setdefault(stack, f"{hit[0]} ({hit[1]})")
    if not found:
        anchor = anchors.keylog_function(binary)
        stripped = (f"; it holds a TLS stack without symbols (data functions not located): {anchor.describe()}; "
                    "name its stack (kind: boringssl, openssl or gnutls) to capture its secrets" if anchor else "")
        raise DiscoveryError("binary", f"{binary}: no TLS stack found: not a Go program using crypto/tls, no "
                                       "SSL_read/gnutls_record_recv in it, and no libssl*, libgnutls* or "
                                       f"libnspr4* among its DT_NEEDED{stripped}")
    stack = next(s for s in hooks_mod.TLS_STACKS if s in found)
    chosen = models.Target(target.name, stack, binary=binary, filters=target.filters, max_bytes=target.max_bytes,
                           ring_buffer_kib=target.ring_buffer_kib, capture=target.capture)
    res = resolve(chosen)
    others = [f"{s}: {found[s]}" for s in hooks_mod.TLS_STACKS if s in found and s != stack]
    how = f"kind tls found {stack}: {res.how}" + \
        (f"; also uses {'; '.join(others)} (not attached: one stack per target, add a target for it)"
         if others else "")
    return dataclasses.replace(res, how=how)


def _stripped_tls(path: str, hook) -> str:
    """What can still be said of a TLS library without symbols: where its key-log routine is."""
    if hook.stack is None:
        return ""
    anchor = anchors.keylog_function(path)
    if anchor is None:
        return " (and no key-log function found from the TLS key-log labels either)"
    return (f"; without symbols its data functions are not located, but from its key-log labels: "
            f"{anchor.describe()}")


def _symbols_of_needed(needed, dirs, soname_prefix: str, machine: elfmachine.Machine) -> frozenset:
    hit = _needed_library(needed, (soname_prefix,), dirs=dirs, machine=machine)
    if not hit:
        return frozenset()
    try:
        return elf_info(hit[0])[0]
    except DiscoveryError:
        return frozenset()


def _resolve_go(binary: str | None, hooks) -> Resolution:
    """Go code: each function by name (.symtab, or .gopclntab when stripped) and its RET addresses."""
    if not binary:
        raise DiscoveryError("binary", "a Go target needs `binary:`, the Go executable")
    _require_file(binary, "binary")
    _elf_info_for(binary, "binary")      # its layout checked against its size, within a time budget
    try:
        go = golang.inspect(binary, tuple(h.symbol for h in hooks))
    except golang.GoError as exc:
        raise DiscoveryError("binary", str(exc)) from None
    missing = [h.symbol for h in hooks if h.symbol not in go.functions and not h.optional]
    if missing:
        raise DiscoveryError("binary", f"{binary}: no Go function {', '.join(missing)} (looked in .symtab and "
                                       f".gopclntab): not a program that uses crypto/tls?")
    absent = tuple(h.symbol for h in hooks if h.symbol not in go.functions)
    hooks = tuple(h for h in hooks if h.symbol in go.functions)
    found = [go.functions[h.symbol] for h in hooks]
    how = f"{go.version or 'Go'} executable: " + "; ".join(
        f"{f.name} at {f.entry:#x} ({f.found_by}; probed at +{f.body - f.entry:#x}"
        + (f" and {len(f.returns)} RET)" if h.on == "return" else ")") for f, h in zip(found, hooks))
    return Resolution(attach_path=binary, hooks=hooks, missing_optional=absent, scope_paths=(),
                      scope_real=_real(binary), how=how,
                      addresses=tuple((f.body, f.returns if h.on == "return" else ()) for f, h in zip(found, hooks)))


def _require_file(path: str, field: str) -> None:
    if not os.path.isfile(path):
        raise DiscoveryError(field, f"{path}: {'not a regular file' if os.path.exists(path) else 'no such file'}")


def _elf_info_for(path: str, field: str):
    try:
        return elf_info(path)
    except DiscoveryError as exc:
        raise DiscoveryError(field, exc.message) from None


def _needed_library(needed, prefixes, limit: int = 64, dirs: tuple[str, ...] = (),
                    machine: elfmachine.Machine | None = None):
    """Breadth-first through DT_NEEDED (curl → libcurl → libssl), in `dirs` (RUNPATH) first,
    libraries of the program's `machine` only."""
    queue, seen, via = list(needed), set(), {}
    while queue and len(seen) < limit:
        soname = queue.pop(0)
        if soname in seen:
            continue
        seen.add(soname)
        path = find_library(soname, dirs, machine)
        if not path:
            continue
        if soname.startswith(prefixes):
            chain = " → ".join([*via.get(soname, ()), soname])
            return path, f"DT_NEEDED {chain}"
        try:
            _, deeper = elf_info(path)
        except DiscoveryError:
            continue
        for d in deeper:
            via.setdefault(d, (*via.get(soname, ()), soname))
        queue += deeper
    return None


def _library_of(binary: str, prefixes: tuple[str, ...], hooks) -> tuple[str, str]:
    _require_file(binary, "binary")
    symbols, needed = _elf_info_for(binary, "binary")
    if all(h.symbol in symbols for h in hooks if not h.optional):
        return binary, "statically linked into the binary"
    machine = program_machine(binary)
    found = _needed_library(needed, prefixes, dirs=runpath(binary), machine=machine)
    if found:
        return found
    for pid in running_instances(_real(binary)):
        path = mapped_library(pid, prefixes)
        if path and os.path.exists(path):
            return path, f"mapped by running pid {pid}"
    # Not linked, not running: a program that loads its TLS library with a module at run time
    # (python3's _ssl). Attach to the library its loader would find; the probes are scoped to the
    # program's processes by exec, so one started later is captured from its first call.
    system = _system_library(prefixes, machine)
    if system:
        return system, (f"{os.path.basename(system)} from the loader's cache: the library its modules load at "
                        f"run time (set `library:` to choose another)")
    raise DiscoveryError(
        "binary",
        f"{binary}: no {'/'.join(p + '*' for p in prefixes)}"
        f"{'' if machine == elfmachine.host() else ' for ' + machine.describe()} among its DT_NEEDED and no running "
        "instance maps one;"
        " set `library:` to the library it loads",
    )


def _system_library(prefixes: tuple[str, ...], machine: elfmachine.Machine) -> str | None:
    """The newest library of the loader's cache for `machine` whose name starts with one of
    `prefixes` (libssl.so.3 before libssl.so.1.1)."""
    cache = _ROOT.get().cache if _ROOT.get() is not None else _ld_cache()
    names = [n for n in cache if n.startswith(prefixes) and _version_key(n)]   # not the -dev link
    for name in sorted(names, key=_version_key, reverse=True):
        path = find_library(name, machine=machine)
        if path:
            return path
    return None


def _version_key(soname: str) -> tuple:
    version = soname.partition(".so.")[2]
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def processes_mapping(path: str) -> list[int]:
    """PIDs of processes that have `path` mapped."""
    real = os.path.realpath(path)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps") as f:
                if any(line.rstrip().endswith(real) for line in f):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def comm_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def uid_of(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return -1
