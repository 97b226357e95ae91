"""Load profile files: YAML with marks → schema validation → semantic checks → `models.Profile`.

Every problem becomes an `errors.Issue` naming file, line, column and field path; all
issues of a file are reported together in one `ProfileError`.
"""
from __future__ import annotations

import errno
import functools
import hashlib
import importlib.resources
import json
import os
import re
import stat
from pathlib import Path

import jsonschema
import re2

from orchestrator import safefile, workdir
from orchestrator.profile import errors, models, yamlmarks

# Package data (pyproject.toml), so an installed wheel has it too; schemas/ at the top is a link here.
SCHEMA_PATH = importlib.resources.files("orchestrator") / "schemas" / "profile.schema.json"
PROFILE_SUFFIXES = (".yaml", ".yml")
MAX_PROFILE_BYTES = 1 << 20     # a profile is a few KiB; anything bigger is a mistake or an attack


@functools.cache
def schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    # JSON Schema calls 1024.0 an integer; C constants must be real ints.
    checker = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _c, v: isinstance(v, int) and not isinstance(v, bool))
    cls = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=checker,
                                       validators={"pattern": _ecma_pattern})
    return cls(schema())


@functools.cache
def _compiled(pattern: str) -> re.Pattern:
    # JSON Schema patterns are ECMA-262: a final `$` matches only at the very end, while Python's `$`
    # also matches before a trailing newline ("curl\n"). Read a final `$` as Python's `\Z`.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _ecma_pattern(_validator, pattern, instance, schema):
    if isinstance(instance, str) and not _compiled(pattern).search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


def discover(paths) -> list[str]:
    """Profile files named by `paths` (files, or directories scanned for *.yaml/*.yml, sorted)."""
    found: list[str] = []
    for p in paths:
        p = workdir.absolute(p)
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                full = os.path.join(p, name)
                if name.endswith(PROFILE_SUFFIXES) and not name.startswith(".") and os.path.isfile(full):
                    found.append(full)
        else:
            found.append(p)
    return found


def load_file(path: str, check_outputs: bool = True) -> models.Profile:
    """`check_outputs`: also report output paths that apply's safe opener would refuse (validate);
    apply opens them itself, and a refusal there is retried (it may be fixed without an edit)."""
    display = workdir.shown(path)
    # A profile may be reached through symbolic links (a Kubernetes ConfigMap's `..data/p.yaml`):
    # the file actually read is the link's target, opened without following any further link, and
    # only if it is named like a profile, so a link to /etc/shadow is never parsed (its lines would
    # come back in the error messages). Who may change the links is trust.problems()' business.
    real = os.path.realpath(workdir.absolute(path))
    if real != workdir.absolute(path) and os.path.lexists(real) and not real.endswith(PROFILE_SUFFIXES):
        raise _file_error(display, f"is a symbolic link to {real}, which is not a *.yaml/*.yml file")
    data = _read_bounded(real, display)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _file_error(display, f"not UTF-8 text (byte 0x{data[exc.start]:02x})", line, col) from None
    return load_text(text, display, base_dir=os.path.dirname(workdir.absolute(path)), check_outputs=check_outputs)


def _file_error(display: str, message: str, line: int = 1, col: int = 1) -> errors.ProfileError:
    return errors.ProfileError([errors.Issue(display, line, col, "", message)])


def _read_bounded(path: str, display: str, cap: int = MAX_PROFILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `cap` bytes, read without following a final symlink (the
    caller resolved the ones it accepts) and without blocking on FIFOs or devices."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _file_error(display, "no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise _file_error(display, "is a symbolic link; name the file itself") from None
        if exc.errno == errno.ENXIO:
            raise _file_error(display, "not a regular file") from None
        raise _file_error(display, f"cannot open: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _file_error(display, "not a regular file" + (" (a directory)" if stat.S_ISDIR(st.st_mode) else ""))
        if st.st_size > cap:
            raise _file_error(display, f"file too large ({st.st_size} bytes; at most {cap})")
        chunks, size = [], 0
        while size <= cap:
            chunk = os.read(fd, cap + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > cap:
            raise _file_error(display, f"file too large (more than {cap} bytes)")
        return b"".join(chunks)
    except OSError as exc:
        raise _file_error(display, f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)


def load_text(text: str, filename: str, base_dir: str = workdir.START, check_outputs: bool = True) -> models.Profile:
    """`base_dir`: where relative output paths of the profile are (the folder holding its file)."""
    try:
        doc, marks = yamlmarks.load(text, filename)
    except yamlmarks.YamlError as exc:
        raise errors.ProfileError([errors.Issue(filename, exc.line, exc.col, errors.field_path(exc.path),
                                                exc.message)]) from None
    issues = [_schema_issue(e, filename, marks) for e in _validator().iter_errors(doc)]
    reported = {i.field for i in issues}
    issues += [i for i in _control_issues(doc, filename, marks) if i.field not in reported]
    if issues:
        raise errors.ProfileError(_sorted_unique(issues))
    issues = _semantic_issues(doc, filename, marks, base_dir if check_outputs else None)
    if issues:
        raise errors.ProfileError(_sorted_unique(issues))
    return _build(doc, filename, marks, hashlib.sha256(text.encode()).hexdigest(), base_dir)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _control_issues(doc, filename, marks, path=()) -> list[errors.Issue]:
    """Control characters (newline, tab, ESC, NUL, ...) in any key or string: never meant, and a
    trailing newline would otherwise slip past patterns whose `$` matches before it."""
    out = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _control_issues(k, filename, marks, path + (k,)) + _control_issues(v, filename, marks, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _control_issues(v, filename, marks, path + (i,))
    elif isinstance(doc, str):
        m = _CONTROL.search(doc)
        if m:
            line, col = yamlmarks.mark_for(marks, path)
            out.append(errors.Issue(filename, line, col, errors.field_path(path),
                                    f"{_short(doc)} contains control character U+{ord(m.group()):04X}"))
    return out


def _sorted_unique(issues):
    return sorted(set(issues), key=lambda i: (i.line, i.col, i.field, i.message))


# ---------------------------------------------------------------- schema errors

def _schema_issue(err: jsonschema.ValidationError, filename: str, marks) -> errors.Issue:
    path = tuple(err.absolute_path)
    message, path, on_key = _describe(err, path)
    line, col = yamlmarks.mark_for(marks, path, key=on_key)
    return errors.Issue(filename, line, col, errors.field_path(path), message)


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err, path):
    v, inst, sch = err.validator, err.instance, err.schema
    if v == "additionalProperties" and isinstance(inst, dict):
        allowed = set(err.schema.get("properties", {}))
        extra = sorted(str(k) for k in inst if k not in allowed)
        key = extra[0] if extra else ""
        hint = f"; allowed: {', '.join(sorted(allowed))}" if allowed else ""
        return f"unknown field {key!r}{hint}", path + (key,), True
    if v == "required":
        missing = err.message.split("'")[1] if "'" in err.message else "?"
        return f"missing required field {missing!r}", path + (missing,), False
    if v == "enum":
        return f"must be one of: {', '.join(map(str, err.validator_value))} (got {_short(inst)})", path, False
    if v == "const":
        return f"must be {_short(err.validator_value)} (got {_short(inst)})", path, False
    if v == "type":
        return f"must be of type {err.validator_value} (got {type(inst).__name__} {_short(inst)})", path, False
    if v == "pattern":
        return f"{_short(inst)} is not allowed: {sch.get('description', 'must match ' + err.validator_value)}", path, False
    if v in ("minimum", "maximum"):
        return f"{_short(inst)} is out of range ({v} {err.validator_value})", path, False
    if v in ("minItems", "maxItems"):
        return f"must have {'at least' if v == 'minItems' else 'at most'} {err.validator_value} item(s)", path, False
    if v == "uniqueItems":
        return "items must be unique", path, False
    if v == "maxLength":
        return f"too long (at most {err.validator_value} characters)", path, False
    if v == "oneOf":
        return f"{_short(inst)} is not valid: {sch.get('description', 'no alternative matches')}", path, False
    if v == "not" and isinstance(inst, dict):
        bad = next((k for k in ("symbol", "on", "args") if k in inst), "")
        return f"{bad!r} is only allowed with kind: uprobe", path + (bad,), True
    if v == "anyOf" and isinstance(inst, dict):
        return "needs `binary` or `library`", path, False
    if v == "not" and "description" in sch:
        return f"not allowed here: {sch['description']}", path, False
    return err.message, path, False


# ---------------------------------------------------------------- semantic checks

def _semantic_issues(doc, filename, marks, base_dir) -> list[errors.Issue]:
    issues: list[errors.Issue] = []

    def add(path, message, key=False):
        line, col = yamlmarks.mark_for(marks, path, key=key)
        issues.append(errors.Issue(filename, line, col, errors.field_path(path), message))

    seen: dict[str, int] = {}
    for i, t in enumerate(doc["spec"]["targets"]):
        base = ("spec", "targets", i)
        if t["name"] in seen:
            add(base + ("name",), f"duplicate target name {t['name']!r} (first at targets[{seen[t['name']]}])")
        seen.setdefault(t["name"], i)
        if t["kind"] == "uprobe":
            _check_uprobe_args(t, base, add)
        if "capture" in t and t["kind"] not in models.TLS_KINDS:
            add(base + ("capture",), f"kind {t['kind']} captures no TLS: `capture` is for {', '.join(models.TLS_KINDS)}",
                key=True)
        if t.get("filters", {}).get("ports") and t["kind"] not in models.CONNECTION_KINDS:
            add(base + ("filters", "ports"), f"kind {t['kind']} has no connections to filter by port", key=True)
    for i, rule in enumerate(doc["spec"].get("redact", [])):
        if "regex" in rule:
            problem = _regex_problem(rule["regex"])
            if problem:
                add(("spec", "redact", i, "regex"), problem)
    paths: dict[str, int] = {}
    listens: dict[str, int] = {}
    for i, s in enumerate(doc["spec"].get("sinks", [])):
        if s["type"] == "web":
            listen = s.get("listen", "127.0.0.1:8089")
            if listen in listens:
                add(("spec", "sinks", i, "listen"), f"same address as sinks[{listens[listen]}]: every record would show twice")
            listens.setdefault(listen, i)
        if s["type"] in ("jsonl", "keylog", "pcapng", "har"):      # file sinks
            if s["path"] in paths:
                add(("spec", "sinks", i, "path"), f"same file as sinks[{paths[s['path']]}]")
            paths.setdefault(s["path"], i)
            problems = safefile.problems(os.path.normpath(os.path.join(base_dir, s["path"]))) if base_dir else ()
            for problem in problems:
                add(("spec", "sinks", i, "path"), problem)      # what apply would refuse to open
    return issues


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False


def _regex_problem(pattern: str) -> str | None:
    """Why a `redact` regex cannot be used (RE2 syntax: no backreferences or lookaround), or None."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        return f"invalid regular expression (RE2 syntax): {detail}"
    if compiled.fullmatch("") is not None:
        return "the regular expression matches the empty string"
    return None


def _redact(spec) -> models.Redact:
    if "redact" not in spec:
        return models.DEFAULT_REDACT
    kinds: dict[str, list] = {"headers": [], "query": [], "fields": [], "regex": []}
    sql = False
    for rule in spec["redact"]:
        if rule.get("defaults"):
            kinds["headers"] += models.DEFAULT_REDACT_HEADERS
        for kind in ("headers", "query", "fields"):
            kinds[kind] += rule.get(kind, ())
        if "regex" in rule:
            kinds["regex"].append(rule["regex"])
        sql = sql or rule.get("sql") == "literals"

    def unique(names, fold=str.lower):
        seen: dict = {}
        for n in names:
            seen.setdefault(fold(n), n)
        return tuple(seen.values())
    return models.Redact(unique(kinds["headers"]), unique(kinds["query"]), unique(kinds["fields"]),
                         unique(kinds["regex"], fold=str), sql)


def _check_uprobe_args(t, base, add):
    on = t.get("on", "entry")
    names: dict[str, int] = {}
    variable = []
    for j, a in enumerate(t.get("args", [])):
        ap = base + ("args", j)
        if a["name"] in names:
            add(ap + ("name",), f"duplicate arg name {a['name']!r}")
        names.setdefault(a["name"], j)
        if a["name"] in ("ret",) and a["index"] != models.RET:
            add(ap + ("name",), "'ret' is reserved for the return value")
        if a["index"] == models.RET and on != "return":
            add(ap + ("index",), "`ret` needs `on: return`")
        if a["type"] in ("string", "bytes"):
            variable.append(j)
        if a["type"] == "bytes" and "length_arg" not in a:
            add(ap, "bytes needs `length_arg`")
        if "length_arg" in a:
            if a["type"] != "bytes":
                add(ap + ("length_arg",), "only `bytes` args take `length_arg`", key=True)
            elif a["length_arg"] == models.RET and on != "return":
                add(ap + ("length_arg",), "`ret` needs `on: return`")
            elif a["length_arg"] == a["index"]:
                add(ap + ("length_arg",), "cannot be the buffer argument itself")
        if a["type"] in ("string", "bytes") and a["index"] == models.RET and a["type"] == "bytes" and a.get("length_arg") == models.RET:
            add(ap + ("length_arg",), "the return value cannot be both buffer and length")
    for j in variable[1:]:
        add(base + ("args", j, "type"), "at most one string or bytes argument per target")


# ---------------------------------------------------------------- model

def _absolute_output(key: str, value, base_dir: str):
    # Resolved once, here: later, a compile on another thread may have moved the working directory.
    if key == "path" and isinstance(value, str):
        return os.path.normpath(os.path.join(base_dir, value))
    return value


def _build(doc, filename, marks, digest, base_dir) -> models.Profile:
    spec = doc["spec"]
    targets = []
    for i, t in enumerate(spec["targets"]):
        f = t.get("filters", {})
        targets.append(models.Target(
            name=t["name"], kind=t["kind"], binary=t.get("binary"), library=t.get("library"),
            symbol=t.get("symbol"), on=t.get("on", "entry"),
            args=tuple(models.Arg(a["index"], a["name"], a["type"], a.get("length_arg")) for a in t.get("args", [])),
            filters=models.Filters(tuple(f.get("pids", ())), tuple(f.get("uids", ())),
                                   tuple(f.get("comm", ())), tuple(f.get("ports", ())),
                                   tuple(os.path.normpath(p) for p in f.get("cgroups", ()))),
            max_bytes=t.get("max_bytes", 16384), ring_buffer_kib=t.get("ring_buffer_kib", 8192),
            capture=tuple(t.get("capture", ("data", "secrets"))),
            line=yamlmarks.mark_for(marks, ("spec", "targets", i))[0],
            index=i,
            field_marks=tuple((k, *yamlmarks.mark_for(marks, ("spec", "targets", i, k))) for k in t) +
            tuple((f"filters.cgroups[{j}]", *yamlmarks.mark_for(marks, ("spec", "targets", i, "filters", "cgroups", j)))
                  for j in range(len(f.get("cgroups", ())))),
        ))
    sinks = tuple(models.Sink(s["type"], tuple(sorted((k, _absolute_output(k, v, base_dir))
                                                      for k, v in s.items() if k != "type")))
                  for s in spec.get("sinks", [{"type": "stdout"}]))
    parsers = tuple(spec["parsers"]) if "parsers" in spec else None
    return models.Profile(doc["metadata"]["name"], filename, tuple(targets), parsers, sinks, digest, _redact(spec))
