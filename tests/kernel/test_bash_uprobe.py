"""bash commands through a real pty, and a generic `kind: uprobe` target on a C program built here."""
from __future__ import annotations

import subprocess
import textwrap

import pytest

from tests.support.pty_shell import PtyShell

BASH_PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: shell-audit}
spec:
  targets:
    - name: bash
      kind: bash
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""


def test_bash_commands_typed_in_a_pty(apply_profile):
    with apply_profile(BASH_PROFILE) as cap:
        with PtyShell() as shell:
            assert "ecap-marker-1" in shell.run("echo ecap-marker-1")
            shell.run("true && echo 'quoted $HOME' | wc -c")
            pid = shell.pid
        assert cap.wait_for(lambda rs: sum(r["type"] == "bash.command" for r in rs) >= 2)
    cmds = [r for r in cap.records("bash.command") if r["pid"] == pid]
    texts = [r["command"] for r in cmds]
    # PtyShell.run appends a printf marker to each command line.
    assert texts[0].startswith("echo ecap-marker-1")
    assert texts[1].startswith("true && echo 'quoted $HOME' | wc -c")
    assert all(r["comm"] == "bash" and r["target"] == "bash" and r["profile"] == "shell-audit" for r in cmds)


C_PROGRAM = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) int traced_fn(int code, const char *label, const unsigned char *buf, long n) {
    int sum = 0;
    for (long i = 0; i < n; i++) sum += buf[i];
    return code * 2 + (int)n + (sum & 1) + (label[0] == 'c');
}
int main(int argc, char **argv) {
    unsigned char buf[8] = {0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4};
    usleep(300000);   /* give the test time to see the process */
    for (int i = 0; i < 5; i++) {
        char label[32];
        snprintf(label, sizeof label, "call-%d", i);
        printf("%d\n", traced_fn(i - 2, label, buf, 4 + (i % 2)));
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def traced_binary(tmp_path_factory):
    d = tmp_path_factory.mktemp("cprog")
    src, exe = d / "traced.c", d / "traced"
    src.write_text(C_PROGRAM)
    subprocess.run(["gcc", "-O0", "-g", "-o", str(exe), str(src)], check=True)
    return exe


def _uprobe_profile(exe, on: str, args: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: ecapture/v1
        kind: CaptureProfile
        metadata: {{name: cprog}}
        spec:
          targets:
            - name: fn
              kind: uprobe
              binary: {exe}
              symbol: traced_fn
              on: {on}
              args:
        """) + textwrap.indent(textwrap.dedent(args), " " * 8) + '  sinks:\n    - {type: jsonl, path: "{jsonl}"}\n'


def test_uprobe_entry_with_typed_args(apply_profile, traced_binary):
    args = """\
        - {index: 0, name: code, type: int}
        - {index: 1, name: label, type: string}
        - {index: 3, name: n, type: long}
        """
    with apply_profile(_uprobe_profile(traced_binary, "entry", args)) as cap:
        run = subprocess.run([str(traced_binary)], capture_output=True, text=True, timeout=10)
        assert run.returncode == 0
        assert cap.wait_for(lambda rs: sum(r["type"] == "uprobe.call" for r in rs) >= 5)
    calls = cap.records("uprobe.call")
    assert [c["args"] for c in calls] == [{"code": i - 2, "n": 4 + (i % 2), "label": f"call-{i}"} for i in range(5)]
    assert all(c["symbol"] == "traced_fn" and c["comm"] == "traced" for c in calls)


def test_uprobe_return_with_bytes_and_ret(apply_profile, traced_binary):
    args = """\
        - {index: 0, name: code, type: int}
        - {index: 2, name: buf, type: bytes, length_arg: 3}
        - {index: 3, name: n, type: long}
        - {index: ret, name: ret, type: int}
        """
    with apply_profile(_uprobe_profile(traced_binary, "return", args)) as cap:
        run = subprocess.run([str(traced_binary)], capture_output=True, text=True, timeout=10)
        assert run.returncode == 0
        assert cap.wait_for(lambda rs: sum(r["type"] == "uprobe.call" for r in rs) >= 5)
    calls = cap.records("uprobe.call")
    printed = [int(x) for x in run.stdout.split()]
    assert [c["ret"] for c in calls] == printed
    assert [c["args"]["ret"] for c in calls] == printed
    import base64
    for i, c in enumerate(calls):
        n = 4 + (i % 2)
        assert c["args"]["n"] == n and c["args"]["code"] == i - 2
        assert c["args"]["buf_encoding"] == "base64"
        assert base64.b64decode(c["args"]["buf"]) == bytes([0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4])[:n]


ZSH_PROFILE = """
apiVersion: ecapture/v1
kind: CaptureProfile
metadata: {name: zsh-audit}
spec:
  targets:
    - name: zsh
      kind: zsh
  sinks:
    - {type: jsonl, path: "{jsonl}"}
"""


def test_zsh_commands_typed_in_a_pty(apply_profile):
    with apply_profile(ZSH_PROFILE) as cap:
        with PtyShell(argv=("/bin/zsh", "-f", "-i")) as shell:
            assert "ecap-zsh-1" in shell.run("echo ecap-zsh-1")
            shell.run("print -r -- 'caf\u00e9 $HOME' | wc -c")
            pid = shell.pid
        assert cap.wait_for(lambda rs: sum(r["type"] == "zsh.command" for r in rs) >= 2)
    cmds = [r for r in cap.records("zsh.command") if r["pid"] == pid]
    texts = [r["command"] for r in cmds]
    assert texts[0].startswith("echo ecap-zsh-1; printf")
    assert texts[1].startswith("print -r -- 'caf\u00e9 $HOME' | wc -c")     # unmetafied, no newline
    assert all(r["comm"] == "zsh" and r["target"] == "zsh" and r["profile"] == "zsh-audit" for r in cmds)


def test_zsh_commands_across_a_filter_edit(apply_profile, tmp_path):
    """Commands typed while the profile's filters are edited: each is recorded once, in order."""
    from tests.kernel.test_reload import _wait_for
    count = 40
    with apply_profile(ZSH_PROFILE) as cap:
        with PtyShell(argv=("/bin/zsh", "-f", "-i")) as shell:
            for i in range(count):
                shell.run(f"echo zsh-cmd-{i:03d}")
                if i == count // 2:
                    (tmp_path / "profile.yaml").write_text(ZSH_PROFILE.replace(
                        "kind: zsh", "kind: zsh\n      filters: {comm: [zsh, other-1]}").replace("{jsonl}", str(cap.jsonl)))
                    assert _wait_for(lambda: "reloaded zsh-audit" in cap.stderr, 20), cap.stderr
            pid = shell.pid
        assert cap.wait_for(lambda rs: sum(r["type"] == "zsh.command" for r in rs) >= count, 20)
    assert "express lane, no compile" in cap.stderr
    texts = [r["command"].split(";")[0] for r in cap.records("zsh.command") if r["pid"] == pid]
    assert texts[-1] == "exit"      # PtyShell leaves the shell by typing exit
    texts = texts[:-1]
    assert texts == [f"echo zsh-cmd-{i:03d}" for i in range(count)]
