"""Load YAML into plain Python values while remembering where every value came from.

`load(text, filename)` returns `(value, marks)`; `marks` maps a path tuple such as
("spec", "targets", 0, "filters") to the (line, col) of that node, 1-based.
"""
from __future__ import annotations

import yaml

Path = tuple


class YamlError(Exception):
    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _construct(node: yaml.Node, path: Path, marks: dict, loader: yaml.SafeLoader, active=frozenset()):
    marks[path] = _mark(node)
    if id(node) in active:
        raise YamlError("an alias refers to the node that contains it", *_mark(node))
    if len(marks) > 200_000:
        raise YamlError("document too large (alias expansion?)", *_mark(node))
    if len(path) > 64:
        raise YamlError("nested too deeply", *_mark(node))
    active = active | {id(node)}
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if isinstance(key, bool) and isinstance(key_node, yaml.ScalarNode):
                key = key_node.value   # YAML 1.1 reads a key `on:` as True; profiles mean the word
            if not isinstance(key, (str, int, bool, float)) or key is None:
                raise YamlError("mapping keys must be scalars", *_mark(key_node))
            if key in out:
                raise YamlError(f"duplicate key {key!r}", *_mark(key_node))
            # jsonschema paths name keys as strings; keep the key's own mark for "unknown key" errors.
            marks[path + (key,)] = _mark(value_node)
            marks[("__key__",) + path + (key,)] = _mark(key_node)
            out[key] = _construct(value_node, path + (key,), marks, loader, active)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, path + (i,), marks, loader, active) for i, item in enumerate(node.value)]
    if node.tag not in _PLAIN_TAGS:
        return node.value          # dates, binary, ...: keep the text the user wrote
    return loader.construct_object(node, deep=True)


_PLAIN_TAGS = {"tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
               "tag:yaml.org,2002:bool", "tag:yaml.org,2002:null"}


def load(text: str, filename: str = "<string>"):
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        marks: dict = {}
        if node is None:
            return None, {(): (1, 1)}
        value = _construct(node, (), marks, loader)
        return value, marks
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise YamlError(f"invalid YAML: {exc.problem or exc.context}", line, col) from None
    except yaml.YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}", 1, 1) from None
    finally:
        loader.dispose()


def mark_for(marks: dict, path: Path, *, key: bool = False) -> tuple[int, int]:
    """The mark of the deepest existing node on `path` (the key itself when `key`)."""
    path = tuple(path)
    if key and ("__key__",) + path in marks:
        return marks[("__key__",) + path]
    while path and path not in marks:
        path = path[:-1]
    return marks.get(path, (1, 1))
