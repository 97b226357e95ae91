"""Load YAML into plain Python values while remembering where every value came from.

`load(text, filename)` returns `(value, marks)`; `marks` maps a path tuple such as
("spec", "targets", 0, "filters") to the (line, col) of that node, 1-based.

Scalars follow the YAML 1.2 core schema, not PyYAML's YAML 1.1 defaults: booleans are only
true/false, integers are decimal, 0o octal or 0x hex (no sexagesimal `1:20`; a leading-zero
number such as `0443` is refused as ambiguous), there are no timestamps (a plain `2024-01-01` is
the text written) and no merge keys. Mapping keys are always the text written. Tags other than
the core ones (`!!python/...`, `!foo`, `!!binary`, `!!timestamp`, ...) are refused. Every
problem, including nesting and alias bombs, is a `YamlError` with a position, never a traceback.
"""
from __future__ import annotations

import math
import re

import yaml

Path = tuple
MAX_DEPTH = 64            # nesting levels
MAX_NODES = 20_000        # values, after alias expansion (a big profile has a few thousand)
MAX_DIGITS = 40           # integer literal length, checked before int()

_CORE = "tag:yaml.org,2002:"
STR, INT, FLOAT, BOOL, NULL, MAP, SEQ = (_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq"))


class YamlError(Exception):
    def __init__(self, message: str, line: int, col: int, path: Path = ()):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col
        self.path = path          # the field at fault, when known


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema implicit types and a composer depth limit."""

    yaml_implicit_resolvers: dict = {}

    _depth = 0
    _composed = 0

    def compose_node(self, parent, index):
        self._depth += 1
        self._composed += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlError("nested too deeply", *_mark(self.peek_event()))
            if self._composed > MAX_NODES:     # stop scanning early: 1 MiB of `[1,1,...` is 500 k nodes
                raise YamlError(f"document too large (more than {MAX_NODES} values)", *_mark(self.peek_event()))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_DECIMAL = re.compile(r"[-+]?[0-9]+")
_OCTAL = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
_INF = re.compile(r"[-+]?\.(inf|Inf|INF)")
_NAN = re.compile(r"\.(nan|NaN|NAN)")
_TRUE, _FALSE = ("true", "True", "TRUE"), ("false", "False", "FALSE")

for _tag, _regexp, _first in (
    (BOOL, re.compile(r"true|True|TRUE|false|False|FALSE"), "tTfF"),
    (INT, re.compile(f"{_DECIMAL.pattern}|{_OCTAL.pattern}|{_HEX.pattern}"), "-+0123456789"),
    (FLOAT, re.compile(f"{_FLOAT.pattern}|{_INF.pattern}|{_NAN.pattern}"), "-+.0123456789"),
    (NULL, re.compile(r"~|null|Null|NULL|"), ["~", "n", "N", ""]),
):
    _Loader.add_implicit_resolver(_tag, re.compile(f"^(?:{_regexp.pattern})$"), list(_first))


def _mark(node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _int(text: str, node) -> int:
    digits = text.lstrip("+-")
    if len(digits) > MAX_DIGITS:
        raise YamlError(f"number too large ({len(digits)} digits; at most {MAX_DIGITS})", *_mark(node))
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _OCTAL.fullmatch(text):
        return int(text[2:], 8)
    if not _DECIMAL.fullmatch(text):
        raise YamlError(f"{text!r} is not an integer", *_mark(node))
    if len(digits) > 1 and digits.startswith("0"):
        sign, plain = text[: len(text) - len(digits)], digits.lstrip("0") or "0"
        octal = f" or {sign}0o{plain}" if set(plain) <= set("01234567") else ""
        raise YamlError(f"ambiguous number {text!r}: write {sign}{plain}{octal}"
                        " (a leading zero is refused: YAML 1.1 reads it as octal, YAML 1.2 as decimal)",
                        *_mark(node))
    return int(text)


def _float(text: str, node) -> float:
    if _INF.fullmatch(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.fullmatch(text):
        return math.nan
    if not _FLOAT.fullmatch(text):
        raise YamlError(f"{text!r} is not a number", *_mark(node))
    return float(text)


def _scalar(node: yaml.ScalarNode):
    tag, text = node.tag, node.value
    if tag == STR:
        return text
    if tag == NULL:
        if text not in ("", "~", "null", "Null", "NULL"):
            raise YamlError(f"{text!r} is not null", *_mark(node))
        return None
    if tag == BOOL:
        if text not in _TRUE + _FALSE:
            raise YamlError(f"{text!r} is not a boolean (write true or false)", *_mark(node))
        return text in _TRUE
    if tag == INT:
        return _int(text, node)
    if tag == FLOAT:
        return _float(text, node)
    raise YamlError(f"unsupported tag {tag!r} (profiles use plain YAML values)", *_mark(node))


class _Builder:
    """Turns the composed node graph into values, expanding aliases with a budget."""

    def __init__(self):
        self.marks: dict = {}
        self.nodes = 0

    def build(self, node: yaml.Node, path: Path, active=frozenset()):
        self.marks[path] = _mark(node)
        self.nodes += 1
        if id(node) in active:
            raise YamlError("an alias refers to the node that contains it", *_mark(node))
        if self.nodes > MAX_NODES:
            raise YamlError("document too large (alias expansion?)", *_mark(node))
        if len(path) > MAX_DEPTH:
            raise YamlError("nested too deeply", *_mark(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                return _scalar(node)
            except YamlError as exc:
                exc.path = path
                raise
        active = active | {id(node)}
        if isinstance(node, yaml.MappingNode):
            if node.tag != MAP:
                raise YamlError(f"unsupported tag {node.tag!r} on a mapping", *_mark(node), path)
            return self._mapping(node, path, active)
        if node.tag != SEQ:
            raise YamlError(f"unsupported tag {node.tag!r} on a list", *_mark(node), path)
        return [self.build(item, path + (i,), active) for i, item in enumerate(node.value)]

    def _mapping(self, node, path, active):
        out = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("mapping keys must be scalars", *_mark(key_node))
            if key_node.tag not in (STR, INT, FLOAT, BOOL, NULL):
                raise YamlError(f"unsupported tag {key_node.tag!r}", *_mark(key_node), path)
            key = key_node.value    # the text written: `on:` is the word, `1:` the string "1"
            if key in out:
                raise YamlError(f"duplicate key {key!r}", *_mark(key_node))
            # jsonschema paths name keys as strings; keep the key's own mark for "unknown key" errors.
            self.marks[path + (key,)] = _mark(value_node)
            self.marks[("__key__",) + path + (key,)] = _mark(key_node)
            out[key] = self.build(value_node, path + (key,), active)
        return out


def load(text: str, filename: str = "<string>"):
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        if node is None:
            return None, {(): (1, 1)}
        builder = _Builder()
        value = builder.build(node, ())
        return value, builder.marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = ", ".join(str(part) for part in (exc.context, exc.problem) if part)
        raise YamlError(f"invalid YAML: {what}", line, col) from None
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        raise YamlError(f"invalid YAML: character U+{exc.character:04X} is not allowed here"
                        " (control characters must be written as escapes in a quoted string)", line, col) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}", 1, 1) from None
    except RecursionError:
        raise YamlError("nested too deeply", 1, 1) from None
    finally:
        if loader is not None:
            loader.dispose()


def _position(text: str, offset: int) -> tuple[int, int]:
    before = text[:offset]
    return before.count("\n") + 1, offset - (before.rfind("\n") + 1) + 1


def mark_for(marks: dict, path: Path, *, key: bool = False) -> tuple[int, int]:
    """The mark of the deepest existing node on `path` (the key itself when `key`)."""
    path = tuple(path)
    if key and ("__key__",) + path in marks:
        return marks[("__key__",) + path]
    while path and path not in marks:
        path = path[:-1]
    return marks.get(path, (1, 1))
