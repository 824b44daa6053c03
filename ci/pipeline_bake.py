"""Resolve the targets of ci/docker-bake.json: what to build, from which Dockerfile, for which platforms, tagged how.

With buildx, `docker buildx bake --print` is the authority and is used. Runners without buildx
(Debian's docker.io 20.10 builds with BuildKit but has no bake) get the same answer from this
module's reader of the JSON bake file: `variable` (default, overridden by an environment variable
of the same name, as bake does), `group`, `target` with `inherits`, `matrix` + `name`, and
`${name}` interpolation in strings. Anything else (functions, expressions) is refused with the
reason, never guessed at: then use buildx. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

MAP_MERGED = ("args", "labels")  # inherits merges these key by key; every other attribute is replaced


class BakeError(ValueError):
    """The bake file cannot be read or resolved; the message says where and why."""


@dataclass
class Target:
    name: str
    context: str = "."
    dockerfile: str = "Dockerfile"
    platforms: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    target: str | None = None  # the Dockerfile stage

    @property
    def dockerfile_path(self) -> str:
        """The Dockerfile relative to the working directory (bake takes it relative to the context)."""
        return os.path.normpath(os.path.join(self.context, self.dockerfile))


_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")


def _evaluate(value, scope: dict[str, object]):
    """Substitute ${name} in every string (`$${` stays a literal `${`), as bake does."""
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            if match.group() == "$${":
                return "${"
            name = match.group(1).strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise BakeError(f"only ${{name}} interpolation is supported here, not {match.group()} "
                                "(use docker buildx bake --print)")
            if name not in scope:
                raise BakeError(f"unknown variable ${{{name}}}")
            return str(scope[name])
        return _REF.sub(substitute, value)
    if isinstance(value, list):
        return [_evaluate(v, scope) for v in value]
    if isinstance(value, dict):
        return {k: _evaluate(v, scope) for k, v in value.items()}
    return value


@dataclass
class _Definitions:
    variables: dict[str, object]
    groups: dict[str, list]
    targets: dict[str, dict]  # block name -> raw attributes


def _from_json(text: str) -> _Definitions:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BakeError(f"not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise BakeError("the bake file must be a JSON object")
    unknown = set(data) - {"variable", "group", "target"}
    if unknown:
        raise BakeError(f"unsupported top-level key(s): {', '.join(sorted(unknown))}")
    defs = _Definitions({}, {}, {})
    for kind in ("variable", "group", "target"):
        for name, attrs in (data.get(kind) or {}).items():
            _define(defs, kind, name, attrs)
    return defs


def _define(defs: _Definitions, kind: str, name: str, attrs: dict) -> None:
    if kind == "variable":
        defs.variables[name] = attrs.get("default", "")
    elif kind == "group":
        defs.groups[name] = attrs.get("targets", [])
    elif kind == "target":
        defs.targets[name] = attrs


def _scope(defs: _Definitions, env: dict[str, str]) -> dict[str, object]:
    scope: dict[str, object] = {}
    for name, default in defs.variables.items():
        scope[name] = env[name] if name in env else _evaluate(default, scope)
    return scope


def _merged_attrs(defs: _Definitions, name: str, seen: tuple[str, ...] = ()) -> dict:
    """A block's attributes over those of the blocks it inherits from (maps merged key by key)."""
    if name in seen:
        raise BakeError(f"inherits loop: {' -> '.join((*seen, name))}")
    if name not in defs.targets:
        raise BakeError(f"target {seen[-1]} inherits from unknown target {name}")
    attrs = defs.targets[name]
    merged: dict = {}
    for parent in attrs.get("inherits", []):
        if not isinstance(parent, str):
            raise BakeError(f"target {name}: inherits must list target names")
        for key, value in _merged_attrs(defs, parent, (*seen, name)).items():
            merged[key] = {**merged.get(key, {}), **value} if key in MAP_MERGED else value
    for key, value in attrs.items():
        if key == "inherits":
            continue
        merged[key] = {**merged.get(key, {}), **value} if key in MAP_MERGED and isinstance(value, dict) else value
    return merged


def _expand(defs: _Definitions, block: str, scope: dict[str, object]) -> list[Target]:
    """One Target per matrix combination (one when the block has no matrix)."""
    attrs = _merged_attrs(defs, block)
    matrix = _evaluate(attrs.pop("matrix", None), scope) or {}
    if not isinstance(matrix, dict) or not all(isinstance(v, list) for v in matrix.values()):
        raise BakeError(f"target {block}: matrix must map names to lists")
    name_expr = attrs.pop("name", None)
    if matrix and name_expr is None:
        raise BakeError(f"target {block}: a matrix target needs a name expression")
    targets = []
    for combo in itertools.product(*matrix.values()) if matrix else [()]:
        local = {**scope, **dict(zip(matrix, combo))}
        name = _evaluate(name_expr, local) if name_expr is not None else block
        values = _evaluate(attrs, local)
        targets.append(_target(name, values))
    return targets


KNOWN = {"context", "dockerfile", "platforms", "tags", "args", "labels", "target"}
IGNORED = {"output", "cache-from", "cache-to", "pull", "no-cache", "secret", "ssh", "attest", "description",
           "contexts", "network", "shm-size", "ulimits", "annotations", "call", "entitlements", "no-cache-filter"}


def _target(name: str, values: dict) -> Target:
    unknown = set(values) - KNOWN - IGNORED
    if unknown:
        raise BakeError(f"target {name}: attribute(s) {', '.join(sorted(unknown))} not understood here "
                        "(use docker buildx bake --print)")
    strings = {k: {a: str(b) for a, b in values.get(k, {}).items()} for k in ("args", "labels")}
    return Target(name=name, context=values.get("context", "."), dockerfile=values.get("dockerfile", "Dockerfile"),
                  platforms=list(values.get("platforms", [])), tags=list(values.get("tags", [])),
                  args=strings["args"], labels=strings["labels"], target=values.get("target"))


def read_bake_file(path: Path, names: list[str] | None = None, env: dict[str, str] | None = None) -> list[Target]:
    """Resolve `names` (targets, groups or matrix blocks; default: the group "default") without buildx."""
    env = dict(os.environ if env is None else env)
    text = Path(path).read_text(encoding="utf-8")
    try:
        defs = _from_json(text)
        scope = _scope(defs, env)
        expanded = {block: _expand(defs, block, scope) for block in defs.targets}
    except BakeError as error:
        raise BakeError(f"{path}: {error}") from None
    by_name = {t.name: t for targets in expanded.values() for t in targets}
    result: dict[str, Target] = {}

    def add(name: str, trail: tuple[str, ...]) -> None:
        if name in trail:
            raise BakeError(f"{path}: group loop: {' -> '.join((*trail, name))}")
        if name in defs.groups:
            for member in _evaluate(defs.groups[name], scope):
                add(member, (*trail, name))
        elif name in by_name:
            result.setdefault(name, by_name[name])
        elif name in expanded:  # a matrix block named directly
            for target in expanded[name]:
                result.setdefault(target.name, target)
        else:
            known = sorted({*defs.groups, *by_name})
            raise BakeError(f"{path}: unknown target {name!r}; known: {', '.join(known)}")

    for name in names or ["default"]:
        add(name, ())
    return list(result.values())


def buildx_available(docker: str = "docker") -> bool:
    if not shutil.which(docker):
        return False
    probe = subprocess.run([docker, "buildx", "version"], capture_output=True, text=True)
    return probe.returncode == 0


def print_with_buildx(path: Path, names: list[str] | None = None, docker: str = "docker") -> list[Target]:
    """`docker buildx bake --print`: the authoritative resolution where buildx exists."""
    result = subprocess.run([docker, "buildx", "bake", "-f", str(path), "--print", *(names or [])],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BakeError(f"docker buildx bake --print failed: {result.stderr.strip()}")
    printed = json.loads(result.stdout)
    return [_target(name, {k: v for k, v in spec.items() if k in KNOWN})
            for name, spec in printed.get("target", {}).items()]


def resolve(path: Path, names: list[str] | None = None, use_buildx: bool | None = None,
            docker: str = "docker") -> list[Target]:
    """buildx's answer when it is there (or asked for), this module's reader otherwise."""
    if use_buildx is None:
        use_buildx = buildx_available(docker)
    return print_with_buildx(path, names, docker) if use_buildx else read_bake_file(path, names)
