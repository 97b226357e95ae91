"""The public schema (schemas/profile.schema.json) and the frozen models a valid profile loads into."""
from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from orchestrator.profile import errors, load, models


def _schema() -> dict:
    return json.loads(load.SCHEMA_PATH.read_text())


def test_schema_is_valid_draft_2020_12():
    schema = _schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def _resolve(schema: dict, node):
    """Follow local `$ref`s until a node with its own description (editors show the referenced one)."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node and "description" not in node:
        ref = node["$ref"]
        assert ref.startswith("#/") and ref not in seen, ref
        seen.add(ref)
        node = schema
        for part in ref[2:].split("/"):
            node = node[part]
    return node


def _walk(schema: dict, node, path: str):
    """Yield (path, node, role) for every property and $defs entry; `if` conditions are not declarations."""
    if not isinstance(node, dict):
        return
    for name, sub in node.get("properties", {}).items():
        p = f"{path}.properties.{name}"
        if sub is not True:                   # `type: true` re-admits a property declared elsewhere
            yield p, sub, "property"
        yield from _walk(schema, sub, p)
    for name, sub in node.get("$defs", {}).items():
        p = f"#/$defs/{name}"
        yield p, sub, "def"
        yield from _walk(schema, sub, p)
    for key in ("items", "additionalProperties", "then", "else", "not"):
        sub = node.get(key)
        if isinstance(sub, dict):
            yield f"{path}.{key}", sub, key
            yield from _walk(schema, sub, f"{path}.{key}")
    for key in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(key, [])):
            yield from _walk(schema, sub, f"{path}.{key}[{i}]")


def test_every_property_and_def_has_a_description():
    schema = _schema()
    missing = [p for p, node, role in _walk(schema, schema, "#") if role in ("property", "def")
               and "description" not in _resolve(schema, node)]
    assert not missing, "no description: " + ", ".join(missing)


def test_walk_reaches_nested_declarations():
    paths = {p for p, _, _ in _walk(_schema(), _schema(), "#")}
    for p in ("#.properties.spec.properties.targets", "#/$defs/target.properties.filters",
              "#/$defs/filters.properties.comm", "#/$defs/arg.properties.length_arg",
              "#/$defs/sink.allOf[0].then.properties.color", "#/$defs/sink.allOf[1].then.properties.path"):
        assert p in paths


def test_every_pattern_has_a_description():
    """The loader quotes a pattern's description in its error message; a bare regex is no help to users."""
    schema = _schema()
    bare = [p for p, node, _ in _walk(schema, schema, "#") if "pattern" in node and "description" not in node]
    assert not bare, "pattern without description: " + ", ".join(bare)


# ------------------------------------------------------------------ models

MINIMAL = """\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: demo
spec:
  targets:
    - name: web
      kind: openssl
      binary: /bin/true
"""

FULL = """\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: full_profile-1
  labels: {team: web}
spec:
  targets:
    - name: web
      kind: openssl
      library: /bin/true
      filters:
        pids: [1, 4194304]
        uids: [0, 4294967294]
        comm: [nginx, abcdefghijklmno]
        ports: [443, 65535]
      max_bytes: 65536
      ring_buffer_kib: 4
    - name: fn
      kind: uprobe
      binary: /bin/true
      symbol: read@GLIBC_2.2.5
      "on": return
      args:
        - {index: 0, name: fd, type: int}
        - {index: 1, name: buf, type: bytes, length_arg: ret}
        - {index: ret, name: n, type: long}
  parsers: []
  sinks:
    - type: stdout
      color: never
      show_data: false
      max_body: 0
    - type: jsonl
      path: /tmp/ecapture-unit-test.jsonl
"""


def test_minimal_profile_gets_defaults():
    p = load.load_text(MINIMAL, "min.yaml")
    assert isinstance(p, models.Profile)
    assert p.name == "demo" and p.path == "min.yaml"
    (t,) = p.targets
    assert t == models.Target(name="web", kind="openssl", binary="/bin/true", line=7)
    assert t.max_bytes == 16384 and t.ring_buffer_kib == 8192 and t.on == "entry"
    assert t.library is None and t.symbol is None and t.args == ()
    assert t.filters == models.Filters() == models.Filters((), (), (), ())
    assert p.parsers is None                          # omitted: auto-detect
    assert p.sinks == (models.Sink("stdout", ()),)    # omitted: one stdout sink
    assert len(p.source_digest) == 64


def test_schema_defaults_match_model_defaults():
    target = _schema()["$defs"]["target"]["properties"]
    assert target["max_bytes"]["default"] == models.Target.max_bytes == 16384
    assert target["ring_buffer_kib"]["default"] == models.Target.ring_buffer_kib == 8192


def test_full_profile_loads_into_typed_models():
    p = load.load_text(FULL, "full.yaml")
    web, fn = p.targets
    assert web.library == "/bin/true" and web.binary is None
    assert web.filters == models.Filters((1, 4194304), (0, 4294967294), ("nginx", "abcdefghijklmno"), (443, 65535))
    assert (web.max_bytes, web.ring_buffer_kib, web.line) == (65536, 4, 8)
    assert fn.symbol == "read@GLIBC_2.2.5" and fn.on == "return" and fn.line == 18
    assert fn.args == (models.Arg(0, "fd", "int"), models.Arg(1, "buf", "bytes", models.RET),
                       models.Arg(models.RET, "n", "long"))
    assert p.parsers == ()                            # empty list: raw data records only
    stdout, jsonl = p.sinks
    assert stdout.type == "stdout" and stdout.option("color") == "never" and stdout.option("show_data") is False
    assert stdout.option("max_body") == 0 and stdout.option("missing", 7) == 7
    assert jsonl == models.Sink("jsonl", (("path", "/tmp/ecapture-unit-test.jsonl"),))


def test_source_digest_follows_the_text():
    a = load.load_text(MINIMAL, "a.yaml")
    assert load.load_text(MINIMAL, "b.yaml").source_digest == a.source_digest
    assert load.load_text(MINIMAL + "# comment\n", "a.yaml").source_digest != a.source_digest


def test_unquoted_on_key_is_the_on_field():
    """YAML 1.1 reads a bare `on` as boolean True; the documented key must still work unquoted."""
    text = MINIMAL.replace("kind: openssl", "kind: uprobe").replace(
        "binary: /bin/true\n", "binary: /bin/true\n      symbol: f\n      on: return\n")
    (t,) = load.load_text(text, "on.yaml").targets
    assert t.on == "return"


@pytest.mark.parametrize("obj, attr, value", [
    (models.Profile("a", "a.yaml", (), None, ()), "name", "b"),
    (models.Target("t", "bash"), "max_bytes", 1),
    (models.Filters(), "pids", (1,)),
    (models.Arg(0, "a", "int"), "type", "string"),
    (models.Sink("stdout"), "options", ()),
])
def test_models_are_frozen(obj, attr, value):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attr, value)


def test_loaded_profile_is_frozen_and_hashable():
    p = load.load_text(FULL, "full.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.targets[0].filters.pids = ()
    assert isinstance(p.targets, tuple) and isinstance(p.targets[0].filters.pids, tuple)
    assert hash(p) == hash(load.load_text(FULL, "full.yaml"))


def test_all_issues_of_a_file_are_reported_sorted():
    text = MINIMAL.replace("name: demo", "name: Demo").replace("binary: /bin/true", "binary: rel") + \
        "      max_bytes: 1\n"
    with pytest.raises(errors.ProfileError) as info:
        load.load_text(text, "x.yaml")
    issues = info.value.issues
    assert [(i.line, i.field) for i in issues] == [
        (4, "metadata.name"), (9, "spec.targets[0].binary"), (10, "spec.targets[0].max_bytes")]
    assert str(info.value).splitlines() == [str(i) for i in issues]
    assert str(issues[0]).startswith("x.yaml:4:9: metadata.name: ")


def test_missing_file_is_a_profile_error(tmp_path):
    with pytest.raises(errors.ProfileError) as info:
        load.load_file(str(tmp_path / "nope.yaml"))
    assert "no such file" in info.value.issues[0].message


def test_field_path_and_issue_format():
    assert errors.field_path(("spec", "targets", 0, "filters", "pids", 2)) == "spec.targets[0].filters.pids[2]"
    assert errors.field_path(()) == ""
    assert str(errors.Issue("f.yaml", 3, 5, "", "bad")) == "f.yaml:3:5: bad"


# ------------------------------------------------------------------ YAML 1.2 scalars (issue 8, item 7)

def _values(text):
    from orchestrator.profile import yamlmarks
    return yamlmarks.load(text, "v.yaml")[0]


@pytest.mark.parametrize("written, value", [
    ("443", 443), ("-5", -5), ("+7", 7), ("0", 0), ("0o17", 15), ("0x1F", 31),
    ("1.5", 1.5), ("1e3", 1000.0), (".5", 0.5), ("-.inf", float("-inf")),
    ("true", True), ("False", False),
    ("yes", "yes"), ("no", "no"), ("on", "on"), ("off", "off"), ("y", "y"),
    ("1:20", "1:20"), ("0b101", "0b101"), ("1_000", "1_000"), ("2024-01-01", "2024-01-01"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"), ("=", "="), ("<<", "<<"),
    ("~", None), ("null", None), ("", None), ("'0443'", "0443"),
    ("!!str 12", "12"), ("!!int '12'", 12), ("!!float 1", 1.0),
])
def test_yaml_1_2_core_scalars(written, value):
    assert _values(f"v: {written}\n") == {"v": value}


def test_nan_is_a_float():
    v = _values("v: .nan\n")["v"]
    assert v != v


@pytest.mark.parametrize("written, message", [
    ("0443", "ambiguous number '0443': write 443 or 0o443"),
    ("-0100", "ambiguous number '-0100': write -100 or -0o100"),
    ("089", "ambiguous number '089': write 89 (a leading zero"),
    ("1" * 41, "number too large (41 digits; at most 40)"),
    ("1" * 5000, "number too large (5000 digits"),
    ("!!int abc", "'abc' is not an integer"),
    ("!!bool yes", "'yes' is not a boolean"),
    ("!!binary aGk=", "unsupported tag 'tag:yaml.org,2002:binary'"),
    ("!!timestamp 2024-01-01", "unsupported tag 'tag:yaml.org,2002:timestamp'"),
    ("!!python/object:os.system {}", "unsupported tag 'tag:yaml.org,2002:python/object:os.system' on a mapping"),
    ("!!set {a: null}", "unsupported tag 'tag:yaml.org,2002:set' on a mapping"),
    ("!!omap [a: 1]", "unsupported tag 'tag:yaml.org,2002:omap' on a list"),
    ("!foo bar", "unsupported tag '!foo'"),
])
def test_refused_scalars_name_their_place(written, message):
    from orchestrator.profile import yamlmarks
    with pytest.raises(yamlmarks.YamlError) as info:
        yamlmarks.load(f"a:\n  v: {written}\n", "v.yaml")
    assert message in info.value.message
    assert (info.value.line, info.value.col, info.value.path) == (2, 6, ("a", "v"))


def test_keys_are_the_text_written():
    assert _values("on: 1\ntrue: 2\n1: 3\nnull: 4\n") == {"on": 1, "true": 2, "1": 3, "null": 4}


def test_quoted_and_plain_keys_are_duplicates():
    from orchestrator.profile import yamlmarks
    with pytest.raises(yamlmarks.YamlError, match="duplicate key 'a'"):
        yamlmarks.load('a: 1\n"a": 2\n')


@pytest.mark.parametrize("text, message", [
    ("a: \x07\n", "character U+0007 is not allowed"),
    ("a: b\x1b\n", "character U+001B is not allowed"),
    ("a: b\x00\n", "character U+0000 is not allowed"),
    ("a: b\x7f\n", "character U+007F is not allowed"),
    ("[" * 500 + "]" * 500, "nested too deeply"),
    ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 300)), "nested too deeply"),
    ("a: &a [*a]\n", "an alias refers to the node that contains it"),
    ("a: &a\n  b: *a\n", "an alias refers to the node that contains it"),
    ("a: *nope\n", "found undefined alias"),
    ("a: 1\n---\nb: 2\n", "expected a single document"),
])
def test_hostile_yaml_is_a_yaml_error(text, message):
    from orchestrator.profile import yamlmarks
    with pytest.raises(yamlmarks.YamlError) as info:
        yamlmarks.load(text, "h.yaml")
    assert message in info.value.message and info.value.line >= 1 and info.value.col >= 1


def test_control_character_position():
    from orchestrator.profile import yamlmarks
    with pytest.raises(yamlmarks.YamlError) as info:
        yamlmarks.load("a: 1\nbb: x\x1by\n")
    assert (info.value.line, info.value.col) == (2, 6)


def test_billion_laughs_is_refused_quickly():
    import time

    from orchestrator.profile import yamlmarks
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 10)]
    start = time.monotonic()
    with pytest.raises(yamlmarks.YamlError, match="document too large"):
        yamlmarks.load("\n".join(lines) + "\n")
    assert time.monotonic() - start < 5


# ------------------------------------------------------------------ patterns read the ECMA-262 way

@pytest.mark.parametrize("field, good", [
    ("metadata.name", "demo"), ("name", "web"), ("binary", "/bin/true"), ("comm", "curl"),
    ("symbol", "SSL_read"), ("arg", "fd"), ("path", "/tmp/x.jsonl"),
])
@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\x1b", "\t"])
def test_patterns_refuse_trailing_newline_and_controls(field, good, suffix):
    """Python's `$` also matches before a final newline; the schema means ECMA `$` (end only)."""
    def text(v):
        v = json.dumps(v)
        t = MINIMAL.replace("kind: openssl", "kind: uprobe")
        t = t.replace("binary: /bin/true\n", "binary: /bin/true\n      symbol: SSL_read\n"
                      "      args: [{index: 0, name: fd, type: int}]\n      filters: {comm: [curl]}\n")
        t += "  sinks: [{type: jsonl, path: /tmp/x.jsonl}]\n"
        return {"metadata.name": t.replace("name: demo", f"name: {v}"),
                "name": t.replace("name: web", f"name: {v}"),
                "binary": t.replace("binary: /bin/true", f"binary: {v}"),
                "comm": t.replace("comm: [curl]", f"comm: [{v}]"),
                "symbol": t.replace("symbol: SSL_read", f"symbol: {v}"),
                "arg": t.replace("name: fd", f"name: {v}"),
                "path": t.replace("path: /tmp/x.jsonl", f"path: {v}")}[field]
    load.load_text(text(good), "ok.yaml")
    with pytest.raises(errors.ProfileError) as info:
        load.load_text(text(good + suffix), "bad.yaml")
    (issue,) = info.value.issues
    assert "is not allowed" in issue.message or "control character" in issue.message


def test_duplicate_target_names_differing_by_newline():
    text = MINIMAL + '    - name: "web\\n"\n      kind: bash\n'
    with pytest.raises(errors.ProfileError) as info:
        load.load_text(text, "dup.yaml")
    (issue,) = info.value.issues
    assert issue.field == "spec.targets[1].name" and "is not allowed" in issue.message


def test_dates_in_labels_stay_the_text_written():
    p = load.load_text(MINIMAL.replace("name: demo", "name: demo\n  labels: {released: 2024-01-01}"), "d.yaml")
    assert p.name == "demo"


def test_hex_and_octal_integers_load():
    p = load.load_text(MINIMAL + "      max_bytes: 0x4000\n      filters: {uids: [0o1750]}\n", "h.yaml")
    assert p.targets[0].max_bytes == 16384 and p.targets[0].filters.uids == (1000,)


# ------------------------------------------------------------------ load_file reads safely (issue 8, item 6)

def test_load_file_refuses_non_regular_files(tmp_path):
    os_ = __import__("os")
    fifo = tmp_path / "fifo.yaml"
    os_.mkfifo(fifo)
    (tmp_path / "dir.yaml").mkdir()
    for path, message in [(fifo, "not a regular file"), (tmp_path / "dir.yaml", "not a regular file"),
                          ("/dev/zero", "not a regular file")]:
        with pytest.raises(errors.ProfileError) as info:
            load.load_file(str(path))
        (issue,) = info.value.issues
        assert (issue.line, issue.col, issue.field) == (1, 1, "") and message in issue.message


def test_load_file_reads_through_configmap_links_but_never_into_a_fifo_or_device(tmp_path):
    # Kubernetes mounts a ConfigMap as p.yaml -> ..data/p.yaml, ..data -> ..2026_01 (a folder).
    (tmp_path / "..2026_01").mkdir()
    (tmp_path / "..2026_01" / "p.yaml").write_text(MINIMAL)
    (tmp_path / "..data").symlink_to("..2026_01")
    (tmp_path / "p.yaml").symlink_to("..data/p.yaml")
    profile = load.load_file(str(tmp_path / "p.yaml"))
    assert profile.name == "demo" and profile.path.endswith("p.yaml") and ".." not in profile.path
    __import__("os").mkfifo(tmp_path / "fifo.yaml")
    for target, message in ((tmp_path / "fifo.yaml", "not a regular file"),
                            ("/dev/zero", "not a \\*.yaml/\\*.yml file"), ("/etc/shadow", "not a \\*.yaml")):
        (tmp_path / "link.yaml").unlink(missing_ok=True)
        (tmp_path / "link.yaml").symlink_to(target)
        with pytest.raises(errors.ProfileError, match=message):
            load.load_file(str(tmp_path / "link.yaml"))


def test_load_file_size_cap(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(MINIMAL.encode() + b"#" * load.MAX_PROFILE_BYTES)
    with pytest.raises(errors.ProfileError, match=r"file too large \(\d+ bytes; at most 1048576\)"):
        load.load_file(str(big))
    ok = tmp_path / "ok.yaml"
    ok.write_bytes(MINIMAL.encode() + b"#" * (load.MAX_PROFILE_BYTES - len(MINIMAL)))
    assert load.load_file(str(ok)).name == "demo"


def test_load_file_invalid_utf8_names_its_place(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_bytes(MINIMAL.encode().replace(b"name: web", b"name: w\xffb"))
    with pytest.raises(errors.ProfileError) as info:
        load.load_file(str(p))
    (issue,) = info.value.issues
    assert (issue.line, issue.col) == (7, 14) and "not UTF-8 text (byte 0xff)" in issue.message


def _with_jsonl(path: str) -> str:
    return MINIMAL + f"  sinks:\n    - type: jsonl\n      path: {path}\n"


def test_relative_sink_path_is_resolved_once_against_the_profiles_folder(tmp_path, monkeypatch):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "p.yaml").write_text(_with_jsonl("out/records.jsonl"))
    monkeypatch.chdir("/")     # where bcc leaves the process while it compiles, say
    profile = load.load_file(str(tmp_path / "profiles" / "p.yaml"))
    assert profile.sinks[0].option("path") == str(tmp_path / "profiles" / "out" / "records.jsonl")


def test_validate_reports_a_sink_path_apply_would_refuse_at_its_line(tmp_path):
    os_ = __import__("os")
    os_.chmod(tmp_path, 0o700)
    (tmp_path / "victim").write_text("root's file\n")
    (tmp_path / "out.jsonl").symlink_to(tmp_path / "victim")
    (tmp_path / "p.yaml").write_text(_with_jsonl(str(tmp_path / "out.jsonl")))
    with pytest.raises(errors.ProfileError) as info:
        load.load_file(str(tmp_path / "p.yaml"))
    (issue,) = info.value.issues
    assert (issue.line, issue.col, issue.field) == (12, 13, "spec.sinks[0].path")
    assert "symbolic link" in issue.message
    assert (tmp_path / "victim").read_text() == "root's file\n"
