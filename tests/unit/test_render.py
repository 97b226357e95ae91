"""Rendering targets into BPF C: golden files, typed context, StrictUndefined, and the event layout.

Regenerate the golden files after an intended template change with:

    UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_render.py

and review the diff of tests/unit/golden/ like any other code change.
"""
from __future__ import annotations

import dataclasses

import difflib
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import jinja2
import pytest

from orchestrator.bpf import hooks, layout, render
from orchestrator.profile import models

GOLDEN = Path(__file__).resolve().parent / "golden"
RET = models.RET


@pytest.fixture(autouse=True)
def four_cpus(monkeypatch):
    monkeypatch.setattr(render, "possible_cpus", lambda: 4)


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True),
                                            f"golden/{name}", "rendered", n=2))
        pytest.fail(f"rendered C differs from golden/{name} (UPDATE_GOLDEN=1 to accept):\n{diff[:6000]}")


# ------------------------------------------------------------------ fixed inputs

OPENSSL = models.Target("web", "openssl", binary="/usr/sbin/nginx")
BASH = models.Target("shell", "bash")
UPROBE_INT_STRING = models.Target(
    "open", "uprobe", binary="/usr/lib/x86_64-linux-gnu/libc.so.6", symbol="openat",
    args=(models.Arg(0, "dirfd", "int"), models.Arg(1, "path", "string"), models.Arg(2, "flags", "uint")))
UPROBE_BYTES_RET = models.Target(
    "reads", "uprobe", binary="/usr/lib/x86_64-linux-gnu/libc.so.6", symbol="read", on="return",
    args=(models.Arg(0, "fd", "int"), models.Arg(1, "buf", "bytes", RET), models.Arg(RET, "n", "long")),
    max_bytes=256)
UPROBE_BYTES_ARG = models.Target(
    "writes", "uprobe", binary="/usr/lib/x86_64-linux-gnu/libc.so.6", symbol="write",
    args=(models.Arg(0, "fd", "int"), models.Arg(1, "buf", "bytes", 2), models.Arg(2, "count", "int")))
ALL_FILTERS = models.Filters(pids=(100, 4194304), uids=(0, 33), comm=("nginx", "worker-1"), ports=(443, 8443))
OPENSSL_FILTERED = models.Target("web", "openssl", binary="/usr/sbin/nginx", filters=ALL_FILTERS,
                                 max_bytes=4096, ring_buffer_kib=64)
SCOPE = ("/usr/sbin/nginx", "/sbin/nginx")
SOCKET = models.Target("sql", "socket", filters=models.Filters(ports=(3306, 5432)))

# As discovery hands them over: the key-log routine with the client random's place in the session
# (BoringSSL's shape, ssl->s3->client_random, so the pointer-following code is in the golden file).
OPENSSL_HOOKS = tuple(dataclasses.replace(h, random_path=(0x30, 0x30)) if h.locate == "keylog" else h
                      for h in hooks.BUILTIN["openssl"])

CASES = {
    "openssl.c": ("nginx-tls", OPENSSL, OPENSSL_HOOKS, ()),
    "bash.c": ("shell-history", BASH, hooks.BUILTIN["bash"], ()),
    "uprobe_int_string.c": ("files", UPROBE_INT_STRING, hooks.hooks_for(UPROBE_INT_STRING), ()),
    "uprobe_bytes_ret.c": ("io", UPROBE_BYTES_RET, hooks.hooks_for(UPROBE_BYTES_RET), ()),
    "uprobe_bytes_arg.c": ("io", UPROBE_BYTES_ARG, hooks.hooks_for(UPROBE_BYTES_ARG), ()),
    # profile name "p": the word nginx must not reach the C through any route but the hashes
    "openssl_filtered_scoped.c": ("p", OPENSSL_FILTERED, OPENSSL_HOOKS, SCOPE),
    # syscall tracepoints (the hook shape whose arguments are not in pt_regs), port-filtered
    "socket.c": ("db", SOCKET, hooks.BUILTIN["socket"], ()),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    rendered = render.render(*CASES[name])
    check_golden(name, rendered.text)


def test_a_key_log_hook_without_its_client_random_place_is_refused():
    with pytest.raises(ValueError, match="client random"):
        render.render("nginx-tls", OPENSSL, hooks.BUILTIN["openssl"], ())


def test_no_stale_golden_files():
    assert sorted(p.name for p in GOLDEN.glob("*.c")) == sorted(CASES)


def _render(name):
    return render.render(*CASES[name]).text


def test_every_hook_gets_its_entry_and_return_functions():
    text = _render("openssl.c")
    for i, h in enumerate(hooks.BUILTIN["openssl"]):
        assert f"int hook_{i}_entry(struct pt_regs *ctx)" in text
        # every openssl hook records at return, but the key-log routine's (on entry, with the secret)
        assert (f"int hook_{i}_return(struct pt_regs *ctx)" in text) == (h.locate != "keylog")
    assert "hook_6_" not in text
    entry_only = _render("uprobe_int_string.c")
    assert "int hook_0_entry(" in entry_only and "hook_0_return" not in entry_only


def test_uid_comm_and_port_values_are_read_from_maps_not_compiled_in():
    text = _render("openssl_filtered_scoped.c")
    assert "nginx" not in text and "worker" not in text and "8443" not in text and "== 33" not in text
    assert "filter_comms.lookup(&ck)" in text and "filter_ports.lookup(&pk)" in text
    assert "filter_uids.lookup(&uk)" in text


def test_pids_and_scope_are_compiled_in():
    text = _render("openssl_filtered_scoped.c")
    assert "if (!(tgid == 100 || tgid == 4194304)) return 0;" in text
    for p in SCOPE:
        assert f"h == {render.path_hash(p)}ULL" in text
    assert "#define MAX_BYTES 65536" in text               # the bound; each configuration sets its own
    assert "BPF_RINGBUF_OUTPUT(events, 16);" in text        # 64 KiB = 16 pages
    assert "BPF_ARRAY(scratch, struct event, 4);" in text    # possible_cpus() patched to 4
    plain = _render("openssl.c")
    assert "scope" not in plain and "tgid ==" not in plain


def test_text_from_a_profile_never_reaches_the_c():
    """Even values the schema would reject are rendered only as numbers or sanitized identifiers."""
    t = models.Target("x */ #include <evil>", "bash", filters=models.Filters(comm=('a"b\\c;',)))
    text = render.render("p\n#define X", t, hooks.BUILTIN["bash"]).text
    assert 'a"b' not in text and "<evil>" not in text and "#define X" not in text
    assert text.splitlines()[0] == "/* ecapture generated program: profile p__define_X, target x_____include__evil_"


@pytest.mark.parametrize("filters", [
    models.Filters(pids=("1234",)),
    models.Filters(pids=(True,)),
    models.Filters(pids=(1234.0,)),
    models.Filters(pids=(0,)),
    models.Filters(uids=(-1,)),
    models.Filters(uids=(None,)),
    models.Filters(ports=(70000,)),
    models.Filters(ports=("443",)),
    models.Filters(comm=("abcdefghijklmnop",)),
    models.Filters(comm=("",)),
    models.Filters(comm=("nginx\u00e9",)),
], ids=lambda f: repr(f))
def test_values_that_are_not_valid_ints_are_rejected(filters):
    """pids are compiled in (render.context), the rest written to maps (render.lane_values)."""
    t = models.Target("web", "openssl", binary="/usr/sbin/nginx", filters=filters)
    with pytest.raises(ValueError):
        render.context("p", t, OPENSSL_HOOKS) if filters.pids else render.lane_values(t)


@pytest.mark.parametrize("field, value", [("max_bytes", 8), ("max_bytes", "16k"), ("max_bytes", 1024.0),
                                          ("ring_buffer_kib", 0)])
def test_bad_sizes_are_rejected(field, value):
    t = models.Target("shell", "bash", **{field: value})
    with pytest.raises(ValueError):
        render.context("p", t, hooks.BUILTIN["bash"]) if field == "ring_buffer_kib" else render.lane_values(t)


def test_context_holds_only_plain_typed_values():
    ctx = render.context("p", OPENSSL_FILTERED, OPENSSL_HOOKS, SCOPE)

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                assert isinstance(k, str)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        else:
            assert v is None or type(v) in (int, bool, str), v
    walk(ctx)
    assert ctx["pids"] == [100, 4194304]
    assert render.lane_values(OPENSSL_FILTERED)["comm"][0] == list(b"nginx\0")


def test_strict_undefined_is_on():
    env = render.environment()
    assert env.undefined is jinja2.StrictUndefined
    template = env.get_template(render.TEMPLATE)
    ctx = render.context("p", OPENSSL, OPENSSL_HOOKS)
    template.render(**ctx)                        # complete context renders
    missing_top = dict(ctx)
    del missing_top["scope"]
    with pytest.raises(jinja2.UndefinedError):
        template.render(**missing_top)
    missing_nested = render.context("p", OPENSSL, OPENSSL_HOOKS)
    del missing_nested["hooks"][0]["ret32"]
    with pytest.raises(jinja2.UndefinedError):
        template.render(**missing_nested)


def test_digest_covers_the_text():
    a = render.render("p", OPENSSL, OPENSSL_HOOKS)
    assert a.digest == render.render("p", OPENSSL, OPENSSL_HOOKS).digest
    assert len(a.digest) == 64
    assert a.digest != render.render("p", OPENSSL_FILTERED, OPENSSL_HOOKS).digest


# ------------------------------------------------------------------ path_hash

def fnv1a_64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
    return h


@pytest.mark.parametrize("text, expected", [
    ("", 0xCBF29CE484222325),        # published FNV-1a 64 test vectors
    ("a", 0xAF63DC4C8601EC8C),
    ("foobar", 0x85944171F73967E8),
])
def test_path_hash_known_vectors(text, expected):
    assert render.path_hash(text) == expected == fnv1a_64(text.encode())


@pytest.mark.parametrize("path", ["/usr/sbin/nginx", "/bin/bash", "/opt/ü/prog", "/" + "x" * 300])
def test_path_hash_matches_reference(path):
    # the kernel hashes at most 255 bytes (char path[256] with its NUL)
    assert render.path_hash(path) == fnv1a_64(path.encode()[:255])


# ------------------------------------------------------------------ event layout

def _python_offsets() -> dict[str, int]:
    """Offset of each name in layout.FIELDS, derived from the HEADER format string."""
    fmt = layout.HEADER.format
    assert fmt[0] == "<"
    offsets, names, prefix = {}, iter(layout.FIELDS), "<"
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        n = int(count or 1)
        if code == "x":
            prefix += f"{n}x"
            continue
        if code == "s":
            offsets[next(names)] = struct.calcsize(prefix)
            prefix += f"{n}s"
            continue
        for _ in range(n):
            offsets[next(names)] = struct.calcsize(prefix)
            prefix += code
    assert next(names, None) is None, "FIELDS has more names than HEADER has fields"
    return offsets


C_PROGRAM = r"""
#include <stdio.h>
#include <stddef.h>
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int s32;
typedef long long s64;
#include "common.h"
#define OFF(name, member) printf("%s %zu\n", name, offsetof(struct event_header, member));
int main(void) {
@MEMBERS@
    printf("sizeof %zu\n", sizeof(struct event_header));
    return 0;
}
"""

C_MEMBERS = {name: name for name in layout.C_OFFSETS} | {
    "conn.family": "conn.family", "conn.lport": "conn.lport", "conn.rport": "conn.rport",
    "conn._pad": "conn._pad", "conn.laddr": "conn.laddr", "conn.raddr": "conn.raddr",
}


@pytest.fixture(scope="module")
def c_offsets(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    out = tmp_path_factory.mktemp("layout") / "layout"
    body = "\n".join(f'    OFF("{n}", {m})' for n, m in C_MEMBERS.items())
    src = C_PROGRAM.replace("@MEMBERS@", body)
    cc = subprocess.run(["gcc", "-Wall", "-Werror", "-x", "c", f"-I{render.KERN_DIR}", "-", "-o", str(out)],
                        input=src, text=True, capture_output=True)
    assert cc.returncode == 0, cc.stderr
    lines = subprocess.run([str(out)], capture_output=True, text=True, check=True).stdout.split("\n")
    return {name: int(value) for name, value in (ln.split() for ln in lines if ln)}


def test_header_size():
    assert layout.HEADER.size == layout.HEADER_SIZE == 176


def test_c_offsets_match_the_compiled_struct(c_offsets):
    assert c_offsets["sizeof"] == layout.HEADER.size == 176
    assert {k: c_offsets[k] for k in layout.C_OFFSETS} == layout.C_OFFSETS


def test_python_struct_matches_the_compiled_struct(c_offsets):
    py = _python_offsets()
    expected = {"a0": c_offsets["args"], "family": c_offsets["conn.family"], "lport": c_offsets["conn.lport"],
                "rport": c_offsets["conn.rport"], "_pad": c_offsets["conn._pad"],
                "laddr": c_offsets["conn.laddr"], "raddr": c_offsets["conn.raddr"]}
    expected |= {f"a{i}": c_offsets["args"] + 8 * i for i in range(6)}
    expected |= {k: v for k, v in c_offsets.items() if k in py}
    assert {k: py[k] for k in expected} == expected
    assert set(py) == set(layout.FIELDS)


def _abi_defines() -> dict[str, int]:
    """The record, direction, flag and loss numbers the C defines (common.h, shared.h)."""
    text = "".join((render.KERN_DIR / h).read_text() for h in ("common.h", "shared.h"))
    return {k: int(v) for k, v in re.findall(r"^#define ((?:RECORD|DIR|FLAG|LOSS)_\w+)\s+(\d+)", text, re.M)}


def test_layout_constants_match_common_h():
    """The numbers C and Python share have one source each side, tied here: the C headers are what
    bcc compiles and what the layout test compiles with gcc; layout.py is Python's one copy (hooks.py
    uses the same values), so any number added on either side must be added on the other."""
    defines = _abi_defines()
    python = {k: v for k, v in vars(layout).items()
              if re.fullmatch(r"(RECORD|DIR|FLAG|LOSS)_[A-Z_]+", k) and type(v) is int}
    assert set(defines) - {"LOSS_SLOTS"} == set(python), "a number defined on one side only"
    for name, value in python.items():
        assert defines[name] == value, name
    assert defines["LOSS_SLOTS"] == len(layout.LOSS_STAGES) == max(layout.LOSS_STAGES) + 1
    for name in ("RECORD_DATA", "RECORD_COMMAND", "RECORD_CALL", "DIR_NONE", "DIR_READ", "DIR_WRITE"):
        assert getattr(hooks, name) == getattr(layout, name), name
    assert hooks.RECORD_NONE == 0 and "RECORD_NONE" not in defines    # a hook-only value: never in a record


# ------------------------------------------------------------------ template split

TEMPLATES = {p.name: p.read_text() for p in render.KERN_DIR.iterdir() if p.suffix in (".j2", ".h")}


def test_event_h_is_plain_c():
    """event.h is included verbatim: no Jinja in it, so it can become a bcc #include unchanged."""
    text = TEMPLATES["event.h"]
    assert not re.search(r"\{[{%#]|[}%#]\}", text)
    assert jinja2.Environment(keep_trailing_newline=True).from_string(text).render() == text


@pytest.mark.parametrize("needle, owners", [
    (r"\bfilter_(conf|gate|uids|comms|ports|cgroups)\b|\bfc->|struct filter_conf \*", ["filters.c.j2"]),
    (r"\bscope\.(lookup|update|delete)\b|sched_process_", ["scope.c.j2"]),
    # the target programs' probe ABIs; the shared state's one raw tracepoint reads its syscall's registers
    (r"\bPT_REGS_|ctx->args\[|ctx->ret\b", ["hooks.c.j2", "state.c.j2"]),
])
def test_each_concern_lives_in_one_template(needle, owners):
    """The filter maps, the scope table and the probe ABIs are each known to one file."""
    users = sorted(name for name, text in TEMPLATES.items() if re.search(needle, text))
    assert users == owners
    if "state.c.j2" in owners:
        assert len(re.findall(needle, TEMPLATES["state.c.j2"])) == 3      # nr, regs, the fd: nothing else


def test_probe_skeleton_stays_short():
    body = [ln for ln in TEMPLATES["probes.c.j2"].splitlines() if ln.strip()]
    assert len(body) < 70
    assert len(re.findall(r"\{%", TEMPLATES["probes.c.j2"])) < 20
