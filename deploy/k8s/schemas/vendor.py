#!/usr/bin/env python3
"""Refresh the vendored Kubernetes JSON schemas (run by hand, never at test time).

Source: the strict ("-local-strict": additionalProperties false, as kubeconform's -strict) schemas that the PyPI
package kubernetes-validate ships, generated from the Kubernetes OpenAPI document (Apache-2.0). Only the kinds
the manifests use are kept, with the definitions they reach and without descriptions, in one file:

    pip download --no-deps kubernetes-validate==1.37.0 -d /tmp/kv && unzip -q /tmp/kv/*.whl -d /tmp/kv
    python3 deploy/k8s/schemas/vendor.py /tmp/kv/kubernetes_validate/kubernetes-json-schema/v1.34.0-local-strict
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = {  # apiVersion, kind -> the package's file name
    ("v1", "ServiceAccount"): "serviceaccount-v1.json",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaim-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("v1", "Secret"): "secret-v1.json",
    ("v1", "ConfigMap"): "configmap-v1.json",
    ("apps/v1", "Deployment"): "deployment-apps-v1.json",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "horizontalpodautoscaler-autoscaling-v2.json",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudget-policy-v1.json",
}
PREFIX = "/api/_definitions.json#/$defs/"


def _clean(node, refs: set[str]):
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("description", "$id", "$schema"):
                continue
            if key == "$ref" and isinstance(value, str):
                name = next((value[len(p):] for p in (PREFIX, "#/$defs/") if value.startswith(p)), None)
                if name is None:
                    raise SystemExit(f"unexpected $ref {value}")
                refs.add(name)
                out[key] = "#/$defs/" + name
            else:
                out[key] = _clean(value, refs)
        return out
    if isinstance(node, list):
        return [_clean(v, refs) for v in node]
    return node


def main(source: str) -> int:
    src = Path(source)
    version = src.name.split("-")[0]
    defs_all = json.loads((src / "_definitions.json").read_text())["$defs"]
    kinds, defs, todo = {}, {}, set()
    for (api, kind), name in KINDS.items():
        key = f"{api}/{kind}"
        dkey = "kind:" + key.replace("/", ".")  # no "/" in a $defs key: it would split the JSON pointer
        defs[dkey] = _clean(json.loads((src / name).read_text()), todo)
        kinds[key] = f"#/$defs/{dkey}"
    while todo:
        name = todo.pop()
        if name not in defs:
            defs[name] = _clean(defs_all[name], todo)
    out = Path(__file__).parent / f"kubernetes-{version}-strict.json"
    doc = {"$schema": "https://json-schema.org/draft/2020-12/schema",
           "source": f"kubernetes-validate {src.name} (PyPI), descriptions removed; deploy/k8s/schemas/vendor.py",
           "kubernetes": version, "kinds": kinds, "$defs": dict(sorted(defs.items()))}
    out.write_text(json.dumps(doc, separators=(",", ":"), sort_keys=False) + "\n")
    print(f"{out}: {len(kinds)} kinds, {len(defs)} definitions, {out.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    sys.exit(main(sys.argv[1]))
