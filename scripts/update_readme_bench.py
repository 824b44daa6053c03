"""Copy the latest benchmark summary into README.md between the bench markers."""

from __future__ import annotations

import sys
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main(summary: str, readme: str = "README.md") -> None:
    text = Path(readme).read_text()
    if START not in text or END not in text:
        sys.exit(f"error: {readme} has no {START} ... {END} block")
    body = Path(summary).read_text().strip()
    block = f"{START}\nProduced by `make bench` (`scripts/bench.sh`):\n\n{body}\n{END}"
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    tmp = Path(readme).with_suffix(".md.tmp")
    tmp.write_text(head + block + tail)
    tmp.replace(readme)


if __name__ == "__main__":
    main(*sys.argv[1:])
