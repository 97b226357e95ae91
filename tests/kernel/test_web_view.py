"""The web sink's live view, end to end: the real `ecapture apply` serves it, curl talks to nginx
through TLS, and a real headless Chromium (Debian's, driven by Playwright) shows what was captured.

A screenshot of the page is saved as a test artifact, in $ECAPTURE_TEST_ARTIFACTS or else a
folder under pytest's tmp dir (its path is printed).
"""
from __future__ import annotations

import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.nginx import curl, free_port

from playwright import sync_api as playwright_api     # the test extra has it: a missing one must fail, not skip

expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"       # Debian's; Playwright cannot download browsers here

PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {{name: web-view}}
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
  parsers: [http1]
  sinks:
    - {{type: web, listen: "127.0.0.1:{port}"}}
    - {{type: jsonl, path: "{{jsonl}}"}}
"""
URL_LINE = re.compile(r"web view: (http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]+))")


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("ECAPTURE_TEST_ARTIFACTS") or tmp_path_factory.mktemp("artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def web_port():
    """A free port; the token file apply keeps for it (beside the control socket) is removed after."""
    port = free_port()
    yield port
    folder = os.path.dirname(os.environ.get("ECAPTURE_SOCKET") or "/run/ecapture/apply.sock")
    Path(folder, f"web-127.0.0.1-{port}.token").unlink(missing_ok=True)


def _printed_url(cap, timeout: float = 30.0) -> str:
    """The URL apply prints for the page (with its token), waited for on its stderr."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = URL_LINE.search(cap.stderr)
        if m:
            return m.group(1)
        time.sleep(0.1)
    raise AssertionError(f"apply printed no web view URL: {cap.stderr}")


def _status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _row(page, text: str):
    return page.locator("#rows tr", has_text=text)


def _open(browser, url: str):
    page = browser.new_page(viewport={"width": 1600, "height": 820})
    page.goto(url)
    expect(page.locator("#conn")).to_have_class(re.compile(r"\blive\b"), timeout=10_000)
    return page


def test_page_shows_traffic_filters_and_details(apply_profile, nginx_server, browser, artifacts, web_port):
    evil = '<img src=x onerror="window.__pwned=1"><b id="injected">bold</b>'
    with apply_profile(PROFILE.format(port=web_port)) as cap:
        page = _open(browser, _printed_url(cap))
        assert curl(nginx_server.url + "/web/hello?lang=en", "-H", f"X-Probe: {evil}").returncode == 0
        hello = _row(page, "/web/hello?lang=en")
        expect(hello.locator("td.c-status")).to_have_text("200", timeout=2_000)
        assert curl(nginx_server.url + "/static/missing.txt").returncode == 0
        missing = _row(page, "/static/missing.txt")
        expect(missing.locator("td.c-status")).to_have_text("404", timeout=2_000)
        assert curl(nginx_server.url + "/post", "-d", "name=ecapture").returncode == 0
        expect(_row(page, "/post").locator("td.c-status")).to_have_text("200", timeout=2_000)
        expect(hello.locator("td.c-method")).to_have_text("GET")
        expect(hello.locator("td.c-comm")).to_have_text("nginx")
        assert float(hello.locator("td.c-ms").inner_text()) >= 0      # paired: the response's latency

        # The filter box narrows the list, and widens it again.
        page.fill("#filter", "status:404")
        expect(missing).to_be_visible()
        expect(hello).to_be_hidden()
        expect(page.locator("#rows tr:visible")).to_have_count(1)
        page.fill("#filter", "comm:nginx path:/web method:get")
        expect(hello).to_be_visible()
        expect(missing).to_be_hidden()
        page.fill("#filter", "status:2xx -path:/post")
        expect(hello).to_be_visible()
        expect(_row(page, "/post")).to_be_hidden()
        page.fill("#filter", "")
        expect(page.locator("#rows tr:visible")).to_have_count(3)

        # The detail pane: the request's headers and the response body, captured text shown as text.
        hello.click()
        detail = page.locator("#detail")
        expect(detail).to_contain_text("User-Agent")
        expect(detail).to_contain_text("curl/")
        expect(detail).to_contain_text("hello from ecapture demo")
        expect(detail).to_contain_text(evil)
        assert page.locator("#injected").count() == 0
        assert page.evaluate("window.__pwned") is None

        shot = artifacts / "web-view.png"
        page.screenshot(path=str(shot))
        print(f"screenshot: {shot}")
        assert shot.stat().st_size > 10_000
        page.close()
    assert cap.returncode == 0
    assert "Traceback" not in cap.stderr and "Task was destroyed" not in cap.stderr, cap.stderr


def test_wrong_or_missing_token_is_refused(apply_profile, nginx_server, browser, web_port):
    with apply_profile(PROFILE.format(port=web_port)) as cap:
        url = _printed_url(cap)
        base, token = url.split("?token=")
        assert _status_of(url) == 200
        assert _status_of(base) == 401
        assert _status_of(f"{base}?token={token[:-1]}x") == 403
        socket = base.replace("http://", "ws://") + "socket"
        for query, status in (("", 401), ("?token=not-the-token-at-all", 403)):
            with pytest.raises(InvalidStatus) as refused:
                connect(socket + query, open_timeout=5).close()
            assert refused.value.response.status_code == status
        with connect(f"{socket}?token={token}", open_timeout=5) as ws:
            assert '"kind": "hello"' in ws.recv(timeout=5)
        # In the browser: the refusal is all a wrong token gets, no page and no records.
        page = browser.new_page()
        response = page.goto(f"{base}?token=wrong-token-0123456789")
        assert response.status == 403
        assert "wrong token" in page.inner_text("body")
        assert page.locator("#rows").count() == 0
        page.close()


def test_open_page_keeps_working_across_an_apply_restart(apply_profile, nginx_server, browser, web_port):
    profile = PROFILE.format(port=web_port)
    with apply_profile(profile) as cap:
        first_url = _printed_url(cap)
        page = _open(browser, first_url)
        page.evaluate("window.__same_page = true")
        assert curl(nginx_server.url + "/web/before-restart").returncode == 0
        expect(_row(page, "/web/before-restart").locator("td.c-status")).to_have_text("200", timeout=2_000)
    expect(page.locator("#conn")).to_have_class(re.compile(r"\bconnecting\b"), timeout=10_000)
    with apply_profile(profile) as cap:
        assert _printed_url(cap) == first_url          # the token survived the restart
        expect(page.locator("#conn")).to_have_class(re.compile(r"\blive\b"), timeout=15_000)
        assert curl(nginx_server.url + "/web/after-restart").returncode == 0
        expect(_row(page, "/web/after-restart").locator("td.c-status")).to_have_text("200", timeout=2_000)
        expect(_row(page, "/web/before-restart")).to_be_visible()
        assert page.evaluate("window.__same_page") is True     # not reloaded: the page reconnected
        page.close()
    assert cap.returncode == 0
    assert "Traceback" not in cap.stderr and "Task was destroyed" not in cap.stderr, cap.stderr
