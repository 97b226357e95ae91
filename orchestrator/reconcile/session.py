"""An `ecapture apply` session: reconcile the profiles, keep watching them, answer `status`,
and on stop detach everything and summarise."""
from __future__ import annotations

import os
import threading
import time

from orchestrator import fastpath, metrics, safefile, threadname
from orchestrator.bpf import packets, state
from orchestrator.pipeline import dispatch, events
from orchestrator.reconcile import control, reconciler, runtime, watcher
from orchestrator.sinks import rotate


SIGNAL_CHECK_S = 0.2
RETRY_CHECK_S = 0.5     # how often temporary failures and replaced libraries are looked at
RELOAD_REOPEN_WAIT_S = 30.0   # a reload waits this long for the dispatcher to reopen the files


class ApplySession:
    def __init__(self, paths, log, warn, watch: bool = True, insecure_profiles: bool = False,
                 metrics_listen: metrics.Listen | None = None):
        """Raises metrics.MetricsError when `metrics_listen` cannot be served (before anything
        is loaded or attached)."""
        self.log = log
        self.warn = warn
        self.dispatcher = dispatch.Dispatcher(lambda name: self.reconciler.sinks.get(name, ()), warn=warn)
        self.runtime = runtime.Runtime(self.dispatcher, log, warn)
        self.reconciler = reconciler.Reconciler(paths, self.runtime, self.dispatcher, log, warn,
                                                insecure_profiles=insecure_profiles)
        self.watcher = watcher.Watcher(paths, self._on_change) if watch else None
        self.control = control.ControlServer({"ping": lambda: "pong", "status": self._status,
                                              "running": self.reconciler.running, "reload": self._reload})
        packets.configure(self.dispatcher.call_soon, warn, self.runtime.key_of, self._packets_lost)
        rotate.configure(warn)       # compressions of rotated files fail on a background thread
        self.reopen_failures = 0
        self._reopen_requested = False
        self.stop_event = threading.Event()
        self.started = time.time()
        self._retrier = threading.Thread(target=self._retry_loop, name="ecapture-retry", daemon=True)
        self.metrics = None
        if metrics_listen is not None:
            self.metrics = metrics.Metrics(self.dispatcher, self.reconciler.status,
                                           lambda: metrics.lanes_of(self.runtime))
            self.metrics.serve(metrics_listen)
            self.reconciler.on_reload = self.metrics.observe_reload
            log(f"Prometheus metrics on {metrics_listen.url}")

    def _status(self) -> dict:
        return {**self.reconciler.status(), "packet_capture": packets.interfaces(),
                "consumer": {"build": fastpath.mode, "why": fastpath.reason,
                             "queued_bytes": self.dispatcher.queued_bytes}}

    def _packets_lost(self, profiles, n: int) -> None:
        """Packets the classifier's ring had no room for (on the dispatcher thread)."""
        records = []
        for profile in profiles:
            self.dispatcher.stats.losses[(profile, "*", "packets")] += n
            records.append(events.Record("loss", None, {"profile": profile, "target": "*", "stage": "packets",
                                                        "count": n}))
        self.dispatcher.submit_records(records)

    def _on_change(self) -> None:
        try:
            self.reconciler.reconcile()
        except Exception as exc:   # a reconcile bug must not end capture; say it and keep running
            self.warn(f"reconcile failed: {type(exc).__name__}: {exc}")

    def _reload(self) -> dict:
        """`ecapture reload` (systemctl reload): what the watcher does after an edit, now and waited
        for: every profile file is read again if it changed (or appeared, or went), a temporary
        failure is retried without waiting for its backoff, and the file sinks reopen their paths
        as on SIGHUP (done when this answers: what is written next goes to the new files).
        Answers the status after the pass."""
        now = self.reconciler.clock()
        for st in list(self.reconciler.files.values()):
            if st.retry_at:
                st.retry_at = now
        self._on_change()
        reopened = threading.Event()

        def reopen() -> None:
            try:
                self._reopen_files()
            finally:
                reopened.set()
        self.dispatcher.call_soon(reopen)
        reopened.wait(RELOAD_REOPEN_WAIT_S)
        return self.reconciler.status()

    def _retry_loop(self) -> None:
        threadname.name_this_thread()
        while not self.stop_event.wait(RETRY_CHECK_S):
            if self.reconciler.retry_due():
                self._on_change()

    def run(self, duration: float | None = None, ready_file: str | None = None) -> bool:
        """Returns False when no profile could be applied at start."""
        self.dispatcher.start()
        try:
            for line in packets.cleanup_stale():
                self.log(f"removed what a killed apply left: {line}")
        except packets.PacketError as exc:
            self.warn(str(exc))
        if self.watcher is not None:
            self.watcher.start()      # before the first pass, so no edit in between is missed
        self._on_change()    # guarded like every later pass: one bad file must not stop the start
        self._retrier.start()
        watching_a_dir = self.watcher is not None and any(os.path.isdir(p) for p in self.reconciler.paths)
        if not watching_a_dir and not any(st.name for st in self.reconciler.files.values()):
            return False   # nothing valid to run, and no directory where a profile may appear
        reason = self.control.start()
        if reason:
            self.warn(reason)
        if ready_file:
            try:
                fd = safefile.open_private(ready_file, truncate=True)
            except OSError as exc:
                self.warn(f"--ready-file: {exc}")
                return False
            os.write(fd, b"ready\n")
            os.close(fd)
        self._wait(duration)
        return True

    def _wait(self, duration: float | None) -> None:
        # Short waits, never one long one: Python runs signal handlers only on the main thread, and
        # a SIGINT/SIGTERM taken by another thread (clang's handlers, installed while it compiles in
        # the background, re-raise it there) would otherwise leave the main thread asleep for good.
        deadline = None if duration is None else time.monotonic() + duration
        while True:
            if self._reopen_requested:
                self._reopen_requested = False
                self.dispatcher.call_soon(self._reopen_files)
            left = SIGNAL_CHECK_S if deadline is None else min(SIGNAL_CHECK_S, deadline - time.monotonic())
            if left <= 0 or self.stop_event.wait(left):
                return

    def request_reopen(self) -> None:
        """SIGHUP: the files are reopened from the main loop (a signal handler must take no lock)."""
        self._reopen_requested = True

    def _reopen_files(self) -> None:
        """On the dispatcher thread: every file sink opens its path again, between two batches."""
        reopened, failed = self.reconciler.reopen_files()
        self.reopen_failures += len(failed)
        for line in failed:
            self.warn(f"SIGHUP: cannot reopen {line}; it keeps writing to the file it had open "
                      f"({self.reopen_failures} reopen failure(s) so far)")
        self.log(f"SIGHUP: reopened {reopened} file(s)" + (f"; {len(failed)} could not be reopened" if failed else ""))

    def shutdown(self) -> dict:
        self.stop_event.set()
        if self._retrier.is_alive():
            self._retrier.join(60)     # a retry pass may be compiling
        if self.watcher is not None:
            self.watcher.stop()
        self.control.close()
        if self.metrics is not None:
            self.metrics.close()
        self.reconciler.close()
        packets.stop()              # what the classifier captured goes to the dispatcher before it stops
        state.close()
        self.dispatcher.stop()
        closed = [s for sinks in self.reconciler.sinks.values() for s in sinks]
        for s in closed:
            s.close()
        self._count_lost_at_close(closed)
        packets.close()             # no sink wants an interface now: every filter comes off
        return self.summary()

    def _count_lost_at_close(self, sinks) -> None:
        """A sink that sends after close (nats: what is buffered, for flush_timeout) is waited
        for, and what it could not send goes into the summary's losses, not only to stderr."""
        for s in sinks:
            if hasattr(s, "join") and hasattr(s, "lost_at_close"):
                s.join(getattr(s, "flush_timeout", 5.0) + 5.0)
                for (profile, target), n in s.lost_at_close.items():
                    self.dispatcher.stats.losses[(profile, target, f"sink.{s.kind}")] += n

    def summary(self) -> dict:
        st = self.dispatcher.stats
        failed = [f"{s.name}/{t}" for s in self.reconciler.files.values() for t in s.failed_targets]
        return {"events": dict(st.events), "records": dict(st.records), "losses": dict(st.losses),
                "failed_targets": failed, "sink_errors": self.dispatcher.sink_errors[:5],
                "seconds": round(time.time() - self.started, 1)}
