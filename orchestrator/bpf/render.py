"""Render a target's BPF C from `orchestrator/templates/kern/probes.c.j2`.

The template context holds only validated ints, bools and byte values: no text from
a profile reaches the C. `ecapture render` prints exactly what this returns.

probes.c.j2 is a skeleton: filters.c.j2 (pids compiled in, the rest read from maps), scope.c.j2
(exec/fork scope), event.h (record helpers, plain C) and hooks.c.j2 (one macro per hook shape,
and where each probe kind's arguments are) are pulled in by Jinja include/import, so the text
stays one self-contained program; the headers bcc itself includes are common.h and shared.h.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
from dataclasses import dataclass
from pathlib import Path

import jinja2

from orchestrator.bpf import hooks as hooks_mod
from orchestrator.profile import models

# Package data (pyproject.toml). bcc reads the headers through -I after changing directory, so this
# must be a real absolute directory: a wheel installs real files (a zipped package is not supported).
KERN_DIR = Path(os.fspath(importlib.resources.files("orchestrator") / "templates" / "kern")).resolve()
TEMPLATE = "probes.c.j2"
FNV_OFFSET, FNV_PRIME = 14695981039346656037, 1099511628211


@dataclass(frozen=True)
class Rendered:
    text: str
    digest: str          # sha256 of text + common.h: identical digests compile identically


@functools.cache
def environment() -> jinja2.Environment:
    """The one Jinja2 environment of the kernel templates (StrictUndefined: a missing name fails)."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(KERN_DIR)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        extensions=["jinja2.ext.loopcontrols"],
    )


def path_hash(path: str) -> int:
    """FNV-1a 64 of a path, as the kernel computes it at exec (scope.c.j2: path_hash)."""
    h = FNV_OFFSET
    for b in path.encode()[:255]:
        h ^= b
        h = (h * FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


def possible_cpus() -> int:
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def _ident(text: str) -> str:
    # Names are schema-checked ([a-z0-9_-]); this keeps the comment line safe regardless.
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)[:63]


def _comm_bytes(name: str) -> list[int]:
    raw = name.encode("ascii")
    if not 0 < len(raw) <= 15:
        raise ValueError(f"comm {name!r} must be 1 to 15 ASCII characters")
    return list(raw) + [0]   # the trailing NUL makes it an exact, not a prefix, match


def _int_list(values, lo: int, hi: int) -> list[int]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"{v!r} is not an integer in [{lo}, {hi}]")
        out.append(int(v))
    return out


def _hook_context(index: int, h: hooks_mod.Hook) -> dict:
    if h.payload is not None and h.payload.type == "c_keylog" and not h.random_path:
        raise ValueError(f"hook {h.symbol}: the client random's place is not known (discovery sets it)")
    payload = None
    if h.payload is not None:
        src = h.payload.source
        payload = {
            "source": "ret" if src == models.RET else _int_list([src], 0, 5)[0],
            "type": {"string": "string", "bytes": "bytes", "iovec": "iovec", "go_keylog": "go_keylog",
                     "c_keylog": "c_keylog"}[h.payload.type],
            "length_kind": {None: None, "arg": "arg", "ret": "ret", "deref": "deref"}[h.payload.length_kind],
            "length_from": None if h.payload.length_from is None else _int_list([h.payload.length_from], 0, 5)[0],
            "length32": bool(h.payload.length32),
        }
    return {
        "index": index,
        "comment": f"{'entry' if h.on == 'entry' else 'return'} probe, record kind {int(h.record)}",
        "on": {"entry": "entry", "return": "return"}[h.on],
        "record": _int_list([h.record], 0, 4)[0],
        "direction": _int_list([h.direction], 0, 2)[0],
        "scalar_indexes": sorted({_int_list([i], 0, 5)[0] for i, _, _ in h.scalars if i != models.RET}),
        "payload": payload,
        "session_arg": None if h.session_arg is None else _int_list([h.session_arg], 0, 5)[0],
        "ret32": bool(h.ret32),
        "probe": {"uprobe": "uprobe", "syscall": "syscall"}[h.probe],
        "fd_arg": None if h.fd_arg is None else _int_list([h.fd_arg], 0, 5)[0],
        "known_sockets_only": bool(h.known_sockets_only),
        "success": {None: None, "ret>0": "ret>0", "ret==1": "ret==1"}[h.success],
        "abi": {"c": "c", "go": "go"}[h.abi],
        "fd_path": _int_list(h.fd_path, 0, 4096),
        "layered_arg": None if h.layered_arg is None else _int_list([h.layered_arg], 0, 5)[0],
        "random_derefs": _int_list(h.random_path[:-1], 0, 65535)[:3],
        "random_offset": _int_list(h.random_path[-1:], 0, 65535)[0] if h.random_path else 0,
    }


MAX_BYTES_LIMIT = 65536     # the schema's maximum of max_bytes: what every program is compiled with


def filter_values(target: models.Target, cgroup_ids=()) -> dict:
    """The target's filters as validated numbers (pids compiled in, the rest written to maps).
    `cgroup_ids`: the ids its `filters.cgroups` paths have now (plan.model.ProbeSet.cgroups). The
    cgroup filter is None when off (no paths, or the root `/`, which holds everything), else the
    ids, possibly none: a filter that matches nothing until one of its paths exists."""
    f = target.filters
    return {
        "pids": _int_list(f.pids, 1, 4194304),
        "uids": _int_list(f.uids, 0, 4294967294),
        "comm": [_comm_bytes(c) for c in f.comm],
        "ports": _int_list(f.ports, 1, 65535),
        "cgroups": None if not f.cgroups or "/" in f.cgroups else _int_list(cgroup_ids, 1, (1 << 64) - 1),
    }


def lane_values(target: models.Target, cgroup_ids=()) -> dict:
    """What a filter configuration holds for `target` (loader.write_filters): its filter values and max_bytes."""
    return filter_values(target, cgroup_ids) | {"max_bytes": _int_list([target.max_bytes], 16, MAX_BYTES_LIMIT)[0]}


def context(profile_name: str, target: models.Target, hooks, scope_paths=()) -> dict:
    """Everything the program is compiled with. The uid, comm, cgroup and port filters and max_bytes are
    not in it: the program reads them from maps (filters.c.j2, lane_values), so one compiled
    program runs every value of them. pids stay compiled in: they are also where the
    trampolines attach. Records are sized by the configuration's max_bytes, bounded by the
    schema maximum (one scratch record per CPU of that size)."""
    return {
        "ident": {"profile": _ident(profile_name), "target": _ident(target.name)},
        "max_bytes": MAX_BYTES_LIMIT,
        "ring_pages": _int_list([target.ring_buffer_kib // 4], 1, 16384)[0],
        "cpus": possible_cpus(),
        "pids": _int_list(target.filters.pids, 1, 4194304),
        "scope": sorted({path_hash(p) for p in scope_paths}),
        "conn": any(h.needs_conn for h in hooks),
        "hooks": [_hook_context(i, h) for i, h in enumerate(hooks)],
    }


def render(profile_name: str, target: models.Target, hooks, scope_paths=()) -> Rendered:
    """The target's program: the same text for every value of the uid, comm and port filters and
    of max_bytes (so its digest says which edits need no compile)."""
    text = environment().get_template(TEMPLATE).render(**context(profile_name, target, hooks, scope_paths))
    headers = b"".join((KERN_DIR / h).read_bytes() for h in ("common.h", "shared.h"))
    return Rendered(text, hashlib.sha256(text.encode() + headers).hexdigest())


def prelude(target_no: int) -> str:
    """The line that makes a rendered program one target's: its target number (keeps its calls
    apart in the shared stash)."""
    return f"#define ECAP_TARGET {_int_list([target_no], 0, 65535)[0]}\n"


def program(rendered: Rendered, target_no: int) -> str:
    """Exactly what bcc compiles for this target."""
    return prelude(target_no) + rendered.text


def kernel_template(name: str, **context) -> str:
    """Render another kernel template of templates/kern (trampolines, shared state)."""
    return environment().get_template(name).render(**context)


def cflags() -> list[str]:
    return [f"-I{KERN_DIR}"]
