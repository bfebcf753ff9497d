"""`infra/` as deployable files (issue 17, done-when 6), checked without a cluster:

- every YAML in infra/ parses (`yaml.safe_load_all`); Kubernetes documents have apiVersion, kind and a name;
  KubeRay kinds are `ray.io/v1` and validate against KubeRay's own v1 CRD schemas (tests/infra/data/, made
  by make_kuberay_schemas.py from KubeRay v1.7.0), unknown fields refused as `kubectl apply` does;
- every core Kubernetes object (CronJob, Secret, ...) and every Pod template, the ones inside KubeRay objects
  included (their CRD leaves them unchecked), validates against Kubernetes' own OpenAPI schemas for the
  oldest and newest Kubernetes we name (tests/infra/data/k8s_schemas.json, made by make_k8s_schemas.py),
  strict: unknown fields refused as `kubectl apply --validate=strict` does;
- every Secret (and key), ConfigMap and RayCluster a manifest names is created by a manifest in infra/;
- Ray pods (head and workers) mount a memory-backed /dev/shm, get the AWS secret (the driver runs on the head)
  and the Ray auth token; every `ray job submit` pod gets the token too;
- the CronJob submits to the RayCluster's head Service and runs a sweep config that exists in the image and
  loads with the sweep parser; the RayJob's entrypoint parses with caption.py's own parser;
- the Dockerfile uses no BuildKit-only syntax and installs as root before switching to a non-root user;
- the cluster-launcher YAML passes Ray's own config validation (`prepare_config` + `validate_config`, what
  `ray up` runs), has a docker section and syncs only to paths its users own.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SCHEMAS = json.loads((Path(__file__).parent / "data" / "kuberay_crd_schemas.json").read_text())["schemas"]
K8S = json.loads((Path(__file__).parent / "data" / "k8s_schemas.json").read_text())
KUBERAY_KINDS = ("RayCluster", "RayJob", "RayService", "RayCronJob")
APP = "/app"  # the Dockerfile's WORKDIR: the repo's root inside the image


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def k8s_docs() -> list[dict]:
    return [d for p in yaml_files() for d in yaml.safe_load_all(p.read_text()) if isinstance(d, dict) and "kind" in d]


def by_kind(kind: str) -> list[dict]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def strict(schema):
    """OpenAPI structural schema -> JSON schema that refuses unknown fields (kubectl's strict validation)."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [strict(x) for x in schema]
    return schema


def crd_errors(doc: dict) -> list[str]:
    group_version = doc["apiVersion"]
    schema = strict(SCHEMAS[f"{group_version}/{doc['kind']}"])
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@functools.cache
def k8s_validator(version: str, root: str) -> jsonschema.Draft202012Validator:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": K8S["versions"][version],
              "$ref": f"#/$defs/{K8S['roots'][root]}"}
    return jsonschema.Draft202012Validator(schema)


def k8s_errors(doc: dict, root: str | None = None) -> list[str]:
    """Kubernetes' schema errors of `doc` (a core object by its apiVersion/kind, or `root`) in every version."""
    root = root or f"{doc['apiVersion']}/{doc['kind']}"
    assert root in K8S["roots"], f"no Kubernetes schema for {root}: add it to make_k8s_schemas.ROOTS and re-run it"
    return [f"{v} {'/'.join(map(str, e.absolute_path))}: {e.message}" for v in K8S["versions"]
            for e in k8s_validator(v, root).iter_errors(doc)]


def ray_pod_templates() -> list[tuple[str, str, dict]]:
    """(where, role, pod template) for every head and worker group of every RayCluster spec."""
    out = []
    for doc in by_kind("RayCluster") + by_kind("RayJob"):
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        where = f"{doc['kind']} {doc['metadata']['name']}"
        out.append((where, "head", spec["headGroupSpec"]["template"]))
        out += [(where, f"worker {g['groupName']}", g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def submitter_pod_templates() -> list[tuple[str, dict]]:
    out = [(f"RayJob {d['metadata']['name']}", d["spec"].get("submitterPodTemplate")) for d in by_kind("RayJob")]
    out += [(f"CronJob {d['metadata']['name']}", d["spec"]["jobTemplate"]["spec"]["template"])
            for d in by_kind("CronJob")]
    return out


def all_pod_templates() -> list[tuple[str, dict]]:
    return [(f"{w} {r}", t) for w, r, t in ray_pod_templates()] + [s for s in submitter_pod_templates() if s[1]]


def secret_keys() -> dict[str, set[str]]:
    return {d["metadata"]["name"]: set(d.get("data") or {}) | set(d.get("stringData") or {})
            for d in by_kind("Secret")}


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env") or []}


def has_token_env(container: dict) -> bool:
    env = env_of(container)
    mode = env.get("RAY_AUTH_MODE", {}).get("value")
    ref = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return mode == "token" and ref.get("name") in secret_keys() and ref.get("key") in secret_keys()[ref["name"]]


def test_every_yaml_parses_and_names_what_it_is():
    files = yaml_files()
    assert {p.name for p in files} >= {"raycluster.yaml", "rayjob.yaml", "cronjob.yaml", "secrets.yaml",
                                       "cluster.yaml", "nightly.yaml"}
    for p in files:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
        assert docs, f"{p} is empty"
        for d in docs:
            assert isinstance(d, dict), p
            if "kind" in d:
                assert d.get("apiVersion") and d.get("metadata", {}).get("name"), (p, d.get("kind"))
                if d["kind"] in KUBERAY_KINDS:
                    assert d["apiVersion"] == "ray.io/v1", (p, d["kind"], d["apiVersion"])
    kinds = {d["kind"] for d in k8s_docs()}
    assert kinds >= {"RayCluster", "RayJob", "CronJob", "Secret"}, kinds
    assert {d["apiVersion"] for d in by_kind("CronJob")} == {"batch/v1"}
    assert {d["apiVersion"] for d in by_kind("Secret")} == {"v1"}


def test_kuberay_manifests_match_the_crd_schemas():
    docs = [d for d in k8s_docs() if d["kind"] in KUBERAY_KINDS]
    assert docs
    for d in docs:
        assert not crd_errors(d), (d["kind"], d["metadata"]["name"], crd_errors(d))


def test_crd_schema_check_refuses_what_kubectl_would():
    (cluster,) = by_kind("RayCluster")
    typo = copy.deepcopy(cluster)
    typo["spec"]["authOption"] = typo["spec"].pop("authOptions")
    assert any("authOption" in e for e in crd_errors(typo))
    bad_mode = copy.deepcopy(cluster)
    bad_mode["spec"]["authOptions"]["mode"] = "tokens"
    assert any("authOptions/mode" in e for e in crd_errors(bad_mode))
    (job,) = by_kind("RayJob")
    no_head = copy.deepcopy(job)
    del no_head["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert any("headGroupSpec" in e for e in crd_errors(no_head))


def test_core_objects_and_every_pod_template_match_the_kubernetes_schemas():
    core = [d for d in k8s_docs() if d["kind"] not in KUBERAY_KINDS]
    assert {d["kind"] for d in core} >= {"CronJob", "Secret"}
    for d in core:
        assert not k8s_errors(d), (d["kind"], d["metadata"]["name"], k8s_errors(d))
    templates = all_pod_templates()
    assert len(templates) >= 5  # RayCluster head + worker, RayJob head + worker + submitter, CronJob's pod
    for where, pod in templates:
        assert not k8s_errors(pod, "PodTemplateSpec"), (where, k8s_errors(pod, "PodTemplateSpec"))


def test_kubernetes_schema_check_refuses_what_kubectl_would():
    assert set(K8S["versions"]) == {"v1.25.0", "v1.37.0"}
    (cron,) = by_kind("CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]
    typo = copy.deepcopy(cron)
    typo["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"secretref": {}}]
    assert any("secretref" in e for e in k8s_errors(typo))
    no_schedule = copy.deepcopy(cron)
    del no_schedule["spec"]["schedule"]
    assert any("'schedule' is a required property" in e for e in k8s_errors(no_schedule))
    bad_type = copy.deepcopy(cron)
    bad_type["spec"]["successfulJobsHistoryLimit"] = "three"
    assert any("successfulJobsHistoryLimit" in e for e in k8s_errors(bad_type))
    (_, head) = all_pod_templates()[0]
    shm = copy.deepcopy(head)
    shm["spec"]["volumes"].append({"name": "x", "emptyDir": {"medium": "Memory", "sizeLimit": [1]}})
    assert any("sizeLimit" in e for e in k8s_errors(shm, "PodTemplateSpec"))
    no_image_name = copy.deepcopy(pod)
    del no_image_name["spec"]["containers"][0]["name"]
    assert any("'name' is a required property" in e for e in k8s_errors(no_image_name, "PodTemplateSpec"))
    secret = copy.deepcopy(by_kind("Secret")[0])
    secret["stringdata"] = secret.pop("stringData", secret.pop("data", {}))
    assert any("stringdata" in e for e in k8s_errors(secret))


def test_ray_versions_agree_with_the_image_and_support_token_auth():
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", (INFRA / "Dockerfile").read_text(), re.M)
    assert base, "the Dockerfile's base is not a rayproject/ray:<version> image"
    specs = [d["spec"] for d in by_kind("RayCluster")] + [d["spec"]["rayClusterSpec"] for d in by_kind("RayJob")]
    for spec in specs:
        assert spec["rayVersion"] == base.group(1)
        assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52)  # KubeRay's minimum for token auth
        auth = spec["authOptions"]
        assert auth["mode"] == "token" and "auth_token" in secret_keys()[auth["secretName"]]


def test_every_referenced_secret_configmap_and_volume_exists():
    secrets = secret_keys()
    config_maps = {d["metadata"]["name"] for d in by_kind("ConfigMap")}
    for where, pod in all_pod_templates():
        spec = pod["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for v in volumes.values():
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, (where, v)
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, (where, v)
        for c in spec["containers"] + (spec.get("initContainers") or []):
            assert c.get("name") and c.get("image"), where
            for src in c.get("envFrom") or []:
                if "secretRef" in src:
                    assert src["secretRef"]["name"] in secrets, (where, c["name"], src)
                if "configMapRef" in src:
                    assert src["configMapRef"]["name"] in config_maps, (where, c["name"], src)
            for e in c.get("env") or []:
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets.get(ref["name"], ()), (where, c["name"], e)
                ref = e.get("valueFrom", {}).get("configMapKeyRef")
                if ref:
                    assert ref["name"] in config_maps, (where, c["name"], e)
            for m in c.get("volumeMounts") or []:
                assert m["name"] in volumes, (where, c["name"], m)


def test_ray_pods_have_shm_aws_credentials_and_the_token():
    templates = ray_pod_templates()
    assert {role for _, role, _ in templates} >= {"head", "worker gpu"}
    for where, role, pod in templates:
        spec = pod["spec"]
        ray_container = spec["containers"][0]  # KubeRay's Ray container is the first
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        shm = [m for m in ray_container.get("volumeMounts") or [] if m["mountPath"] == "/dev/shm"]
        assert shm, f"{where} {role}: no /dev/shm volume (a pod's default is 64 MiB)"
        assert volumes[shm[0]["name"]].get("emptyDir", {}).get("medium") == "Memory", (where, role)
        # The head runs the driver, which reads the model and writes the output: it needs S3 as much as workers.
        assert {"secretRef": {"name": "aws-credentials"}} in (ray_container.get("envFrom") or []), (where, role)
        assert has_token_env(ray_container), f"{where} {role}: no RAY_AUTH_MODE=token + RAY_AUTH_TOKEN from a Secret"


def test_every_submitter_carries_the_token():
    submitters = submitter_pod_templates()
    assert len(submitters) == len(by_kind("RayJob")) + len(by_kind("CronJob")) >= 2
    for where, pod in submitters:
        assert pod, f"{where}: no submitter pod template (KubeRay's default submitter has no token)"
        (container,) = pod["spec"]["containers"]
        assert has_token_env(container), f"{where}: `ray job submit` without the cluster's token"


def app_path(path: str) -> Path:
    """A path inside the image -> the repo file it was copied from."""
    assert path.startswith(APP + "/"), f"{path}: not under the image's {APP}"
    return ROOT / path[len(APP) + 1:]


def test_cronjob_targets_a_raycluster_in_infra_and_runs_a_sweep_that_loads():
    from pipeline.eval.sweep import load_sweep
    from pipeline.job_config import JobConfig

    clusters = {d["metadata"]["name"] for d in by_kind("RayCluster")}
    (cron,) = by_kind("CronJob")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    cmd = container["command"] + (container.get("args") or [])
    assert cmd[:3] == ["ray", "job", "submit"]
    address = cmd[cmd.index("--address") + 1]
    host = re.fullmatch(r"http://([a-z0-9-]+)-head-svc(?:\.[a-z0-9.-]+)?:8265", address)
    assert host and host.group(1) in clusters, f"{address}: no RayCluster in infra/ serves it ({clusters})"
    entry = cmd[cmd.index("--") + 1:]
    assert entry[0] == "python" and app_path(entry[1]) == ROOT / "jobs" / "eval.py"
    from jobs.eval import parser as eval_parser

    args = eval_parser().parse_args(entry[2:])
    sweep_file = app_path(str(args.sweep))
    assert sweep_file.is_file(), f"{args.sweep}: the image has no such file"
    copied = re.findall(r"^COPY\s+(\S+)\s+(\S+)", (INFRA / "Dockerfile").read_text(), re.M)
    assert any(sweep_file.is_relative_to(ROOT / src) for src, _ in copied), "the sweep config is not in the image"
    sweep = load_sweep(sweep_file)
    assert sweep.models and sweep.tasks
    fields = {f for f in JobConfig.__dataclass_fields__}
    assert set(sweep.job) <= fields and all(set(m) <= fields for m in sweep.models.values())


def test_rayjob_entrypoint_is_a_valid_caption_command():
    from jobs.caption import parser as caption_parser

    for job in by_kind("RayJob"):
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[0] == "python" and app_path(argv[1]).is_file(), argv[:2]
        assert app_path(argv[1]) == ROOT / "jobs" / "caption.py"
        args = caption_parser().parse_args(argv[2:])  # argparse exits on an unknown flag
        assert args.model and args.input and args.output


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (INFRA / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_dockerfile_builds_with_a_plain_builder_and_installs_as_root():
    text = (INFRA / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I), "a BuildKit frontend directive"
    steps = dockerfile_instructions()
    for op, rest in steps:
        assert not re.search(r"--(mount|link|chmod|parents|exclude|security|network)\b", rest), (op, rest)
        assert "<<" not in rest, f"heredoc ({op} {rest}) needs BuildKit"
    user, installed_as = None, None
    for op, rest in steps:
        if op == "USER":
            user = rest.strip()
        if op == "RUN" and "pip install" in rest:
            installed_as = user
        if op == "COPY":
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repo"
    assert installed_as in ("root", "0"), f"pip install runs as {installed_as!r}, not root"
    assert user not in (None, "root", "0"), f"the image ends as {user!r}"
    workdir = [rest.strip() for op, rest in steps if op == "WORKDIR"]
    assert workdir[-1] == APP
    copied = {rest.split()[0] for op, rest in steps if op == "COPY"}
    assert {"models", "ops", "pipeline", "jobs", "pyproject.toml"} <= copied  # what pyproject's packages need


def launcher_config() -> dict:
    return yaml.safe_load((INFRA / "cluster.yaml").read_text())


def ray_validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))  # what `ray up` runs before anything else


def test_cluster_launcher_yaml_passes_rays_validation_and_runs_in_docker():
    config = launcher_config()
    ray_validate(config)
    assert "docker" in config, "no docker section: the nodes would run the AMI's Python, not the image"
    assert config["docker"]["image"] and config["docker"]["container_name"]
    assert config["auth"]["ssh_user"]
    assert any("RAY_AUTH_MODE=token" in o for o in config["docker"].get("run_options", []))
    mounts = config["file_mounts"]
    assert "~/.ray/auth_token" in mounts  # where Ray reads the token on every node
    for target, source in mounts.items():
        # In Docker, targets are inside the container (~ is the image user's home); never a root-owned path.
        assert target.startswith(("~/", "/tmp/")), f"file_mounts target {target}: not a path its user owns"
        assert source.startswith("~/") or (ROOT / source).exists(), source
    for cmd in config.get("setup_commands", []):
        assert "/home/" not in cmd and "sudo" not in cmd, cmd


def test_ray_validation_refuses_a_broken_launcher_config():
    broken = launcher_config()
    broken["docker"]["pull_before_run"] = "yes"  # a boolean in Ray's schema
    with pytest.raises(jsonschema.ValidationError, match="pull_before_run|'yes'"):
        ray_validate(broken)
    typo = launcher_config()
    typo["setup_command"] = typo.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError, match="setup_command"):
        ray_validate(typo)
