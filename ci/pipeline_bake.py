"""Resolve the targets of ci/docker-bake.hcl: what to build, from which Dockerfile, for which platforms, tagged how.

With buildx, `docker buildx bake --print` is the authority and is used. Runners without buildx
(Debian's docker.io 20.10 builds with BuildKit but has no bake) get the same answer from this
module's own reader of the bake file. It reads the JSON form, and the part of HCL that bake files
use here: `variable` (default, overridden by an environment variable of the same name, as bake does),
`group`, `target` with `inherits`, `matrix` + `name`, strings with `${var}` interpolation, lists,
maps, numbers and booleans, `#`, `//` and `/* */` comments. Anything else (functions, conditionals,
heredocs, `for` expressions) is refused with the line number, never guessed at: then use buildx.
Standard library only.
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


# --- the HCL reader: tokens, then a recursive-descent parser into plain Python values --------------------

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r]+|\\\n) | (?P<newline>\n) | (?P<comment>\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<number>-?\d+(?:\.\d+)?) | (?P<ident>[A-Za-z_][A-Za-z0-9_-]*) | (?P<string>")
  | (?P<punct>[{}\[\]=,:])
""", re.VERBOSE | re.DOTALL)


@dataclass
class _Tok:
    kind: str
    value: object
    line: int


class _Str:
    """A string literal: literal text and ${name} references, kept apart until evaluation."""

    def __init__(self, parts: list[tuple[str, str]]):
        self.parts = parts  # ("text", s) or ("ref", name)


class _Ref:
    def __init__(self, name: str, line: int):
        self.name, self.line = name, line


def _read_string(text: str, pos: int, line: int) -> tuple[_Str, int]:
    parts: list[tuple[str, str]] = []
    buf = []
    escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "r": "\r"}
    while True:
        if pos >= len(text) or text[pos] == "\n":
            raise BakeError(f"line {line}: unterminated string")
        char = text[pos]
        if char == '"':
            break
        if char == "\\":
            nxt = text[pos + 1: pos + 2]
            if nxt not in escapes:
                raise BakeError(f"line {line}: unsupported escape \\{nxt} in a string")
            buf.append(escapes[nxt])
            pos += 2
        elif text.startswith("$${", pos):
            buf.append("${")
            pos += 3
        elif text.startswith("${", pos):
            end = text.find("}", pos)
            inner = text[pos + 2: end].strip() if end != -1 else ""
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", inner):
                raise BakeError(f"line {line}: only ${{name}} interpolation is supported here, not "
                                f"${{{inner or text[pos + 2: pos + 20]}}} (use docker buildx bake --print)")
            if buf:
                parts.append(("text", "".join(buf)))
                buf = []
            parts.append(("ref", inner))
            pos = end + 1
        elif text.startswith("%{", pos):
            raise BakeError(f"line {line}: template directives %{{...}} are not supported (use docker buildx bake --print)")
        else:
            buf.append(char)
            pos += 1
    if buf:
        parts.append(("text", "".join(buf)))
    return _Str(parts), pos + 1


def _tokens(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos, line = 0, 1
    while pos < len(text):
        if text.startswith("<<", pos):
            raise BakeError(f"line {line}: heredoc strings are not supported (use docker buildx bake --print)")
        match = _TOKEN.match(text, pos)
        if not match:
            raise BakeError(f"line {line}: unexpected {text[pos:pos + 20]!r} (not in the HCL subset read here; "
                            "use docker buildx bake --print)")
        kind = match.lastgroup
        if kind == "string":
            value, pos = _read_string(text, match.end(), line)
            tokens.append(_Tok("string", value, line))
            continue
        if kind == "newline":
            tokens.append(_Tok("newline", None, line))
        elif kind == "number":
            tokens.append(_Tok("number", float(match.group()) if "." in match.group() else int(match.group()), line))
        elif kind in ("ident", "punct"):
            tokens.append(_Tok(kind, match.group(), line))
        line += match.group().count("\n")
        pos = match.end()
    tokens.append(_Tok("eof", None, line))
    return tokens


class _Parser:
    def __init__(self, tokens: list[_Tok]):
        self.tokens, self.i = tokens, 0

    def peek(self, skip_newlines: bool = True) -> _Tok:
        if skip_newlines:
            while self.tokens[self.i].kind == "newline":
                self.i += 1
        return self.tokens[self.i]

    def take(self, kind: str | None = None, value: str | None = None, skip_newlines: bool = True) -> _Tok:
        tok = self.peek(skip_newlines)
        if (kind and tok.kind != kind) or (value and tok.value != value):
            want = value or kind
            got = tok.value if tok.kind not in ("string", "eof") else tok.kind
            raise BakeError(f"line {tok.line}: expected {want!r}, found {got!r} (not in the HCL subset read here; "
                            "use docker buildx bake --print)")
        self.i += 1
        return tok

    def body(self, closing: str | None) -> list[tuple]:
        """Attributes ("attr", name, value, line) and blocks ("block", type, labels, body, line)."""
        items = []
        while True:
            tok = self.peek()
            if tok.kind == "eof" and closing is None:
                return items
            if tok.kind == "punct" and tok.value == closing:
                self.i += 1
                return items
            name = self.take("ident")
            if self.peek().kind == "punct" and self.peek().value == "=":
                self.i += 1
                items.append(("attr", name.value, self.expr(), name.line))
                end = self.peek(skip_newlines=False)
                if end.kind not in ("newline", "eof") and not (end.kind == "punct" and end.value == closing):
                    raise BakeError(f"line {end.line}: expected the end of the line after {name.value} = ... "
                                    "(expressions are not supported here; use docker buildx bake --print)")
                continue
            labels = []
            while self.peek().kind in ("string", "ident"):
                label = self.take()
                labels.append(_literal(label.value, label.line) if label.kind == "string" else label.value)
            self.take("punct", "{")
            items.append(("block", name.value, labels, self.body("}"), name.line))

    def expr(self):
        tok = self.take()
        if tok.kind in ("string", "number"):
            return tok.value
        if tok.kind == "ident":
            constants = {"true": True, "false": False, "null": None}
            return constants[tok.value] if tok.value in constants else _Ref(tok.value, tok.line)
        if tok.value == "[":
            items = []
            while not self.closes("]"):
                items.append(self.expr())
                if not self.closes("]"):
                    self.take("punct", ",")
            self.i += 1
            return items
        if tok.value == "{":
            mapping = {}
            while not self.closes("}"):
                key = self.take()
                if key.kind not in ("string", "ident"):
                    raise BakeError(f"line {key.line}: a map key must be a name or a string")
                sep = self.take("punct")
                if sep.value not in ("=", ":"):
                    raise BakeError(f"line {sep.line}: expected '=' or ':' after a map key")
                mapping[_literal(key.value, key.line) if key.kind == "string" else key.value] = self.expr()
                end = self.peek(skip_newlines=False)
                if end.kind == "punct" and end.value == ",":
                    self.i += 1
                elif end.kind != "newline" and not self.closes("}"):
                    raise BakeError(f"line {end.line}: expected ',' or a new line between map entries")
            self.i += 1
            return mapping
        raise BakeError(f"line {tok.line}: unexpected {tok.value!r} (use docker buildx bake --print)")

    def closes(self, bracket: str) -> bool:
        tok = self.peek()
        if tok.kind == "eof":
            raise BakeError(f"line {tok.line}: missing {bracket!r}")
        return tok.kind == "punct" and tok.value == bracket


def _literal(value: _Str, line: int) -> str:
    if any(kind == "ref" for kind, _ in value.parts):
        raise BakeError(f"line {line}: interpolation is not allowed here")
    return "".join(text for _, text in value.parts)


def _evaluate(value, scope: dict[str, object], line: int = 0):
    if isinstance(value, _Str):
        out = []
        for kind, text in value.parts:
            if kind == "text":
                out.append(text)
            elif text not in scope:
                raise BakeError(f"unknown variable ${{{text}}} (line {line})")
            else:
                out.append(str(scope[text]))
        return "".join(out)
    if isinstance(value, _Ref):
        if value.name not in scope:
            raise BakeError(f"line {value.line}: unknown variable {value.name}")
        return scope[value.name]
    if isinstance(value, list):
        return [_evaluate(v, scope, line) for v in value]
    if isinstance(value, dict):
        return {k: _evaluate(v, scope, line) for k, v in value.items()}
    return value


# --- from parsed blocks (HCL or JSON) to resolved targets -------------------------------------------------

@dataclass
class _Definitions:
    variables: dict[str, object]
    groups: dict[str, list]
    targets: dict[str, tuple[dict, int]]  # block name -> (raw attributes, line)


def _from_hcl(text: str) -> _Definitions:
    defs = _Definitions({}, {}, {})
    for item in _Parser(_tokens(text)).body(None):
        if item[0] == "attr":
            raise BakeError(f"line {item[3]}: top-level attribute {item[1]} is not supported")
        _, kind, labels, body, line = item
        if len(labels) != 1:
            raise BakeError(f"line {line}: a {kind} block takes exactly one name")
        attrs = {}
        for sub in body:
            if sub[0] != "attr":
                raise BakeError(f"line {sub[4]}: nested blocks are not supported")
            attrs[sub[1]] = sub[2]
        _define(defs, kind, labels[0], attrs, line)
    return defs


def _from_json(text: str) -> _Definitions:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise BakeError(f"not valid JSON: {error}") from error
    defs = _Definitions({}, {}, {})
    for kind in ("variable", "group", "target"):
        for name, attrs in (data.get(kind) or {}).items():
            _define(defs, kind, name, _json_to_values(attrs), 0)
    unknown = set(data) - {"variable", "group", "target"}
    if unknown:
        raise BakeError(f"unsupported top-level key(s): {', '.join(sorted(unknown))}")
    return defs


def _json_to_values(value):
    """JSON strings may hold ${var} too (and $${ for a literal ${), as in HCL."""
    if isinstance(value, str):
        parts: list[tuple[str, str]] = []
        pos = 0
        for match in re.finditer(r"\$\$\{|\$\{([^}]*)\}", value):
            parts.append(("text", value[pos:match.start()]))
            if match.group() == "$${":
                parts.append(("text", "${"))
            elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", match.group(1).strip()):
                parts.append(("ref", match.group(1).strip()))
            else:
                raise BakeError(f"only ${{name}} interpolation is supported here, not {match.group()}")
            pos = match.end()
        parts.append(("text", value[pos:]))
        return _Str([p for p in parts if p[1] or p[0] == "ref"])
    if isinstance(value, list):
        return [_json_to_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_to_values(v) for k, v in value.items()}
    return value


def _define(defs: _Definitions, kind: str, name: str, attrs: dict, line: int) -> None:
    if kind == "variable":
        defs.variables[name] = attrs.get("default", "")
    elif kind == "group":
        defs.groups[name] = attrs.get("targets", [])
    elif kind == "target":
        if name in defs.targets:
            raise BakeError(f"line {line}: target {name} is defined twice")
        defs.targets[name] = (attrs, line)
    else:
        raise BakeError(f"line {line}: unsupported block type {kind!r} (variable, group and target are read)")


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
    attrs, _ = defs.targets[name]
    merged: dict = {}
    for parent in attrs.get("inherits", []):
        parent_name = parent if isinstance(parent, str) else _literal(parent, 0) if isinstance(parent, _Str) else None
        if parent_name is None:
            raise BakeError(f"target {name}: inherits must list target names")
        for key, value in _merged_attrs(defs, parent_name, (*seen, name)).items():
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
        defs = _from_json(text) if str(path).endswith(".json") else _from_hcl(text)
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
