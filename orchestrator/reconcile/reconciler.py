"""The reconciler: profile files on disk → running generations, one profile at a time.

Each pass re-reads the watched paths. Per profile file: an unchanged file is left alone; a
new, edited or deleted one is loaded and planned (outside the runtime lock: nothing slow or
hostile runs under it), diffed (pure) against what runs, and the changes are applied as one
transaction: every new generation is loaded first, held, and only if all load are the gates
flipped; otherwise all of them are discarded and the last good generations keep running.

Errors are permanent or temporary, as in kopf. An invalid file is permanent: only an edit can
fix it, so it waits for one. Everything about the world is temporary and retried with backoff
without an edit: a binary or library not there yet, no running process to find a library in,
a compile or sink that failed, an untrusted folder being fixed. A target whose library is
replaced on disk (a package upgrade: new inode) is re-planned and re-attached.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import time
from dataclasses import dataclass, field

from orchestrator import workdir
from orchestrator.pipeline import redact
from orchestrator.plan import build, diff
from orchestrator.sinks import factory
from orchestrator.profile import errors, load, models, trust

PLAN_RETRY_CAP_S = 2.0       # cheap to retry (ELF and /proc reads): a process that appears is seen soon
LOAD_RETRY_CAP_S = 30.0      # a failed compile or sink: back off further


@dataclass
class ProfileState:
    path: str
    name: str | None = None
    state: str = "pending"                # pending | loading | ok | error | degraded (some targets failed)
    last_error: str = ""
    last_reload: float = 0.0
    reload_ms: float = 0.0
    fingerprint: tuple = ()               # os.stat of the file when last read
    source_digest: str = ""
    sink_specs: tuple = ()
    failed_targets: dict = field(default_factory=dict)   # target name → message
    cgroup_warnings: set = field(default_factory=set)    # filters.cgroups paths not there, as said
    attempts: int = 0                     # consecutive temporary failures
    retry_at: float = 0.0                 # monotonic time of the next retry; 0: none due

    def schedule_retry(self, cap_s: float, now: float) -> None:
        self.attempts += 1
        self.retry_at = now + min(cap_s, 0.25 * 2 ** self.attempts)

    def succeeded(self) -> None:
        self.attempts, self.retry_at = 0, 0.0


@dataclass
class _Prepared:
    """One file read, loaded and planned outside the runtime lock."""
    st: ProfileState
    profile: object = None
    sets: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    error: str = ""                       # the file cannot be applied now
    temporary: bool = False               # ... but may be later without an edit


class Reconciler:
    def __init__(self, paths, runtime, dispatcher, log, warn, planner=build.plan_profile,
                 insecure_profiles: bool = False, clock=time.monotonic):
        self.paths = [workdir.absolute(p) for p in paths]
        self.runtime = runtime
        self.dispatcher = dispatcher
        self.log = log
        self.warn = warn
        self.plan = planner
        self.insecure_profiles = insecure_profiles
        self.clock = clock
        self.files: dict[str, ProfileState] = {}
        self.sinks: dict[str, list] = {}      # profile name → sink objects (read by the dispatcher)
        self.redactors: dict[str, redact.Redactor] = {}   # profile name → its spec.redact step (first in sinks)
        self.lock = runtime.lock     # whoever changes what runs holds it
        self._pass_lock = threading.Lock()    # one pass at a time (watcher, retries)
        self.passes = 0
        self.on_reload = None       # called with (profile name, seconds) after each apply of a file: metrics

    # ---------------------------------------------------------------- one pass
    def reconcile(self) -> None:
        with self._pass_lock:
            present = load.discover(self.paths)
            prepared = [p for p in (self._prepare(path) for path in present) if p is not None]
            with self.lock:
                self.passes += 1
                for path in sorted(set(self.files) - set(present)):
                    self._remove_file(path)
                for item in prepared:
                    self._apply_prepared(item)

    def retry_due(self) -> bool:
        """A temporary failure waits for its retry, or a running target's file changed on disk."""
        now = self.clock()
        for st in list(self.files.values()):
            if st.retry_at and st.retry_at <= now:
                return True
        return any(rt.probe_set.attach_changed() or rt.probe_set.cgroups_changed()
                   for rt in list(self.runtime.targets.values()))

    def _fingerprint(self, path: str) -> tuple:
        try:
            st = os.stat(path)     # through a ConfigMap's `..data` links: their swap changes it
        except OSError:
            return ()
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _prepare(self, path: str) -> _Prepared | None:
        st = self.files.setdefault(path, ProfileState(path))
        fingerprint = self._fingerprint(path)
        due = bool(st.retry_at) and st.retry_at <= self.clock()
        replaced_on_disk = st.name is not None and any(
            rt.probe_set.attach_changed() or rt.probe_set.cgroups_changed()
            for key, rt in list(self.runtime.targets.items()) if key[0] == st.name)
        if fingerprint == st.fingerprint and not due and not replaced_on_disk:
            return None
        st.fingerprint = fingerprint
        item = _Prepared(st)
        untrusted = [] if self.insecure_profiles else trust.problems(path)
        if untrusted:
            item.error = "\n".join(f"{workdir.shown(path)}:1:1: {m} (or run apply with --insecure-profiles)"
                                    for m in untrusted)
            item.temporary = True
            return item
        try:
            item.profile = load.load_file(path, check_outputs=False)   # sinks: opened (and retried) below
        except errors.ProfileError as exc:
            item.error = "\n".join(str(i) for i in exc.issues)
            return item
        if item.profile.source_digest == st.source_digest and not due and not replaced_on_disk:
            return None            # saved again unchanged
        item.sets, item.failed = self.plan(item.profile)
        return item

    def _apply_prepared(self, item: _Prepared) -> None:
        st, profile = item.st, item.profile
        now = self.clock()
        if item.error:
            st.source_digest = ""
            self._error(st, item.error, "keeping the last good generation" if st.name else "not applied")
            if item.temporary:
                st.schedule_retry(PLAN_RETRY_CAP_S, now)
            else:
                st.retry_at = 0.0        # waits for an edit
            return
        owner = next((p for p, s in list(self.files.items()) if p != st.path and s.name == profile.name), None)
        if owner:
            self._error(st, f"{profile.path}:1:1: metadata.name: profile {profile.name!r} is also defined in "
                            f"{workdir.shown(owner)}", "not applied")
            st.schedule_retry(PLAN_RETRY_CAP_S, now)     # until the other file goes
            return
        first = not st.name
        renamed_from = st.name if st.name and st.name != profile.name else None
        st.source_digest = profile.source_digest
        st.state = "loading"
        t0 = time.monotonic()
        summary = self._apply(st, profile, item.sets, item.failed)
        if summary is not None and renamed_from:
            self._stop_profile(renamed_from)     # only once the new name runs: a failed load keeps it
            summary = f"renamed from {renamed_from}; {summary}"
        st.reload_ms = (time.monotonic() - t0) * 1000
        st.last_reload = time.time()
        if self.on_reload is not None:
            self.on_reload(profile.name, st.reload_ms / 1000)
        if summary is None:
            st.schedule_retry(LOAD_RETRY_CAP_S, now)
        elif item.failed:
            st.schedule_retry(PLAN_RETRY_CAP_S, now)
        else:
            st.succeeded()
        if summary is not None:
            self.log(f"{'applied' if first else 'reloaded'} {profile.name} ({workdir.shown(st.path)}) in "
                     f"{st.reload_ms:.0f} ms: {summary or 'no change'}")

    def _error(self, st: ProfileState, message: str, consequence: str) -> None:
        repeated = st.state == "error" and st.last_error == message     # a retry failing the same way
        st.state, st.last_error = "error", message
        if repeated:
            return
        for line in message.splitlines():
            self.warn(line)
        self.warn(f"{workdir.shown(st.path)}: {consequence}")

    # ---------------------------------------------------------------- the transaction
    def _apply(self, st: ProfileState, profile, sets, failed) -> str | None:
        """Plan → open sinks → load all → commit → summarise; None when nothing changed (rolled back)."""
        running = [rt for key, rt in self.runtime.targets.items() if key[0] == profile.name]
        last_good = bool(running) or st.name is not None     # under this name, or the one it replaces
        changes = self._plan_changes(st, sets, failed, running)
        new_sinks = self._open_sinks(st, profile, last_good)
        if new_sinks is False:
            return None
        loaded = self._load_all(changes)
        if loaded is None:
            return None
        broken = [new for _, new in loaded if new.state != "running"]
        if broken:
            self._roll_back(st, profile, loaded, broken, new_sinks, last_good)
            return None
        self._commit(st, profile, changes, loaded, new_sinks, failed)
        return _summary(changes, loaded)

    def _plan_changes(self, st: ProfileState, sets, failed, running) -> diff.Changes:
        # A target that cannot be planned now keeps its last good generation, if it has one.
        failed_names = {f.target.name for f in failed}
        kept = {rt.key[1] for rt in running if rt.key[1] in failed_names}
        previous, st.failed_targets = st.failed_targets, {}
        for f in failed:
            st.failed_targets[f.target.name] = f.message
            if previous.get(f.target.name) != f.message:     # retries repeat it: say it once
                self.warn(f"{f.issue()} ({'keeping its last good generation' if f.target.name in kept else 'target not started'}"
                          f"; retrying)")
        warned, st.cgroup_warnings = st.cgroup_warnings, set()
        for ps in sets:     # not a failure: the filter matches nothing until the cgroup exists
            for issue in ps.cgroup_warnings(workdir.shown(st.path)):
                st.cgroup_warnings.add(str(issue))
                if str(issue) not in warned:      # retries repeat it: say it once
                    self.warn(str(issue))
        return diff.diff(sets, [rt for rt in running if rt.key[1] not in failed_names], views=self.runtime.view)

    def _open_sinks(self, st: ProfileState, profile, last_good: bool):
        """New sink objects when the profile's sinks changed, None when they did not, False on failure."""
        if profile.sinks == st.sink_specs and profile.name in self.sinks:
            return None
        built = []
        try:
            for spec in profile.sinks:
                built.append(factory.build(spec, profile.name, _ports_of(profile)))
            return built
        except (OSError, ValueError) as exc:
            for sink in built:          # the ones opened before it (a capture they started, files)
                try:
                    sink.close()
                except Exception:
                    pass
            self._error(st, f"{profile.path}:1:1: spec.sinks: cannot open sink: {exc}",
                        "keeping the last good generation" if last_good else "not applied")
            return False

    def _load_all(self, changes: diff.Changes) -> list:
        loaded = [(None, self.runtime.load(ps)) for ps in changes.add]
        for (old, ps), how in zip(changes.replace, changes.how):
            loaded.append((old, self.runtime.load(ps, how=how)))
        return loaded

    def _roll_back(self, st: ProfileState, profile, loaded, broken, new_sinks, last_good: bool) -> None:
        for _, new in loaded:
            self.runtime.discard(new)
        for new in broken:
            line, col = new.probe_set.target.mark("name")
            self.warn(f"{profile.path}:{line}:{col}: spec.targets[{new.probe_set.target.index}]: {new.last_error}")
        for s in new_sinks or ():
            s.close()
        st.state = "error"
        st.last_error = "; ".join(f"{b.probe_set.target.name}: {b.last_error}" for b in broken)
        self.warn(f"{workdir.shown(st.path)}: change rolled back; "
                  f"{'the last good generation keeps running' if last_good else 'nothing started'}")

    def _commit(self, st: ProfileState, profile, changes: diff.Changes, loaded, new_sinks, failed) -> None:
        current = [s for s in self.sinks.get(profile.name, []) if not isinstance(s, redact.Redactor)]
        if new_sinks is not None:
            self.sinks[profile.name] = self._redacted(profile, new_sinks)
            st.sink_specs = profile.sinks
            self.dispatcher.call_soon(lambda sinks=current: [s.close() for s in sinks])
        else:       # a new `redact` takes effect on the sinks already open
            self.sinks[profile.name] = self._redacted(profile, current)
        self.runtime.switch(loaded)
        for rt in changes.remove:
            self.runtime.stop(rt.key)
        st.name = profile.name
        st.state = "degraded" if failed else "ok"
        st.last_error = "; ".join(f"{n}: {m}" for n, m in st.failed_targets.items())

    # ---------------------------------------------------------------- removal
    def _remove_file(self, path: str) -> None:
        st = self.files.pop(path)
        if st.name:
            self._stop_profile(st.name)
            self.log(f"removed {st.name} ({workdir.shown(path)}): its targets are detached")

    def _redacted(self, profile, sinks: list) -> list:
        """`sinks` behind the profile's redaction step (the same Redactor object across reloads,
        its rules swapped), or `sinks` alone when the profile redacts nothing."""
        rules = redact.Rules(profile.redact.headers, profile.redact.query, profile.redact.fields,
                             profile.redact.patterns, profile.redact.sql)
        if rules.empty:
            self.redactors.pop(profile.name, None)
            return list(sinks)
        # A sink that takes raw plaintext needs the payloads masked too (RawRedactor.write_data).
        cls = redact.RawRedactor if any(hasattr(s, "write_data") for s in sinks) else redact.Redactor
        step = self.redactors.get(profile.name)
        if type(step) is cls:
            step.update(rules)
        else:
            step = self.redactors[profile.name] = cls(rules, warn=lambda line, name=profile.name: self.warn(
                f"{name}: {line}"))
        return [step, *sinks]

    def _stop_profile(self, name: str) -> None:
        self.redactors.pop(name, None)
        for key in [k for k in self.runtime.targets if k[0] == name]:
            self.runtime.stop(key)
        sinks = self.sinks.pop(name, [])
        self.dispatcher.call_soon(lambda: [s.close() for s in sinks])

    def close(self) -> None:
        self.runtime.stop_all()

    def reopen_files(self) -> tuple[int, list[str]]:
        """Every sink that writes a file opens its path again (SIGHUP, for logrotate); sinks
        without `reopen` are skipped. Runs on the dispatcher thread, between batches. Returns
        (files reopened, one line per sink that could not: it keeps its current file)."""
        reopened, failed = 0, []
        for profile, sinks in sorted(list(self.sinks.items())):
            for sink in list(sinks):
                reopen = getattr(sink, "reopen", None)
                if reopen is None:
                    continue
                try:
                    reopen()
                except Exception as exc:      # one sink's failure must neither stop the others nor apply
                    reason = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) \
                        or type(exc).__name__
                    failed.append(f"{profile}: {getattr(sink, 'kind', type(sink).__name__)} "
                                  f"{getattr(sink, 'path', '')}: {reason}")
                    continue
                reopened += 1
        return reopened, failed

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        """Answered without the runtime lock, from copies: a reload that takes seconds shows as
        `loading` instead of making `status` wait for it."""
        stats = self.dispatcher.stats
        running = sorted(list(self.runtime.targets.items()))
        losses = list(stats.losses.items())
        out = []
        for path, st in sorted(list(self.files.items())):
            targets = []
            for key, rt in running:
                if key[0] != st.name:
                    continue
                ps = rt.probe_set
                targets.append({
                    "name": key[1], "kind": ps.target.kind, "state": rt.state, "generation": rt.generation,
                    "filters_in_force": _filter_values(ps.target.filters),
                    "digest": ps.digest, "library": ps.attach_path, "library_inode": ps.attach_file[1],
                    "symbols": [f"{h.symbol}:{h.on}" for h in ps.hooks],
                    "pid_scope": list(ps.target.filters.pids) or (
                        f"processes of {ps.scope_real}" if ps.scope_paths else "all"),
                    "events": stats.events.get(key, 0),
                    "losses": sum(n for (p, t, _), n in losses if (p, t) == key),
                    "last_error": st.failed_targets.get(key[1], ""),
                    "since": rt.started_at,
                })
            for name, msg in list(st.failed_targets.items()):
                if not any(t["name"] == name for t in targets):
                    targets.append({"name": name, "state": "failed", "last_error": msg})
            out.append({"file": path, "profile": st.name, "state": st.state, "last_error": st.last_error,
                        "last_reload": st.last_reload, "reload_ms": round(st.reload_ms, 1),
                        "retrying_in_s": round(max(0.0, st.retry_at - self.clock()), 1) if st.retry_at else None,
                        "redaction_failed": getattr(self.redactors.get(st.name), "failed", 0),
                        "targets": targets})
        return {"profiles": out, "passes": self.passes}

    def running(self) -> list[dict]:
        """Every running target as plan.diff sees it, for `ecapture plan` to decide as apply would."""
        return [dataclasses.asdict(self.runtime.view(rt)) for rt in list(self.runtime.targets.values())]


def _ports_of(profile) -> set | None:
    """The only ports the profile's connections can have: its targets' port filters, or None
    (any port) when a connection target has none."""
    targets = [t for t in profile.targets if t.kind in models.CONNECTION_KINDS]
    if not targets or any(not t.filters.ports for t in targets):
        return None
    return {p for t in targets for p in t.filters.ports}


def _filter_values(filters) -> dict:
    return {k: list(getattr(filters, k)) for k in ("pids", "uids", "comm", "ports", "cgroups")}


def _summary(changes: diff.Changes, loaded) -> str:
    replaced = [new for old, new in loaded if old is not None]
    parts = [f"added {', '.join(new.key[1] for old, new in loaded if old is None)}" if changes.add else "",
             f"replaced {', '.join(f'{rt.key[1]} (gen {rt.generation}, {rt.how})' for rt in replaced)}"
             if replaced else "",
             f"removed {', '.join(r.key[1] for r in changes.remove)}" if changes.remove else "",
             f"unchanged {', '.join(u.key[1] for u in changes.unchanged)}" if changes.unchanged else ""]
    return "; ".join(p for p in parts if p)
