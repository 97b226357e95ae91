"""Terminal sink: records on standard output, in one of three formats.

- `text` (the default): one readable block per record, coloured when stdout is a terminal.
- `compact`: one line per record for a person (time, comm[pid], then `GET /a → 200 (3.1 ms)`,
  `sql SELECT …`, `$ ls`, `read 512 bytes`, ...).
- `json`: one record per line, exactly the JSONL record (`orchestrator/sinks/jsonl.py`), for `jq`.

Every captured or user-given field in `text` and `compact` goes through `termtext.printable`
(terminal controls made visible) and then rich's `escape` (markup) before it reaches the console:
see `_safe`. `json` lines escape the few characters JSON may carry raw that a terminal would
interpret (C1 controls, DEL, bidi overrides) as `\\uXXXX`: the same JSON value, safe on a terminal.

Writing to the process's stdout happens on a thread of its own (`_BackgroundWriter`), so a slow
or stopped reader (a pager, `| jq` on a loaded machine) never holds up the dispatcher: what does
not fit in its bounded buffer is refused and so counted by the dispatcher as this sink's loss.
"""
from __future__ import annotations

import collections
import datetime
import errno
import io
import os
import re
import sys
import threading

import msgspec
from rich.console import Console
from rich.markup import escape

from orchestrator import termtext, threadname
from orchestrator.pipeline import events

FORMATS = ("text", "compact", "json")
WRITER_LIMIT_BYTES = 8 << 20        # output waiting for a slow reader of stdout; beyond it: counted losses
CLOSE_TIMEOUT_S = 5.0               # how long close() waits for a stalled reader before giving up

STYLE = {"http.request": "bold cyan", "http.response": "bold green", "data": "yellow",
         "bash.command": "bold magenta", "zsh.command": "bold magenta", "uprobe.call": "bold blue", "loss": "bold red",
         "parse_error": "red", "tls.secret": "bold red", "mysql.query": "bold cyan", "mysql.result": "bold green",
         "pg.query": "bold cyan", "pg.result": "bold green"}
SQL_QUERIES = ("mysql.query", "pg.query")
SQL_RESULTS = ("mysql.result", "pg.result")
SHELL_COMMANDS = ("bash.command", "zsh.command")

# What JSON may carry unescaped that a terminal interprets (DEL, C1 controls, bidi controls), as UTF-8.
_JSON_UNSAFE = re.compile(rb"\x7f|\xc2[\x80-\x9f]|\xe2\x80[\xaa-\xae]|\xe2\x81[\xa6-\xa9]")


def _safe(value, multiline: bool = False) -> str:
    """One field (one line unless `multiline`), safe for the terminal and for rich markup."""
    return escape(termtext.printable(str(value), multiline))


def _one_line(text, limit: int | None = None) -> str:
    """Text (a SQL statement, a command) on one line: runs of whitespace, newlines included, become
    one space; cut to `limit` characters with an ellipsis."""
    flat = " ".join(str(text).split())
    if limit is not None and len(flat) > limit:
        flat = flat[:limit] + "…"
    return flat


def _json_terminal_safe(line: bytes) -> bytes:
    """The same JSON value with DEL, C1 and bidi controls written as \\uXXXX escapes."""
    if _JSON_UNSAFE.search(line) is None:
        return line
    return _JSON_UNSAFE.sub(lambda m: b"\\u%04x" % ord(m.group().decode("utf-8")), line)


def _header_lines(headers: dict) -> str:
    """One line per header value: a header sent more than once has a list of values."""
    out = []
    for name, value in headers.items():
        for one in value if isinstance(value, list) else [value]:
            out.append(f"\n    [dim]{_safe(name)}:[/dim] {_safe(one)}")
    return "".join(out)


def _latency(f: dict) -> str:
    return f" ({f['latency_ms']} ms)" if f.get("latency_ms") is not None else ""


def _plural(n, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def sql_summary(r_type: str, f: dict) -> str:
    """A MySQL/PostgreSQL result in words (not yet terminal-safe): `3 rows`, `ok, 3 rows affected`,
    `error 1146 (42S02): Table 'x' doesn't exist`, `INSERT 0 3`, `login ok as bob`."""
    status = f.get("status")
    if r_type == "pg.result":
        error = f.get("error") or {}
        if status == "error":
            code = f" {error['code']}" if error.get("code") else ""
            return f"{(error.get('severity') or 'error')}{code}: {error.get('message') or ''}".rstrip(": ")
        if f.get("auth") is not None or f.get("backend_pid") is not None:
            return f"login ok as {f.get('user')}" + (f" ({f['auth']})" if f.get("auth") else "")
        if f.get("suspended"):
            return f"{_plural(f.get('row_count') or 0, 'row')}, portal suspended"
        if f.get("tag"):
            return str(f["tag"])
        return _plural(f.get("row_count") or 0, "row") if f.get("columns") else str(status or "ok")
    if status == "error":
        state = f" ({f['sql_state']})" if f.get("sql_state") else ""
        return f"error {f.get('error_code')}{state}: {f.get('error_message') or ''}"
    if f.get("command") == "login":
        return "login ok"
    if status == "rows":
        return _plural(f.get("row_count") or 0, "row")
    parts = [str(status or "ok")]
    if f.get("affected_rows"):
        parts.append(f"{_plural(f['affected_rows'], 'row')} affected")
    if f.get("last_insert_id"):
        parts.append(f"last insert id {f['last_insert_id']}")
    if f.get("warnings"):
        parts.append(_plural(f["warnings"], "warning"))
    return ", ".join(parts)


def sql_statement(r_type: str, f: dict) -> str | None:
    """What a SQL query record asks, as a person would type it (not yet terminal-safe): the SQL,
    or for a command without SQL its name and arguments (`use shop`, `login bob@shop`, `COM_QUIT`)."""
    if f.get("sql"):
        return str(f["sql"])
    if r_type == "pg.query" or r_type == "pg.result":
        kind = f.get("kind")
        if kind == "startup":
            return f"login {f.get('user')}@{f.get('database')}"
        if kind == "cancel":
            return f"cancel backend {f.get('backend_pid')}"
        return None
    command = f.get("command")
    if command == "login":
        return f"login {f.get('user')}@{f.get('database')}" if f.get("database") else f"login {f.get('user')}"
    if command == "COM_INIT_DB":
        return f"use {f.get('database')}"
    return command


class StdoutSink:
    kind = "stdout"

    def __init__(self, color: str = "auto", show_data: bool = True, max_body: int = 2048, file=None,
                 show_secrets: bool = False, format: str = "text", fd: int | None = None,  # noqa: A002
                 writer_limit: int = WRITER_LIMIT_BYTES):
        """`file`: write there, synchronously (an in-memory buffer); None: to `fd` (default: the
        process's stdout) from a writer thread of its own, at most `writer_limit` bytes behind."""
        if format not in FORMATS:
            raise ValueError(f"unknown stdout format {format!r} (one of {', '.join(FORMATS)})")
        self.format = format
        self.show_data = show_data
        self.show_secrets = show_secrets      # TLS secrets reach the terminal only when asked for
        self.max_body = max_body
        self._file = file
        fd = sys.stdout.fileno() if fd is None and file is None else fd
        self._writer = _BackgroundWriter(fd, writer_limit) if file is None else None
        force = {"always": True, "never": False}.get(color)
        is_terminal = force if force is not None else os.isatty(fd) if file is None else _isatty(file)
        # Records are rendered into this buffer, then written whole (by the writer thread for stdout).
        self._buffer = io.StringIO()
        self.console = Console(file=self._buffer, force_terminal=is_terminal, no_color=(color == "never"),
                               highlight=False, soft_wrap=True)
        self._encode = msgspec.json.Encoder().encode

    def write(self, records) -> None:
        shown = [r for r in records
                 if not (r.type == "data" and not self.show_data or r.type == "tls.secret" and not self.show_secrets)]
        if not shown:
            return
        if self.format == "json":
            encode = self._encode
            data = b"".join([_json_terminal_safe(r.to_json(encode)) + b"\n" for r in shown])
        else:
            line = self._compact if self.format == "compact" else self._format
            try:
                self.console.print("\n".join([line(r) for r in shown]))
                data = self._buffer.getvalue().encode("utf-8", "replace")
            finally:                        # a batch that failed to render leaves nothing behind
                self._buffer.seek(0)
                self._buffer.truncate()
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        if self._writer is not None:
            self._writer.put(data)
            return
        if isinstance(self._file, io.TextIOBase):
            self._file.write(data.decode("utf-8"))
        else:
            self._file.write(data)
        self._file.flush()

    # ---------------------------------------------------------------- common parts

    @staticmethod
    def _time(r: events.Record) -> str:
        ts = r.event.ts if r.event is not None else r.fields.get("ts")
        if not ts:
            return ""
        return datetime.datetime.fromtimestamp(ts / 1e9).strftime("%H:%M:%S.%f")[:-3]

    @staticmethod
    def _who(r: events.Record) -> str:
        ev = r.event
        if ev is not None:
            return f"{_safe(ev.comm)}[{ev.pid}]"
        return f"{_safe(r.fields.get('profile', ''))}/{_safe(r.fields.get('target', ''))}"

    def _cut(self, text: str) -> str:
        return text if len(text) <= self.max_body else text[: self.max_body] + "…"

    # ---------------------------------------------------------------- text

    def _head(self, r: events.Record) -> str:
        ev = r.event
        who = f"{_safe(ev.comm)}[{ev.pid}]" if ev else ""
        where = ""
        if r.conn is not None:
            arrow = "→" if r.fields.get("direction") == "write" else "←"
            where = f" {events.endpoint(r.conn[0])} {arrow} {events.endpoint(r.conn[1])}"
        style = STYLE.get(r.type, "bold")
        prof = f"{ev.source.profile}/{ev.source.target.name}" if ev else \
            "/".join(str(r.fields[k]) for k in ("profile", "target") if r.fields.get(k))
        return f"[dim]{self._time(r)}[/dim] [{style}]{r.type}[/{style}] {who}{where} [dim]{_safe(prof)}[/dim]"

    def _body(self, text: str, encoding: str | None) -> str:
        if not text:
            return ""
        if encoding:
            return f"\n    [dim]<{len(text)} base64 chars>[/dim]"
        cut = text[: self.max_body]
        more = f"\n    [dim]… {len(text) - len(cut)} more bytes[/dim]" if len(text) > len(cut) else ""
        return "\n" + "\n".join("    " + _safe(line, multiline=True) for line in cut.splitlines()) + more

    def _format(self, r: events.Record) -> str:
        f = r.fields
        head = self._head(r)
        if r.type == "http.request":
            hdrs = _header_lines(f["headers"])
            return f"{head}\n  [bold]{_safe(f['method'])} {_safe(f['path'])} {_safe(f['version'])}[/bold]{hdrs}" \
                   + self._body(f.get("body", ""), f.get("body_encoding"))
        if r.type == "http.response":
            lat = f" [dim]({f['latency_ms']} ms after {_safe(f['request']['method'])} " \
                  f"{_safe(f['request']['path'])})[/dim]" if "latency_ms" in f else ""
            hdrs = _header_lines(f["headers"])
            return f"{head}\n  [bold]{_safe(f['version'])} {f['status']} {_safe(f.get('reason', ''))}[/bold]{lat}" \
                   f"{hdrs}" + self._body(f.get("body", ""), f.get("body_encoding"))
        if r.type in SQL_QUERIES:
            return head + self._sql_query_text(r.type, f)
        if r.type in SQL_RESULTS:
            return head + self._sql_result_text(r.type, f)
        if r.type == "tls.secret":
            return f"{head}\n  secret {_safe(f['label'])} {f['client_random']} {f['secret']}"
        if r.type in SHELL_COMMANDS:
            return f"{head}\n  $ {_safe(f['command'])}"
        if r.type == "data":
            return f"{head}\n  {f['direction']} {f['len']} bytes" + self._body(f["data"], f.get("encoding"))
        if r.type == "loss":
            return f"{head}\n  [bold red]lost {f['count']} record(s) at {_safe(f['stage'])}[/bold red]"
        if r.type == "uprobe.call":
            args = " ".join(f"{_safe(k)}={_safe(repr(v))}" for k, v in f["args"].items())
            ret = f" → {f['ret']}" if "ret" in f else ""
            return f"{head}\n  {_safe(f['symbol'])}({args}){ret}"
        if r.type == "parse_error":
            return f"{head}\n  {_safe(f.get('protocol'))}: {_safe(f.get('reason'))} at byte {f.get('offset')}"
        return f"{head}\n  {_safe(f)}"

    def _sql_query_text(self, r_type: str, f: dict) -> str:
        statement = sql_statement(r_type, f)
        out = "\n" + "\n".join("  [bold]" + ("sql> " if i == 0 else "     ") + _safe(line, multiline=True) + "[/bold]"
                               for i, line in enumerate(self._cut(statement or "?").splitlines() or [""]))
        if f.get("params"):
            params = msgspec.json.encode(f["params"]).decode()
            out += f"\n  [dim]params:[/dim] {_safe(_one_line(params, self.max_body))}"
        if f.get("truncated"):
            out += "\n  [dim](truncated)[/dim]"
        return out

    def _sql_result_text(self, r_type: str, f: dict) -> str:
        error = f.get("status") == "error"
        style = "bold red" if error else "bold"
        statement = sql_statement(r_type, f)
        after = f" [dim]after {_safe(_one_line(statement, 80))}[/dim]" if statement else ""
        lat = f" [dim]({f['latency_ms']} ms)[/dim]" if f.get("latency_ms") is not None else ""
        out = f"\n  [{style}]→ {_safe(sql_summary(r_type, f))}[/{style}]{lat}{after}"
        error_fields = f.get("error") if isinstance(f.get("error"), dict) else {}
        for key in ("detail", "hint"):
            if error_fields.get(key):
                out += f"\n    [dim]{key}:[/dim] {_safe(error_fields[key])}"
        if f.get("columns"):
            out += "\n    [dim]" + " | ".join(_safe(c) for c in f["columns"]) + "[/dim]"
            rows = f.get("rows") or []
            for row in rows:
                out += "\n    " + _safe(self._cut(" | ".join("NULL" if v is None else str(v) for v in row)))
            more = (f.get("row_count") or 0) - len(rows)
            if more > 0:
                out += f"\n    [dim]… {more} more row(s)[/dim]"
        if f.get("truncated"):
            out += "\n  [dim](truncated)[/dim]"
        return out

    # ---------------------------------------------------------------- compact

    def _compact(self, r: events.Record) -> str:
        style = STYLE.get(r.type, "bold")
        return f"[dim]{self._time(r)}[/dim] {self._who(r)} [{style}]{self._compact_what(r)}[/{style}]"

    def _compact_what(self, r: events.Record) -> str:
        f = r.fields
        if r.type == "http.request":
            return f"{_safe(f['method'])} {_safe(f['path'])}"
        if r.type == "http.response":
            req = f.get("request") or {}
            asked = f"{_safe(req.get('method'))} {_safe(req.get('path'))} " if req else ""
            return f"{asked}→ {_safe(f['status'])}{_latency(f)}"
        if r.type in SQL_QUERIES:
            statement = sql_statement(r.type, f)
            return f"sql {_safe(_one_line(statement, self.max_body))}" if statement else f"{r.type}"
        if r.type in SQL_RESULTS:
            statement = sql_statement(r.type, f)
            asked = f"sql {_safe(_one_line(statement, 80))} " if statement else ""
            return f"{asked}→ {_safe(_one_line(sql_summary(r.type, f)))}{_latency(f)}"
        if r.type in SHELL_COMMANDS:
            return f"$ {_safe(_one_line(f['command'], self.max_body))}"
        if r.type == "data":
            peer = f" {'to' if f['direction'] == 'write' else 'from'} {events.endpoint(r.conn[1])}" if r.conn else ""
            return f"{f['direction']} {_plural(f['len'], 'byte')}{peer}"
        if r.type == "loss":
            return f"lost {f['count']} record(s) at {_safe(f['stage'])}"
        if r.type == "tls.secret":
            return f"secret {_safe(f['label'])} {f['client_random']} {f['secret']}"
        if r.type == "uprobe.call":
            args = ", ".join(f"{_safe(k)}={_safe(repr(v))}" for k, v in f["args"].items())
            ret = f" → {f['ret']}" if "ret" in f else ""
            return f"{_safe(f['symbol'])}({args}){ret}"
        if r.type == "parse_error":
            return f"parse error {_safe(f.get('protocol'))}: {_safe(f.get('reason'))}"
        return f"{_safe(r.type)} {_safe(_one_line(msgspec.json.encode(f).decode(), self.max_body))}"

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close(CLOSE_TIMEOUT_S)
        else:
            self._file.flush()


def _isatty(file) -> bool:
    try:
        return file.isatty()
    except (AttributeError, ValueError):
        return False


class _BackgroundWriter:
    """Writes chunks to a file descriptor from a thread of its own, keeping at most `limit` bytes
    waiting. `put` never blocks: when the reader is that far behind it raises BlockingIOError
    (EAGAIN), and when writing failed (EPIPE: the reader is gone) it raises that error; either way
    the dispatcher counts the refused batch as this sink's loss and, once the sink takes records
    again, hands it a `loss` record for them."""

    def __init__(self, fd: int, limit: int = WRITER_LIMIT_BYTES):
        self._fd = fd
        self._limit = limit
        self._chunks: collections.deque = collections.deque()
        self._waiting = 0
        self._error: OSError | None = None
        self._closing = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="ecapture-stdout", daemon=True)
        self._thread.start()

    def put(self, data: bytes) -> None:
        with self._cond:
            if self._error is not None:
                raise OSError(self._error.errno, f"stdout: {self._error.strerror}")
            if self._waiting and self._waiting + len(data) > self._limit:
                raise BlockingIOError(errno.EAGAIN, f"the reader of stdout is behind by {self._waiting} bytes")
            self._chunks.append(data)
            self._waiting += len(data)
            self._cond.notify()

    def _run(self) -> None:
        threadname.name_this_thread()
        while True:
            with self._cond:
                while not self._chunks and not self._closing:
                    self._cond.wait()
                if not self._chunks:
                    return
                data = b"".join(self._chunks)
                self._chunks.clear()
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
            except OSError as exc:
                with self._cond:
                    self._error = exc
                    self._chunks.clear()
                    self._waiting = 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._waiting -= len(data)
                self._cond.notify_all()

    def close(self, timeout: float) -> None:
        """Write what waits (for at most `timeout` seconds: a stopped reader must not hang apply's exit)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
