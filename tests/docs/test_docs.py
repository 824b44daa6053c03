"""The README and the documentation site: short, true to the code, built offline with --strict."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests import REPO as ROOT

README = ROOT / "README.md"


def _code_lines(text: str) -> list[str]:
    """Shell lines of the fenced code blocks, comments dropped, continuation lines joined."""
    lines, block, inside = [], [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
            continue
        if inside:
            block.append(line)
    pending = ""
    for line in block:
        line = re.sub(r"(^|\s)#.*$", "", line).rstrip()
        if not line.strip():
            continue
        if pending:
            line = pending + " " + line.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        lines.append(line.strip())
    return lines


def _make_targets() -> set[str]:
    out = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    out = re.sub(r"\x1b\[[0-9;]*m", "", out)
    targets: set[str] = set()
    for line in out.splitlines():
        # "  name   description"; pattern rules list several names joined by spaces before the description
        head = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        targets.update(head.split())
    return targets


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _check_options(parser: argparse.ArgumentParser, words: list[str], line: str) -> None:
    known = set(parser._option_string_actions)
    for word in words:
        opt = word.split("=", 1)[0]
        if opt.startswith("--"):
            assert opt in known, f"README: {line!r}: {opt} is not an option of `{parser.prog}` (see its --help)"


def _check_cli(parser: argparse.ArgumentParser, words: list[str], line: str) -> None:
    """words after the program name: descend into subcommands while they match, then check the options."""
    i = 0
    while i < len(words):
        subs = _subparsers(parser)
        if not subs or words[i].startswith("-"):
            break
        assert words[i] in subs, f"README: {line!r}: {words[i]!r} is not a command of `{parser.prog}` ({sorted(subs)})"
        parser, i = subs[words[i]], i + 1
    _check_options(parser, words[i:], line)


def _script_options(path: Path) -> str:
    out = subprocess.run([sys.executable, str(path), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"{path} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


def test_every_command_in_the_readme_exists():
    from asset.cli import build_parser as asset_parser
    from datatools.cli import build_parser as datatool_parser

    lines = _code_lines(README.read_text())
    assert lines, "README.md shows no commands"
    targets = _make_targets()
    parsers = {"asset": asset_parser(), "datatool": datatool_parser()}
    checked = 0
    for line in lines:
        words = shlex.split(line)
        prog = words[0]
        if prog == "make":
            names = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
            for name in names:
                assert name in targets, f"README: {line!r}: `make {name}` is not in `make help` ({sorted(targets)})"
        elif prog in parsers:
            _check_cli(parsers[prog], words[1:], line)
        elif prog in ("python", "python3") and words[1].startswith("scripts/"):
            script = ROOT / words[1]
            assert script.is_file(), f"README: {line!r}: no {words[1]}"
            usage = _script_options(script)
            for word in words[2:]:
                opt = word.split("=", 1)[0]
                if opt.startswith("--"):
                    assert re.search(rf"(^|[\s,\[]){re.escape(opt)}\b", usage), f"README: {line!r}: {opt} not in its --help"
        else:
            pytest.fail(f"README: {line!r}: not a make target, an asset/datatool command or a scripts/ program; "
                        "show only commands that this test can check")
        checked += 1
    assert checked == len(lines)


def test_readme_is_short_and_has_its_pictures():
    text = README.read_text()
    assert len(text.splitlines()) <= 150, "README.md is for day one: move details to docs/"
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert pictures, "README.md has no picture"
    for rel in pictures:
        path = ROOT / rel
        assert path.is_file(), f"README.md shows {rel}, which does not exist"
        assert path.stat().st_size < 200_000, f"{rel}: {path.stat().st_size} bytes, keep committed pictures small"


def test_site_builds_with_strict_offline(tmp_path):
    """A broken link, a missing page or anchor, or a missing included file fails the build."""
    import yaml

    cfg = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    assert cfg["theme"].get("font") is False, "theme.font must be false: no web fonts fetched at build or view time"
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in cfg.get("plugins", [])]
    assert not {"social", "privacy", "material/social", "material/privacy"} & set(plugins), "plugins that go online"
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
                          "--site-dir", str(site)], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, f"mkdocs build --strict failed:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    index = (site / "index.html").read_text()
    assert "fonts.googleapis.com" not in index and "fonts.gstatic.com" not in index
    results = (site / "results.html").read_text()
    assert "KolektorSDD recipe" in results and "Benchmarks" in results


def test_http_api_page_matches_the_app():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_api_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert make_api_docs.main(["--check"]) == 0, "docs/server-api.md is stale: run python scripts/make_api_docs.py"


def test_benchmark_block_is_where_make_bench_writes_it(tmp_path):
    """`make bench` (scripts/update_readme_bench.py) writes its table between the bench markers of docs/results.md,
    the only page that holds them (the README quotes headline figures, dated)."""
    results = (ROOT / "docs" / "results.md").read_text()
    assert results.count("<!-- bench:start -->") == 1 and results.count("<!-- bench:end -->") == 1
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import update_readme_bench
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert update_readme_bench.targets(ROOT) == [ROOT / "docs" / "results.md"]
    page = tmp_path / "results.md"
    page.write_text(results)
    summary = tmp_path / "summary.md"
    summary.write_text("| what | ours |\n|---|---|\n| x | 1 |\n")
    assert update_readme_bench.main([str(summary), str(page)]) == 0
    text = page.read_text()
    assert "| x | 1 |" in text and text.split("<!-- bench:end -->")[1] == results.split("<!-- bench:end -->")[1]


def test_one_project_version(capsys):
    import asset
    import datatools
    from asset.cli import main as asset_main
    from datatools.cli import main as datatool_main

    assert asset.__version__ == datatools.__version__
    for main, prog in ((asset_main, "asset"), (datatool_main, "datatool")):
        with pytest.raises(SystemExit):
            main(["--version"])
        assert capsys.readouterr().out.strip() == f"{prog} {asset.__version__}"
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(asset.__version__)}\b", changelog, re.M), "CHANGELOG.md has no entry for it"
    for project, dist in (("asset", "defect-asset"), ("datatools", "defect-datatools")):
        text = (ROOT / project / "pyproject.toml").read_text()
        assert f'name = "{dist}"' in text and re.search(r'^dynamic = \[[^\]]*"version"', text, re.M)
