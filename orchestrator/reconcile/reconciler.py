"""The reconciler: profile files on disk → running generations, one profile at a time.

Each pass re-reads the watched paths. Per profile file: an unchanged file is left
alone; a new, edited or deleted one is planned and diffed (pure) against what runs, and
the changes are applied as one transaction: every new generation is loaded first, held,
and only if all load are the gates flipped; otherwise all of them are discarded and the
last good generations keep running. Invalid files never stop what runs.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field

from orchestrator.plan import build, diff
from orchestrator.sinks import factory
from orchestrator.spec import errors, load


@dataclass
class ProfileState:
    path: str
    name: str | None = None
    state: str = "pending"                # ok | error | degraded (some targets failed)
    last_error: str = ""
    last_reload: float = 0.0
    reload_ms: float = 0.0
    source_digest: str = ""
    sink_specs: tuple = ()
    failed_targets: dict = field(default_factory=dict)   # target name → message


class Reconciler:
    def __init__(self, paths, runtime, dispatcher, log, warn, planner=build.plan_profile):
        self.paths = [os.path.abspath(p) for p in paths]
        self.runtime = runtime
        self.dispatcher = dispatcher
        self.log = log
        self.warn = warn
        self.plan = planner
        self.files: dict[str, ProfileState] = {}
        self.sinks: dict[str, list] = {}      # profile name → sink objects (read by the dispatcher)
        self.lock = runtime.lock     # the runtime's background lane work excludes reconcile passes
        self.passes = 0

    # ---------------------------------------------------------------- one pass
    def reconcile(self) -> None:
        with self.lock:
            self.passes += 1
            present = set(load.discover(self.paths))
            for path in sorted(set(self.files) - present):
                self._remove_file(path)
            for path in sorted(present):
                self._reconcile_file(path)

    def _read(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def _reconcile_file(self, path: str) -> None:
        st = self.files.setdefault(path, ProfileState(path))
        raw = self._read(path)
        if raw is None:
            return
        digest = hashlib.sha256(raw).hexdigest()
        if digest == st.source_digest:
            return
        first = not st.source_digest
        st.source_digest = digest
        t0 = time.monotonic()
        try:
            profile = load.load_file(path)
        except errors.ProfileError as exc:
            self._error(st, "\n".join(str(i) for i in exc.issues),
                        "keeping the last good generation" if st.name else "not applied")
            return
        owner = next((p for p, s in self.files.items() if p != path and s.name == profile.name), None)
        if owner:
            self._error(st, f"{profile.path}:1:1: metadata.name: profile {profile.name!r} is also defined in "
                            f"{os.path.relpath(owner)}", "not applied")
            return
        if st.name and st.name != profile.name:
            self._stop_profile(st.name)       # renamed: the old name's targets go
        summary = self._apply(st, profile)
        st.reload_ms = (time.monotonic() - t0) * 1000
        st.last_reload = time.time()
        if summary is not None:
            self.log(f"{'applied' if first else 'reloaded'} {profile.name} ({os.path.relpath(path)}) in "
                     f"{st.reload_ms:.0f} ms: {summary or 'no change'}")

    def _error(self, st: ProfileState, message: str, consequence: str) -> None:
        st.state, st.last_error = "error", message
        for line in message.splitlines():
            self.warn(line)
        self.warn(f"{os.path.relpath(st.path)}: {consequence}")

    # ---------------------------------------------------------------- the transaction
    def _apply(self, st: ProfileState, profile) -> str | None:
        sets, failed = self.plan(profile)
        failed_names = {f.target.name for f in failed}
        running = [rt for key, rt in self.runtime.targets.items() if key[0] == profile.name]
        # A target that cannot be planned now keeps its last good generation, if it has one.
        keep = [rt for rt in running if rt.key[1] in failed_names]
        changes = diff.diff(sets, [rt for rt in running if rt.key[1] not in failed_names])
        st.failed_targets = {}
        for f in failed:
            kept = any(rt.key[1] == f.target.name for rt in keep)
            st.failed_targets[f.target.name] = f.message
            self.warn(f"{f.issue()} ({'keeping its last good generation' if kept else 'target not started'})")

        new_sinks = None
        if profile.sinks != st.sink_specs or profile.name not in self.sinks:
            try:
                new_sinks = [factory.build(s) for s in profile.sinks]
            except (OSError, ValueError) as exc:
                self._error(st, f"{profile.path}:1:1: spec.sinks: cannot open sink: {exc}",
                            "keeping the last good generation" if running else "not applied")
                return None

        loaded, pairs = [], []
        for ps in changes.add:
            loaded.append((None, self.runtime.load(ps, hold=True)))
        for old, ps in changes.replace:
            loaded.append((old, self.runtime.load(ps, hold=True)))
        broken = [new for _, new in loaded if new.state != "running"]
        if broken:
            for _, new in loaded:
                self.runtime.discard(new)
            for new in broken:
                line, col = new.probe_set.target.mark("name")
                self.warn(f"{profile.path}:{line}:{col}: spec.targets[{new.probe_set.target.index}]: "
                          f"{new.last_error}")
            if new_sinks:
                for s in new_sinks:
                    s.close()
            st.state = "error"
            st.last_error = "; ".join(f"{b.probe_set.target.name}: {b.last_error}" for b in broken)
            self.warn(f"{os.path.relpath(st.path)}: change rolled back; "
                      f"{'the last good generation keeps running' if running else 'nothing started'}")
            return None
        pairs = loaded
        if new_sinks is not None:
            old_sinks = self.sinks.get(profile.name, [])
            self.sinks[profile.name] = new_sinks
            st.sink_specs = profile.sinks
            self.dispatcher.call_soon(lambda sinks=old_sinks: [s.close() for s in sinks])
        self.runtime.switch(pairs)
        for rt in changes.remove:
            self.runtime.stop(rt.key)
        st.name = profile.name
        st.state = "degraded" if failed else "ok"
        st.last_error = "; ".join(f"{n}: {m}" for n, m in st.failed_targets.items())
        parts = [f"added {', '.join(n.key[1] for _, n in loaded if _ is None)}" if changes.add else "",
                 f"replaced {', '.join(_replaced(n) for o, n in loaded if o)}"
                 if changes.replace else "",
                 f"removed {', '.join(r.key[1] for r in changes.remove)}" if changes.remove else "",
                 f"unchanged {', '.join(u.key[1] for u in changes.unchanged)}" if changes.unchanged else ""]
        return "; ".join(p for p in parts if p)

    # ---------------------------------------------------------------- removal
    def _remove_file(self, path: str) -> None:
        st = self.files.pop(path)
        if st.name:
            self._stop_profile(st.name)
            self.log(f"removed {st.name} ({os.path.relpath(path)}): its targets are detached")

    def _stop_profile(self, name: str) -> None:
        for key in [k for k in self.runtime.targets if k[0] == name]:
            self.runtime.stop(key)
        sinks = self.sinks.pop(name, [])
        self.dispatcher.call_soon(lambda: [s.close() for s in sinks])

    def close(self) -> None:
        self.runtime.stop_all()

    # ---------------------------------------------------------------- status
    def status(self) -> dict:
        with self.lock:
            stats = self.dispatcher.stats
            out = []
            for path, st in sorted(self.files.items()):
                targets = []
                for key, rt in sorted(self.runtime.targets.items()):
                    if key[0] != st.name:
                        continue
                    ps = rt.probe_set
                    targets.append({
                        "name": key[1], "kind": ps.target.kind, "state": rt.state, "generation": rt.generation,
                        "filters": "express lane" if rt.lane is not None else "compiled in",
                        "filters_in_force": _filter_values(ps.target.filters),
                        "express_lane": self._lane_state(key),
                        "digest": ps.digest, "library": ps.attach_path,
                        "symbols": [f"{h.symbol}:{h.on}" for h in ps.hooks],
                        "pid_scope": list(ps.target.filters.pids) or (
                            f"processes of {ps.scope_real}" if ps.scope_paths else "all"),
                        "events": stats.events.get(key, 0),
                        "losses": sum(n for (p, t, _), n in stats.losses.items() if (p, t) == key),
                        "last_error": st.failed_targets.get(key[1], ""),
                        "since": rt.started_at,
                    })
                for name, msg in st.failed_targets.items():
                    if not any(t["name"] == name for t in targets):
                        targets.append({"name": name, "state": "failed", "last_error": msg})
                out.append({"file": path, "profile": st.name, "state": st.state, "last_error": st.last_error,
                            "last_reload": st.last_reload, "reload_ms": round(st.reload_ms, 1),
                            "targets": targets})
            return {"profiles": out, "passes": self.passes}

    def _lane_state(self, key) -> str:
        lane = self.runtime.lanes.get(key)
        if lane is not None:
            return "live" if lane.armed else "ready"
        error = self.runtime.lane_errors.get(key)
        return f"unavailable: {error}" if error else ("building" if self.runtime.express_lanes else "off")

    def digests(self) -> dict:
        with self.lock:
            return {f"{k[0]}/{k[1]}": rt.digest for k, rt in self.runtime.targets.items()}

    def lanes(self) -> dict:
        """Per target with an express lane: what an edit must keep to go through it (see ExpressLane.fits)."""
        with self.lock:
            return {f"{k[0]}/{k[1]}": lane.fit_key for k, lane in self.runtime.lanes.items()}


def _filter_values(filters) -> dict:
    return {k: list(getattr(filters, k)) for k in ("pids", "uids", "comm", "ports")}


def _replaced(rt) -> str:
    how = "express lane, no compile" if rt.lane is not None else "compiled"
    return f"{rt.key[1]} (gen {rt.generation}, {how})"
