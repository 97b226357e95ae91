"""Profile → probe sets. Discovery (ELF, /proc) is the only I/O and is passed in, so tests can fake it."""
from __future__ import annotations

from orchestrator import cgroups
from orchestrator.bpf import discovery, render
from orchestrator.plan import model
from orchestrator.profile import models


def plan_profile(profile: models.Profile, resolve=discovery.resolve, resolve_cgroups=cgroups.resolve):
    """Returns (probe_sets, failed_targets): one target failing does not fail the others. A
    filters.cgroups path that does not exist is no failure: it matches nothing until it does."""
    sets, failed = [], []
    for target in profile.targets:
        try:
            res = resolve(target)
        except discovery.DiscoveryError as exc:
            failed.append(model.FailedTarget(profile.name, target, exc.field, exc.message, profile.path))
            continue
        rendered = render.render(profile.name, target, res.hooks, res.scope_paths)
        cgroup_ids, cgroups_missing = resolve_cgroups(target.filters.cgroups) if target.filters.cgroups else ((), ())
        sets.append(model.ProbeSet(
            profile=profile.name, target=target, attach_path=res.attach_path, hooks=res.hooks,
            scope_paths=res.scope_paths, scope_real=res.scope_real, rendered=rendered,
            how=res.how, missing_optional=res.missing_optional, parsers=profile.parsers,
            attach_file=model.file_identity(res.attach_path), addresses=res.addresses,
            namespace=res.namespace, inside_path=res.inside_path,
            cgroups=cgroup_ids, cgroups_missing=cgroups_missing,
        ))
    return sets, failed
