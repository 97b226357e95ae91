"""An `ecapture apply` session: load profiles, start their targets, run until told to stop, summarise.

Profiles that fail to load, and targets that fail to plan or attach, are reported and
marked; everything else keeps running.
"""
from __future__ import annotations

import os
import threading
import time

from orchestrator.pipeline import dispatch
from orchestrator.plan import build
from orchestrator.reconcile import runtime
from orchestrator.sinks import factory
from orchestrator.spec import errors, load


class ApplySession:
    def __init__(self, paths, log, warn):
        self.paths = list(paths)
        self.log = log            # informational lines (stderr)
        self.warn = warn          # error lines (stderr)
        self.sinks: dict[str, list] = {}
        self.profiles: dict = {}
        self.failed_targets: list = []
        self.dispatcher = dispatch.Dispatcher(lambda name: self.sinks.get(name, ()))
        self.runtime = runtime.Runtime(self.dispatcher, log=log)
        self.stop_event = threading.Event()
        self.started = time.time()

    def load_profiles(self) -> int:
        """Returns how many profiles loaded."""
        for path in load.discover(self.paths):
            try:
                profile = load.load_file(path)
            except errors.ProfileError as exc:
                for issue in exc.issues:
                    self.warn(str(issue))
                continue
            if profile.name in self.profiles:
                other = self.profiles[profile.name].path
                self.warn(f"{profile.path}:1:1: metadata.name: profile {profile.name!r} is also defined in {other}")
                continue
            try:
                self.sinks[profile.name] = [factory.build(s) for s in profile.sinks]
            except OSError as exc:
                self.warn(f"{profile.path}:1:1: spec.sinks: cannot open sink: {exc}")
                continue
            self.profiles[profile.name] = profile
        return len(self.profiles)

    def start_targets(self) -> int:
        """Plan and start every target; returns how many run."""
        running = 0
        for profile in self.profiles.values():
            sets, failed = build.plan_profile(profile)
            for f in failed:
                self.failed_targets.append(f)
                self.warn(f"{f.issue()} (target {f.target.name!r} not started)")
            for ps in sets:
                rt = self.runtime.start(ps)
                if rt.state == "running":
                    running += 1
                    pts = sorted({f"{a.symbol}" for a in rt.loaded.attached})
                    scope = f", scoped to {ps.scope_real}" if ps.scope_real and ps.scope_paths else ""
                    self.log(f"{ps.profile}/{ps.target.name}: running — {len(rt.loaded.attached)} probe(s) on "
                             f"{ps.attach_path} ({', '.join(pts)}){scope}")
                else:
                    self.warn(f"{profile.path}:{ps.target.line}:{ps.target.mark('name')[1]}: "
                              f"spec.targets[{ps.target.index}]: {rt.last_error} (target {ps.target.name!r} not started)")
        return running

    def run(self, duration: float | None = None, ready_file: str | None = None) -> None:
        self.dispatcher.start()
        self.start_targets()
        if ready_file:
            fd = os.open(ready_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, b"ready\n")
            os.close(fd)
        self.stop_event.wait(duration)

    def shutdown(self) -> dict:
        self.runtime.stop_all()
        self.dispatcher.stop()
        for sinks in self.sinks.values():
            for s in sinks:
                s.close()
        return self.summary()

    def summary(self) -> dict:
        st = self.dispatcher.stats
        return {"events": dict(st.events), "records": dict(st.records), "losses": dict(st.losses),
                "failed_targets": [f"{f.profile}/{f.target.name}" for f in self.failed_targets],
                "seconds": round(time.time() - self.started, 1)}
