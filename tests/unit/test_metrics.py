"""The Prometheus metrics of `apply --metrics`: the collector over a real Dispatcher fed with records, the
address option, and the HTTP endpoint (no root)."""
from __future__ import annotations

import errno
import socket
import urllib.request
from dataclasses import dataclass

import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator import fastpath, metrics
from orchestrator.bpf import layout
from orchestrator.pipeline import dispatch, events
from tests.unit.test_pipeline import REQ, RESP, ListSink, _probe_set, _raw


class FullDiskSink(ListSink):
    kind = "jsonl"

    def write(self, records):
        raise OSError(errno.ENOSPC, "No space left on device")


STATUS = {
    "passes": 3,
    "profiles": [
        {"file": "/etc/ecapture/prof.yaml", "profile": "prof", "state": "degraded", "targets": [
            {"name": "web", "state": "running", "generation": 2},
            {"name": "db", "state": "failed", "last_error": "no such library"},
        ]},
        {"file": "/etc/ecapture/broken.yaml", "profile": None, "state": "error", "targets": []},
    ],
}
LANES = [metrics.LaneView("prof", "web", "held", ring_used=1024, ring_size=4096)]


def scrape(m: metrics.Metrics) -> dict:
    """family name → {(sorted label pairs): value}, parsed as Prometheus parses the exposition."""
    from prometheus_client import generate_latest
    return parse(generate_latest(m.registry).decode())


def parse(text: str) -> dict:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def labels(**kw) -> tuple:
    return tuple(sorted(kw.items()))


@dataclass
class Fed:
    dispatcher: dispatch.Dispatcher
    metrics: metrics.Metrics
    good: ListSink


@pytest.fixture
def fed():
    """A Dispatcher that processed a request, its response and a loss record, with a second sink
    whose disk is full (its records are counted as losses at sink.jsonl)."""
    good, full = ListSink(), FullDiskSink()
    d = dispatch.Dispatcher(lambda _p: [good, full], warn=lambda line: None)
    ps = _probe_set()
    d.process([events.decode(_raw(REQ, seq=0), ps), events.decode(_raw(RESP, seq=1, hook=0, direction=layout.DIR_WRITE), ps),
               events.Record("loss", None, {"profile": "prof", "target": "web", "stage": "kernel.ringbuf", "count": 3})])
    d.flush_all()
    return Fed(d, metrics.Metrics(d, lambda: STATUS, lambda: LANES), good)


def test_records_events_and_losses_are_the_dispatchers_counts(fed):
    d, m = fed.dispatcher, fed.metrics
    got = scrape(m)
    # The working sink got the three records, and a loss record about the full one's losses.
    assert [(r["type"], r.get("stage")) for r in fed.good.records] == [
        ("http.request", None), ("http.response", None), ("loss", "kernel.ringbuf"), ("loss", "sink.jsonl")]
    assert got["ecapture_records_total"] == {
        labels(profile="prof", target="web", type="http.request"): 1,
        labels(profile="prof", target="web", type="http.response"): 1,
        labels(profile="prof", target="web", type="loss"): 2}
    assert got["ecapture_events_total"] == {labels(profile="prof", target="web"): 2}
    # The full sink lost all three records of the batch.
    assert got["ecapture_losses_total"] == {labels(profile="prof", target="web", stage="sink.jsonl"): 3}
    assert got["ecapture_dispatcher_queued_bytes"] == {(): 0}
    # Read at scrape time: more records show in the next scrape with no call in between.
    d.process([events.decode(_raw(REQ, seq=2, session=0xdef), _probe_set())])
    assert scrape(m)["ecapture_records_total"][labels(profile="prof", target="web", type="http.request")] == 2


def test_target_and_profile_states_are_one_hot(fed):
    got = scrape(fed.metrics)["ecapture_target_state"]
    assert {k: v for k, v in got.items() if v} == {labels(profile="prof", target="web", state="running"): 1,
                                                  labels(profile="prof", target="db", state="failed"): 1}
    assert len(got) == 2 * len(metrics.TARGET_STATES)
    profiles = scrape(fed.metrics)["ecapture_profile_state"]
    assert {k: v for k, v in profiles.items() if v} == {
        labels(file="/etc/ecapture/prof.yaml", profile="prof", state="degraded"): 1,
        labels(file="/etc/ecapture/broken.yaml", profile="", state="error"): 1}
    assert scrape(fed.metrics)["ecapture_target_generation"] == {labels(profile="prof", target="web"): 2}
    assert scrape(fed.metrics)["ecapture_reconcile_passes_total"] == {(): 3}


def test_a_state_not_known_here_still_shows():
    status = {"profiles": [{"file": "/p.yaml", "profile": "p", "state": "ok",
                            "targets": [{"name": "t", "state": "draining", "generation": 1}]}]}
    m = metrics.Metrics(dispatch.Dispatcher(lambda _p: []), lambda: status, lambda: [])
    got = scrape(m)["ecapture_target_state"]
    assert got[labels(profile="p", target="t", state="draining")] == 1
    assert sum(got.values()) == 1


def test_ring_fill_and_express_lane_state(fed):
    got = scrape(fed.metrics)
    key = labels(profile="prof", target="web")
    assert got["ecapture_ring_buffer_used_bytes"] == {key: 1024}
    assert got["ecapture_ring_buffer_size_bytes"] == {key: 4096}
    assert got["ecapture_ring_buffer_fill_ratio"] == {key: 0.25}
    lane = got["ecapture_express_lane_state"]
    assert {k: v for k, v in lane.items() if v} == {labels(profile="prof", target="web", state="held"): 1}
    assert {dict(k)["state"] for k in lane} == set(metrics.LANE_STATES)


def test_a_closed_ring_has_no_fill_series():
    m = metrics.Metrics(dispatch.Dispatcher(lambda _p: []), lambda: {},
                        lambda: [metrics.LaneView("p", "t", "idle")])
    got = scrape(m)
    assert "ecapture_ring_buffer_fill_ratio" not in got
    assert got["ecapture_express_lane_state"][labels(profile="p", target="t", state="idle")] == 1


def test_reload_durations_are_a_histogram_per_profile(fed):
    m = fed.metrics
    for seconds in (0.003, 0.2, 4.0):
        m.observe_reload("prof", seconds)
    got = scrape(m)
    assert got["ecapture_reload_duration_seconds_count"] == {labels(profile="prof"): 3}
    assert got["ecapture_reload_duration_seconds_sum"][labels(profile="prof")] == pytest.approx(4.203)
    buckets = got["ecapture_reload_duration_seconds_bucket"]
    assert buckets[labels(profile="prof", le="0.005")] == 1
    assert buckets[labels(profile="prof", le="0.25")] == 2
    assert buckets[labels(profile="prof", le="+Inf")] == 3


def test_build_info_and_process_metrics(fed):
    got = scrape(fed.metrics)
    assert got["ecapture_build_info"] == {labels(consumer=fastpath.mode, version="0.1.0"): 1}
    assert got["process_resident_memory_bytes"][()] > 0
    assert "process_cpu_seconds_total" in got


def test_every_family_has_help_and_follows_the_naming_conventions(fed):
    from prometheus_client import generate_latest
    fed.metrics.observe_reload("prof", 0.1)
    families = list(text_string_to_metric_families(generate_latest(fed.metrics.registry).decode()))
    ours = [f for f in families if f.name.startswith("ecapture_")]
    assert {f.name for f in ours} >= {
        "ecapture_records", "ecapture_events", "ecapture_losses", "ecapture_target_state", "ecapture_profile_state",
        "ecapture_reload_duration_seconds", "ecapture_ring_buffer_fill_ratio", "ecapture_express_lane_state",
        "ecapture_dispatcher_queued_bytes", "ecapture_build_info"}
    for f in ours:
        assert len(f.documentation) > 20, f.name
        if f.type == "counter":
            assert all(s.name.endswith("_total") for s in f.samples), f.name
    units = {f.name.rsplit("_", 1)[-1] for f in ours if f.type in ("gauge", "histogram")}
    assert not units & {"ms", "milliseconds", "kib", "kb"}      # base units only


@pytest.mark.parametrize("text, host, port, loopback", [
    ("9464", "127.0.0.1", 9464, True),
    ("127.0.0.1:9464", "127.0.0.1", 9464, True),
    ("localhost:9100", "localhost", 9100, True),
    ("[::1]:9464", "::1", 9464, True),
    ("0.0.0.0:9464", "0.0.0.0", 9464, False),
    ("10.1.2.3:80", "10.1.2.3", 80, False),
    ("metrics.example:9464", "metrics.example", 9464, False),
])
def test_listen_addresses(text, host, port, loopback):
    listen = metrics.parse_listen(text)
    assert (listen.host, listen.port, listen.loopback) == (host, port, loopback)
    assert listen.url == f"http://{text if ':' in text else '127.0.0.1:' + text}/metrics"


@pytest.mark.parametrize("text, says", [
    ("", "expected PORT or HOST:PORT"),
    ("nine", "expected PORT or HOST:PORT"),
    (":9464", "expected PORT or HOST:PORT"),          # all interfaces must be spelled out: 0.0.0.0:9464
    ("::1:9464", "expected PORT or HOST:PORT"),       # IPv6 in brackets
    ("127.0.0.1:", "expected PORT or HOST:PORT"),
    ("127.0.0.1:70000", "between 1 and 65535"),
    ("0", "between 1 and 65535"),
])
def test_bad_addresses_are_refused_clearly(text, says):
    with pytest.raises(metrics.MetricsError, match=says) as exc:
        metrics.parse_listen(text)
    assert repr(text) in str(exc.value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_served_over_http_on_loopback_and_closed(fed):
    m = fed.metrics
    listen = metrics.parse_listen(str(_free_port()))
    m.serve(listen)
    try:
        with urllib.request.urlopen(listen.url, timeout=10) as resp:
            assert resp.status == 200
            got = parse(resp.read().decode())
        assert got["ecapture_events_total"] == {labels(profile="prof", target="web"): 2}
        assert m._server.server_address[0] == "127.0.0.1"
    finally:
        m.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(listen.url, timeout=2)
    m.close()           # twice: nothing left to close


def test_a_busy_port_is_a_clear_error(fed):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        listen = metrics.Listen("127.0.0.1", busy.getsockname()[1])
        with pytest.raises(metrics.MetricsError, match=f"--metrics {listen}: cannot listen there: Address already in use"):
            fed.metrics.serve(listen)


def test_an_address_of_no_interface_here_is_a_clear_error(fed):
    with pytest.raises(metrics.MetricsError, match="cannot listen there: Cannot assign requested address"):
        fed.metrics.serve(metrics.Listen("192.0.2.1", _free_port()))      # TEST-NET-1: bound, never reached


def test_apply_refuses_a_bad_metrics_address_before_anything_else(tmp_path):
    from tests.unit.test_cli_pure import run
    proc = run("apply", "--metrics", "127.0.0.1:99999", str(tmp_path / "none.yaml"))
    assert proc.returncode == 3
    assert "error: --metrics '127.0.0.1:99999': the port must be between 1 and 65535" in proc.stderr


def test_apply_help_documents_the_metrics_option():
    from tests.unit.test_cli_pure import run
    proc = run("apply", "--help")
    assert proc.returncode == 0 and "--metrics" in proc.stdout and "127.0.0.1" in proc.stdout
