"""Every example profile in profiles/ loads, validates and plans on this machine."""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.plan import build
from orchestrator.profile import load, models

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "profiles").glob("*.yaml")) + sorted((ROOT / "profiles").glob("*.yml"))


def test_there_are_examples():
    assert EXAMPLES


def test_discover_finds_every_example():
    assert load.discover([str(ROOT / "profiles")]) == [str(p) for p in EXAMPLES]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path):
    profile = load.load_file(str(path))
    assert isinstance(profile, models.Profile)
    assert profile.targets


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_plans_without_failed_targets(path):
    profile = load.load_file(str(path))
    sets, failed = build.plan_profile(profile)
    assert not failed, [(f.target.name, f.field, f.message) for f in failed]
    assert [s.target.name for s in sets] == [t.name for t in profile.targets]
    for s in sets:
        assert "hook_0_entry" in s.rendered.text


def test_example_names_are_unique():
    names = [load.load_file(str(p)).name for p in EXAMPLES]
    assert len(names) == len(set(names))
