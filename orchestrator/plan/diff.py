"""diff(desired, running) → what to add, remove, replace and leave alone, and how to replace each. Pure.

The one place that decides how a change is carried out: the reconciler loads accordingly, the
reload log says it, and `ecapture plan` shows it against a running apply. Cheapest first:

- `parsers`: only userspace changed; the running programs go on, decoded with the new probe set.
- `express`: the running program takes the new filter values and max_bytes: map writes.
- `compile`: a new program on the same uprobes.
- `reattach`: new uprobes (file, inode, symbols or pid scope changed) and a new program.
"""
from __future__ import annotations

from dataclasses import dataclass

PARSERS, EXPRESS, COMPILE, REATTACH = "parsers", "express", "compile", "reattach"
WORDS = {PARSERS: "parsers only, no compile", EXPRESS: "express lane, no compile", COMPILE: "compile",
         REATTACH: "re-attach and compile"}


@dataclass(frozen=True)
class Running:
    """What the decision needs to know of a running target."""
    key: tuple
    digest: str
    kernel_digest: str
    attach_identity: str
    program_key: str               # what its loaded program can run (ProbeSet.program_key)


@dataclass(frozen=True)
class Changes:
    add: tuple
    remove: tuple
    replace: tuple        # (running, desired) pairs
    unchanged: tuple
    how: tuple = ()       # for each replace pair: PARSERS | EXPRESS | COMPILE | REATTACH

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.replace)


def how_to_replace(running: Running, desired) -> str:
    if running.kernel_digest == desired.kernel_digest:
        return PARSERS
    if running.program_key == desired.program_key:
        return EXPRESS
    if running.attach_identity == desired.attach_identity:
        return COMPILE
    return REATTACH


def diff(desired, running, views=None) -> Changes:
    """`desired` and `running` are iterables of objects with `.key` and `.digest`; with `views`
    (running object → Running), every replacement says how it is carried out."""
    want = {d.key: d for d in desired}
    have = {r.key: r for r in running}
    add = tuple(want[k] for k in sorted(want.keys() - have.keys()))
    remove = tuple(have[k] for k in sorted(have.keys() - want.keys()))
    replace, unchanged = [], []
    for k in sorted(want.keys() & have.keys()):
        if want[k].digest == have[k].digest:
            unchanged.append(want[k])
        else:
            replace.append((have[k], want[k]))
    how = tuple(how_to_replace(views(old), new) for old, new in replace) if views else ()
    return Changes(add, remove, tuple(replace), tuple(unchanged), how)
