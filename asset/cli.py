"""`asset COMMAND ...`: one module per command in asset/commands/.

Adding a command: write asset/commands/NAME.py with `register(subparsers)` (adds its argparse parser and
sets `func`) and add "NAME" to COMMANDS. Command modules import torch lazily, inside `run`, so that
`asset --help` (and torch-free commands such as serving) work without the training stack.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import asset

COMMANDS = ["train", "evaluate", "export", "benchmark", "serve", "sweep", "report", "cv", "predict"]


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input, reported as `error: ...` with exit code 2: every AssetError, and
    the datatools' DatasetError where the datatools are installed (the edge images serve without them)."""
    from asset.errors import AssetError

    dataset_errors = sys.modules.get("datatools.errors")
    return (AssetError, dataset_errors.DatasetError) if dataset_errors else (AssetError,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asset",
        description="Train, evaluate, export, benchmark and serve defect segmenters (segmentation-models-pytorch) "
        "on datasets in the standard format (datatools/FORMAT.md).",
    )
    parser.add_argument("--version", action="version", version=f"asset {asset.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"asset.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
