"""Writes tests/infra/data/kuberay_crd_schemas.json from KubeRay's CRD files (not a test; run by hand when
KubeRay's CRDs move on):

    git -C kuberay show v1.7.0:helm-chart/kuberay-operator/crds/ray.io_rayclusters.yaml > rayclusters.yaml
    git -C kuberay show v1.7.0:helm-chart/kuberay-operator/crds/ray.io_rayjobs.yaml > rayjobs.yaml
    python tests/infra/make_kuberay_schemas.py v1.7.0 rayclusters.yaml rayjobs.yaml

Keeps each CRD's served `v1` openAPIV3Schema, minus `description` texts, and with every embedded Kubernetes
PodTemplateSpec (`template`, `submitterPodTemplate`: ~1 MB each, the core Pod schema) reduced to an object
of any shape: the test checks the pod templates' own invariants itself. ~60 KB instead of ~2.3 MB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

OUT = Path(__file__).resolve().parent / "data" / "kuberay_crd_schemas.json"


def is_pod_template(schema: dict) -> bool:
    props = schema.get("properties", {})
    return set(props) == {"metadata", "spec"} and "containers" in props["spec"].get("properties", {})


def shrink(node):
    if isinstance(node, dict):
        if is_pod_template(node):
            return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        return {k: shrink(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [shrink(x) for x in node]
    return node


def main(version: str, *files: str) -> None:
    out = {"kuberay_version": version, "schemas": {}}
    for f in files:
        crd = yaml.safe_load(Path(f).read_text())
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        key = f"{crd['spec']['group']}/{v1['name']}/{crd['spec']['names']['kind']}"
        out["schemas"][key] = shrink(v1["schema"]["openAPIV3Schema"])
    OUT.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:])
