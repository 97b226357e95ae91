"""The `ecapture` command line: parse arguments, call the library, map errors to exit codes."""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator import preflight, termtext, workdir
from orchestrator.bpf import discovery
from orchestrator.bpf import render as render_mod
from orchestrator.plan import build, diff
from orchestrator.reconcile import control
from orchestrator.profile import errors, load, trust

EXIT_INVALID, EXIT_USAGE, EXIT_PRECONDITION = 1, 2, 3

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
    help="Declarative eBPF capture: describe targets in YAML profiles, then [bold]ecapture apply[/bold] them.\n\n"
         "Typical flow: [cyan]validate[/cyan] a profile, look at the [cyan]plan[/cyan], [cyan]apply[/cyan] it "
         "(as root). [cyan]render[/cyan] shows the exact BPF C that would be compiled.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PathsArg = typer.Argument(..., help="Profile files, or directories holding *.yaml profiles.", show_default=False)


def _safe(text) -> str:
    """Any text for a rich console line: terminal controls made visible, then markup escaped."""
    return escape(termtext.printable(str(text)))


def _say(line: str) -> None:
    err.print(f"[dim]ecapture:[/dim] {_safe(line)}")


def _fail(line: str) -> None:
    err.print(f"[red]error:[/red] {_safe(line)}")


def _load_all(paths) -> tuple[list, bool]:
    profiles, ok = [], True
    files = load.discover(paths)
    if not files:
        _fail(f"no profiles found in {', '.join(map(str, paths))}")
        return [], False
    for path in files:
        try:
            profiles.append(load.load_file(path))
        except errors.ProfileError as exc:
            ok = False
            for issue in exc.issues:
                err.print(_safe(str(issue)))
    return profiles, ok


@app.command()
def validate(paths: List[Path] = PathsArg) -> None:
    """Check profiles: schema, semantics, and that every binary, library and symbol exists.

    Prints one [bold]file:line:col: field.path: message[/bold] line per problem and exits 1 if there is any.
    """
    profiles, ok = _load_all(paths)
    for path in load.discover(paths):
        for problem in trust.problems(path):
            err.print(f"[yellow]warning:[/yellow] {_safe(workdir.shown(path))}:1:1: {_safe(problem)} "
                      f"(apply refuses it without --insecure-profiles)")
    for profile in profiles:
        _, failed = build.plan_profile(profile)
        for f in failed:
            ok = False
            err.print(_safe(str(f.issue())))
        if not failed:
            print(f"{termtext.printable(str(profile.path))}: ok ({len(profile.targets)} target(s))")
    raise typer.Exit(0 if ok else EXIT_INVALID)


@app.command()
def render(path: Path = typer.Argument(..., help="One profile file.", show_default=False),
           target: Optional[str] = typer.Option(None, "--target", "-t", help="Only this target."),
           ) -> None:
    """Print the exact BPF C that [bold]apply[/bold] compiles for each target of a profile."""
    profiles, ok = _load_all([path])
    if not ok:
        raise typer.Exit(EXIT_INVALID)
    profile = profiles[0]
    if target and target not in [t.name for t in profile.targets]:
        _fail(f"{profile.path}: no target named {target!r} (have: {', '.join(t.name for t in profile.targets)})")
        raise typer.Exit(EXIT_USAGE)
    sets, failed = build.plan_profile(profile)
    for f in failed:
        if not target or f.target.name == target:
            _fail(str(f.issue()))
    chosen = [s for s in sets if not target or s.target.name == target]
    for ps in chosen:
        if len(chosen) > 1:
            print(f"/* ===== target {ps.target.name} ===== */")
        sys.stdout.write(render_mod.program(ps.rendered, target_no=0))
    raise typer.Exit(0 if chosen and not any(not target or f.target.name == target for f in failed)
                     else EXIT_INVALID)


@app.command()
def plan(paths: List[Path] = PathsArg) -> None:
    """Show what [bold]apply[/bold] would attach where, which running processes match now, and (when an
    apply is running) what it would add, remove, replace or leave alone."""
    profiles, ok = _load_all(paths)
    out = Console(highlight=False, soft_wrap=True)
    planned = []
    for profile in profiles:
        out.print(f"[bold]{_safe(profile.name)}[/bold] [dim]({_safe(profile.path)})[/dim]")
        sets, failed = build.plan_profile(profile)
        planned += sets
        for ps in sets:
            t = ps.target
            out.print(f"  [cyan]{_safe(t.name)}[/cyan] kind={t.kind} digest={ps.digest}")
            out.print(f"    attach: {_safe(ps.attach_path)} [dim]({_safe(ps.how)})[/dim]")
            for h in ps.hooks:
                out.print(f"      {_safe(h.symbol)} on {h.on}")
            if ps.missing_optional:
                out.print(f"    [dim]absent (optional): {_safe(', '.join(ps.missing_optional))}[/dim]")
            f = t.filters
            filt = ", ".join(f"{k}={list(v)}" for k, v in (("pids", f.pids), ("uids", f.uids), ("comm", f.comm),
                                                           ("ports", f.ports)) if v) or "none"
            out.print(f"    filters: {_safe(filt)}")
            if ps.scope_paths:
                out.print(f"    scope: processes executing {_safe(', '.join(ps.scope_paths))} (and their children)")
            pids = _matching_now(ps)
            out.print(f"    running now: {', '.join(map(str, pids[:20])) or 'none'}"
                      f"{' …' if len(pids) > 20 else ''}")
        for fl in failed:
            ok = False
            out.print(f"  [red]{_safe(fl.target.name)}: cannot attach: {_safe(fl.message)}[/red]")
    _print_diff_against_running(out, {p.name for p in profiles}, planned)
    raise typer.Exit(0 if ok else EXIT_INVALID)


def _print_diff_against_running(out, names: set, planned: list) -> None:
    """What the running apply would do with these profiles: the reconciler's own decision (plan.diff)."""
    running = control.request("running")
    if running is None:
        out.print("[dim]no running `ecapture apply` answers: nothing to compare with[/dim]")
        return
    try:
        views = [diff.Running(**{**v, "key": tuple(v["key"])}) for v in running if v["key"][0] in names]
    except (TypeError, KeyError):
        out.print("[dim]the running `ecapture apply` is another version: nothing to compare with[/dim]")
        return
    changes = diff.diff(planned, views, views=lambda view: view)
    lines = [(ps.key, "[green]add[/green]", "") for ps in changes.add]
    lines += [(view.key, "[red]remove[/red]", "") for view in changes.remove]
    lines += [(ps.key, "[yellow]replace[/yellow]", f" [dim]({diff.WORDS[how]})[/dim]")
              for (_, ps), how in zip(changes.replace, changes.how)]
    lines += [(ps.key, "[dim]unchanged[/dim]", "") for ps in changes.unchanged]
    out.print("[bold]against the running apply:[/bold]")
    for key, verdict, note in sorted(lines):
        out.print(f"  {verdict} {_safe('/'.join(key))}{note}")


def _matching_now(ps) -> list[int]:
    f = ps.target.filters
    if ps.scope_real and ps.scope_paths:
        pids = discovery.running_instances(ps.scope_real)
    elif ps.scope_real and not ps.scope_paths and ps.attach_path == ps.scope_real:
        pids = discovery.running_instances(ps.scope_real)
    else:
        pids = discovery.processes_mapping(ps.attach_path)
    if f.pids:
        pids = [p for p in pids if p in f.pids]
    if f.comm:
        pids = [p for p in pids if discovery.comm_of(p) in f.comm]
    if f.uids:
        pids = [p for p in pids if discovery.uid_of(p) in f.uids]
    return sorted(pids)


@app.command()
def apply(paths: List[Path] = PathsArg,
          duration: Optional[float] = typer.Option(None, help="Stop after this many seconds (default: run until "
                                                              "Ctrl-C / SIGTERM)."),
          ready_file: Optional[Path] = typer.Option(None, help="Write this file once every target is attached."),
          watch: bool = typer.Option(True, help="Watch the profiles and apply edits live (add, change, delete)."),
          insecure_profiles: bool = typer.Option(False, "--insecure-profiles",
                                                 help="Apply profiles even when the file or a folder above it is "
                                                      "writable by group or others or owned by another user "
                                                      "(like sshd's StrictModes, they are refused by default: a "
                                                      "profile decides what root probes and where it writes)."),
          metrics_listen: Optional[str] = typer.Option(
              None, "--metrics", metavar="[HOST:]PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (records, losses, target states, "
                   "reload durations, ring-buffer fill). PORT alone listens on 127.0.0.1; any other address "
                   "must be given explicitly, and anyone who reaches it can read the metrics."),
          ) -> None:
    """Capture: attach every target of the profiles and stream records to their sinks until stopped.

    Needs root. The profiles are watched: a new file starts its targets, a deleted one stops
    them, an edit switches only the changed targets to a new generation without losing or
    duplicating a record. A bad edit is reported and the last good generation keeps running.
    Targets that cannot attach are reported and skipped; the rest keep running. On exit every
    probe is detached and a summary (events, records, losses) is printed.
    """
    from orchestrator import metrics as metrics_mod
    from orchestrator.reconcile import session as session_mod

    listen = None
    if metrics_listen is not None:
        try:
            listen = metrics_mod.parse_listen(metrics_listen)
        except metrics_mod.MetricsError as exc:
            _fail(str(exc))
            raise typer.Exit(EXIT_PRECONDITION)
        if not listen.loopback:
            warning = f"--metrics {listen} is not a loopback address: anyone who reaches it can read the metrics"
            err.print(f"[yellow]warning:[/yellow] {_safe(warning)}")
    problems = preflight.problems()
    if problems:
        for p in problems:
            _fail(p)
        raise typer.Exit(EXIT_PRECONDITION)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"no such file or directory: {', '.join(missing)}")
        raise typer.Exit(EXIT_USAGE)
    # bcc/clang warnings are kept off the terminal by pointing fd 2 elsewhere while they compile,
    # which reloads do from the watcher's thread at any time: our own messages go to a copy of fd 2.
    err.file = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        sess = session_mod.ApplySession(paths, log=_say, warn=lambda line: err.print(_safe(line)), watch=watch,
                                        insecure_profiles=insecure_profiles, metrics_listen=listen)
    except metrics_mod.MetricsError as exc:
        _fail(str(exc))
        raise typer.Exit(EXIT_PRECONDITION)

    def on_signal(signum, _frame):
        sess.stop_event.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        started = sess.run(duration=duration, ready_file=workdir.absolute(ready_file) if ready_file else None)
    finally:
        summary = sess.shutdown()
    if not started:
        raise typer.Exit(EXIT_INVALID)
    _print_summary(summary)


@app.command()
def status(as_json: bool = typer.Option(False, "--json", help="Print the raw status as JSON.")) -> None:
    """Show what the running [bold]ecapture apply[/bold] captures: each profile and target, its state,
    generation, attach points, events, losses, last error and last reload."""
    answer = control.request("status")
    if answer is None:
        _fail(f"no running `ecapture apply` answers on {control.socket_path()}")
        raise typer.Exit(EXIT_PRECONDITION)
    if as_json:
        print(json.dumps(answer, indent=2))
        return
    out = Console(highlight=False, soft_wrap=True)
    for p in answer["profiles"]:
        colour = {"ok": "green", "degraded": "yellow"}.get(p["state"], "red")
        reload = time.strftime("%H:%M:%S", time.localtime(p["last_reload"])) if p["last_reload"] else "-"
        out.print(f"[bold]{_safe(str(p['profile']))}[/bold] [{colour}]{p['state']}[/{colour}] "
                  f"[dim]{_safe(p['file'])}; last reload {reload} ({p['reload_ms']} ms)[/dim]")
        if p["last_error"]:
            out.print(f"  [red]last error:[/red] {_safe(p['last_error'])}")
        for t in p["targets"]:
            if t["state"] == "failed" and "generation" not in t:
                out.print(f"  [red]{_safe(t['name'])} failed[/red]: {_safe(t['last_error'])}")
                continue
            out.print(f"  [cyan]{_safe(t['name'])}[/cyan] {t['state']} gen {t['generation']} "
                      f"events={t['events']} losses={t['losses']}")
            force = "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in t["filters_in_force"].items() if v)
            out.print(f"    filters: {_safe(force or 'none')}")
            out.print(f"    {_safe(t['library'])}: {_safe(', '.join(t['symbols']))}; pids: "
                      f"{_safe(str(t['pid_scope']))}")
            if t["last_error"]:
                out.print(f"    [yellow]kept last good generation:[/yellow] {_safe(t['last_error'])}")
    for i in answer.get("packet_capture", []):
        out.print(f"[bold]packet capture[/bold] on {_safe(i['interface'])} ({', '.join(i['directions'])}) "
                  f"for {i['sinks']} sink(s)")
    consumer = answer.get("consumer")
    if consumer:
        out.print(f"[bold]consumer[/bold] {_safe(consumer['build'])} ({_safe(consumer['why'])}); "
                  f"{consumer['queued_bytes'] // 1024} KiB queued")


def _print_summary(summary: dict) -> None:
    events = sum(summary["events"].values())
    recs = ", ".join(f"{k}={v}" for k, v in sorted(summary["records"].items())) or "none"
    losses = summary["losses"]
    _say(f"stopped after {summary['seconds']} s: {events} event(s); records: {recs}")
    if losses:
        for (profile, target, stage), n in sorted(losses.items()):
            err.print(f"[red]loss:[/red] {_safe(profile)}/{_safe(target)} {_safe(stage)}: {n}")
    else:
        _say("losses: 0")
    if summary["failed_targets"]:
        _say(f"targets that did not run: {', '.join(summary['failed_targets'])}")
    for line in summary["sink_errors"]:
        _fail(f"sink: {line}")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
