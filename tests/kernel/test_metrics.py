"""`ecapture apply --metrics`: the Prometheus endpoint scraped over HTTP while real nginx traffic is
captured, its counts compared with the JSONL file the same run writes."""
from __future__ import annotations

import collections
import socket
import subprocess
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.kernel.conftest import ECAPTURE
from tests.support.nginx import curl, free_port

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: metrics-test}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
      ring_buffer_kib: 256
{filters}
  parsers: [http1]
  sinks:
    - {{type: jsonl, path: "{jsonl}"}}
"""
HTTP = ("http.request", "http.response")


def _profile(jsonl: str, filters: str = "") -> str:
    return PROFILE.format(jsonl=jsonl, filters=f"      {filters}" if filters else "")


def scrape(url: str) -> dict:
    """sample name → {frozenset of label pairs: value}, as Prometheus parses the page."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(got: dict, name: str, **labels) -> float | None:
    return got.get(name, {}).get(frozenset(labels.items()))


def records_by_type(got: dict) -> dict:
    return {dict(k)["type"]: v for k, v in got.get("ecapture_records_total", {}).items()
            if dict(k)["profile"] == "metrics-test" and dict(k)["target"] == "web"}


def scraped_matches_file(cap, url: str, expected: int, timeout: float = 10.0) -> tuple[dict, dict]:
    """Wait for the file to hold `expected` responses, then for a scrape that counts what the file
    holds (a record is counted just before its sink writes it); returns (file counts, scraped)."""
    assert cap.wait_for(lambda rs: sum(r["type"] == "http.response" for r in rs) >= expected, timeout=20), \
        cap.stderr
    deadline = time.time() + timeout
    while True:
        in_file = collections.Counter(r["type"] for r in cap.records() if r.get("target", "web") == "web")
        scraped = records_by_type(scrape(url))
        if all(scraped.get(t, 0) == in_file[t] for t in HTTP) or time.time() > deadline:
            return dict(in_file), scraped
        time.sleep(0.1)


def test_metrics_count_what_the_file_got_and_show_state_and_reloads(apply_profile, nginx_server, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    jsonl = str(tmp_path / "out.jsonl")
    with apply_profile(_profile(jsonl), extra_args=("--metrics", str(port))) as cap:
        assert f"Prometheus metrics on {url}" in cap.stderr
        got = scrape(url)
        assert value(got, "ecapture_target_state", profile="metrics-test", target="web", state="running") == 1
        assert value(got, "ecapture_target_state", profile="metrics-test", target="web", state="failed") == 0
        assert value(got, "ecapture_profile_state", file=str(tmp_path / "profile.yaml"), profile="metrics-test",
                     state="ok") == 1
        assert value(got, "ecapture_express_lane_state", profile="metrics-test", target="web", state="armed") == 1
        assert value(got, "ecapture_ring_buffer_size_bytes", profile="metrics-test", target="web") == 256 * 1024
        assert 0 <= value(got, "ecapture_ring_buffer_fill_ratio", profile="metrics-test", target="web") <= 1
        assert value(got, "ecapture_reload_duration_seconds_count", profile="metrics-test") == 1
        assert value(got, "ecapture_reload_duration_seconds_sum", profile="metrics-test") > 0
        assert value(got, "ecapture_target_generation", profile="metrics-test", target="web") == 1
        [(build, one)] = got["ecapture_build_info"].items()
        assert one == 1 and dict(build)["consumer"] in ("compiled", "python") and dict(build)["version"]
        assert got["process_resident_memory_bytes"][frozenset()] > 0

        for i in range(5):
            assert curl(f"{nginx_server.url}/metrics/{i}").returncode == 0
        in_file, scraped = scraped_matches_file(cap, url, 5)
        assert in_file["http.request"] == in_file["http.response"] == 5
        assert {t: scraped.get(t) for t in HTTP} == {t: in_file[t] for t in HTTP}
        events = value(scrape(url), "ecapture_events_total", profile="metrics-test", target="web")
        assert events >= 10          # at least one read and one write per exchange

        # A reload (the filter edited) is one more observation of the reload histogram.
        (tmp_path / "profile.yaml").write_text(_profile(jsonl, "filters: {comm: [nginx]}"))
        deadline = time.time() + 30
        while "reloaded metrics-test" not in cap.stderr and time.time() < deadline:
            time.sleep(0.1)
        assert "reloaded metrics-test" in cap.stderr, cap.stderr
        got = scrape(url)
        assert value(got, "ecapture_reload_duration_seconds_count", profile="metrics-test") == 2
        assert value(got, "ecapture_target_generation", profile="metrics-test", target="web") == 2
        assert value(got, "ecapture_target_state", profile="metrics-test", target="web", state="running") == 1

        for i in range(3):
            assert curl(f"{nginx_server.url}/after-reload/{i}").returncode == 0
        in_file, scraped = scraped_matches_file(cap, url, 8)
        assert in_file["http.request"] == in_file["http.response"] == 8
        assert {t: scraped.get(t) for t in HTTP} == {t: in_file[t] for t in HTTP}
        assert sum(scrape(url).get("ecapture_losses_total", {}).values()) == in_file.get("loss", 0) == 0
    assert cap.returncode == 0
    try:
        urllib.request.urlopen(url, timeout=2)
        raise AssertionError("the metrics endpoint still answers after apply stopped")
    except OSError:
        pass


def test_a_busy_metrics_port_stops_apply_before_it_attaches(tmp_path):
    profile = tmp_path / "profile.yaml"
    profile.write_text(_profile(str(tmp_path / "out.jsonl")))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run([ECAPTURE, "apply", str(profile), "--metrics", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert f"--metrics 127.0.0.1:{port}: cannot listen there: Address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr and "applied" not in proc.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_ring_fill_is_what_the_kernel_wrote_and_the_reader_has_not_read():
    """The fill behind ecapture_ring_buffer_used_bytes, on a real BPF ring buffer."""
    import ctypes
    import os

    import bcc

    from orchestrator.bpf import ringreader
    b = bcc.BPF(text=rb"""
BPF_RINGBUF_OUTPUT(events, 1);
int probe(struct pt_regs *ctx) {
    u64 rec[8] = {};
    rec[0] = bpf_ktime_get_ns();
    events.ringbuf_output(&rec, sizeof(rec), BPF_RB_NO_WAKEUP);
    return 0;
}
""")
    try:
        b.attach_uprobe(name=b"c", sym=b"getpid", fn_name=b"probe", pid=os.getpid())
        reader = ringreader.RingReader(b[b"events"].map_fd, 4096)
        assert reader.used() == 0
        libc = ctypes.CDLL(None)
        for _ in range(10):
            libc.getpid()
        assert reader.used() == 10 * (8 + 64)         # each record: its 8-byte header and 64 bytes
        got: list[bytes] = []
        reader.read(got.append)
        assert len(got) == 10 and reader.used() == 0
        for _ in range(100):                           # more than the ring holds: the kernel drops the rest
            libc.getpid()
        assert reader.used() == 4096 - 4096 % 72
        reader.close()
    finally:
        b.cleanup()
