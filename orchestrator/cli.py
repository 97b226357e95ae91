"""The `ecapture` command line: parse arguments, call the library, map errors to exit codes."""
from __future__ import annotations

import inspect
import json
import os
import signal
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator import preflight, termtext, workdir
from orchestrator.bpf import discovery
from orchestrator.bpf import render as render_mod
from orchestrator.plan import build, diff, report
from orchestrator.reconcile import control
from orchestrator.profile import errors, load, trust

EXIT_INVALID, EXIT_USAGE, EXIT_PRECONDITION = 1, 2, 3
EXIT_CHANGES = 2        # plan --detailed-exitcode: changes pending (terraform's code)
RELOAD_TIMEOUT_S = 300  # a reload pass compiles what changed: on a loaded machine that takes a while


def _reflowed(text: str) -> str:
    """A docstring's paragraphs each as one line: typer's rich help keeps the source's line breaks
    after the first paragraph, which then wrap mid-sentence on an 80-column terminal."""
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


class _HelpWithoutTypes:
    """typer writes each parameter's Python type beside it in help (<list[Path]>, <float>, <bool>):
    show an option's metavar instead, and nothing for flags and arguments (their name says it).
    Docstrings are reflowed (`_reflowed`)."""

    def format_help(self, ctx, formatter):
        if self.help:
            self.help = _reflowed(self.help)
        return super().format_help(ctx, formatter)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            param.display_type_rich = lambda ctx, param=param: (
                None if param.param_type_name == "argument" or getattr(param, "is_flag", False) else param.metavar)
        return params


class _Command(_HelpWithoutTypes, typer.core.TyperCommand):
    pass


class _Group(_HelpWithoutTypes, typer.core.TyperGroup):
    pass


app = typer.Typer(
    cls=_Group, add_completion=True, no_args_is_help=True, rich_markup_mode="rich",
    help="Declarative eBPF capture: describe targets in YAML profiles, then [bold]ecapture apply[/bold] them.\n\n"
         "Typical flow: [cyan]validate[/cyan] a profile, look at the [cyan]plan[/cyan], [cyan]apply[/cyan] it "
         "(as root). [cyan]render[/cyan] shows the exact BPF C that would be compiled.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)

PathsArg = typer.Argument(..., help="Profile files, or directories holding *.yaml profiles.", show_default=False,
                          metavar="PROFILE")


def _version() -> str:
    """The installed distribution's version; in a source checkout that is not installed, pyproject.toml's."""
    try:
        return metadata.version("ecapture")
    except metadata.PackageNotFoundError:
        pass
    try:
        import tomllib  # novermin: 3.11's, and 3.10 takes the same parser from PyPI below
    except ImportError:
        import tomli as tomllib
    try:
        with open(Path(__file__).resolve().parents[1] / "pyproject.toml", "rb") as f:
            return f"{tomllib.load(f)['project']['version']} (source checkout, not installed)"
    except (OSError, KeyError, ValueError):
        return "unknown (not installed)"


def _print_version(value: bool) -> None:
    if value:
        print(f"ecapture {_version()}")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print the version of ecapture and exit.")) -> None:
    pass


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


def _check_files(paths, offline: bool = False) -> tuple[list[report.FileCheck], list[errors.Issue]]:
    """Every profile file named by `paths`, checked as validate does: schema and semantics, then,
    unless `offline`, what touches the file system: output paths, whether apply may trust the file,
    and whether each target's binary, library and symbols exist (planning it). Also returns the
    problems that are about no one file."""
    files = load.discover(paths)
    if not files:
        return [], [errors.Issue(", ".join(map(str, paths)), 1, 1, "", "no profiles found")]
    checks = []
    for path in files:
        check = report.FileCheck(workdir.shown(path))
        try:
            check.profile = load.load_file(path, check_outputs=not offline)
        except errors.ProfileError as exc:
            check.errors += exc.issues
        if not offline:
            check.warnings += [errors.Issue(check.file, 1, 1, "", f"{problem} (apply refuses it without "
                                                                   f"--insecure-profiles)")
                               for problem in trust.problems(path)]
            if check.profile is not None:
                check.plan = build.plan_profile(check.profile)
                check.errors += [f.issue() for f in check.plan[1]]
                check.warnings += [w for ps in check.plan[0] for w in ps.cgroup_warnings(check.file)]
        checks.append(check)
    return checks, []


@app.command(cls=_Command)
def validate(paths: List[Path] = PathsArg,
             as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout instead (see "
                                                                "README, JSON output): per file, ok or its errors "
                                                                "with file, line, col, field and message."),
             offline: bool = typer.Option(False, "--offline",
                                          help="Check schema and semantics only, touching nothing but the profiles "
                                               "themselves: no binary, library, symbol, output path or permission "
                                               "checks (for CI runners that do not have the binaries)."),
             ) -> None:
    """Check profiles: schema, semantics, and that every binary, library and symbol exists.

    Prints one [bold]file:line:col: field.path: message[/bold] line per problem and exits 1 if there is any.
    """
    checks, general = _check_files(paths, offline)
    if as_json:
        document = report.validate_document(checks, general, offline)
        print(json.dumps(document, indent=2))
        raise typer.Exit(0 if document["ok"] else EXIT_INVALID)
    for issue in general:
        _fail(f"{issue.message} in {issue.file}")
    for check in checks:
        for issue in check.errors:
            err.print(_safe(str(issue)))
        for issue in check.warnings:
            err.print(f"[yellow]warning:[/yellow] {_safe(str(issue))}")
        if not check.errors:
            unchecked = "; offline: binaries, libraries, symbols, output paths and permissions not checked"
            print(f"{termtext.printable(check.file)}: ok ({len(check.profile.targets)} target(s)"
                  f"{unchecked if offline else ''})")
    raise typer.Exit(0 if not general and all(not c.errors for c in checks) else EXIT_INVALID)


@app.command(cls=_Command)
def render(path: Path = typer.Argument(..., help="One profile file.", show_default=False, metavar="PROFILE"),
           target: Optional[str] = typer.Option(None, "--target", "-t", metavar="NAME", help="Only this target."),
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


@app.command(cls=_Command)
def plan(paths: List[Path] = PathsArg,
         as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout instead (see README, "
                                                            "JSON output): per profile and target what would attach "
                                                            "where, the changes, and any errors."),
         detailed_exitcode: bool = typer.Option(False, "--detailed-exitcode",
                                                help="Exit 0 when there is nothing to do, 2 when changes are "
                                                     "pending, 1 on any error (like terraform)."),
         ) -> None:
    """Show what [bold]apply[/bold] would attach where, which running processes match now, and (when an
    apply is running) what it would add, remove, replace or leave alone.

    Changes are per target, as the running apply would decide them (asked over its control socket):
    targets to add, remove or replace. When no apply answers, everything planned is a change (an
    apply would attach all of it). With [bold]--detailed-exitcode[/bold]: 0 nothing to do, 2 changes
    pending, 1 error (a profile that does not load, a target that cannot attach).
    """
    if as_json:
        checks, general = _check_files(paths)
        planned = [ps for c in checks if c.plan for ps in c.plan[0]]
        changes, not_compared = report.compare(planned, _running_views({c.profile.name for c in checks
                                                                        if c.profile is not None}))
        document = report.plan_document(checks, general, {ps.key: _matching_now(ps) for ps in planned},
                                        changes, not_compared)
        print(json.dumps(document, indent=2))
        raise typer.Exit(_plan_exit(document["ok"], document["changes_pending"], detailed_exitcode))
    profiles, ok = _load_all(paths)
    out = Console(highlight=False, soft_wrap=True)
    planned = []
    for profile in profiles:
        out.print(f"[bold]{_safe(profile.name)}[/bold] [dim]({_safe(profile.path)})[/dim]")
        out.print(f"  redact: {_safe('; '.join(profile.redact.summary()))}")
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
                                                           ("ports", f.ports), ("cgroups", f.cgroups)) if v) or "none"
            out.print(f"    filters: {_safe(filt)}")
            for warning in ps.cgroup_warnings(workdir.shown(profile.path)):
                out.print(f"    [yellow]warning: {_safe(str(warning))}[/yellow]")
            if ps.scope_paths:
                out.print(f"    scope: processes executing {_safe(', '.join(ps.scope_paths))} (and their children)")
            pids = _matching_now(ps)
            out.print(f"    running now: {', '.join(map(str, pids[:20])) or 'none'}"
                      f"{' …' if len(pids) > 20 else ''}")
        for fl in failed:
            ok = False
            out.print(f"  [red]{_safe(fl.target.name)}: cannot attach: {_safe(fl.message)}[/red]")
    pending = _print_diff_against_running(out, {p.name for p in profiles}, planned)
    raise typer.Exit(_plan_exit(ok, pending, detailed_exitcode))


def _plan_exit(ok: bool, pending: bool, detailed: bool) -> int:
    if not ok:
        return EXIT_INVALID
    return EXIT_CHANGES if detailed and pending else 0


def _running_views(names: set):
    """The running apply's targets of these profiles as plan.diff sees them; None when no apply
    answers, a reason when its answer cannot be read (report.compare takes either)."""
    running = control.request("running")
    if running is None:
        return None
    try:
        return [diff.Running(**{**v, "key": tuple(v["key"])}) for v in running if v["key"][0] in names]
    except (TypeError, KeyError):
        return report.NOT_COMPARED_VERSION


def _print_diff_against_running(out, names: set, planned: list) -> bool:
    """What the running apply would do with these profiles: the reconciler's own decision (plan.diff).
    True when changes are pending (with no apply to compare with: when anything is planned)."""
    changes, not_compared = report.compare(planned, _running_views(names))
    if not_compared:
        out.print(f"[dim]{_safe(not_compared)}: nothing to compare with[/dim]")
        return not changes.empty
    lines = [(ps.key, "[green]add[/green]", "") for ps in changes.add]
    lines += [(view.key, "[red]remove[/red]", "") for view in changes.remove]
    lines += [(ps.key, "[yellow]replace[/yellow]", f" [dim]({diff.WORDS[how]})[/dim]")
              for (_, ps), how in zip(changes.replace, changes.how)]
    lines += [(ps.key, "[dim]unchanged[/dim]", "") for ps in changes.unchanged]
    out.print("[bold]against the running apply:[/bold]")
    for key, verdict, note in sorted(lines):
        out.print(f"  {verdict} {_safe('/'.join(key))}{note}")
    return not changes.empty


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


@app.command(cls=_Command)
def apply(paths: List[Path] = PathsArg,
          duration: Optional[float] = typer.Option(None, metavar="SECONDS",
                                                   help="Stop after this many seconds (default: run until "
                                                        "Ctrl-C / SIGTERM)."),
          ready_file: Optional[Path] = typer.Option(None, metavar="FILE",
                                                    help="Write this file once every target is attached."),
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
    probe is detached and a summary (events, records, losses) is printed. SIGHUP reopens every
    output file (after logrotate renamed it: a new file appears at its path).
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
    signal.signal(signal.SIGHUP, lambda _signum, _frame: sess.request_reopen())   # logrotate's postrotate
    try:
        started = sess.run(duration=duration, ready_file=workdir.absolute(ready_file) if ready_file else None)
    finally:
        summary = sess.shutdown()
    if not started:
        raise typer.Exit(EXIT_INVALID)
    _print_summary(summary)


@app.command(cls=_Command)
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


@app.command(cls=_Command)
def reload() -> None:
    """Make the running [bold]ecapture apply[/bold] read its profiles now, as its watcher does after an
    edit (files that failed for a passing reason are retried at once), and reopen its output files
    as on SIGHUP. Waits for the pass, prints each profile's state, and exits 1 when one is in error
    (the last good generation keeps running). `systemctl reload ecapture` runs this."""
    answer = control.request("reload", timeout=RELOAD_TIMEOUT_S)
    if answer is None:
        _fail(f"no running `ecapture apply` answers on {control.socket_path()}")
        raise typer.Exit(EXIT_PRECONDITION)
    for p in answer["profiles"]:
        _say(f"{p['file']}: {p['profile'] or '-'} {p['state']}")
        if p["last_error"]:
            err.print(f"  [red]error:[/red] {_safe(p['last_error'])}")
    if any(p["state"] == "error" for p in answer["profiles"]):
        raise typer.Exit(EXIT_INVALID)


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
