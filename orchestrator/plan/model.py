"""What one target needs in the kernel, and its identity for diffing (including the inode it attaches to)."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from orchestrator import cgroups
from orchestrator.bpf import render
from orchestrator.profile import errors, models


@dataclass(frozen=True)
class ProbeSet:
    profile: str
    target: models.Target
    attach_path: str
    hooks: tuple                    # hooks.Hook, in program order (hook_<i>_*)
    scope_paths: tuple[str, ...]
    scope_real: str | None
    rendered: object                # render.Rendered: the program, the same for every filter_conf
    how: str = ""
    missing_optional: tuple[str, ...] = ()
    parsers: tuple[str, ...] | None = None   # userspace only: a change makes a generation that compiles nothing
    attach_file: tuple[int, int] = (0, 0)    # (st_dev, st_ino) of attach_path when planned
    addresses: tuple = ()           # per hook: (entry, (return, ...)) addresses in attach_path, or None: by
                                    # symbol; () = every hook by symbol
    cgroups: tuple[int, ...] = ()   # ids of the filters.cgroups paths that existed when planned
    cgroups_missing: tuple[str, ...] = ()   # ... and the paths that did not (they match nothing yet)
    namespace: object = None        # procroot.Namespace the paths were resolved in (a container); None: ours
    inside_path: str = ""           # attach_path as that namespace's processes see it

    def attach_changed(self) -> bool:
        """Was the attached file replaced on disk since (a package upgrade writes a new inode)?
        Its uprobes stay on the old inode, which new processes no longer map."""
        if self.attach_file == (0, 0):
            return False
        return file_identity(self.attach_path) not in (self.attach_file, (0, 0))

    def cgroups_changed(self) -> bool:
        """Did a filters.cgroups path appear, go, or get made anew (a new id) since planned? Its
        filter configuration then changes (an express-lane switch, no compile)."""
        if not self.target.filters.cgroups:
            return False
        return cgroups.resolve(self.target.filters.cgroups) != (self.cgroups, self.cgroups_missing)

    def cgroup_warnings(self, file: str) -> list[errors.Issue]:
        """One warning per filters.cgroups path that did not exist when planned (no error: it
        matches nothing until it exists, then the reconciler sees cgroups_changed)."""
        out = []
        for path in self.cgroups_missing:
            j = self.target.filters.cgroups.index(path)
            line, col = self.target.mark(f"filters.cgroups[{j}]")
            out.append(errors.Issue(file, line, col, f"spec.targets[{self.target.index}].filters.cgroups[{j}]",
                                    f"no cgroup {path} under {cgroups.mount() or 'the cgroup2 mount (none found)'} "
                                    f"(yet): it matches nothing until it exists"))
        return out

    @property
    def key(self) -> tuple[str, str]:
        return (self.profile, self.target.name)

    @property
    def digest(self) -> str:
        """Same digest ⇔ same program attached at the same places, with the same filter
        configuration and the same parsers."""
        return _sha(f"{self.kernel_digest}|{self.parsers}")

    @property
    def kernel_digest(self) -> str:
        """Same ⇔ the same program at the same places with the same filter configuration: a change
        of parsers alone keeps it."""
        return _sha(f"{self.program_key}|{self.filter_conf}")

    @property
    def attach_identity(self) -> str:
        """Same ⇔ the same uprobes: same file (and inode), hooks and pid scope. Targets with the same
        identity share trampolines, so a change that keeps it attaches nothing."""
        points = "|".join(f"{h.symbol}:{h.on}" for h in self.hooks)
        pids = ",".join(map(str, self.target.filters.pids))
        return _sha(f"{self.attach_path}|{self.attach_file}|{points}|{self.addresses}|{pids}")

    @property
    def program_key(self) -> str:
        """Same ⇔ one loaded program can run both: the same uprobes and the same program text,
        whatever the values it reads from maps (filter_conf)."""
        return f"{self.attach_identity}:{self.rendered.digest}"

    @property
    def filter_conf(self) -> str:
        """The values the program reads from maps (uid, comm, cgroup and port filters, max_bytes), as
        validated numbers (render.lane_values raises ValueError on anything else)."""
        return json.dumps(render.lane_values(self.target, self.cgroups), sort_keys=True)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def file_identity(path: str) -> tuple[int, int]:
    """(st_dev, st_ino) of `path`, or (0, 0) when it cannot be read (gone for a moment mid-upgrade)."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_dev, st.st_ino)


@dataclass(frozen=True)
class FailedTarget:
    """A target that could not be planned (missing binary, symbol, ...)."""
    profile: str
    target: models.Target
    field: str
    message: str
    file: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.profile, self.target.name)

    def issue(self) -> errors.Issue:
        line, col = self.target.mark(self.field)
        return errors.Issue(self.file, line, col, f"spec.targets[{self.target.index}].{self.field}", self.message)
