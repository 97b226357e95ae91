"""spec.redact: the schema and loader, every rule kind on real pipeline records, the JSON tail of
the compiled HTTP/1 path, raw plaintext, fail-closed, and hot reload through the reconciler."""
from __future__ import annotations

import base64
import json
import time

import msgspec
import pytest

from orchestrator.bpf import layout
from orchestrator.pipeline import dispatch, events, redact
from orchestrator.profile import errors, load, models
from orchestrator.reconcile import reconciler
from orchestrator.sinks import jsonl
from tests.unit.test_pipeline import ListSink, PlaintextSink, _probe_set, _raw
from tests.unit.test_reconciler import PROFILE, setup  # noqa: F401  (setup: the reconciler fixture)

BASE = """apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: t
spec:
  targets:
    - name: web
      kind: openssl
      binary: /usr/sbin/nginx
"""
ENCODE = msgspec.json.Encoder().encode


def _load(extra: str = "") -> models.Profile:
    return load.load_text(BASE + extra, "p.yaml", check_outputs=False)


def _issues(extra: str) -> list[str]:
    with pytest.raises(errors.ProfileError) as exc:
        _load(extra)
    return [str(i) for i in exc.value.issues]


def _rules(profile: models.Profile) -> redact.Rules:
    r = profile.redact
    return redact.Rules(r.headers, r.query, r.fields, r.patterns, r.sql)


def _through(rules: redact.Rules, samples, ps=None, raw_sink=None) -> list[dict]:
    """Samples → the real dispatcher → a Redactor first in the sink list → what a sink receives."""
    sink = ListSink()
    step = (redact.RawRedactor if raw_sink else redact.Redactor)(rules)
    sinks = [step, *( [raw_sink] if raw_sink else []), sink]
    d = dispatch.Dispatcher(lambda _p: sinks)
    ps = ps or _probe_set()
    d.process([events.decode(s, ps) for s in samples])
    d.flush_all()
    return sink.records


def _request(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + body


# ---------------------------------------------------------------- schema and loader

def test_defaults_are_the_four_headers_when_redact_is_absent():
    assert _load().redact == models.DEFAULT_REDACT
    assert _load().redact.headers == ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie")


def test_an_empty_list_turns_redaction_off():
    profile = _load("  redact: []\n")
    assert profile.redact == models.Redact()
    assert profile.redact.summary() == ["off"]
    assert _rules(profile).empty


def test_rules_merge_and_defaults_join_only_when_asked():
    profile = _load("  redact:\n    - headers: [X-Api-Key, x-api-key]\n    - fields: [password]\n"
                    "      query: [token]\n    - regex: 'sk_live_\\w+'\n    - sql: literals\n")
    assert profile.redact == models.Redact(("X-Api-Key",), ("token",), ("password",), (r"sk_live_\w+",), True)
    with_defaults = _load("  redact:\n    - defaults: true\n    - headers: [X-Api-Key]\n")
    assert with_defaults.redact.headers == models.DEFAULT_REDACT_HEADERS + ("X-Api-Key",)
    assert with_defaults.redact.summary() == [
        "headers: Authorization, Proxy-Authorization, Cookie, Set-Cookie, X-Api-Key"]


@pytest.mark.parametrize("extra, expected", [
    ("  redact:\n    - regex: '(a)\\1'\n",
     "p.yaml:11:14: spec.redact[0].regex: invalid regular expression (RE2 syntax): invalid escape sequence: \\1"),
    ("  redact:\n    - regex: '(?=lookahead)'\n",
     "p.yaml:11:14: spec.redact[0].regex: invalid regular expression (RE2 syntax): invalid perl operator: (?="),
    ("  redact:\n    - headers: [Cookie]\n    - regex: 'x*'\n",
     "p.yaml:12:14: spec.redact[1].regex: the regular expression matches the empty string"),
    ("  redact:\n    - regex: '" + "a" * 1025 + "'\n",
     "p.yaml:11:14: spec.redact[0].regex: too long (at most 1024 characters)"),
    ("  redact:\n    - headerz: [x]\n",
     "p.yaml:11:7: spec.redact[0].headerz: unknown field 'headerz'; allowed: defaults, fields, headers, query, regex, sql"),
    ("  redact:\n    - headers: ['not a token']\n",
     "p.yaml:11:17: spec.redact[0].headers[0]: 'not a token' is not allowed: A header name (an HTTP token)."),
    ("  redact:\n    - sql: all\n", "p.yaml:11:12: spec.redact[0].sql: must be one of: literals (got 'all')"),
    ("  redact:\n    - defaults: false\n", "p.yaml:11:17: spec.redact[0].defaults: must be true (got false)"),
])
def test_bad_rules_are_errors_naming_file_line_and_field(extra, expected):
    assert _issues(extra) == [expected]


def test_every_redact_field_of_the_schema_is_described():
    spec = load.schema()["properties"]["spec"]["properties"]["redact"]
    assert spec["description"] and spec["items"]["description"]
    for name, prop in spec["items"]["properties"].items():
        assert prop.get("description"), name


# ---------------------------------------------------------------- headers

def test_default_header_rules_on_a_parsed_request_and_response():
    req = _request("GET /a HTTP/1.1\nHost: x\nAuthorization: Bearer tok-123456\nCOOKIE: sid=abc\n")
    resp = b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=22\r\nContent-Length: 2\r\n\r\nok"
    recs = _through(_rules(_load()), [_raw(req), _raw(resp, seq=1, direction=layout.DIR_WRITE)])
    assert recs[0]["headers"] == {"Host": "x", "Authorization": "[redacted 17]", "COOKIE": "[redacted 7]"}
    assert recs[1]["headers"]["Set-Cookie"] == ["[redacted 3]", "[redacted 4]"]
    assert recs[1]["body"] == "ok"


def test_without_rules_nothing_changes():
    req = _request("GET /a?token=1 HTTP/1.1\nAuthorization: Basic eA==\n")
    (rec,) = _through(_rules(_load("  redact: []\n")), [_raw(req)])
    assert rec["headers"]["Authorization"] == "Basic eA==" and rec["path"] == "/a?token=1"


def test_http2_requests_get_the_same_rules():
    import struct

    import hpack

    def frame(ftype, flags, sid, payload):
        return struct.pack(">HBBBL", len(payload) >> 8, len(payload) & 0xFF, ftype, flags, sid) + payload

    body = b'{"password": "hunter2"}'
    block = hpack.Encoder().encode([(":method", "POST"), (":path", "/p?token=abc"), (":scheme", "https"),
                                    (":authority", "x"), ("authorization", "Bearer t0k3n"),
                                    ("content-type", "application/json"), ("content-length", str(len(body)))])
    h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"") + frame(1, 4, 1, block) + frame(0, 1, 1, body)
    rules = _rules(_load("  redact:\n    - defaults: true\n    - query: [token]\n    - fields: [password]\n"))
    (rec,) = _through(rules, [_raw(h2, direction=layout.DIR_WRITE)])
    assert rec["version"] == "HTTP/2"
    assert rec["headers"]["authorization"] == "[redacted 12]"
    assert rec["path"] == "/p?token=[redacted 3]"
    assert rec["body"] == '{"password": "[redacted 7]"}'


# ---------------------------------------------------------------- query parameters

def test_query_parameters_in_the_request_path_and_the_echoed_request_of_the_response():
    rules = _rules(_load("  redact:\n    - query: [token, api_key]\n"))
    req = _request("GET /s?q=cats&token=s3cr3t&API%5Fkey=abcd&x HTTP/1.1\nHost: x\n")
    resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    recs = _through(rules, [_raw(req), _raw(resp, seq=1, direction=layout.DIR_WRITE)])
    redacted = "/s?q=cats&token=[redacted 6]&API%5Fkey=[redacted 4]&x"
    assert recs[0]["path"] == redacted
    assert recs[1]["request"]["path"] == redacted


# ---------------------------------------------------------------- JSON and form body fields

def test_json_body_fields_at_any_depth_keep_the_body_valid_json():
    rules = _rules(_load("  redact:\n    - fields: [password, card]\n"))
    body = json.dumps({"user": "bob", "Password": "hunter2", "profile": {"card": {"number": "4111", "cvc": 123},
                       "list": [{"password": 42}, {"password": None}]}}, indent=2).encode()
    req = _request(f"POST /login HTTP/1.1\nContent-Type: application/json\nContent-Length: {len(body)}\n", body)
    (rec,) = _through(rules, [_raw(req)])
    doc = json.loads(rec["body"])
    assert doc["Password"] == "[redacted 7]"
    start = body.index(b'"card": ') + len(b'"card": ')
    assert doc["profile"]["card"] == f"[redacted {body.index(b'}', start) + 1 - start}]"    # the object, whole
    assert doc["profile"]["list"] == [{"password": "[redacted 2]"}, {"password": "[redacted 4]"}]
    assert doc["user"] == "bob" and "hunter2" not in rec["body"] and "4111" not in rec["body"]
    assert rec["body_len"] == len(body)          # the length on the wire is kept


def test_a_truncated_json_body_is_still_redacted():
    rules = _rules(_load("  redact:\n    - fields: [password]\n"))
    assert rules.body('{"user":"bob","password":"hunter2-and-mo', False) == '{"user":"bob","password":"[redacted 14]'
    assert rules.body('[{"password": {"a": [1, 2', False) == '[{"password": "[redacted 11]"'


def test_form_body_fields_are_redacted_when_the_body_is_a_form():
    rules = _rules(_load("  redact:\n    - fields: [password]\n"))
    body = b"user=bob&pass%77ord=hunter2&keep=1"
    req = _request(f"POST /login HTTP/1.1\nContent-Type: application/x-www-form-urlencoded\n"
                   f"Content-Length: {len(body)}\n", body)
    (rec,) = _through(rules, [_raw(req)])
    assert rec["body"] == "user=bob&pass%77ord=[redacted 7]&keep=1"


# ---------------------------------------------------------------- regular expressions

def test_regex_rules_over_bodies_groups_and_base64_bodies():
    rules = _rules(_load("  redact:\n    - regex: 'sk_live_[0-9a-z]+'\n    - regex: 'ssn=(\\d+)'\n"))
    body = b"key sk_live_abc123 and ssn=123456789 end"
    req = _request(f"POST /x HTTP/1.1\nContent-Length: {len(body)}\n", body)
    binary = b"\xff\xfe sk_live_zz9 \x00"
    resp = _request(f"HTTP/1.1 200 OK\nContent-Length: {len(binary)}\n", binary)
    recs = _through(rules, [_raw(req), _raw(resp, seq=1, direction=layout.DIR_WRITE)])
    assert recs[0]["body"] == "key [redacted 14] and ssn=[redacted 9] end"
    assert recs[1]["body_encoding"] == "base64"
    assert base64.b64decode(recs[1]["body"]) == b"\xff\xfe [redacted 11] \x00"


def test_regex_cost_is_bounded_text_past_the_scan_limit_is_redacted_whole():
    rules = redact.Rules(patterns=[r"(a+)+$"])
    text = "a" * 30 + "b" + "c" * (redact.MAX_SCAN_BYTES + 10)
    t0 = time.perf_counter()
    out = rules.text(text, False)
    assert time.perf_counter() - t0 < 1.0        # RE2: no backtracking blow-up
    assert out == "a" * 30 + "b" + "c" * (redact.MAX_SCAN_BYTES - 31) + "[redacted 41]"


def test_regex_rules_also_cover_shell_commands():
    rules = redact.Rules(patterns=[r"-p\S+"])
    rec = events.Record("bash.command", None, {"profile": "p", "command": "mysql -uroot -phunter2 db"})
    redact.Redactor(rules).write([rec])
    assert rec.fields["command"] == "mysql -uroot [redacted 9] db"


# ---------------------------------------------------------------- SQL literals

@pytest.mark.parametrize("dialect, sql, expected", [
    ("mysql", "SELECT * FROM users WHERE name='bob''s' AND pw=\"x\\\"y\" AND id=42 AND t1.c2 = 3.5e3",
     "SELECT * FROM users WHERE name='[redacted 6]' AND pw=\"[redacted 4]\" AND id=[redacted 2] AND t1.c2 = [redacted 5]"),
    ("mysql", "INSERT INTO `t2` VALUES (0x1F, X'ab', _utf8mb4'z') # it's a comment",
     "INSERT INTO `t2` VALUES ([redacted 4], X'[redacted 2]', _utf8mb4'[redacted 1]') # it's a comment"),
    ("mysql", "SELECT 'cut short", "SELECT '[redacted 9]"),
    ("postgres", "SELECT \"Col1\", $1 FROM t WHERE a = 'C:\\' AND b = E'it\\'s' AND c = $$x'y$$ AND d = $q$z$q$ -- 'c'",
     "SELECT \"Col1\", $1 FROM t WHERE a = '[redacted 3]' AND b = E'[redacted 5]' AND c = $$[redacted 3]$$ "
     "AND d = $q$[redacted 1]$q$ -- 'c'"),
])
def test_sql_literals(dialect, sql, expected):
    assert redact.sql_literals(sql, dialect) == expected


def test_sql_rule_on_query_records_and_bound_parameters():
    rules = _rules(_load("  redact:\n    - sql: literals\n"))
    q = events.Record("mysql.query", None, {"profile": "p", "command": "COM_QUERY",
                                             "sql": "UPDATE u SET pw='hunter2' WHERE id=7"})
    params = ["hunter2", 7, None]
    pg = events.Record("pg.query", None, {"profile": "p", "kind": "extended", "sql": "SELECT $1", "params": params})
    redact.Redactor(rules).write([q, pg])
    assert q.fields["sql"] == "UPDATE u SET pw='[redacted 7]' WHERE id=[redacted 1]"
    assert pg.fields["params"] == ["[redacted 7]", "[redacted 1]", None]
    assert params == ["hunter2", 7, None]        # the parser's own list is left alone


# ---------------------------------------------------------------- the compiled path's JSON tail

def _tail_record(tail: bytes) -> events.Record:
    ev = events.decode(_raw(b"x"), _probe_set())
    return events.Record("http.request", ev, None, (("127.0.0.1", 443), ("127.0.0.1", 40000)), tail)


TAIL = (b'"direction":"read","method":"GET","path":"/a","version":"HTTP/1.1",'
        b'"headers":{"Host":"x","authorization":"Bearer abcdef"},"body":"","body_len":0')


def test_a_json_tail_that_holds_nothing_to_redact_is_never_decoded(tmp_path):
    rec = _tail_record(TAIL.replace(b"authorization", b"Accept"))
    redact.Redactor(_rules(_load())).write([rec])
    assert rec._fields is None                     # still the compiled path's text


def test_a_json_tail_is_decoded_redacted_and_the_jsonl_line_shows_it(tmp_path):
    rec = _tail_record(TAIL)
    redact.Redactor(_rules(_load())).write([rec])
    sink = jsonl.JsonlSink(str(tmp_path / "out.jsonl"))
    sink.write([rec])
    sink.close()
    line = (tmp_path / "out.jsonl").read_text()
    assert "abcdef" not in line
    assert json.loads(line)["headers"] == {"Host": "x", "authorization": "[redacted 13]"}


# ---------------------------------------------------------------- raw plaintext

def test_raw_data_records_keep_their_length():
    rules = _rules(_load("  redact:\n    - defaults: true\n    - fields: [password]\n"))
    ps = _probe_set(parsers=())       # raw only
    payload = b"POST /x HTTP/1.1\r\nAuthorization: Bearer abcdefghijklmnop\r\n\r\npassword=hunter2&u=1"
    (rec,) = _through(rules, [_raw(payload)], ps)
    assert rec["type"] == "data"
    assert rec["data"] == "POST /x HTTP/1.1\r\nAuthorization: [redacted 23]**********\r\n\r\npassword=*******&u=1"
    assert len(rec["data"]) == len(payload)


def test_sinks_that_take_raw_plaintext_get_it_masked_and_the_parser_still_sees_the_original():
    rules = _rules(_load())
    taker = PlaintextSink()
    req = _request("GET /a HTTP/1.1\nHost: x\nCookie: session=0123456789abcdef\n")
    recs = _through(rules, [_raw(req)], raw_sink=taker)
    ((_, payload, _),) = taker.data
    assert b"0123456789abcdef" not in payload and len(payload) == len(req)
    assert b"Cookie: [redacted 24]***********\r\n" in payload
    assert recs[0]["headers"]["Cookie"] == "[redacted 24]"


def test_mask_keeps_the_length():
    assert redact.mask(3) == "***"
    assert redact.mask(16) == "[redacted 16]***"


# ---------------------------------------------------------------- fail closed

class Boom(redact.Rules):
    def _http(self, f):
        f["headers"] = {}
        raise RuntimeError("bug")


def test_a_record_whose_redaction_fails_goes_on_without_its_secrets_and_is_counted():
    warned = []
    step = redact.Redactor(Boom(headers=["authorization"]), warn=warned.append)
    rec = events.Record("http.request", None, {"profile": "p", "method": "POST", "path": "/a?token=x",
                                               "headers": {"Authorization": "Bearer t"}, "body": "password=x"})
    step.write([rec])
    del rec.fields["ts"]
    assert rec.fields == {"profile": "p", "method": "POST", "path": "/a?[redacted]", "headers": {},
                          "body": "[redacted 10]", "redaction": "failed"}
    assert step.failed == 1 and len(warned) == 1 and "RuntimeError" in warned[0]


def test_a_tail_that_cannot_even_be_decoded_fails_closed():
    rec = _tail_record(b'"headers":{"Authorization":"Bearer s3cret"')    # not JSON
    step = redact.Redactor(_rules(_load()))
    step.write([rec])
    assert step.failed == 1
    assert b"s3cret" not in rec.to_json(ENCODE)


# ---------------------------------------------------------------- hot reload

def test_an_edit_of_redact_swaps_the_rules_without_reopening_sinks(setup, tmp_path):  # noqa: F811
    rec, runtime, clock, path, _, lines = setup
    out = tmp_path / "out.jsonl"
    text = PROFILE.format(name="one").replace("[{type: stdout}]", f"[{{type: jsonl, path: {out}}}]")
    path.write_text(text)
    rec.reconcile()
    step, sink = rec.sinks["one"]
    assert isinstance(step, redact.Redactor) and isinstance(sink, jsonl.JsonlSink)
    assert step.rules.headers == {"authorization", "proxy-authorization", "cookie", "set-cookie"}
    path.write_text(text + "  redact:\n    - fields: [password]\n")
    rec.reconcile()
    assert rec.sinks["one"] == [step, sink] and step.rules.fields == {"password"} and not step.rules.headers
    path.write_text(text + "  redact: []\n")
    rec.reconcile()
    assert rec.sinks["one"] == [sink]                  # off: no step at all
    assert rec.status()["profiles"][0]["redaction_failed"] == 0


def test_default_rules_cost_per_typical_nginx_record():
    """Not a timing assertion: prints the figure (pytest -s) and checks the fast path is taken."""
    rules = _rules(_load())
    tail = (b'"direction":"read","method":"GET","path":"/index.html","version":"HTTP/1.1","headers":{"Host":'
            b'"127.0.0.1:8443","User-Agent":"curl/7.88.1","Accept":"*/*"},"body":"","body_len":0')
    recs = [_tail_record(tail) for _ in range(20000)]
    step = redact.Redactor(rules)
    t0 = time.perf_counter()
    for i in range(0, len(recs), 64):
        step.write(recs[i:i + 64])
    per = (time.perf_counter() - t0) / len(recs)
    print(f"default rules: {per * 1e9:.0f} ns per record (JSON tail, nothing to redact)")
    assert all(r._fields is None for r in recs)
