"""The HAR sink: real HTTP/1.1 and HTTP/2 bytes through the Dispatcher into a HAR 1.2 file, validated
against the HAR 1.2 schema (tests/support/har-1.2.schema.json) and read back by a real consumer
(Playwright's route_from_har in Debian's chromium)."""
from __future__ import annotations

import base64
import gzip
import json
import os
import pathlib
import stat
import struct

import hpack
import jsonschema
import pytest

from orchestrator import safefile
from orchestrator.bpf import hooks, layout, render
from orchestrator.pipeline import dispatch, events
from orchestrator.plan import model
from orchestrator.profile import models
from orchestrator.sinks import factory, har

SCHEMA = json.loads((pathlib.Path(__file__).resolve().parents[1] / "support" / "har-1.2.schema.json").read_text())
T0 = 1_000_000_000          # monotonic ns of the first event


def validate(path) -> dict:
    """The file parsed and checked against HAR 1.2, plus the rules the schema cannot state."""
    doc = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    jsonschema.validate(doc, SCHEMA)
    for e in doc["log"]["entries"]:
        assert e["time"] == pytest.approx(sum(v for k, v in e["timings"].items() if k != "comment" and v != -1))
        post = e["request"].get("postData")
        assert not (post and "text" in post and "params" in post)
    return doc


def _probe_set():
    t = models.Target("web", "openssl", binary="/usr/sbin/nginx")
    return model.ProbeSet("prof", t, "/lib/libssl.so.3", hooks.BUILTIN["openssl"][:5], (), None,
                          render.Rendered("", "d"))


def _raw(payload: bytes, *, ts=T0, seq=0, direction=layout.DIR_READ, fd=5, session=0xabc, lport=443, rport=40000,
         pid=100):
    """One data event as the ring buffer holds it (read on the openssl SSL_read hook, written on SSL_write)."""
    hook = 1 if direction == layout.DIR_READ else 0
    addr = b"\x7f\0\0\x01" + b"\0" * 12
    header = layout.HEADER.pack(
        ts, seq, session, 0, *(0,) * 6, pid, pid, 33, fd, len(payload), len(payload), hook, layout.RECORD_DATA,
        direction, 0, 1, 2, lport, rport, 0, addr, addr, b"nginx".ljust(16, b"\0"), 0)
    return header + payload


def _feed(sink, chunks, flush=False):
    """(payload, direction, ms since T0[, options]) per event, through a Dispatcher into `sink`."""
    ps = _probe_set()
    d = dispatch.Dispatcher(lambda _p: [sink])
    d.process([events.decode(_raw(data, ts=T0 + int(ms * 1e6), seq=i, direction=dr, **(opts[0] if opts else {})), ps)
               for i, (data, dr, ms, *opts) in enumerate(chunks)])
    if flush:
        d.flush_all()
    assert not d.sink_errors
    return d


READ, WRITE = layout.DIR_READ, layout.DIR_WRITE
OK0 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_get_and_post_with_query_and_body_become_two_entries(tmp_path):
    path = tmp_path / "out" / "x.har"
    sink = har.HarSink(str(path))
    get = b"GET /search?q=two%20words&empty=&flag HTTP/1.1\r\nHost: shop.test\r\nCookie: sid=abc; theme=dark\r\n\r\n"
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nfound"
    form = b"name=J%C3%BCrgen&age=42"
    post = (b"POST /orders?id=7 HTTP/1.1\r\nHost: shop.test\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n" % len(form)) + form
    created = (b"HTTP/1.1 201 Created\r\nLocation: /orders/7\r\nContent-Type: application/json\r\n"
               b"Content-Length: 11\r\n\r\n{\"id\": 7}\r\n")
    _feed(sink, [(get, READ, 0), (ok, WRITE, 2.5), (post, READ, 10), (created, WRITE, 14)])
    doc = validate(path)
    assert doc["log"]["version"] == "1.2" and doc["log"]["creator"]["name"] == "ecapture"
    first, second = doc["log"]["entries"]

    assert first["request"]["method"] == "GET"
    assert first["request"]["url"] == "https://shop.test/search?q=two%20words&empty=&flag"   # openssl: https
    assert first["request"]["queryString"] == [{"name": "q", "value": "two words"}, {"name": "empty", "value": ""},
                                               {"name": "flag", "value": ""}]
    assert first["request"]["cookies"] == [{"name": "sid", "value": "abc"}, {"name": "theme", "value": "dark"}]
    assert "postData" not in first["request"] and first["request"]["bodySize"] == 0
    assert first["request"]["httpVersion"] == first["response"]["httpVersion"] == "HTTP/1.1"
    assert (first["response"]["status"], first["response"]["statusText"]) == (200, "OK")
    assert first["response"]["content"] == {"size": 5, "mimeType": "text/plain", "text": "found"}
    assert first["time"] == pytest.approx(2.5) and first["timings"]["wait"] == pytest.approx(2.5)
    started = events.MONO_TO_EPOCH_NS + T0
    assert first["startedDateTime"].endswith("Z")
    assert first["startedDateTime"][:23] == har._iso(started)[:23]
    # nginx read the request: the server is the captured side, the client's port names the connection.
    assert first["serverIPAddress"] == "127.0.0.1" and first["connection"] == "40000"
    assert first["comment"] == "pid=100 comm=nginx profile=prof target=web"

    assert second["request"]["method"] == "POST"
    assert second["request"]["url"] == "https://shop.test/orders?id=7"
    assert second["request"]["queryString"] == [{"name": "id", "value": "7"}]
    assert second["request"]["postData"] == {"mimeType": "application/x-www-form-urlencoded",
                                             "text": "name=J%C3%BCrgen&age=42"}
    assert second["request"]["bodySize"] == len(form)
    assert second["response"]["status"] == 201 and second["response"]["redirectURL"] == "/orders/7"
    assert second["response"]["content"]["text"] == '{"id": 7}\r\n'
    assert second["time"] == pytest.approx(4.0)
    sink.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert validate(path)["log"]["entries"] == doc["log"]["entries"]


def test_binary_bodies_are_base64_and_read_back_byte_for_byte(tmp_path):
    path = tmp_path / "bin.har"
    sink = har.HarSink(str(path))
    blob = bytes(range(256))
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(200, 256)) * 3
    post = b"PUT /upload HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\nContent-Length: 256\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(png)
    _feed(sink, [(post + blob, READ, 0), (resp + png, WRITE, 1)])
    (e,) = validate(path)["log"]["entries"]
    pd = e["request"]["postData"]
    assert pd["_encoding"] == "base64" and base64.b64decode(pd["text"]) == blob
    content = e["response"]["content"]
    assert content["encoding"] == "base64" and content["mimeType"] == "image/png"
    assert base64.b64decode(content["text"]) == png and content["size"] == len(png)


def test_a_gzip_body_is_stored_decoded_as_har_asks(tmp_path):
    path = tmp_path / "gz.har"
    sink = har.HarSink(str(path))
    body = gzip.compress(b"<p>hello hello hello hello</p>")
    resp = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body)
    _feed(sink, [(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", READ, 0), (resp + body, WRITE, 1)])
    (e,) = validate(path)["log"]["entries"]
    assert e["response"]["content"]["text"] == "<p>hello hello hello hello</p>"
    assert e["response"]["bodySize"] == len(body) and e["response"]["content"]["size"] == 30
    assert e["response"]["content"]["compression"] == 30 - len(body)


def test_repeated_headers_stay_separate_and_set_cookie_is_parsed(tmp_path):
    path = tmp_path / "h.har"
    sink = har.HarSink(str(path))
    req = b"GET / HTTP/1.1\r\nHost: h\r\nAccept: text/html\r\nX-Trace: 1\r\nAccept: */*\r\n\r\n"
    resp = (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
            b"Set-Cookie: a=1; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly\r\n"
            b"Set-Cookie: b=2; Domain=h; Secure\r\n\r\n")
    _feed(sink, [(req, READ, 0), (resp, WRITE, 1)])
    (e,) = validate(path)["log"]["entries"]
    assert e["request"]["headers"] == [{"name": "Host", "value": "h"}, {"name": "Accept", "value": "text/html"},
                                       {"name": "Accept", "value": "*/*"}, {"name": "X-Trace", "value": "1"}]
    assert [h["value"] for h in e["response"]["headers"] if h["name"] == "Set-Cookie"] == [
        "a=1; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT; HttpOnly", "b=2; Domain=h; Secure"]
    assert e["response"]["cookies"] == [
        {"name": "a", "value": "1", "path": "/", "expires": "2026-10-21T07:28:00+00:00", "httpOnly": True},
        {"name": "b", "value": "2", "domain": "h", "secure": True}]


def _frame(ftype, flags, sid, payload):
    return struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, ftype, flags, sid) + payload


def test_http2_streams_pair_by_stream_and_the_client_side_names_the_server(tmp_path):
    path = tmp_path / "h2.har"
    sink = har.HarSink(str(path))
    enc, dec = hpack.Encoder(), hpack.Encoder()
    get = enc.encode([(":method", "GET"), (":path", "/h2/list?page=2"), (":scheme", "https"),
                      (":authority", "api.test"), ("accept", "a"), ("accept", "b")])
    post = enc.encode([(":method", "POST"), (":path", "/h2/new"), (":scheme", "https"), (":authority", "api.test"),
                       ("content-type", "application/json"), ("content-length", "9")])
    client = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"") + _frame(1, 5, 1, get)
              + _frame(1, 4, 3, post) + _frame(0, 1, 3, b'{"n": 1}\n'))
    r3 = dec.encode([(":status", "201"), ("content-type", "text/plain")])
    r1 = dec.encode([(":status", "200"), ("content-type", "application/json")])
    server = (_frame(4, 0, 0, b"") + _frame(1, 4, 3, r3) + _frame(0, 1, 3, b"made")
              + _frame(1, 4, 1, r1) + _frame(0, 1, 1, b"[1,2]"))
    # Captured in the client (curl): it writes the requests; conn local is the client's port.
    _feed(sink, [(client, WRITE, 0, {"lport": 40001, "rport": 8443}), (server, READ, 7, {"lport": 40001, "rport": 8443})])
    entries = validate(path)["log"]["entries"]
    by_path = {e["request"]["url"]: e for e in entries}
    assert set(by_path) == {"https://api.test/h2/list?page=2", "https://api.test/h2/new"}
    g, p = by_path["https://api.test/h2/list?page=2"], by_path["https://api.test/h2/new"]
    assert g["request"]["httpVersion"] == "HTTP/2" and g["response"]["status"] == 200
    assert g["request"]["queryString"] == [{"name": "page", "value": "2"}]
    assert [h for h in g["request"]["headers"] if h["name"] == "accept"] == [{"name": "accept", "value": "a"},
                                                                             {"name": "accept", "value": "b"}]
    assert g["response"]["content"]["text"] == "[1,2]" and g["response"]["statusText"] == "OK"
    assert p["request"]["postData"] == {"mimeType": "application/json", "text": '{"n": 1}\n'}
    assert p["response"]["status"] == 201 and p["response"]["content"]["text"] == "made"
    assert g["_ecapture"]["stream_id"] == 1 and p["_ecapture"]["stream_id"] == 3
    assert g["connection"] == "40001" and g["serverIPAddress"] == "127.0.0.1"
    assert g["time"] == pytest.approx(7.0)


def test_a_response_that_comes_before_its_request_ended_still_pairs(tmp_path):
    """nginx answers an HTTP/2 POST it does not read while curl still sends the body: the response
    record comes first, its request record after."""
    path = tmp_path / "early.har"
    sink = har.HarSink(str(path))
    head = hpack.Encoder().encode([(":method", "POST"), (":path", "/post?id=5"), (":scheme", "https"),
                                   (":authority", "h")])
    resp = hpack.Encoder().encode([(":status", "200")])
    pre = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _frame(4, 0, 0, b"")
    _feed(sink, [(pre + _frame(1, 4, 1, head), WRITE, 0), (_frame(4, 0, 0, b"") + _frame(1, 4, 1, resp)
                  + _frame(0, 1, 1, b"posted\n"), READ, 1), (_frame(0, 1, 1, b"a=1"), WRITE, 2)])
    (e,) = validate(path)["log"]["entries"]
    assert "_incomplete" not in e and e["response"]["content"]["text"] == "posted\n"
    assert e["request"]["postData"]["text"] == "a=1" and e["time"] == 0
    assert e["startedDateTime"] == har._iso(events.MONO_TO_EPOCH_NS + T0 + 1_000_000)


def test_a_request_without_response_is_written_at_close_and_other_records_are_ignored(tmp_path):
    path = tmp_path / "open.har"
    sink = har.HarSink(str(path))
    _feed(sink, [(b"\x16\x03\x01 not http", READ, 0, {"rport": 1}),
                 (b"GET /slow?x=1 HTTP/1.1\r\nHost: h\r\n\r\n", READ, 1, {"rport": 2})], flush=True)
    sink.write([events.Record("loss", None, {"profile": "prof", "target": "web", "stage": "s", "count": 1})])
    assert validate(path)["log"]["entries"] == []          # waiting for its response
    sink.close()
    (e,) = validate(path)["log"]["entries"]
    assert e["request"]["url"] == "https://h/slow?x=1" and e["response"]["status"] == 0
    assert e["_incomplete"] is True and "no response" in e["comment"]
    assert sink.unanswered == 1


def test_pending_requests_are_capped_and_evictions_counted(tmp_path):
    path = tmp_path / "cap.har"
    sink = har.HarSink(str(path), max_pending=2)
    reqs = [(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i, READ, i, {"rport": 100 + i}) for i in range(3)]
    _feed(sink, reqs)
    (e,) = validate(path)["log"]["entries"]            # the oldest made room
    assert e["request"]["url"] == "https://h/0" and e["_incomplete"] is True and sink.evicted == 1
    assert sink.builder.pending == 2
    sink.close()
    assert [e["request"]["url"] for e in validate(path)["log"]["entries"]] == ["https://h/0", "https://h/1", "https://h/2"]


def test_the_file_is_a_valid_har_after_every_batch_as_a_kill_would_leave_it(tmp_path):
    path = tmp_path / "k.har"
    sink = har.HarSink(str(path))
    assert validate(path)["log"]["entries"] == []          # valid before any traffic
    for i in range(3):
        _feed(sink, [(b"GET /b%d HTTP/1.1\r\nHost: h\r\n\r\n" % i, READ, 0, {"rport": 10 + i}),
                     (b"HTTP/1.1 204 No Content\r\n\r\n", WRITE, 1, {"rport": 10 + i})])
        # What a SIGKILL between batches leaves: the bytes as they are, nothing closed or flushed.
        killed = tmp_path / f"killed{i}.har"
        killed.write_bytes(path.read_bytes())
        assert [e["request"]["url"] for e in validate(killed)["log"]["entries"]] == \
               [f"https://h/b{j}" for j in range(i + 1)]
    # Such a file is ours: a new run appends to it.
    os.chmod(killed, 0o600)
    again = har.HarSink(str(killed))
    _feed(again, [(b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n", READ, 0), (OK0, WRITE, 1)])
    again.close()
    assert [e["request"]["url"] for e in validate(killed)["log"]["entries"]][-2:] == ["https://h/b2", "https://h/next"]
    sink.close()


def test_a_failed_write_leaves_the_file_valid_and_raises_for_the_dispatcher_to_count(tmp_path, monkeypatch):
    path = tmp_path / "f.har"
    sink = har.HarSink(str(path))
    _feed(sink, [(b"GET /one HTTP/1.1\r\nHost: h\r\n\r\n", READ, 0), (OK0, WRITE, 1)])
    real = os.pwrite
    calls = []

    def full_disk(fd, data, offset):
        calls.append(len(data))
        if len(calls) == 1:
            real(fd, bytes(data)[:7], offset)     # part of the batch reaches the file, then the disk is full
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    ps = _probe_set()
    disp = dispatch.Dispatcher(lambda _p: [sink])
    disp.process([events.decode(_raw(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n", rport=9), ps),
                  events.decode(_raw(OK0, rport=9, direction=WRITE), ps)])
    assert disp.sink_errors and "No space left" in disp.sink_errors[0]
    assert disp.stats.losses[("prof", "web", "sink.har")] == 2      # the exchange's two records
    assert [e["request"]["url"] for e in validate(path)["log"]["entries"]] == ["https://h/one"]
    monkeypatch.setattr(os, "pwrite", real)
    sink.close()


def test_an_existing_file_that_is_not_ours_is_refused_not_overwritten(tmp_path):
    other = tmp_path / "other.har"
    other.write_text('{"log": {"version": "1.2", "creator": {"name": "Firefox", "version": "1"}, "entries": []}}')
    os.chmod(other, 0o600)
    with pytest.raises(har.HarFileError, match="not a HAR file written by ecapture.*move the file away"):
        har.HarSink(str(other))
    assert "Firefox" in other.read_text()

    cut = tmp_path / "cut.har"
    sink = har.HarSink(str(cut))
    sink.close()
    cut.write_bytes(cut.read_bytes()[:-3])
    with pytest.raises(har.HarFileError, match="cut short"):
        har.HarSink(str(cut))

    link = tmp_path / "link.har"
    link.symlink_to(tmp_path / "target.har")
    with pytest.raises(safefile.UnsafePathError, match="symbolic link"):
        har.HarSink(str(link))
    assert not (tmp_path / "target.har").exists()


def test_reopen_closes_the_file_whole_and_starts_a_new_one_keeping_waiting_requests(tmp_path):
    path = tmp_path / "r.har"
    sink = har.HarSink(str(path))
    _feed(sink, [(b"GET /before HTTP/1.1\r\nHost: h\r\n\r\n", READ, 0), (OK0, WRITE, 1),
                 (b"GET /across HTTP/1.1\r\nHost: h\r\n\r\n", READ, 2)])
    path.rename(tmp_path / "r.har.1")                         # what logrotate does before its SIGHUP
    sink.reopen()
    _feed(sink, [(OK0, WRITE, 3)])
    sink.close()
    assert [e["request"]["url"] for e in validate(tmp_path / "r.har.1")["log"]["entries"]] == ["https://h/before"]
    (e,) = validate(path)["log"]["entries"]
    assert e["request"]["url"] == "https://h/across" and e["response"]["status"] == 200
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_two_sinks_on_one_file_during_a_reload_share_it(tmp_path):
    path = tmp_path / "s.har"
    old = har.HarSink(str(path))
    new = factory.build(models.Sink("har", (("path", str(path)),)), "prof")
    _feed(old, [(b"GET /old HTTP/1.1\r\nHost: h\r\n\r\n", READ, 0), (OK0, WRITE, 1)])
    _feed(new, [(b"GET /new HTTP/1.1\r\nHost: h\r\n\r\n", READ, 0), (OK0, WRITE, 1)])
    old.close()
    new.close()
    assert [e["request"]["url"] for e in validate(path)["log"]["entries"]] == ["https://h/old", "https://h/new"]


def test_playwright_replays_the_captured_responses_from_the_har(tmp_path):
    """A real consumer: Playwright's route_from_har serves a page in Debian's chromium from the file."""
    from playwright import sync_api
    path = tmp_path / "site.har"
    sink = har.HarSink(str(path))
    page = b"<html><body><h1 id=t>captured by ecapture</h1></body></html>"
    api = b'{"items": [1, 2, 3]}'
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    _feed(sink, [
        (b"GET /index.html?lang=en HTTP/1.1\r\nHost: site.test\r\n\r\n", READ, 0, {"rport": 1}),
        (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(page) + page, WRITE, 1,
         {"rport": 1}),
        (b"POST /api/items HTTP/1.1\r\nHost: site.test\r\nContent-Type: application/json\r\nContent-Length: 9\r\n\r\n"
         b'{"q": 42}', READ, 2, {"rport": 2}),
        (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(api) + api, WRITE, 3,
         {"rport": 2}),
        (b"GET /logo.png HTTP/1.1\r\nHost: site.test\r\n\r\n", READ, 4, {"rport": 3}),
        (b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(png) + png, WRITE, 5,
         {"rport": 3}),
    ])
    sink.close()
    validate(path)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            context = browser.new_context()
            context.route_from_har(str(path), not_found="abort")
            tab = context.new_page()
            tab.goto("https://site.test/index.html?lang=en")
            assert tab.text_content("#t") == "captured by ecapture"
            got = tab.evaluate("""async () => {
                const r = await fetch('/api/items', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                                     body: '{"q": 42}'});
                const img = new Uint8Array(await (await fetch('/logo.png')).arrayBuffer());
                return {status: r.status, json: await r.json(), png: Array.from(img)};
            }""")
            assert got["status"] == 200 and got["json"] == {"items": [1, 2, 3]}
            assert bytes(got["png"]) == png
        finally:
            browser.close()


PROFILE = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: har-profile}
spec:
  targets:
    - {name: web, kind: openssl, binary: /usr/sbin/nginx}
  sinks:
    - type: har
      path: out/web.har
"""


def test_a_profile_with_a_har_sink_loads_and_builds_one(tmp_path):
    from orchestrator.profile import errors, load

    good = tmp_path / "p.yaml"
    good.write_text(PROFILE)
    (spec,) = load.load_file(str(good)).sinks
    assert spec.type == "har" and spec.option("path") == str(tmp_path / "out" / "web.har")
    sink = factory.build(spec, "har-profile")
    sink.close()
    assert validate(tmp_path / "out" / "web.har")["log"]["entries"] == []

    bad = tmp_path / "bad.yaml"
    bad.write_text(PROFILE.replace("      path: out/web.har\n", "      path: out/web.har\n      rotate: {keep: 1}\n"))
    with pytest.raises(errors.ProfileError, match=r"bad\.yaml:10:\d+: spec\.sinks\[0\]\.rotate: .*"):
        load.load_file(str(bad))
    missing = tmp_path / "missing.yaml"
    missing.write_text(PROFILE.replace("      path: out/web.har\n", ""))
    with pytest.raises(errors.ProfileError, match=r"missing\.yaml:\d+:\d+: spec\.sinks\[0\].*path"):
        load.load_file(str(missing))
