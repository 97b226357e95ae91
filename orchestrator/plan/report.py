"""The JSON documents of `ecapture validate --json` and `ecapture plan --json`. Pure: the command
does the looking (files, ELF, /proc, the control socket) and hands the results here.

The shape is a public contract (README, "JSON output"): `format` is 1, keys are added, never
renamed or removed. Every problem is an issue object `{file, line, col, field, message}`, the
same five parts as a `file:line:col: field: message` line of the text output.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.plan import diff
from orchestrator.profile import errors

FORMAT = 1
NOT_COMPARED_NONE = "no running `ecapture apply` answers"
NOT_COMPARED_VERSION = "the running `ecapture apply` is another version"


@dataclass
class FileCheck:
    """What checking one profile file found."""
    file: str
    profile: object = None                       # models.Profile, when it loaded
    errors: list = field(default_factory=list)   # errors.Issue
    warnings: list = field(default_factory=list)
    plan: tuple | None = None                    # (probe sets, failed targets), when planned


def issue(i: errors.Issue) -> dict:
    return {"file": i.file, "line": i.line, "col": i.col, "field": i.field, "message": i.message}


def file_entry(check: FileCheck) -> dict:
    p = check.profile
    return {"file": check.file, "ok": not check.errors, "profile": p.name if p is not None else None,
            "targets": len(p.targets) if p is not None else None,
            "errors": [issue(i) for i in check.errors], "warnings": [issue(i) for i in check.warnings]}


def validate_document(checks: list[FileCheck], general: list[errors.Issue], offline: bool) -> dict:
    """`general`: problems not about one profile file (no profiles found)."""
    return {"format": FORMAT, "command": "validate", "offline": offline,
            "ok": not general and all(not c.errors for c in checks),
            "errors": [issue(i) for i in general], "files": [file_entry(c) for c in checks]}


def key_name(key) -> str:
    return "/".join(key)


def compare(planned: list, running) -> tuple[diff.Changes, str | None]:
    """(changes, why not compared): against the running apply's targets (`running`: diff.Running
    views of the planned profiles' targets; None when no apply answers, a string when it could not
    be understood), else everything planned is a change (an `apply` would attach all of it)."""
    if running is None or isinstance(running, str):
        return diff.Changes(tuple(planned), (), (), ()), running or NOT_COMPARED_NONE
    return diff.diff(planned, running, views=lambda view: view), None


def changes_entry(changes: diff.Changes) -> dict:
    return {"add": [key_name(ps.key) for ps in changes.add],
            "remove": [key_name(view.key) for view in changes.remove],
            "replace": [{"target": key_name(ps.key), "how": how, "words": diff.WORDS[how]}
                        for (_, ps), how in zip(changes.replace, changes.how)],
            "unchanged": [key_name(ps.key) for ps in changes.unchanged]}


def _change_of(changes: diff.Changes) -> dict:
    out = {ps.key: "add" for ps in changes.add}
    out.update({ps.key: "replace" for _, ps in changes.replace})
    out.update({ps.key: "unchanged" for ps in changes.unchanged})
    return out


def target_entry(ps, running_now: list[int], change: str | None) -> dict:
    t, f = ps.target, ps.target.filters
    return {"target": t.name, "kind": t.kind, "ok": True, "digest": ps.digest,
            "attach": {"path": ps.attach_path, "how": ps.how, "namespace": namespace_entry(ps)},
            "hooks": [{"symbol": h.symbol, "on": h.on} for h in ps.hooks],
            "missing_optional": list(ps.missing_optional),
            "filters": {"pids": list(f.pids), "uids": list(f.uids), "comm": list(f.comm), "ports": list(f.ports),
                        "cgroups": list(f.cgroups)},
            "cgroups_missing": list(ps.cgroups_missing),
            "scope": list(ps.scope_paths), "running_now": running_now, "change": change}


def namespace_entry(ps) -> dict | None:
    """Where the target's paths were resolved: None for this host's mount namespace, else the
    process whose root they were looked up in and the attached file's path there."""
    if ps.namespace is None:
        return None
    return {"pid": ps.namespace.pid, "mnt": ps.namespace.mnt, "path": ps.inside_path}


def failed_entry(failed) -> dict:
    return {"target": failed.target.name, "kind": failed.target.kind, "ok": False, "error": issue(failed.issue())}


def plan_document(checks: list[FileCheck], general: list[errors.Issue], running_now: dict,
                  changes: diff.Changes, not_compared: str | None) -> dict:
    """`running_now`: probe-set key → the pids that match it now."""
    change_of = _change_of(changes)
    profiles = []
    for c in checks:
        if c.profile is None or c.plan is None:
            continue
        sets, failed = c.plan
        entry = {"profile": c.profile.name, "file": c.file,
                 "targets": [target_entry(ps, running_now.get(ps.key, []), change_of.get(ps.key)) for ps in sets] +
                            [failed_entry(fl) for fl in failed]}
        redact = getattr(c.profile, "redact", None)
        if redact is not None:
            entry["redact"] = list(redact.summary())
        profiles.append(entry)
    ok = not general and all(not c.errors for c in checks)
    return {"format": FORMAT, "command": "plan", "ok": ok,
            "errors": [issue(i) for i in general], "files": [file_entry(c) for c in checks],
            "profiles": profiles,
            "running": {"compared": not_compared is None, "reason": not_compared},
            "changes": changes_entry(changes), "changes_pending": not changes.empty}
