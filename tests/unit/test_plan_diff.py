"""Pure planning: diff(desired, running) and plan_profile with a fake resolver (no ELF, no /proc)."""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import pytest

from orchestrator.bpf import discovery, hooks, render
from orchestrator.plan import build, diff, model
from orchestrator.profile import models


@dataclass(frozen=True)
class Fake:
    key: tuple
    digest: str


def keys(items):
    return [i.key for i in items]


def test_empty():
    changes = diff.diff([], [])
    assert changes == diff.Changes((), (), (), ())
    assert changes.empty


def test_add_remove_replace_unchanged():
    running = [Fake(("p", "a"), "1"), Fake(("p", "b"), "2"), Fake(("p", "c"), "3")]
    desired = [Fake(("p", "b"), "2"), Fake(("p", "c"), "X"), Fake(("p", "d"), "4")]
    changes = diff.diff(desired, running)
    assert keys(changes.add) == [("p", "d")]
    assert keys(changes.remove) == [("p", "a")]
    assert changes.replace == ((running[2], desired[1]),)        # (running, desired)
    assert changes.unchanged == (desired[0],)
    assert not changes.empty


def test_everything_new_and_everything_gone():
    items = [Fake(("p", "a"), "1"), Fake(("q", "a"), "2")]
    assert diff.diff(items, []).add == tuple(items) and not diff.diff(items, []).remove
    assert diff.diff([], items).remove == tuple(items) and not diff.diff([], items).add


def test_only_unchanged_is_empty():
    items = [Fake(("p", "a"), "1")]
    changes = diff.diff(items, list(items))
    assert changes.empty and changes.unchanged == tuple(items)


def test_unchanged_keeps_the_desired_object():
    running, desired = Fake(("p", "a"), "1"), Fake(("p", "a"), "1")
    assert diff.diff([desired], [running]).unchanged[0] is desired


def _summary(c):
    return keys(c.add), [(old.key, new.key) for old, new in c.replace], keys(c.unchanged), keys(c.remove)


def test_order_is_deterministic_and_sorted_by_key():
    running = [Fake(("p", n), "old") for n in "qzb"] + [Fake(("r", n), "same") for n in "yx"] + \
        [Fake(("o", n), "gone") for n in "kj"]
    desired = [Fake(("p", n), "new") for n in "zbq"] + [Fake(("a", n), "1") for n in "nm"] + \
        [Fake(("r", n), "same") for n in "xy"]
    expected = ([("a", "m"), ("a", "n")],
                [(("p", n),) * 2 for n in "bqz"],
                [("r", "x"), ("r", "y")],
                [("o", "j"), ("o", "k")])
    assert _summary(diff.diff(desired, running)) == expected
    rng = random.Random(0)
    for _ in range(20):
        d, r = list(desired), list(running)
        rng.shuffle(d)
        rng.shuffle(r)
        assert _summary(diff.diff(d, r)) == expected


def test_changes_are_immutable():
    c = diff.diff([Fake(("p", "a"), "1")], [])
    assert isinstance(c.add, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.add = ()


# ------------------------------------------------------------------ plan_profile

@pytest.fixture(autouse=True)
def four_cpus(monkeypatch):
    monkeypatch.setattr(render, "possible_cpus", lambda: 4)


def _profile(*targets, parsers=None):
    return models.Profile("demo", "demo.yaml", tuple(targets), parsers, (models.Sink("stdout"),))


WEB = models.Target("web", "openssl", binary="/usr/sbin/nginx", line=7)
SHELL = models.Target("shell", "bash", line=11)
BROKEN = models.Target("fn", "uprobe", binary="/opt/app", symbol="nope", line=14)


def fake_resolve(target):
    if target.name == "fn":
        raise discovery.DiscoveryError("symbol", "/opt/app: no function symbol 'nope'")
    if target.kind == "openssl":
        return discovery.Resolution(
            attach_path="/fake/libssl.so.3", hooks=hooks.BUILTIN["openssl"][:2] + hooks.BUILTIN["openssl"][4:5],
            missing_optional=("SSL_write_ex", "SSL_read_ex"), scope_paths=("/usr/sbin/nginx",),
            scope_real="/usr/sbin/nginx", how="fake DT_NEEDED")
    return discovery.Resolution(attach_path="/bin/bash", hooks=hooks.hooks_for(target), missing_optional=(),
                                scope_paths=(), scope_real="/bin/bash", how="binary")


def test_one_failing_target_does_not_fail_the_others():
    sets, failed = build.plan_profile(_profile(WEB, BROKEN, SHELL), resolve=fake_resolve)
    assert [s.target.name for s in sets] == ["web", "shell"]
    (f,) = failed
    assert isinstance(f, model.FailedTarget)
    assert (f.profile, f.target, f.field, f.file) == ("demo", BROKEN, "symbol", "demo.yaml")
    assert "no function symbol 'nope'" in f.message
    assert f.key == ("demo", "fn")


def test_probe_set_carries_the_resolution():
    (web,), _ = build.plan_profile(_profile(WEB, parsers=("http1",)), resolve=fake_resolve)
    assert web.key == ("demo", "web")
    assert web.attach_path == "/fake/libssl.so.3" and web.how == "fake DT_NEEDED"
    assert [h.symbol for h in web.hooks] == ["SSL_write", "SSL_read", "SSL_do_handshake"]
    assert web.missing_optional == ("SSL_write_ex", "SSL_read_ex")
    assert web.scope_paths == ("/usr/sbin/nginx",) and web.parsers == ("http1",)
    assert web.rendered == render.render("demo", WEB, web.hooks, web.scope_paths)
    assert "hook_2_entry" in web.rendered.text and "hook_3_" not in web.rendered.text
    assert len(web.digest) == 16


def test_plan_is_deterministic():
    a, _ = build.plan_profile(_profile(WEB, SHELL), resolve=fake_resolve)
    b, _ = build.plan_profile(_profile(WEB, SHELL), resolve=fake_resolve)
    assert [s.digest for s in a] == [s.digest for s in b]
    assert a == b


def _digest(target, parsers=None, resolve=fake_resolve):
    (ps,), _ = build.plan_profile(_profile(target, parsers=parsers), resolve=resolve)
    return ps.digest


@pytest.mark.parametrize("filters", [
    models.Filters(pids=(1,)), models.Filters(pids=(2,)), models.Filters(uids=(33,)),
    models.Filters(comm=("nginx",)), models.Filters(ports=(443,)),
])
def test_digest_changes_when_filters_change(filters):
    assert _digest(dataclasses.replace(WEB, filters=filters)) != _digest(WEB)


@pytest.mark.parametrize("change", [{"max_bytes": 4096}, {"ring_buffer_kib": 64}])
def test_digest_changes_when_sizes_change(change):
    assert _digest(dataclasses.replace(WEB, **change)) != _digest(WEB)


def test_digest_changes_when_the_attach_point_changes():
    def elsewhere(target):
        return dataclasses.replace(fake_resolve(target), attach_path="/other/libssl.so.3")
    assert _digest(WEB, resolve=elsewhere) != _digest(WEB)


def test_digest_ignores_line_but_not_parsers():
    base = _digest(WEB)
    assert _digest(dataclasses.replace(WEB, line=99)) == base
    # A parser edit takes effect through a new generation, like any other edit.
    assert _digest(WEB, parsers=("http1",)) != base
    assert _digest(WEB, parsers=()) != _digest(WEB, parsers=("http1",))


def test_a_parser_only_edit_replaces_the_targets():
    running, _ = build.plan_profile(_profile(WEB, SHELL), resolve=fake_resolve)
    desired, _ = build.plan_profile(_profile(WEB, SHELL, parsers=("http1",)), resolve=fake_resolve)
    changes = diff.diff(desired, running)
    assert len(changes.replace) == 2 and not changes.add and not changes.remove


def test_a_filter_edit_replaces_only_that_target():
    running, _ = build.plan_profile(_profile(WEB, SHELL), resolve=fake_resolve)
    edited = dataclasses.replace(SHELL, filters=models.Filters(uids=(1000,)))
    desired, _ = build.plan_profile(_profile(WEB, edited), resolve=fake_resolve)
    changes = diff.diff(desired, running)
    assert [(old.target.name, new.target.name) for old, new in changes.replace] == [("shell", "shell")]
    assert keys(changes.unchanged) == [("demo", "web")]
    assert not changes.add and not changes.remove


# ------------------------------------------------------------------ how a replacement is carried out

def _running(ps):
    return diff.Running(ps.key, ps.digest, ps.kernel_digest, ps.attach_identity, ps.program_key)


def _web(**filters):
    target = dataclasses.replace(WEB, filters=models.Filters(**filters))
    (ps,), _ = build.plan_profile(_profile(target, parsers=("http1",)), resolve=fake_resolve)
    return ps


def test_parsers_only_keeps_the_programs():
    old = _web()
    new = dataclasses.replace(old, parsers=("http2",))
    assert diff.how_to_replace(_running(old), new) == diff.PARSERS


def test_filter_values_and_max_bytes_need_no_compile():
    old, new = _web(comm=("nginx",)), _web(comm=("curl",), uids=(0,), ports=(443,))
    assert diff.how_to_replace(_running(old), new) == diff.EXPRESS
    assert diff.how_to_replace(_running(old), dataclasses.replace(old, target=dataclasses.replace(
        old.target, max_bytes=128))) == diff.EXPRESS


def test_another_program_on_the_same_uprobes_is_a_compile():
    old = _web()
    new = dataclasses.replace(old, target=dataclasses.replace(old.target, ring_buffer_kib=64))
    new = build.plan_profile(_profile(new.target, parsers=("http1",)), resolve=fake_resolve)[0][0]
    assert new.attach_identity == old.attach_identity
    assert diff.how_to_replace(_running(old), new) == diff.COMPILE


def test_new_uprobes_mean_reattach():
    old, new = _web(), _web(pids=(1234,))                 # pids scope the uprobes themselves
    assert diff.how_to_replace(_running(old), new) == diff.REATTACH
    moved = dataclasses.replace(old, attach_file=(1, 2))  # the library was replaced on disk
    assert diff.how_to_replace(_running(old), moved) == diff.REATTACH


def test_diff_says_how_for_every_replacement():
    a, b = _web(comm=("x",)), _web(comm=("y",))
    changes = diff.diff([b], [a], views=_running)
    assert changes.replace == ((a, b),) and changes.how == (diff.EXPRESS,)
    assert diff.diff([b], [a]).how == ()                   # no views: no decision asked for
