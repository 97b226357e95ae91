"""diff(desired, running) → what to add, remove, replace and leave alone. Pure."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Changes:
    add: tuple
    remove: tuple
    replace: tuple        # (running, desired) pairs
    unchanged: tuple

    @property
    def empty(self) -> bool:
        return not (self.add or self.remove or self.replace)


def diff(desired, running) -> Changes:
    """`desired` and `running` are iterables of objects with `.key` and `.digest`."""
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
    return Changes(add, remove, tuple(replace), tuple(unchanged))
