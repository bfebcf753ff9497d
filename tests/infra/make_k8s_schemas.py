"""Writes tests/infra/data/k8s_schemas.json, the core Kubernetes schemas the infra/ manifests are checked
against (not a test; run by hand when a manifest uses a new kind or Kubernetes moves on):

    pip download --no-deps kubernetes-validate==1.37.0 && unzip -q kubernetes_validate-1.37.0-py3-none-any.whl
    python tests/infra/make_k8s_schemas.py kubernetes_validate/kubernetes-json-schema v1.25.0 v1.37.0

kubernetes-validate (Apache-2.0) ships Kubernetes' own OpenAPI definitions as JSON Schema (draft 2020-12),
in a "strict" variant that refuses unknown fields as `kubectl apply --validate=strict` does; it is 22 MB
for 13 Kubernetes versions, so only this extract is kept: for the oldest and newest version we name, the
definitions reachable from the ROOTS below, minus `description` texts (~0.2 MB instead of ~2 MB each).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "k8s_schemas.json"
# Kinds infra/ creates, plus PodTemplateSpec: KubeRay's pod templates (head, workers, submitter) are core
# Pod templates, which KubeRay's CRD leaves unchecked (tests/infra/make_kuberay_schemas.py).
ROOTS = {
    "batch/v1/CronJob": "io.k8s.api.batch.v1.CronJob",
    "batch/v1/Job": "io.k8s.api.batch.v1.Job",
    "v1/Secret": "io.k8s.api.core.v1.Secret",
    "v1/ConfigMap": "io.k8s.api.core.v1.ConfigMap",
    "v1/Service": "io.k8s.api.core.v1.Service",
    "v1/ServiceAccount": "io.k8s.api.core.v1.ServiceAccount",
    "v1/PersistentVolumeClaim": "io.k8s.api.core.v1.PersistentVolumeClaim",
    "PodTemplateSpec": "io.k8s.api.core.v1.PodTemplateSpec",
}
PREFIX = "#/$defs/"


def refs(node) -> set[str]:
    if isinstance(node, dict):
        out = {node["$ref"].removeprefix(PREFIX)} if isinstance(node.get("$ref"), str) else set()
        for v in node.values():
            out |= refs(v)
        return out
    if isinstance(node, list):
        return set().union(*(refs(x) for x in node)) if node else set()
    return set()


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(x) for x in node]
    return node


def extract(defs: dict) -> dict:
    keep, todo = {}, list(ROOTS.values())
    while todo:
        name = todo.pop()
        if name not in keep:
            keep[name] = strip(defs[name])
            todo += sorted(refs(keep[name]) - set(keep))
    return dict(sorted(keep.items()))


def main(schema_dir: str, *versions: str) -> None:
    out = {"source": "kubernetes-validate 1.37.0, <version>-local-strict/_definitions.json", "roots": ROOTS,
           "versions": {}}
    for v in versions:
        data = json.loads((Path(schema_dir) / f"{v}-local-strict" / "_definitions.json").read_text())
        assert data["$schema"].endswith("2020-12/schema"), data["$schema"]
        out["versions"][v] = extract(data["$defs"])
    OUT.write_text(json.dumps(out, separators=(",", ":"), sort_keys=True) + "\n")
    print(f"{OUT}: {OUT.stat().st_size} bytes, {[len(d) for d in out['versions'].values()]} definitions")


if __name__ == "__main__":
    main(*sys.argv[1:])
