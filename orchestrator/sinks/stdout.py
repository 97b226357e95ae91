"""Terminal sink: one readable block per record, coloured when stdout is a terminal.

Every captured or user-given field goes through `termtext.printable` (terminal controls made
visible) and then rich's `escape` (markup) before it reaches the console: see `_safe`.
"""
from __future__ import annotations

import datetime
import sys

from rich.console import Console
from rich.markup import escape

from orchestrator import termtext
from orchestrator.pipeline import events

STYLE = {"http.request": "bold cyan", "http.response": "bold green", "data": "yellow",
         "bash.command": "bold magenta", "zsh.command": "bold magenta", "uprobe.call": "bold blue", "loss": "bold red",
         "parse_error": "red", "tls.secret": "bold red"}


def _safe(value, multiline: bool = False) -> str:
    """One field (one line unless `multiline`), safe for the terminal and for rich markup."""
    return escape(termtext.printable(str(value), multiline))


def _header_lines(headers: dict) -> str:
    """One line per header value: a header sent more than once has a list of values."""
    out = []
    for name, value in headers.items():
        for one in value if isinstance(value, list) else [value]:
            out.append(f"\n    [dim]{_safe(name)}:[/dim] {_safe(one)}")
    return "".join(out)


class StdoutSink:
    def __init__(self, color: str = "auto", show_data: bool = True, max_body: int = 2048, file=None,
                 show_secrets: bool = False):
        force = {"always": True, "never": False}.get(color)
        self.console = Console(file=file or sys.stdout, force_terminal=force, no_color=(color == "never"),
                               highlight=False, soft_wrap=True)
        self.show_data = show_data
        self.show_secrets = show_secrets      # TLS secrets reach the terminal only when asked for
        self.max_body = max_body

    def write(self, records) -> None:
        lines = []
        for r in records:
            if r.type == "data" and not self.show_data or r.type == "tls.secret" and not self.show_secrets:
                continue
            lines.append(self._format(r))
        if lines:
            self.console.print("\n".join(lines))
            self.console.file.flush()

    def _head(self, r: events.Record) -> str:
        ev = r.event
        ts = datetime.datetime.fromtimestamp((ev.ts if ev else 0) / 1e9).strftime("%H:%M:%S.%f")[:-3] if ev else ""
        who = f"{_safe(ev.comm)}[{ev.pid}]" if ev else ""
        where = ""
        if r.conn is not None:
            arrow = "→" if r.fields.get("direction") == "write" else "←"
            where = f" {events.endpoint(r.conn[0])} {arrow} {events.endpoint(r.conn[1])}"
        style = STYLE.get(r.type, "bold")
        prof = f"{ev.source.profile}/{ev.source.target.name}" if ev else r.fields.get("profile", "")
        return f"[dim]{ts}[/dim] [{style}]{r.type}[/{style}] {who}{where} [dim]{_safe(prof)}[/dim]"

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
        if r.type == "tls.secret":
            return f"{head}\n  secret {_safe(f['label'])} {f['client_random']} {f['secret']}"
        if r.type in ("bash.command", "zsh.command"):
            return f"{head}\n  $ {_safe(f['command'])}"
        if r.type == "data":
            return f"{head}\n  {f['direction']} {f['len']} bytes" + self._body(f["data"], f.get("encoding"))
        if r.type == "loss":
            return f"{head}\n  [bold red]lost {f['count']} record(s) at {_safe(f['stage'])}[/bold red]"
        if r.type == "uprobe.call":
            args = " ".join(f"{_safe(k)}={_safe(repr(v))}" for k, v in f["args"].items())
            ret = f" → {f['ret']}" if "ret" in f else ""
            return f"{head}\n  {_safe(f['symbol'])}({args}){ret}"
        return f"{head}\n  {_safe(f)}"

    def close(self) -> None:
        self.console.file.flush()
