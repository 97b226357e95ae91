"""Terminal sink: one readable block per record, coloured when stdout is a terminal."""
from __future__ import annotations

import datetime
import sys

from rich.console import Console
from rich.markup import escape

from orchestrator.pipeline import events

STYLE = {"http.request": "bold cyan", "http.response": "bold green", "data": "yellow",
         "bash.command": "bold magenta", "uprobe.call": "bold blue", "loss": "bold red",
         "parse_error": "red"}


class StdoutSink:
    def __init__(self, color: str = "auto", show_data: bool = True, max_body: int = 2048, file=None):
        force = {"always": True, "never": False}.get(color)
        self.console = Console(file=file or sys.stdout, force_terminal=force, no_color=(color == "never"),
                               highlight=False, soft_wrap=True)
        self.show_data = show_data
        self.max_body = max_body

    def write(self, records) -> None:
        lines = []
        for r in records:
            if r.type == "data" and not self.show_data:
                continue
            lines.append(self._format(r))
        if lines:
            self.console.print("\n".join(lines))
            self.console.file.flush()

    def _head(self, r: events.Record) -> str:
        ev = r.event
        ts = datetime.datetime.fromtimestamp((ev.ts if ev else 0) / 1e9).strftime("%H:%M:%S.%f")[:-3] if ev else ""
        who = f"{escape(ev.comm)}[{ev.pid}]" if ev else ""
        where = ""
        if r.conn is not None:
            arrow = "→" if r.fields.get("direction") == "write" else "←"
            where = f" {events.endpoint(r.conn[0])} {arrow} {events.endpoint(r.conn[1])}"
        style = STYLE.get(r.type, "bold")
        prof = f"{ev.source.profile}/{ev.source.target.name}" if ev else r.fields.get("profile", "")
        return f"[dim]{ts}[/dim] [{style}]{r.type}[/{style}] {who}{where} [dim]{escape(prof)}[/dim]"

    def _body(self, text: str, encoding: str | None) -> str:
        if not text:
            return ""
        if encoding:
            return f"\n    [dim]<{len(text)} base64 chars>[/dim]"
        cut = text[: self.max_body]
        more = f"\n    [dim]… {len(text) - len(cut)} more bytes[/dim]" if len(text) > len(cut) else ""
        return "\n" + "\n".join("    " + escape(line) for line in cut.splitlines()) + more

    def _format(self, r: events.Record) -> str:
        f = r.fields
        head = self._head(r)
        if r.type == "http.request":
            hdrs = "".join(f"\n    [dim]{escape(k)}:[/dim] {escape(v)}" for k, v in f["headers"].items())
            return f"{head}\n  [bold]{escape(f['method'])} {escape(f['path'])} {escape(f['version'])}[/bold]{hdrs}" \
                   + self._body(f.get("body", ""), f.get("body_encoding"))
        if r.type == "http.response":
            lat = f" [dim]({f['latency_ms']} ms after {escape(f['request']['method'])} " \
                  f"{escape(f['request']['path'])})[/dim]" if "latency_ms" in f else ""
            hdrs = "".join(f"\n    [dim]{escape(k)}:[/dim] {escape(v)}" for k, v in f["headers"].items())
            return f"{head}\n  [bold]{escape(f['version'])} {f['status']} {escape(f.get('reason', ''))}[/bold]{lat}" \
                   f"{hdrs}" + self._body(f.get("body", ""), f.get("body_encoding"))
        if r.type == "bash.command":
            return f"{head}\n  $ {escape(f['command'])}"
        if r.type == "data":
            return f"{head}\n  {f['direction']} {f['len']} bytes" + self._body(f["data"], f.get("encoding"))
        if r.type == "loss":
            return f"{head}\n  [bold red]lost {f['count']} record(s) at {escape(f['stage'])}[/bold red]"
        if r.type == "uprobe.call":
            args = " ".join(f"{escape(k)}={escape(repr(v))}" for k, v in f["args"].items())
            ret = f" → {f['ret']}" if "ret" in f else ""
            return f"{head}\n  {escape(f['symbol'])}({args}){ret}"
        return f"{head}\n  {escape(str(f))}"

    def close(self) -> None:
        self.console.file.flush()
