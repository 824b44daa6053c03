"""The datatools by name. Each converter lives in its own subpackage and exports CONVERTER."""

from __future__ import annotations

import importlib

from datatools.records import Converter

CONVERTERS: dict[str, str] = {
    "dagm": "datatools.dagm",
    "kolektorsdd": "datatools.kolektorsdd",
    "kolektorsdd2": "datatools.kolektorsdd2",
    "synthetic": "datatools.synthetic",
    "folder": "datatools.folder",
}


def get_converter(name: str) -> Converter:
    if name not in CONVERTERS:
        raise KeyError(f"unknown datatool {name!r}; valid: {', '.join(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[name]).CONVERTER
