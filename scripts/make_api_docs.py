"""Write docs/server-api.md from the server's own OpenAPI schema and `asset serve`'s options.

    python scripts/make_api_docs.py            # rewrite docs/server-api.md
    python scripts/make_api_docs.py --check    # exit 1 when the page is not what the code gives (tests run this)

The page is generated, never edited by hand: routes, request bodies, answers and their schemas come from
`create_app(...).openapi()` (no model is loaded: the schema does not depend on one), the settings table from the
`asset serve` argparse options, `Settings`' defaults and its ASSET_* variables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "server-api.md"


def _type(schema: dict) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(s) for s in schema["anyOf"])
    if schema.get("type") == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if schema.get("type") == "object" and "additionalProperties" in schema:
        extra = schema["additionalProperties"]
        return f"object of {_type(extra) if isinstance(extra, dict) else 'any'}"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return schema.get("type", "any")


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def api_markdown(spec: dict) -> list[str]:
    lines = [f"Schema: OpenAPI {spec['openapi']}, API version {spec['info']['version']} (the package version). "
             "A running server serves the same schema at `/openapi.json` and browsable docs at `/docs`.", ""]
    info = spec["info"].get("description")
    if info:
        lines += [_cell(info), ""]
    lines += ["## Routes", ""]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            lines += [f"### `{method.upper()} {path}`", ""]
            if op.get("summary"):
                lines += [f"**{_cell(op['summary']).rstrip('.')}.**", ""]
            if op.get("description"):
                lines += [op["description"].strip(), ""]
            for param in op.get("parameters", []):
                lines.append(f"- parameter `{param['name']}` ({param['in']}, {_type(param.get('schema', {}))}"
                             f"{', required' if param.get('required') else ''}): {_cell(param.get('description', ''))}")
            body = op.get("requestBody")
            if body:
                kinds = ", ".join(f"`{k}`" for k in body.get("content", {}))
                lines.append(f"- request body{' (required)' if body.get('required') else ''}: {kinds}"
                             + (f". {_cell(body['description'])}" if body.get("description") else ""))
            if op.get("parameters") or body:
                lines.append("")
            lines += ["| status | meaning | body |", "|---|---|---|"]
            for status, resp in op.get("responses", {}).items():
                content = resp.get("content", {})
                kinds = []
                for kind, media in content.items():
                    schema = media.get("schema")
                    kinds.append(f"{_type(schema)} (`{kind}`)" if schema else f"`{kind}`")
                lines.append(f"| {status} | {_cell(resp.get('description', ''))} | {', '.join(kinds) or '-'} |")
            lines.append("")
    lines += ["## Schemas", ""]
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        lines += [f"### {name}", ""]
        if schema.get("description"):
            lines += [_cell(schema["description"]), ""]
        props = schema.get("properties")
        if not props:
            lines += [f"Type: {_type(schema)}.", ""]
            continue
        required = set(schema.get("required", []))
        lines += ["| field | type | required | description |", "|---|---|---|---|"]
        for field, sub in props.items():
            lines.append(f"| `{field}` | {_type(sub)} | {'yes' if field in required else 'no'} | "
                         f"{_cell(sub.get('description', sub.get('title', '')))} |")
        lines.append("")
    return lines


def settings_markdown() -> list[str]:
    from dataclasses import fields

    from asset.commands import serve
    from asset.serve.settings import Settings

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["serve"]  # the parser register() made
    defaults = {f.name: f.default for f in fields(Settings)}
    env = Settings.env_names()
    lines = ["## Settings", "",
             "Every setting is an option of `asset serve` and an environment variable (what a container sets); options "
             "win over the environment. Out-of-range values are refused at start-up with the valid range.", "",
             "| option | environment | default | what it does |", "|---|---|---|---|"]
    for action in sub._actions:
        if not action.option_strings or action.dest == "help":
            continue
        name = action.dest
        default = defaults.get(name)
        default = "-" if default in (None, "") else f"`{default}`"
        lines.append(f"| `{action.option_strings[0]}` | `{env.get(name, '-')}` | {default} | {_cell(action.help)} |")
    return lines + [""]


def render() -> str:
    from asset.serve.app import create_app
    from asset.serve.settings import Settings

    spec = create_app(Settings(model="MODEL_DIR")).openapi()
    head = ["# HTTP API", "",
            "<!-- Generated by scripts/make_api_docs.py from the app's OpenAPI schema: do not edit by hand. -->", "",
            "What `asset serve` answers. How to run it, its limits and its security: [Serving](server.md).", ""]
    return "\n".join(head + settings_markdown() + api_markdown(json.loads(json.dumps(spec)))).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when they differ")
    p.add_argument("--out", type=Path, default=PAGE, help=f"the page (default {PAGE.relative_to(ROOT)})")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is out of date: run python scripts/make_api_docs.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
