"""The public schema (schemas/profile.schema.json) and the frozen models a valid profile loads into."""
from __future__ import annotations

import dataclasses
import json

import jsonschema
import pytest

from orchestrator.spec import errors, load, models


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
