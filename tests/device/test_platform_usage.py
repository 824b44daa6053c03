"""The usage blocks of the platform Dockerfiles name only `asset` options that exist (the Jetson one once said
`--half`, which no command takes)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from asset.cli import COMMANDS, build_parser
from tests import REPO

DOCKERFILES = sorted(REPO.glob("platforms/*/Dockerfile"))


def usage_commands(dockerfile: Path) -> list[list[str]]:
    """Every `docker run ... IMAGE COMMAND ARGS` of the trailing usage comment, continuation lines joined."""
    text = dockerfile.read_text()
    usage = text[text.index("# Usage"):]
    joined = re.sub(r"\\\n#\s*", " ", usage)
    out = []
    for line in joined.splitlines():
        tokens = line.lstrip("# ").split()
        image = next((i for i, t in enumerate(tokens) if re.match(r"^[\w.-]+(:\d+)?/asset:", t)), None)
        if tokens[:2] == ["docker", "run"] and image is not None:
            out.append(tokens[image + 1:])
    return out


def options_of(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices[command]._option_string_actions)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_usage_names_options_that_exist(dockerfile):
    commands = usage_commands(dockerfile)
    assert commands, f"{dockerfile}: no `docker run ... asset:...` line in its usage block"
    for args in commands:
        if not args:  # the image's default command
            continue
        assert args[0] in COMMANDS, f"{dockerfile}: unknown asset command {args[0]!r}"
        valid = options_of(args[0])
        unknown = [a.split("=")[0] for a in args[1:] if a.startswith("--") and a.split("=")[0] not in valid]
        assert not unknown, f"{dockerfile}: `asset {args[0]}` has no {unknown}"


def test_the_check_sees_a_wrong_option(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM scratch\n# Usage:\n#   docker run --rm defect/asset:jetson \\\n"
                   "#       export --model /m --format tensorrt --half\n")
    (args,) = usage_commands(bad)
    assert args[:1] == ["export"] and "--half" in args and "--half" not in options_of("export")
