"""Prometheus metrics of `ecapture apply --metrics [HOST:]PORT`: what the capture counts, read at scrape time.

The collector reads the dispatcher's counters, the reconciler's status and each running
lane's ring-buffer positions when Prometheus scrapes, so capture pays nothing per record for
them. Reload durations are the one thing observed as it happens (the reconciler's
`on_reload` hook). The endpoint is prometheus_client's own HTTP server, on loopback unless
another address is given explicitly; the registry is this session's own, with the process's
CPU and memory added.
"""
from __future__ import annotations

import importlib.metadata
import ipaddress
import re
from dataclasses import dataclass

from prometheus_client import (CollectorRegistry, Histogram, ProcessCollector, disable_created_metrics,
                               start_http_server)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from orchestrator import fastpath

DEFAULT_HOST = "127.0.0.1"
# A reload that only flips filter values takes milliseconds; one that compiles, seconds.
RELOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# The states a target (runtime.RunningTarget), a profile file (reconciler.ProfileState) and an
# express lane (express.ExpressLane) can be in: each is a series, 1 for the current one, 0 else.
TARGET_STATES = ("pending", "running", "failed", "stopped")
PROFILE_STATES = ("pending", "loading", "ok", "error", "degraded")
LANE_STATES = ("armed", "held", "idle")

_LISTEN = re.compile(r"(?:(?P<host>\[[^\[\]]+\]|[^\[\]:]+):)?(?P<port>[0-9]{1,5})")


class MetricsError(Exception):
    """The metrics endpoint cannot be served: a malformed address, or one that cannot be bound."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False        # a host name: whatever it resolves to may be reachable from outside

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self}/metrics"


def parse_listen(text: str) -> Listen:
    """`PORT` (on 127.0.0.1), `HOST:PORT` or `[IPv6]:PORT`."""
    m = _LISTEN.fullmatch(text.strip())
    if m is None:
        raise MetricsError(f"--metrics {text!r}: expected PORT or HOST:PORT (e.g. 9464, 127.0.0.1:9464, "
                           f"[::1]:9464)")
    port = int(m["port"])
    if not 1 <= port <= 65535:
        raise MetricsError(f"--metrics {text!r}: the port must be between 1 and 65535")
    host = (m["host"] or DEFAULT_HOST).removeprefix("[").removesuffix("]")
    return Listen(host, port)


@dataclass(frozen=True)
class LaneView:
    """One running target's express lane, as scraped."""
    profile: str
    target: str
    state: str                      # one of LANE_STATES
    ring_used: int | None = None    # bytes written by the kernel and not read yet
    ring_size: int | None = None


def lanes_of(runtime) -> list[LaneView]:
    """The live lane of every running target of a reconcile.runtime.Runtime."""
    out = []
    for (profile, target), rt in sorted(list(runtime.targets.items())):
        lane = rt.lane
        if lane is None:
            continue
        state = "held" if lane.held else "armed" if lane.armed else "idle"
        fill = lane.loaded.ring_fill()
        used, size = fill if fill is not None else (None, None)
        out.append(LaneView(profile, target, state, used, size))
    return out


def _version() -> str:
    try:
        return importlib.metadata.version("ecapture")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _label(value) -> str:
    return "" if value is None else str(value)


def _counts(counter) -> list:
    """(labels, count) of a stats Counter, in label order. dict() copies in one step, without
    Python code running in between: the dispatcher thread may add keys meanwhile."""
    return sorted(([_label(v) for v in (key if isinstance(key, tuple) else (key,))], n)
                  for key, n in dict(counter).items())


class CaptureCollector(Collector):
    """Everything but the reload histogram, built anew at each scrape.

    `status()` answers like reconciler.Reconciler.status(); `lanes()` returns LaneViews."""

    def __init__(self, dispatcher, status, lanes):
        self.dispatcher = dispatcher
        self.status = status
        self.lanes = lanes

    def describe(self):
        return []       # families are known only at scrape time; nothing to check at registration

    def collect(self):
        yield from self._counters()
        yield from self._states(self.status())
        yield from self._lanes(self.lanes())
        queued = GaugeMetricFamily("ecapture_dispatcher_queued_bytes",
                                   "Bytes of decoded events waiting for the dispatcher (payloads plus a fixed "
                                   "overhead per event); pollers wait when it reaches its bound.")
        queued.add_metric([], self.dispatcher.queued_bytes)
        yield queued
        yield InfoMetricFamily("ecapture_build", "The ecapture version and which build of the consumer's hot path "
                                                 "runs (compiled: mypyc extensions; python: the sources).",
                               value={"version": _version(), "consumer": fastpath.mode})

    def _counters(self):
        stats = self.dispatcher.stats
        records = CounterMetricFamily("ecapture_records", "Records handed to the profile's sinks, by profile, "
                                                          "target and record type (loss records included).",
                                      labels=["profile", "target", "type"])
        for labels, n in _counts(stats.records_by_target):
            records.add_metric(labels, n)
        yield records
        events = CounterMetricFamily("ecapture_events", "Events read from the target's ring buffer and decoded.",
                                     labels=["profile", "target"])
        for labels, n in _counts(stats.events):
            events.add_metric(labels, n)
        yield events
        losses = CounterMetricFamily("ecapture_losses", "Events or records lost, by the stage that lost them "
                                                        "(kernel.ringbuf: ring buffer full, sink.KIND: a sink "
                                                        "could not write, ...); each also went out as a loss "
                                                        "record.", labels=["profile", "target", "stage"])
        for labels, n in _counts(stats.losses):
            losses.add_metric(labels, n)
        yield losses

    def _states(self, status: dict):
        targets = GaugeMetricFamily("ecapture_target_state", "1 for the state each target is in (" +
                                    ", ".join(TARGET_STATES) + "), 0 for the others.",
                                    labels=["profile", "target", "state"])
        generation = GaugeMetricFamily("ecapture_target_generation", "The running generation of each target "
                                                                     "(its filter configuration; a reload adds one).",
                                       labels=["profile", "target"])
        profiles = GaugeMetricFamily("ecapture_profile_state", "1 for the state each profile file is in (" +
                                     ", ".join(PROFILE_STATES) + "), 0 for the others.",
                                     labels=["file", "profile", "state"])
        for p in status.get("profiles", ()):
            name = _label(p.get("profile"))
            _one_hot(profiles, [_label(p["file"]), name], PROFILE_STATES, p["state"])
            for t in p.get("targets", ()):
                _one_hot(targets, [name, _label(t["name"])], TARGET_STATES, t["state"])
                if "generation" in t:
                    generation.add_metric([name, _label(t["name"])], t["generation"])
        passes = CounterMetricFamily("ecapture_reconcile_passes", "Passes over the profile files (start, each edit "
                                                                  "seen, each retry).")
        passes.add_metric([], status.get("passes", 0))
        yield from (targets, generation, profiles, passes)

    def _lanes(self, lanes: list[LaneView]):
        state = GaugeMetricFamily("ecapture_express_lane_state", "1 for the state of each target's express lane "
                                                                 "(armed: a configuration is live; held: its records "
                                                                 "wait while the lane before drains; idle), 0 for "
                                                                 "the others.", labels=["profile", "target", "state"])
        used = GaugeMetricFamily("ecapture_ring_buffer_used_bytes", "Bytes the kernel wrote to the target's ring "
                                                                    "buffer that are not read yet.",
                                 labels=["profile", "target"])
        size = GaugeMetricFamily("ecapture_ring_buffer_size_bytes", "Size of the target's ring buffer.",
                                 labels=["profile", "target"])
        ratio = GaugeMetricFamily("ecapture_ring_buffer_fill_ratio", "Used over size of the target's ring buffer "
                                                                     "(0 to 1; at 1 the kernel drops, counted as "
                                                                     "losses at kernel.ringbuf).",
                                  labels=["profile", "target"])
        for lane in lanes:
            labels = [_label(lane.profile), _label(lane.target)]
            _one_hot(state, labels, LANE_STATES, lane.state)
            if lane.ring_size:
                used.add_metric(labels, lane.ring_used)
                size.add_metric(labels, lane.ring_size)
                ratio.add_metric(labels, lane.ring_used / lane.ring_size)
        yield from (state, used, size, ratio)


def _one_hot(family: GaugeMetricFamily, labels: list, states: tuple, current: str) -> None:
    for s in states if current in states else (*states, current):
        family.add_metric([*labels, s], 1 if s == current else 0)


class Metrics:
    """One apply session's registry and, once `serve` is called, its HTTP endpoint."""

    def __init__(self, dispatcher, status, lanes):
        disable_created_metrics()      # no `_created` series beside the histogram's: a start time says as much
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.reloads = Histogram("ecapture_reload_duration_seconds",
                                 "How long applying a profile file took (first apply, edit or retry), from "
                                 "loading its targets to committing or rolling back.",
                                 ["profile"], buckets=RELOAD_BUCKETS, registry=self.registry)
        self.registry.register(CaptureCollector(dispatcher, status, lanes))
        self._server = None
        self._thread = None

    def observe_reload(self, profile: str, seconds: float) -> None:
        self.reloads.labels(profile=_label(profile)).observe(seconds)

    def serve(self, listen: Listen) -> None:
        try:
            self._server, self._thread = start_http_server(listen.port, listen.host, registry=self.registry)
        except OSError as exc:       # address in use, not an address of this host, unknown host name
            raise MetricsError(f"--metrics {listen}: cannot listen there: {exc.strerror or exc}") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None
