"""One base for the user's errors (asset/errors.py AssetError): every error class a command raises for bad input
derives from it, keeps its old base (callers that catch ValueError / RuntimeError still do), and `asset` reports it
as `error: ...`, exit 2, where any other exception keeps its traceback."""

from __future__ import annotations

import importlib
import inspect

import pytest

from asset import cli
from asset.errors import AssetError

MODULES = ["asset.algorithm", "asset.config", "asset.cv", "asset.modeldir", "asset.predict", "asset.backends.base",
           "asset.export.formats", "asset.models.factory", "asset.models.registry", "asset.report.collect",
           "asset.serve.settings", "asset.sweep.grid", "asset.training.checkpoints", "asset.training.data",
           "asset.training.train"]


def test_every_error_class_of_the_asset_is_an_asset_error():
    found = []
    for name in MODULES:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and cls_name.endswith("Error"):
                found.append(cls)
                assert issubclass(cls, AssetError), f"{name}.{cls_name} is not an AssetError"
    assert len(found) >= 15


def test_old_bases_are_kept():
    from asset.backends.base import BackendError
    from asset.config import ConfigError

    assert issubclass(ConfigError, ValueError) and issubclass(BackendError, RuntimeError)


def test_cli_reports_an_asset_error_and_lets_a_bug_through(monkeypatch, capsys):
    import argparse

    from asset.training.checkpoints import CheckpointError

    def user_error(args):
        raise CheckpointError("m/checkpoints/last.ckpt: no such checkpoint")

    def bug(args):
        raise KeyError("x")

    class Parser:
        func = None

        def parse_args(self, argv):
            return argparse.Namespace(func=self.func)

    parser = Parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser.func = user_error
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err == "error: m/checkpoints/last.ckpt: no such checkpoint\n"
    parser.func = bug
    with pytest.raises(KeyError):
        cli.main(["train"])
