"""Copy a benchmark summary (scripts/bench.sh's summary.md) between the bench markers of the project's pages.

    python scripts/update_readme_bench.py out/bench/summary.md              # README.md and any docs/ page with them
    python scripts/update_readme_bench.py out/bench/summary.md FILE [...]   # these files only
    python scripts/update_readme_bench.py --check out/bench/summary.md      # find and render, write nothing

The table lives between `<!-- bench:start -->` and `<!-- bench:end -->`, wherever the pages put it: with no FILE the
script writes every Markdown file among README.md and docs/**/*.md that holds both markers, and fails when none
does (the markers were removed: put them back where the table belongs). Each file is replaced atomically.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
REPO = Path(__file__).resolve().parents[1]


def has_markers(text: str) -> bool:
    return START in text and END in text and text.index(START) < text.index(END)


def targets(root: Path = REPO) -> list[Path]:
    """README.md and docs/**/*.md files under `root` that hold both markers, in that order."""
    found = [p for p in [root / "README.md", *sorted((root / "docs").rglob("*.md"))] if p.is_file()]
    return [p for p in found if has_markers(p.read_text(errors="replace"))]


def render(summary: str, text: str) -> str:
    """`text` with the block between the markers replaced by `summary`."""
    block = f"{START}\nProduced by `make bench` (`scripts/bench.sh`):\n\n{summary.strip()}\n{END}"
    head, rest = text.split(START, 1)
    return head + block + rest.split(END, 1)[1]


def write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    check = "--check" in argv
    argv = [a for a in argv if a != "--check"]
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    summary = Path(argv[0]).read_text()
    files = [Path(f) for f in argv[1:]] or targets()
    if not files:
        print(f"error: no page holds the {START} ... {END} block (README.md, docs/**/*.md): put the markers where the "
              "performance table belongs", file=sys.stderr)
        return 2
    for path in files:
        text = path.read_text()
        if not has_markers(text):
            print(f"error: {path} has no {START} ... {END} block", file=sys.stderr)
            return 2
        new = render(summary, text)
        if check:
            assert summary.strip() in new and has_markers(new)
            print(f"would write the benchmark table into {path} (--check: nothing written)", file=sys.stderr)
            continue
        write(path, new)
        print(f"wrote the benchmark table into {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
