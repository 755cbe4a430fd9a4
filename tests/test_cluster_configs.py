"""The cluster configs under cluster/ are valid for the tools that read them and hold no credentials.

Offline, in seconds, with no cloud account:
- cluster/aws.yaml goes through the same preparation and schema check `ray up` runs before it first
  calls AWS (`prepare_config`, then `validate_config` against Ray's ray-schema.json);
- the KubeRay manifests carry what the ray.io/v1 RayCluster and RayJob CRDs require;
- no file under cluster/ holds anything that looks like a key or a token.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
KUBERAY = CLUSTER / "kuberay"
RAY_MANIFESTS = {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}
SERVICE_ACCOUNT = "fersnet-ray"
GPU_INSTANCE = re.compile(r"(g|p)\d")  # EC2 GPU families: g4dn, g5, g6, p4d, p5, ...


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def dockerfile_ray_version() -> str:
    """The Ray version of the image's base, e.g. "2.60.0" from rayproject/ray:2.60.0-py311-gpu."""
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    match = re.search(r"^ARG RAY_IMAGE=rayproject/ray:(\d+\.\d+\.\d+)-", dockerfile, re.MULTILINE)
    assert match, "cluster/Dockerfile should build FROM a versioned rayproject/ray image"
    return match.group(1)


def cluster_spec(name: str) -> dict:
    """The RayCluster spec of a manifest: the spec itself, or the one a RayJob embeds."""
    doc = load(KUBERAY / name)
    return doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]


def gpu_limit(container: dict) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


# --- AWS cluster launcher -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aws_raw() -> dict:
    return load(CLUSTER / "aws.yaml")


@pytest.fixture(scope="module")
def aws(aws_raw) -> dict:
    """aws.yaml as `ray up` sees it after its offline steps (defaults merged, then schema-checked)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(aws_raw))
    validate_config(config)
    return config


def worker_types(config: dict) -> dict[str, dict]:
    return {name: t for name, t in config["available_node_types"].items() if name != config["head_node_type"]}


def test_aws_config_passes_ray_validation(aws):
    assert aws["provider"]["type"] == "aws"


def test_ray_validation_rejects_a_broken_config(aws_raw):
    """The check above can fail: a misspelt node-type field is refused by Ray's schema."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(aws_raw)
    broken["available_node_types"]["head"]["min_worker"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_aws_head_schedules_nothing(aws):
    head = aws["available_node_types"][aws["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "stages should land on workers, not on the head"
    assert head["resources"].get("GPU", 0) == 0
    assert not GPU_INSTANCE.match(head["node_config"]["InstanceType"])
    assert "--dashboard-host=0.0.0.0" in " ".join(aws["head_start_ray_commands"])


def test_aws_has_autoscaling_gpu_workers(aws_raw):
    gpu_types = {name: t for name, t in worker_types(aws_raw).items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no worker type offers a GPU"
    for name, node_type in gpu_types.items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert node_type["max_workers"] >= 1, name
        assert GPU_INSTANCE.match(node_type["node_config"]["InstanceType"]), name
        assert "--gpus all" in node_type["docker"]["worker_run_options"], name


def test_aws_nodes_reach_s3_through_instance_profiles(aws_raw):
    assert "aws_credentials" not in aws_raw["provider"]
    for name, node_type in aws_raw["available_node_types"].items():
        arn = node_type["node_config"]["IamInstanceProfile"]["Arn"]
        assert re.fullmatch(r"arn:aws:iam::[^:]+:instance-profile/[\w+=,.@-]+", arn), name


# --- KubeRay --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CLUSTER.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_is_one_document(path):
    assert isinstance(load(path), dict)


@pytest.mark.parametrize("name, kind", RAY_MANIFESTS.items())
def test_kuberay_manifest_identity(name, kind):
    doc = load(KUBERAY / name)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", doc["metadata"]["name"])  # pod names derive from it


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_kuberay_head_group(name):
    spec = cluster_spec(name)
    assert spec["rayVersion"] == dockerfile_ray_version()
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert all(isinstance(v, str) for v in params.values()), "rayStartParams is map[string]string: quote values"
    assert params["num-cpus"] == "0"
    assert params["dashboard-host"] == "0.0.0.0"
    pod = head["template"]["spec"]
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["containers"] and all(c["name"] and c["image"] for c in pod["containers"])
    assert all(gpu_limit(c) == 0 for c in pod["containers"])


@pytest.mark.parametrize("name", RAY_MANIFESTS)
def test_kuberay_worker_groups(name):
    groups = cluster_spec(name)["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups) > 0
    for group in groups:
        counts = [group["minReplicas"], group["replicas"], group["maxReplicas"]]
        assert all(isinstance(n, int) for n in counts), group["groupName"]
        assert 0 <= counts[0] <= counts[1] <= counts[2] and counts[2] >= 1, group["groupName"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group["groupName"]
        pod = group["template"]["spec"]
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT, group["groupName"]
        assert pod["containers"] and all(c["name"] and c["image"] for c in pod["containers"]), group["groupName"]
    assert any(gpu_limit(c) >= 1 for g in groups for c in g["template"]["spec"]["containers"]), "no GPU worker group"


def test_rayjob_embeds_the_raycluster_spec():
    assert cluster_spec("rayjob.yaml") == cluster_spec("raycluster.yaml"), "change both manifests together"


def test_rayjob_runs_the_pipeline_and_cleans_up():
    spec = load(KUBERAY / "rayjob.yaml")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "fersnet_ray.cli", "run"] or argv[:2] == ["python", "jobs/run.py"]
    assert argv[argv.index("--store") + 1].startswith("s3://")
    assert argv[argv.index("--source") + 1].startswith("s3://")


def test_service_account_uses_irsa():
    doc = load(KUBERAY / "serviceaccount.yaml")
    assert (doc["kind"], doc["metadata"]["name"]) == ("ServiceAccount", SERVICE_ACCOUNT)
    role = doc["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(r"arn:aws:iam::[^:]+:role/[\w+=,.@-]+", role)


def test_every_config_runs_the_same_image(aws_raw):
    images = {aws_raw["docker"]["image"]}
    for name in RAY_MANIFESTS:
        spec = cluster_spec(name)
        pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        images |= {c["image"] for pod in pods for c in pod["spec"]["containers"]}
    assert len(images) == 1, images


# --- No credentials -------------------------------------------------------------------------------

CREDENTIAL_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS key setting": r"(?i)aws_(secret_access_key|access_key_id|session_token)",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "bearer token": r"(?i)bearer\s+[A-Za-z0-9._~+/-]{16,}",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{30,}",
    "secret value": r"(?i)(password|passwd|secret|token|api[_-]?key)[\"']?\s*[:=]\s*[\"']?[A-Za-z0-9/+=_.-]{16,}",
}


def credentials_in(text: str) -> list[str]:
    return [what for what, pattern in CREDENTIAL_PATTERNS.items() if re.search(pattern, text)]


@pytest.mark.parametrize(
    "path", sorted(p for p in CLUSTER.rglob("*") if p.is_file()), ids=lambda p: str(p.relative_to(CLUSTER))
)
def test_no_credentials(path):
    assert credentials_in(path.read_text(errors="replace")) == []


@pytest.mark.parametrize(
    "sample",
    [  # built from pieces so this file itself stays clean
        "key: AKIA" + "ABCDEFGHIJKLMNOP",
        "AWS_SECRET_" + "ACCESS_KEY=abc",
        "-----BEGIN RSA PRIVATE " + "KEY-----",
        "--header 'Authorization: Bearer " + "eyJhbGciOiJIUzI1NiJ9x" + "'",
        "token: " + "0123456789abcdef0123",
    ],
)
def test_credential_scan_catches(sample):
    assert credentials_in(sample)
