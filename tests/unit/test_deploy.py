"""deploy/: the Kubernetes manifests and the image's Dockerfile, checked without a cluster or Docker.

Every manifest validates against the Kubernetes 1.30 schemas in strict mode (kubernetes-validate,
which ships them: an unknown or misspelt field fails); the DaemonSet keeps its invariants (node
pid namespace, every node, the host folders and which are read-only, the capabilities); its
ConfigMap's profiles load with ecapture's own loader laid out as the kubelet lays out a ConfigMap
volume, and pass `ecapture validate --offline`; its arguments parse with ecapture's own command
line; and the Dockerfile, read by the BuildKit parser (PyPI `dockerfile`), builds what the
DaemonSet runs.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path

import dockerfile
import kubernetes_validate
import pytest
import typer.main
import yaml

from orchestrator import cli, metrics
from orchestrator.profile import load, trust
from tests.unit.test_cli_pure import run

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
UNIT = ROOT / "packaging" / "ecapture.service"
KUBERNETES_VERSION = "1.30"
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
CAPABILITIES = {"BPF", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE", "SYS_PTRACE", "DAC_READ_SEARCH"}
# host folder → whether the agent only reads it
HOST_FOLDERS = {"/sys/kernel/tracing": False, "/sys/fs/cgroup": True, "/lib/modules": True, "/usr/src": True}


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _resources() -> dict[str, dict]:
    return {d["kind"]: d for p in MANIFESTS for d in _documents(p)}


@pytest.fixture(scope="module")
def resources() -> dict[str, dict]:
    return _resources()


@pytest.fixture(scope="module")
def pod(resources) -> dict:
    return resources["DaemonSet"]["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    (only,) = pod["containers"]
    return only


def _stages() -> list[list]:
    """The Dockerfile's build stages, each its list of instructions (FROM first)."""
    stages: list[list] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd.upper() == "FROM":
            stages.append([])
        stages[-1].append(command)
    return stages


def _instructions(stage: list, name: str) -> list:
    return [c for c in stage if c.cmd.upper() == name]


def _shell_commands(run_instruction) -> list[list[str]]:
    """The simple commands of a shell-form RUN, split at && ; || and each split into words."""
    (script,) = run_instruction.value
    return [shlex.split(part) for part in re.split(r"&&|\|\||;", script) if part.strip()]


def _stage_commands(stage: list) -> list[list[str]]:
    return [words for r in _instructions(stage, "RUN") for words in _shell_commands(r)]


# ---------------------------------------------------------------- the manifests themselves

def test_there_is_a_namespace_service_account_config_map_and_daemon_set(resources):
    assert set(resources) == {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"}
    namespace = resources["Namespace"]["metadata"]["name"]
    for kind in ("ServiceAccount", "ConfigMap", "DaemonSet"):
        assert resources[kind]["metadata"]["namespace"] == namespace, kind


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas_strictly(path):
    for document in _documents(path):
        assert kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


@pytest.mark.parametrize("where,field", [
    (lambda ds: ds["spec"]["template"]["spec"], "hostPid"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0], "comand"),
    (lambda ds: ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"], "added"),
])
def test_strict_validation_rejects_a_misspelt_field(resources, where, field):
    daemonset = copy.deepcopy(resources["DaemonSet"])
    where(daemonset)[field] = True
    with pytest.raises(kubernetes_validate.ValidationError, match=field):
        kubernetes_validate.validate(daemonset, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest():
    (kustomization,) = _documents(KUBERNETES / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in MANIFESTS)


def test_namespace_admits_the_privileged_agent(resources):
    labels = resources["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_nothing_reads_the_kubernetes_api(resources, pod):
    assert "Role" not in resources and "ClusterRole" not in resources
    assert resources["ServiceAccount"]["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == resources["ServiceAccount"]["metadata"]["name"]
    assert pod["automountServiceAccountToken"] is False


# ---------------------------------------------------------------- the DaemonSet's invariants

def test_agent_sees_the_node_processes_on_every_node(resources, pod):
    assert pod["hostPID"] is True
    assert {"operator": "Exists"} in pod["tolerations"]       # every taint, every effect
    strategy = resources["DaemonSet"]["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    selector = resources["DaemonSet"]["spec"]["selector"]["matchLabels"]
    assert selector.items() <= resources["DaemonSet"]["spec"]["template"]["metadata"]["labels"].items()


def test_stopping_has_time_to_detach(pod):
    # apply's shutdown waits up to 60 s for a reload that is compiling (session.shutdown), then
    # detaches and flushes: the kubelet must not SIGKILL it before.
    assert pod["terminationGracePeriodSeconds"] > 60


def test_capabilities_are_the_ones_capture_needs_and_nothing_is_privileged(pod, container):
    context = container["securityContext"]
    assert context["privileged"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    added = set(context["capabilities"]["add"])
    assert added == CAPABILITIES
    # the TC classifier (pcapng `interfaces:`) needs NET_ADMIN, and host interfaces hostNetwork
    assert ("NET_ADMIN" in added) == pod["hostNetwork"]


def test_host_folders_are_mounted_where_the_node_has_them(pod, container):
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    mounted = {host_paths[name]: m for name, m in mounts.items() if name in host_paths}
    assert set(mounted) == set(HOST_FOLDERS)
    for path, read_only in HOST_FOLDERS.items():
        assert mounted[path]["mountPath"] == path, path      # bcc and cgroups.py look at these paths
        assert mounted[path].get("readOnly", False) is read_only, path
    assert all(v["hostPath"]["type"] == "Directory" for v in pod["volumes"] if "hostPath" in v)


def test_only_the_control_socket_folder_is_writable(container):
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = [m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly", False)]
    assert sorted(writable) == ["/run/ecapture", "/sys/kernel/tracing"]


def test_resources_request_memory_and_bound_it(container):
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["requests"]["memory"]
    assert "memory" in resources["limits"] and "cpu" not in resources["limits"]   # throttling loses events


def test_probes_ask_the_running_apply(container):
    for probe in ("startupProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"] == ["ecapture", "status"], probe


def test_metrics_listen_on_loopback(container):
    (listen,) = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--metrics=")]
    assert metrics.parse_listen(listen).loopback


def test_container_arguments_parse_with_ecapture_itself(container):
    group = typer.main.get_command(cli.app)
    program, command, *rest = container["command"]
    assert program == "ecapture"
    apply = group.get_command(group.make_context("ecapture", [command]), command)
    ctx = apply.make_context(command, rest + container["args"])
    assert list(ctx.params["paths"]) == [Path("/etc/ecapture/profiles.d")]
    assert ctx.params["insecure_profiles"] is False
    assert ctx.params["metrics_listen"] == "127.0.0.1:9464"


# ---------------------------------------------------------------- the profiles ConfigMap

# A ConfigMap volume's folder is an emptyDir's (mode 0777); a projected volume's is a tmpfs root
# (1777, sticky, root's): kubelet's emptydir.setupDir and the kernel's tmpfs default.
CONFIGMAP_VOLUME_MODE, PROJECTED_VOLUME_MODE = 0o777, 0o1777
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="a trusted folder is root's: the files must be made by root")


def _kubelet_volume(folder: Path, data: dict[str, str], mode: int, volume_mode: int) -> Path:
    """The folder a kubelet mounts for a ConfigMap (its AtomicWriter's layout): the volume's own
    folder, the files in a timestamped folder (0755) with the volume's defaultMode, `..data`
    linking to that folder, and one `key -> ..data/key` link per key."""
    volume = folder / "profiles.d"
    volume.mkdir()
    os.chmod(volume, volume_mode)
    stamped = volume / "..2026_12_02_01_00_00.1234567890"
    stamped.mkdir()
    os.chmod(stamped, 0o755)
    for key, text in data.items():
        (stamped / key).write_text(text)
        os.chmod(stamped / key, mode)
    (volume / "..data").symlink_to(stamped.name)
    for key in data:
        (volume / key).symlink_to(f"..data/{key}")
    return volume


def _profiles_volume(pod) -> dict:
    (volume,) = [v for v in pod["volumes"] if v["name"] == "profiles"]
    return volume


@pytest.fixture
def mounted_profiles(tmp_path, resources, pod) -> Path:
    os.chmod(tmp_path, 0o755)
    return _kubelet_volume(tmp_path, resources["ConfigMap"]["data"], _profiles_volume(pod)["projected"]["defaultMode"],
                           PROJECTED_VOLUME_MODE)


def test_profiles_config_map_is_mounted_as_the_folder_apply_watches(resources, pod, container):
    volume = _profiles_volume(pod)
    (source,) = volume["projected"]["sources"]
    assert source == {"configMap": {"name": resources["ConfigMap"]["metadata"]["name"]}}
    assert volume["projected"]["defaultMode"] & 0o022 == 0        # apply refuses group/other-writable files
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert "subPath" not in mount                                 # a subPath mount never sees an update
    assert mount["readOnly"] is True
    assert [mount["mountPath"]] == container["command"][2:]


def test_config_map_profiles_load_with_ecapture_as_the_kubelet_mounts_them(resources, mounted_profiles):
    files = load.discover([str(mounted_profiles)])          # the links, not ..data or the stamped folder
    assert [os.path.basename(f) for f in files] == sorted(resources["ConfigMap"]["data"])
    for path in files:
        profile = load.load_file(path)
        assert profile.name == Path(path).stem and profile.targets


@needs_root
@pytest.mark.parametrize("volume_mode,refused", [(PROJECTED_VOLUME_MODE, False), (CONFIGMAP_VOLUME_MODE, True)])
def test_apply_trusts_a_projected_volume_and_would_refuse_a_configmap_one(tmp_path, resources, pod, container,
                                                                           volume_mode, refused):
    os.chmod(tmp_path, 0o755)
    volume = _kubelet_volume(tmp_path, resources["ConfigMap"]["data"],
                             _profiles_volume(pod)["projected"]["defaultMode"], volume_mode)
    problems = {problem for path in load.discover([str(volume)]) for problem in trust.problems(path)}
    assert problems == ({f"{volume} is writable by group and others (mode 0777); chmod go-w it"} if refused else set())
    assert "--insecure-profiles" not in container["args"]


def test_config_map_profiles_pass_offline_validation(mounted_profiles):
    proc = run("validate", "--offline", "--json", str(mounted_profiles))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(proc.stdout)
    assert document["ok"] is True and document["offline"] is True
    assert len(document["files"]) == len(load.discover([str(mounted_profiles)]))


# ---------------------------------------------------------------- the image

def test_image_is_debian_12_with_bcc_from_debian_and_no_recommends():
    *_, final = _stages()
    assert final[0].value[0].startswith("debian:12")
    installs = [words for stage in _stages() for words in _stage_commands(stage) if words[:2] == ["apt-get", "install"]]
    assert installs and all({"-y", "--no-install-recommends"} <= set(words) for words in installs), installs
    final_installs = [w for words in _stage_commands(final) if words[:2] == ["apt-get", "install"] for w in words]
    assert {"python3-bpfcc", "python3-venv"} <= set(final_installs)
    for stage in _stages():
        assert ["DEBIAN_FRONTEND=noninteractive"] == [a.value[0] for a in _instructions(stage, "ARG")]
        assert ["rm", "-rf", "/var/lib/apt/lists/*"] in _stage_commands(stage)


def test_image_installs_the_wheel_built_from_this_repository_into_a_venv_that_sees_bcc():
    builder, final = _stages()
    assert ["python3", "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--wheel-dir", "/dist", "."] \
        in _stage_commands(builder)
    builder_name = builder[0].value[-1]
    (copy_wheel,) = [c for c in _instructions(final, "COPY") if f"--from={builder_name}" in c.flags]
    assert copy_wheel.value == ("/dist/", "/tmp/dist/")
    commands = _stage_commands(final)
    assert ["python3", "-m", "venv", "--system-site-packages", "/opt/ecapture"] in commands
    assert ["/opt/ecapture/bin/pip", "install", "--no-cache-dir", "/tmp/dist/*.whl"] in commands
    (env,) = _instructions(final, "ENV")
    assert env.value[:2] == ("PATH", "/opt/ecapture/bin:$PATH")


def test_build_context_holds_what_the_wheel_is_built_from():
    kept = {line[1:] for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
            if line.startswith("!")}
    assert kept == {"pyproject.toml", "orchestrator"}


def test_container_runs_the_image_entrypoint(container):
    *_, final = _stages()
    (entrypoint,) = _instructions(final, "ENTRYPOINT")
    assert entrypoint.json, "exec form: apply is pid 1 and gets SIGTERM itself"
    assert list(entrypoint.value) == container["command"]


def test_image_tag_is_the_project_version(resources, container):
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert container["image"] == f"ecapture:{version}"
    assert resources["DaemonSet"]["metadata"]["labels"]["app.kubernetes.io/version"] == version


def test_container_runs_what_the_systemd_unit_runs(container):
    (exec_start,) = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
    program, *arguments = shlex.split(exec_start)
    assert os.path.basename(program) == container["command"][0]
    assert arguments[:2] == container["command"][1:]
