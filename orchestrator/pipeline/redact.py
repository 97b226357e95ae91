"""`spec.redact`: the per-profile step that takes secrets out of records before any sink sees them.

The reconciler puts one `Redactor` first in each profile's sink list; the dispatcher hands it
every batch before the real sinks, with the same record objects, and it changes their fields in
place. Its rules (`Rules`, compiled from the profile's `redact` model) are swapped as one
reference on reload, so an edit of `redact` takes effect without reopening any sink.

What a rule does to a record (the README's "Redaction" section is the user's view of it):
* a value in a parsed record becomes `[redacted N]`, N its length in bytes as it was written
  (a JSON string keeps its quotes, a JSON non-string becomes the string "[redacted N]", a SQL
  string literal keeps its quotes);
* raw plaintext (`data` records, and what `write_data` sinks such as the plaintext pcapng
  receive) keeps its byte length, so stream framing (Content-Length, TCP sequence numbers)
  stays right: a value becomes `[redacted N]` padded with `*` to N bytes, or N `*` when shorter.

A record that cannot be redacted (an unexpected error) fails closed: its headers, bodies, path
queries, SQL and data are replaced whole, it gains `"redaction": "failed"`, and it is counted.

Cost: a record from the compiled HTTP/1 path carries its fields as JSON text (`tail`); it is
decoded only when a lower-cased byte search finds one of the rules' names in it (and always
when there are regex rules, which may match anything).
"""
from __future__ import annotations

import base64
import re
import time
import urllib.parse
from typing import Any

import re2

from orchestrator.pipeline import events

MAX_SCAN_BYTES = 1 << 20          # a field longer than this is scanned this far; the rest is redacted whole
WARN_INTERVAL_S = 10.0

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False    # a bad pattern is reported by the loader, not on stderr


def compile_pattern(pattern: str):
    """An RE2 pattern (linear time in the text: no backtracking blow-up); raises re2.error."""
    return re2.compile(pattern, _RE2_OPTIONS)


def mark(n: int) -> str:
    return f"[redacted {n}]"


def mask(n: int) -> str:
    """The same-length stand-in for `n` bytes of raw plaintext."""
    m = f"[redacted {n}]"
    return m + "*" * (n - len(m)) if len(m) <= n else "*" * n


def _blen(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


class Rules:
    """A profile's redaction rules, compiled. Built once per reload, read by the dispatcher thread."""

    def __init__(self, headers=(), query=(), fields=(), patterns=(), sql: bool = False):
        self.headers = frozenset(h.lower() for h in headers)
        self.query = frozenset(q.lower() for q in query)
        self.fields = frozenset(f.lower() for f in fields)
        self.patterns = tuple(compile_pattern(p) for p in patterns)
        self.bpatterns = tuple(compile_pattern(p.encode("utf-8")) for p in patterns)   # for bytes (as UTF-8)
        self.sql = bool(sql)
        self.empty = not (self.headers or self.query or self.fields or self.patterns or self.sql)
        # A record's JSON tail (or a raw payload) needs a look only if one of these is in it, lower-cased.
        names = {n.encode() for n in self.headers | self.query | self.fields}
        # bytes.lower() folds ASCII only: a name with other letters is looked for after decoding
        self.always = bool(self.patterns) or any(not n.isascii() for n in names)
        self.needles = tuple(sorted(n for n in names if not any(o != n and o in n for o in names)))
        self.needles_query = (b"%",) if self.query or self.fields else ()   # a percent-encoded name hides from the search
        self.search_for = self.needles + self.needles_query
        self._header_line = _alternation(r"(?im)^[ \t]*(?:{})[ \t]*:[ \t]*([^\r\n]*)", self.headers)
        self._json_key = _alternation(r'(?i)"(?:{})"\s*:\s*', self.fields)
        self._raw_pair = _alternation(r"(?i)(?:^|(?<=[?&;\s]))(?:{})=([^&\s#;\"]*)", self.query | self.fields)

    # ---------------------------------------------------------------- cheap pre-checks
    def may_match(self, raw: bytes) -> bool:
        """Whether `raw` (a JSON tail or a payload) could hold anything a rule matches."""
        return self.always or events.contains_any_lower(raw, self.search_for)

    # ---------------------------------------------------------------- parsed records
    def record(self, r) -> None:
        t = r.type
        if t == "http.request" or t == "http.response":
            if r._fields is None and r.tail is not None and not self.may_match(r.tail):
                return        # the compiled path's JSON stays as it is: nothing here to redact
            self._http(r.fields)
        elif t == "data":
            if self.needles or self.patterns:
                self._data(r.fields)
        elif t.startswith("mysql.") or t.startswith("pg."):
            self._sql(r.fields, "mysql" if t.startswith("mysql.") else "postgres")
        elif t == "bash.command" or t == "zsh.command":
            f = r.fields
            cmd = f.get("command")
            if self.patterns and isinstance(cmd, str):
                f["command"] = self.text(cmd, False)

    def _http(self, f: dict) -> None:
        headers = f.get("headers")
        if self.headers and isinstance(headers, dict):
            new = self.header_values(headers)
            if new is not None:
                f["headers"] = new
        if self.query:
            path = f.get("path")
            if isinstance(path, str):
                f["path"] = self.path(path)
            req = f.get("request")
            if isinstance(req, dict) and isinstance(req.get("path"), str):
                f["request"] = {**req, "path": self.path(req["path"])}
        body = f.get("body")
        if body and isinstance(body, str) and (self.fields or self.patterns):
            form = self.fields and _is_form(headers)
            if f.get("body_encoding") == "base64":       # not UTF-8: worked on byte for byte
                raw = base64.b64decode(body).decode("latin-1")
                new_raw = self.body(raw, form, binary=True)
                if new_raw is not raw:
                    f["body"] = base64.b64encode(new_raw.encode("latin-1")).decode("ascii")
            else:
                f["body"] = self.body(body, form)

    def header_values(self, headers: dict) -> dict | None:
        """A new headers object with the matching values redacted, or None when none matches."""
        names = self.headers
        if not any(k.lower() in names for k in headers):
            return None
        out = {}
        for k, v in headers.items():
            if k.lower() in names:
                out[k] = [mark(_blen(x)) for x in v] if isinstance(v, list) else mark(_blen(str(v)))
            else:
                out[k] = v
        return out

    def path(self, path: str) -> str:
        """A request path with the values of the matching query parameters redacted."""
        at = path.find("?")
        if at < 0:
            return path
        query = self.pairs(path[at + 1:], self.query)
        return path[:at + 1] + query

    def pairs(self, text: str, names: frozenset, length=_blen) -> str:
        """`a=1&b=2` text (a query string, a form body) with the values of the named fields redacted;
        names are compared percent-decoded and case-insensitively."""
        parts = text.split("&")
        changed = False
        for i, part in enumerate(parts):
            key, eq, value = part.partition("=")
            if eq and urllib.parse.unquote_plus(key).lower() in names:
                parts[i] = f"{key}={mark(length(value))}"
                changed = True
        return "&".join(parts) if changed else text

    def body(self, text: str, form: bool, binary: bool = False) -> str:
        """A body's text with JSON fields, form fields and regex matches redacted (same object if none)."""
        if form:
            text = self.pairs(text, self.fields, len if binary else _blen)
        return self.text(text, False, binary)

    def text(self, text: str, raw: bool, binary: bool = False) -> str:
        """Free text (a body, a command line, raw plaintext when `raw`) with what the rules match
        redacted. `binary`: `text` is bytes decoded as Latin-1 (one character per byte)."""
        scan = text if len(text) <= MAX_SCAN_BYTES else text[:MAX_SCAN_BYTES]
        spans: list = []              # (start, end, quote): quote: a JSON non-string, stood for by a string
        if raw and self._header_line is not None:
            spans += [(m.start(1), m.end(1), False) for m in self._header_line.finditer(scan) if m.end(1) > m.start(1)]
        if raw and self._raw_pair is not None:
            spans += [(m.start(1), m.end(1), False) for m in self._raw_pair.finditer(scan) if m.end(1) > m.start(1)]
        if self._json_key is not None and (raw or scan.lstrip()[:1] in ("{", "[")):
            spans += _json_spans(scan, self._json_key)
        for p in (self.bpatterns if binary else self.patterns):
            for m in p.finditer(scan.encode("latin-1") if binary else scan):
                if p.groups:
                    spans += [(m.start(g), m.end(g), False) for g in range(1, p.groups + 1)
                              if m.start(g) >= 0 and m.end(g) > m.start(g)]
                elif m.end() > m.start():
                    spans.append((m.start(), m.end(), False))
        if len(scan) < len(text):
            spans.append((len(scan), len(text), False))
        if not spans:
            return text
        return _replace(text, spans, raw, len if binary else _blen)

    def _data(self, f: dict) -> None:
        data = f.get("data")
        if not isinstance(data, str) or not data:
            return
        if f.get("encoding") == "base64":
            payload = base64.b64decode(data)
            new = self.payload(payload)
            if new is not payload:
                f["data"] = base64.b64encode(new).decode("ascii")
        elif self.may_match(data.encode("utf-8", "surrogateescape")):
            f["data"] = self.text(data, True)

    def payload(self, payload: bytes) -> bytes:
        """Raw plaintext bytes, same length, with what the rules match masked (same object if none)."""
        if not self.may_match(payload):
            return payload
        text = payload.decode("latin-1")
        new = self.text(text, True, binary=True)
        return payload if new is text else new.encode("latin-1")

    def _sql(self, f: dict, dialect: str) -> None:
        sql = f.get("sql")
        if isinstance(sql, str) and sql:
            if self.sql:
                sql = sql_literals(sql, dialect)
            if self.patterns:
                sql = self.text(sql, False)
            f["sql"] = sql
        params = f.get("params")
        if self.sql and isinstance(params, list) and params:
            f["params"] = [None if p is None else mark(_blen(p if isinstance(p, str) else str(p))) for p in params]

    # ---------------------------------------------------------------- fail closed
    def scrub(self, r) -> None:
        """The record whose redaction failed: everything that may hold a secret, replaced whole."""
        try:
            f = r.fields
        except Exception:
            f = None
        if not isinstance(f, dict):
            r._fields = {"redaction": "failed"}
            r.tail = None
            return
        for key, value in list(f.items()):
            if key == "headers" and isinstance(value, dict):
                f[key] = {k: "[redacted]" for k in value}
            elif key in ("path", "body", "sql", "command") and isinstance(value, str):
                f[key] = mark(_blen(value)) if key != "path" else value.split("?", 1)[0] + ("?[redacted]" if "?" in value else "")
            elif key == "data" and isinstance(value, str):
                f[key] = mask(len(value)) if f.get("encoding") != "base64" else \
                    base64.b64encode(mask(len(base64.b64decode(value))).encode()).decode("ascii")
            elif key == "request" and isinstance(value, dict):
                f[key] = {k: (v.split("?", 1)[0] if k == "path" and isinstance(v, str) else v) for k, v in value.items()}
            elif key in ("params", "rows", "args"):
                f[key] = "[redacted]"
        f["redaction"] = "failed"


def _alternation(template: str, names) -> re.Pattern | None:
    if not names:
        return None
    return re.compile(template.format("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))))


def _is_form(headers) -> bool:
    if not isinstance(headers, dict):
        return False
    for k, v in headers.items():
        if k.lower() == "content-type":
            return "x-www-form-urlencoded" in str(v).lower()
    return False


_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_JSON_SCALAR = re.compile(r'[^,}\]\s]+')
_JSON_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*(?:"|\Z)|[\[\]{}]', re.S)


def _json_spans(text: str, key: re.Pattern) -> list:
    """The values of the matching keys in JSON text, also when the text is cut short (a truncated
    body): a string's content, or a whole non-string value (quote: True)."""
    spans = []
    for m in key.finditer(text):
        j = m.end()
        if j >= len(text):
            continue
        c = text[j]
        if c == '"':
            s = _JSON_STRING.match(text, j)
            end = s.end() - 1 if s else len(text)
            spans.append((j + 1, end, False))
        elif c in "{[":
            spans.append((j, _container_end(text, j), True))
        else:
            s = _JSON_SCALAR.match(text, j)
            if s:
                spans.append((j, s.end(), True))
    return spans


def _container_end(text: str, start: int) -> int:
    depth = 0
    for m in _JSON_BRACKETS.finditer(text, start):
        c = m.group()
        if c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return m.end()
    return len(text)


def _replace(text: str, spans: list, raw: bool, length=len) -> str:
    """`text` with the spans (merged where they overlap) replaced by their markers."""
    spans.sort()
    merged = []
    for s, e, q in spans:
        if merged and s < merged[-1][1]:
            ps, pe, pq = merged[-1]
            merged[-1] = (ps, max(pe, e), pq if e <= pe else False)
        else:
            merged.append((s, e, q))
    out, at = [], 0
    for s, e, q in merged:
        out.append(text[at:s])
        n = length(text[s:e])
        out.append(mask(n) if raw else (f'"{mark(n)}"' if q else mark(n)))
        at = e
    out.append(text[at:])
    return "".join(out)


# ---------------------------------------------------------------- SQL literals

_SQL_COMMON = r"""
   (?P<comment>--{dash}[^\n]*|/\*.*?(?:\*/|\Z){hash})
  |(?P<string>(?P<pre>[EeBbXxNn]?)'(?P<body>{quoted})(?P<close>'|\Z))
  {dq}
  |(?P<skip>{ident}|\$\d+|\?|:[A-Za-z_]\w*)
  |(?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
"""
# MySQL: backslash escapes, "..." strings, `...` identifiers, # comments.
_SQL_MYSQL = re.compile(_SQL_COMMON.format(
    dash=r"(?=[ \t\r\n]|\Z)", hash=r"|\#[^\n]*", quoted=r"(?:[^'\\]|''|\\.)*",
    dq=r"""|(?P<dstring>"(?P<dbody>(?:[^"\\]|""|\\.)*)(?P<dclose>"|\Z))""",
    ident=r"`(?:[^`]|``)*(?:`|\Z)|[^\W\d][\w$]*"), re.S | re.X)
# PostgreSQL: standard strings ('' only; E'' strings take backslashes too), $tag$...$tag$, "..." identifiers.
_SQL_POSTGRES = re.compile(_SQL_COMMON.format(
    dash="", hash="", quoted=r"(?:[^']|'')*",
    dq=r"""|(?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$(?P<dlbody>.*?)(?P<dlclose>\$(?P=tag)\$|\Z))""",
    ident=r'"(?:[^"]|"")*(?:"|\Z)|[^\W\d][\w$]*'), re.S | re.X)
_PG_ESCAPE_STRING = re.compile(r"'((?:[^'\\]|''|\\.)*)('|\Z)", re.S)


def sql_literals(sql: str, dialect: str) -> str:
    """`sql` with its string and number literals redacted (comments, identifiers and
    placeholders kept); an unterminated string (a cut statement) is redacted to the end."""
    lexer = _SQL_MYSQL if dialect == "mysql" else _SQL_POSTGRES
    out, at, pos = [], 0, 0
    n = len(sql)
    while pos < n:
        m = lexer.search(sql, pos)
        if m is None:
            break
        kind = m.lastgroup if m.lastgroup in ("comment", "skip", "number") else None
        if m.group("string") is not None:
            pre, body, start = m.group("pre"), m.group("body"), m.start("body")
            end = m.end("body")
            if dialect == "postgres" and pre in ("E", "e"):       # backslash escapes: re-read the body
                e = _PG_ESCAPE_STRING.match(sql, m.start("string") + 1)
                start, end = e.start(1), e.end(1)
                m_end = e.end()
            else:
                m_end = m.end()
            out += [sql[at:start], mark(_blen(sql[start:end]))]
            at = end
            pos = max(m_end, pos + 1)
            continue
        if dialect == "mysql" and m.group("dstring") is not None:
            start, end = m.start("dbody"), m.end("dbody")
            out += [sql[at:start], mark(_blen(sql[start:end]))]
            at, pos = end, max(m.end(), pos + 1)
            continue
        if dialect == "postgres" and m.group("dollar") is not None:
            start, end = m.start("dlbody"), m.end("dlbody")
            out += [sql[at:start], mark(_blen(sql[start:end]))]
            at, pos = end, max(m.end(), pos + 1)
            continue
        if kind == "number":
            out += [sql[at:m.start()], mark(m.end() - m.start())]
            at = m.end()
        pos = max(m.end(), pos + 1)
    if not out:
        return sql
    out.append(sql[at:])
    return "".join(out)


# ---------------------------------------------------------------- the step in the sink list

class Redactor:
    """First in a profile's sink list: redacts each batch's records in place, never raises."""
    kind = "redact"

    def __init__(self, rules: Rules, warn=None, clock=time.monotonic):
        self.rules = rules
        self.failed = 0                       # records that failed closed
        self._warn = warn
        self._clock = clock
        self._warned_at: float | None = None
        self._unwarned = 0

    def update(self, rules: Rules) -> None:
        self.rules = rules                    # one reference: the dispatcher sees the old or the new set

    def write(self, records) -> None:
        rules = self.rules
        if rules.empty:
            return
        record = rules.record
        needles = None if rules.always else rules.search_for
        for r in events.redaction_candidates(records, needles):     # Rules.record's first test
            try:
                record(r)
            except Exception as exc:          # fail closed: the record goes on without anything it may hide
                self._failed(rules, r, exc)

    def _failed(self, rules: Rules, r, exc: Exception) -> None:
        try:
            rules.scrub(r)
        except Exception:
            r._fields = {"redaction": "failed"}
            r.tail = None
        self.failed += 1
        self._unwarned += 1
        now = self._clock()
        if self._warn is not None and (self._warned_at is None or now - self._warned_at >= WARN_INTERVAL_S):
            self._warned_at = now
            try:
                self._warn(f"redaction failed for {self._unwarned} record(s) ({type(exc).__name__}: {exc}); "
                           f"their headers, bodies, SQL and data were replaced whole")
            except Exception:
                pass
            self._unwarned = 0

    def close(self) -> None:
        pass


class RawRedactor(Redactor):
    """A Redactor for a profile with a sink that takes raw plaintext (`write_data`): it masks the
    payloads first, in the items list the dispatcher then hands to those sinks. (A separate class:
    the dispatcher collects raw plaintext for a profile only if one of its sinks has `write_data`.)"""

    def write_data(self, items) -> None:
        rules = self.rules
        if rules.empty or not (rules.needles or rules.patterns):
            return
        for i, (ev, conn) in enumerate(items):
            try:
                payload = ev.payload if type(ev.payload) is bytes else bytes(ev.payload)
                new = rules.payload(payload)
                if new is not payload:
                    items[i] = (_with_payload(ev, new), conn)
            except Exception as exc:
                try:
                    items[i] = (_with_payload(ev, mask(len(ev.payload)).encode()), conn)
                except Exception:
                    ev.payload = mask(len(ev.payload)).encode()
                self.failed += 1
                self._unwarned += 1
                if self._warn is not None:
                    try:
                        self._warn(f"redaction of raw plaintext failed ({type(exc).__name__}: {exc}); masked whole")
                    except Exception:
                        pass


def _with_payload(ev: Any, payload: bytes) -> Any:
    """A copy of the event with another payload: the original may still be parsed (a held first chunk)."""
    cls = type(ev)
    # Python build: __slots__; mypyc's build lists its native attributes in __mypyc_attrs__.
    names = getattr(cls, "__slots__", None) or getattr(cls, "__mypyc_attrs__", None)
    if not names:
        ev.payload = payload      # same length, values masked: still parses the same
        return ev
    copy = cls()
    for name in names:
        setattr(copy, name, getattr(ev, name))
    copy.payload = payload
    return copy
