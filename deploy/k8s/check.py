#!/usr/bin/env python3
"""Render a kustomization and validate every object against the vendored JSON schemas, offline.

    python3 deploy/k8s/check.py deploy/k8s/overlays/cpu deploy/k8s/overlays/gpu     # render + validate
    python3 deploy/k8s/check.py --print deploy/k8s/overlays/cpu                       # the rendered YAML

Rendering: `kustomize build` when a kustomize binary is on PATH (or `kubectl kustomize`), otherwise the Python
renderer below, which implements the part of kustomize these manifests use and refuses anything else:
`resources` (files and kustomization folders), `components`, `images` (newName/newTag/digest) and `patches`
(strategic-merge patch files: maps merge, `null` deletes a key, lists of containers/env/volumes/ports/... merge by
their Kubernetes merge key, other lists are replaced, `$patch: delete` removes an object). With both available,
`--compare` checks that the two give the same objects.

Validation: as kubeconform -strict does it: each object's schema is looked up by apiVersion and kind in
deploy/k8s/schemas/*.json (Kubernetes' own schemas with additionalProperties false, plus a ServiceMonitor schema);
an unknown field, a wrong type, a missing required field or a kind without a schema is an error.
Needs PyYAML and jsonschema (both in the project's venv); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SCHEMAS = HERE / "schemas"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED = {"apiVersion", "kind", "resources", "components", "images", "patches"}
# patchMergeKey of the list fields these manifests (and common patches to them) touch, from the Kubernetes API
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name", "env": "name",
              "volumes": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
              "ports": "containerPort", "imagePullSecrets": "name", "hostAliases": "ip"}


class CheckError(RuntimeError):
    """A kustomization that cannot be rendered, or objects that do not validate; says which and why."""


# ----------------------------------------------------------------------------- rendering (Python)
def _kustomization(folder: Path) -> tuple[Path, dict]:
    for name in KUSTOMIZATION_FILES:
        if (folder / name).is_file():
            path = folder / name
            doc = yaml.safe_load(path.read_text()) or {}
            unknown = sorted(set(doc) - SUPPORTED)
            if unknown:
                raise CheckError(f"{path}: {', '.join(unknown)} not supported by the Python renderer "
                                 "(install kustomize, or use resources/components/images/patches)")
            return path, doc
    raise CheckError(f"{folder}: no kustomization.yaml")


def _load_objects(path: Path) -> list[dict]:
    try:
        return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        raise CheckError(f"{path}: {exc}") from None


def _ident(obj: dict) -> tuple[str, str, str]:
    return (obj.get("apiVersion", "").split("/")[0] if "/" in obj.get("apiVersion", "") else "",
            obj.get("kind", ""), (obj.get("metadata") or {}).get("name", ""))


def merge(base, patch, key: str | None = None):
    """Strategic merge of `patch` into `base` (a copy is returned)."""
    if isinstance(patch, dict) and isinstance(base, dict):
        out = copy.deepcopy(base)
        for k, v in patch.items():
            if k == "$patch":
                continue
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(patch, list) and isinstance(base, list) and key in MERGE_KEYS:
        # as kustomize orders it: the patch's items first (merged into their base item), then the other base items
        mk = MERGE_KEYS[key]
        by_key = {b.get(mk): b for b in base if isinstance(b, dict)}
        out, used = [], set()
        for item in patch:
            if not isinstance(item, dict) or mk not in item:
                raise CheckError(f"patch list {key!r}: every item needs its merge key {mk!r}")
            used.add(item[mk])
            if item.get("$patch") == "delete":
                continue
            out.append(merge(by_key[item[mk]], item, None) if item[mk] in by_key else copy.deepcopy(item))
        return out + [copy.deepcopy(b) for b in base if not (isinstance(b, dict) and b.get(mk) in used)]
    return copy.deepcopy(patch)


def _apply_patches(objs: list[dict], patches: list, base: Path) -> list[dict]:
    for entry in patches or []:
        if not isinstance(entry, dict) or set(entry) - {"path", "patch"}:
            raise CheckError(f"{base}: patches entries with {sorted(set(entry) - {'path', 'patch'})} are not "
                             "supported by the Python renderer (target selectors, options): install kustomize")
        docs = _load_objects(base / entry["path"]) if "path" in entry else list(yaml.safe_load_all(entry["patch"]))
        for p in docs:
            if isinstance(p, list):
                raise CheckError(f"{base}: JSON 6902 patches need a target; not supported by the Python renderer")
            ident = _ident(p)
            idx = next((i for i, o in enumerate(objs) if _ident(o) == ident), None)
            if idx is None:
                raise CheckError(f"{base}: patch for {ident[1]}/{ident[2]} matches no resource")
            if p.get("$patch") == "delete":
                objs.pop(idx)
            else:
                objs[idx] = merge(objs[idx], p)
    return objs


def _apply_images(objs: list[dict], images: list) -> list[dict]:
    for img in images or []:
        name = img["name"]
        for obj in objs:
            spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                ref = c.get("image", "")
                repo = ref.split("@")[0].rsplit(":", 1)[0] if ":" in ref.split("/")[-1] else ref.split("@")[0]
                if repo != name:
                    continue
                new = img.get("newName", repo)
                if img.get("digest"):
                    c["image"] = f"{new}@{img['digest']}"
                elif img.get("newTag"):
                    c["image"] = f"{new}:{img['newTag']}"
                else:
                    tail = ref[len(repo):]
                    c["image"] = f"{new}{tail}"
    return objs


def render_python(folder: Path, _seen: tuple = ()) -> list[dict]:
    folder = Path(folder).resolve()
    if folder in _seen:
        raise CheckError(f"{folder}: kustomization cycle")
    path, doc = _kustomization(folder)
    objs: list[dict] = []
    for res in doc.get("resources") or []:
        target = folder / res
        objs += render_python(target, (*_seen, folder)) if target.is_dir() else _load_objects(target)
    for comp in doc.get("components") or []:
        _, cdoc = _kustomization(folder / comp)
        if cdoc.get("kind") != "Component":
            raise CheckError(f"{folder / comp}: not a kustomize Component")
        objs += [o for r in cdoc.get("resources") or [] for o in _load_objects(folder / comp / r)]
        objs = _apply_patches(objs, cdoc.get("patches"), (folder / comp).resolve())
        objs = _apply_images(objs, cdoc.get("images"))
    objs = _apply_patches(objs, doc.get("patches"), folder)
    objs = _apply_images(objs, doc.get("images"))
    seen: set = set()
    for o in objs:
        if _ident(o) in seen:
            raise CheckError(f"{path}: {o.get('kind')}/{_ident(o)[2]} is defined twice")
        seen.add(_ident(o))
    return objs


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render_kustomize(folder: Path) -> list[dict]:
    cmd = kustomize_command()
    if cmd is None:
        raise CheckError("neither kustomize nor kubectl is on PATH")
    result = subprocess.run([*cmd, str(folder)], capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckError(f"{' '.join(cmd)} {folder} failed:\n{result.stderr[-2000:]}")
    return [d for d in yaml.safe_load_all(result.stdout) if d is not None]


# ----------------------------------------------------------------------------- validation
def load_schemas(folder: Path = SCHEMAS) -> dict:
    """{"apiVersion/Kind": schema} from every vendored bundle (each bundle: "kinds" -> a ref into its $defs)."""
    out = {}
    for path in sorted(folder.glob("*.json")):
        bundle = json.loads(path.read_text())
        for key, ref in bundle.get("kinds", {}).items():
            out[key] = {"$schema": bundle.get("$schema"), "$defs": bundle["$defs"], "$ref": ref, "file": path.name}
    if not out:
        raise CheckError(f"{folder}: no schemas")
    return out


def validate(objs: list[dict], schemas: dict | None = None) -> list[str]:
    """Errors, one line each, as 'Kind/name: path: message'; empty when every object validates."""
    import jsonschema

    schemas = schemas or load_schemas()
    errors = []
    for obj in objs:
        kind, name = obj.get("kind", "?"), (obj.get("metadata") or {}).get("name", "?")
        key = f"{obj.get('apiVersion')}/{kind}"
        if key not in schemas:
            errors.append(f"{kind}/{name}: no schema for {key} (deploy/k8s/schemas)")
            continue
        schema = {k: v for k, v in schemas[key].items() if k != "file"}
        validator = jsonschema.Draft202012Validator(schema)
        for err in sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path)):
            where = ".".join(str(p) for p in err.absolute_path) or "(object)"
            errors.append(f"{kind}/{name}: {where}: {err.message[:300]}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path, help="kustomization folders (overlays)")
    parser.add_argument("--renderer", choices=("auto", "kustomize", "python"), default="auto")
    parser.add_argument("--compare", action="store_true", help="render with both and require the same objects")
    parser.add_argument("--print", action="store_true", help="print the rendered YAML instead of a summary")
    args = parser.parse_args(argv)
    failed = False
    schemas = load_schemas()
    for folder in args.folders:
        try:
            use = args.renderer if args.renderer != "auto" else ("kustomize" if kustomize_command() else "python")
            objs = render_kustomize(folder) if use == "kustomize" else render_python(folder)
            if args.compare:
                a, b = render_kustomize(folder), render_python(folder)
                key = lambda o: _ident(o)  # noqa: E731
                if sorted(a, key=key) != sorted(b, key=key):
                    raise CheckError(f"{folder}: kustomize and the Python renderer disagree")
        except CheckError as exc:
            print(f"{folder}: error: {exc}", file=sys.stderr)
            failed = True
            continue
        if args.print:
            print(yaml.safe_dump_all(objs, sort_keys=False), end="")
            continue
        errors = validate(objs, schemas)
        for e in errors:
            print(f"{folder}: {e}", file=sys.stderr)
        kinds = ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
        verdict = f"INVALID: {len(errors)} error(s)" if errors else "valid"
        print(f"{folder}: {len(objs)} objects ({use}), {verdict}: {kinds}")
        failed |= bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
