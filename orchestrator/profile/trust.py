"""Whether a profile file may be trusted, the way sshd's StrictModes decides it.

A profile tells a root process what to hook and where to write, so the file and every folder
above it (up to /) must be owned by root (or, when we are not root, by us or root) and must not
be writable by group or others. A root-owned sticky folder (/tmp, mode 1777) is an acceptable
ancestor. When the path goes through symbolic links, the components of its real path are checked
too. `problems(path)` returns one human message per problem; no problems means trusted.
"""
from __future__ import annotations

import os
import stat

from orchestrator import workdir


def problems(path: str) -> list[str]:
    path = workdir.absolute(path)
    found: list[str] = []
    walks = [path]
    real = os.path.realpath(path)
    if real != path:
        walks.append(real)
    for walk in walks:
        for component in _components(walk):
            for message in _check(component, is_leaf=component == walk):
                if message not in found:
                    found.append(message)
    return found


def _components(path: str) -> list[str]:
    """`path` and each folder above it, ending with /."""
    out = [path]
    while path != os.path.dirname(path):
        path = os.path.dirname(path)
        out.append(path)
    return out


def _allowed_owners() -> tuple[int, ...]:
    uid = os.geteuid()
    return (0,) if uid == 0 else (0, uid)


def _check(component: str, is_leaf: bool) -> list[str]:
    try:
        st = os.lstat(component)
    except OSError as exc:
        return [f"{component}: cannot check ({exc.strerror})"]
    out = []
    owners = _allowed_owners()
    if st.st_uid not in owners:
        who = "root" if owners == (0,) else f"root or you (uid {owners[1]})"
        out.append(f"{component} is owned by uid {st.st_uid}, not {who}; chown it")
    if stat.S_ISLNK(st.st_mode):
        return out                       # a link's own mode means nothing; its target is walked too
    mode = stat.S_IMODE(st.st_mode)
    sticky_root_dir = stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX and st.st_uid == 0
    if mode & 0o022 and not (sticky_root_dir and not is_leaf):
        by = "group and others" if mode & 0o022 == 0o022 else "group" if mode & 0o020 else "others"
        out.append(f"{component} is writable by {by} (mode {mode:04o}); chmod go-w it")
    return out
