"""The project's tests; REPO is the repository root, for every test that needs a path in it."""

from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
