"""The import graph of the `orchestrator` package: one-way, layered, no private reach-ins.

Every module is parsed with `ast`, never imported. Module-level and function-level imports
both count; `from orchestrator.x import y` counts as importing `orchestrator.x.y` when that is a
module, else `orchestrator.x`. A new package edge must be added to ALLOWED below on purpose.
"""
from __future__ import annotations

import ast
from pathlib import Path

PKG = "orchestrator"
ROOT = Path(__file__).resolve().parents[2] / PKG

# Package-level layering (the first component under `orchestrator`: a subpackage or a top-level
# module). Target graph: cli → reconcile → pipeline/plan/sinks → parsers, bpf → profile, with the
# small utilities (safefile, termtext, preflight, workdir, cgroups, threadname) below everything.
ALLOWED: dict[str, set[str]] = {
    "cli": {"reconcile", "plan", "bpf", "profile", "preflight", "termtext", "workdir", "metrics"},
    "reconcile": {"pipeline", "plan", "sinks", "bpf", "profile", "safefile", "workdir", "fastpath", "metrics",
                  "threadname"},
    "metrics": {"fastpath"},    # reads what reconcile hands it at scrape time; imports none of it
    "sinks": {"pipeline", "bpf", "profile", "safefile", "termtext", "threadname"},   # bpf: the packet sink subscribes to the capture
    "plan": {"bpf", "profile", "cgroups"},
    "pipeline": {"bpf", "parsers", "cgroups", "threadname"},     # cgroups: a record's cgroup path and container
    "bpf": {"profile", "cgroups", "threadname"},
    "cgroups": set(),             # the cgroup2 hierarchy: mount, path ↔ id, container ids
    "parsers": set(),
    "profile": {"safefile", "workdir"},
    "safefile": {"workdir"},
    "preflight": set(),
    "termtext": set(),
    "workdir": set(),
    "orchestrator": {"fastpath"},     # the package's __init__ picks the compiled or the Python hot path
    "fastpath": set(),
    "threadname": set(),          # the OS name of a thread of ours
}

# Modules that must import nothing of the package.
LEAVES = (f"{PKG}.bpf.owner", f"{PKG}.workdir")

# (importing module, "module._name") pairs allowed to reach a private name, with the reason.
PRIVATE_ALLOWED: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _absolute(name: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")
    base = base[: len(base) - node.level + (1 if MODULES[name].name == "__init__.py" else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


def _scan(name: str) -> tuple[set[str], list[str]]:
    """(project modules `name` imports, private reach-ins as "module._name")."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    imports: set[str] = set()
    aliases: dict[str, str] = {}     # local name → project module it is bound to
    private: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == PKG or a.name.startswith(PKG + "."):
                    imports.add(a.name)
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        aliases[a.name.split(".")[0]] = a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            mod = _absolute(name, node)
            if not (mod == PKG or mod.startswith(PKG + ".")):
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in MODULES:
                    imports.add(sub)
                    aliases[a.asname or a.name] = sub
                else:
                    imports.add(mod)
                    if _private(a.name):
                        private.append(f"{mod}.{a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = _dotted(node.value)
            if base is None:
                continue
            head, _, rest = base.partition(".")
            if head not in aliases:
                continue
            target = aliases[head] + (f".{rest}" if rest else "")
            if target in MODULES and target != name:
                private.append(f"{target}.{node.attr}")
    imports.discard(name)
    return imports, private


GRAPH = {name: _scan(name) for name in MODULES}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PKG


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}     # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def package_edges() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, (imports, _) in GRAPH.items():
        src = _package(name)
        for dst in map(_package, imports):
            if dst != src and dst != PKG:
                out.setdefault(src, set()).add(dst)
    return out


def test_the_scan_sees_the_package():
    assert f"{PKG}.cli" in MODULES and f"{PKG}.bpf.loader" in MODULES
    assert f"{PKG}.bpf.owner" in GRAPH[f"{PKG}.bpf.loader"][0]


def test_no_import_cycle_between_modules():
    edges = {name: {i for i in imports if i in MODULES} for name, (imports, _) in GRAPH.items()}
    cycle = _find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_leaves_import_nothing_of_the_package():
    for leaf in LEAVES:
        assert GRAPH[leaf][0] == set(), f"{leaf} imports {sorted(GRAPH[leaf][0])}"


def test_no_private_reach_ins():
    found = sorted({(name, p) for name, (_, privates) in GRAPH.items() for p in privates})
    bad = [f"{name} uses {p}" for name, p in found if (name, p) not in PRIVATE_ALLOWED]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def test_package_layering():
    actual = package_edges()
    print("package edges:")
    for src in sorted(actual):
        print(f"  {src} -> {', '.join(sorted(actual[src]))}")
    assert _find_cycle(ALLOWED) is None, "the allowed layering itself has a cycle"
    cycle = _find_cycle(actual)
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)
    assert set(actual) <= set(ALLOWED), f"packages missing from ALLOWED: {sorted(set(actual) - set(ALLOWED))}"
    bad = [f"{src} -> {dst}" for src, dsts in sorted(actual.items()) for dst in sorted(dsts)
           if dst not in ALLOWED[src]]
    assert not bad, "package edges outside the layering: " + ", ".join(bad)
