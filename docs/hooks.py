"""MkDocs hook: the docs live beside the code, so they link to repository files and include some of them.

- `<!-- include: PATH [section="## Heading"] [shift=N] -->` alone on a line is replaced by the repository file PATH
  (relative to the repository root; with section=, only what follows that heading up to the next heading of the
  same or a higher level), its headings moved N levels down and its relative links made relative to the root, so that
  datatools/FORMAT.md or ci/README.md stay the one source and the site shows them as they are.
- A link to a file outside docs/ (`../asset/configs/demo.yaml`, as GitHub renders it) becomes a link to that file
  in the repository when mkdocs.yml sets `repo_url`, else its text with the path as code. A link to a path that does
  not exist is a warning, which `mkdocs build --strict` turns into a failure: a moved file breaks the build.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path

log = logging.getLogger("mkdocs.plugins.repo_links")

INCLUDE = re.compile(r'^<!-- include: (?P<path>\S+)(?: section="(?P<section>[^"]+)")?(?: shift=(?P<shift>\d))? -->$', re.M)
LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")


def _root(config) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target)) or target.startswith(("#", "/"))


def _outside_code(text: str, fn) -> str:
    """Apply fn to the parts of text outside fenced code blocks."""
    parts = re.split(r"(^(?:```|~~~)[^\n]*\n.*?^(?:```|~~~)[ \t]*$)", text, flags=re.M | re.S)
    return "".join(p if i % 2 else fn(p) for i, p in enumerate(parts))


def _include(match: re.Match, root: Path, where: str) -> str:
    rel = match["path"]
    path = root / rel
    if not path.is_file():
        log.warning("%s: include of %s: no such file in the repository", where, rel)
        return match[0]
    text = path.read_text(encoding="utf-8")
    if match["section"]:  # from that heading to the next one of the same or a higher level
        heading = match["section"]
        level = len(heading) - len(heading.lstrip("#"))
        lines = text.splitlines(keepends=True)
        starts = [i for i, line in enumerate(lines) if line.rstrip("\n") == heading]
        if not starts:
            log.warning("%s: include of %s: no heading %r in it", where, rel, heading)
            return match[0]
        end, fenced = len(lines), False
        for j in range(starts[0] + 1, len(lines)):
            fenced ^= lines[j].startswith(("```", "~~~"))
            if not fenced and re.match(rf"^#{{1,{level}}} ", lines[j]):
                end = j
                break
        text = "".join(lines[starts[0] + 1:end])
    shift = int(match["shift"] or 0)
    base = posixpath.dirname(rel)

    def fix(part: str) -> str:
        if shift:
            part = re.sub(r"^(#{1,6}) ", lambda m: "#" * min(6, len(m[1]) + shift) + " ", part, flags=re.M)

        def relink(m: re.Match) -> str:
            target = m["target"]
            if _external(target):
                return m[0]
            file, _, anchor = target.partition("#")
            return f"[{m['text']}](/{posixpath.normpath(posixpath.join(base, file))}{'#' + anchor if anchor else ''})"

        return LINK.sub(relink, part)

    return _outside_code(text, fix)


def on_page_markdown(markdown: str, page, config, files) -> str:
    root = _root(config)
    docs = Path(config["docs_dir"]).resolve()
    src = page.file.src_uri
    markdown = INCLUDE.sub(lambda m: _include(m, root, src), markdown)
    page_dir = (docs / src).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def relink(m: re.Match) -> str:
        text, target = m["text"], m["target"]
        if _external(target) and not target.startswith("/"):
            return m[0]
        file, _, anchor = target.partition("#")
        # "/x" is relative to the repository root (from includes); anything else to the page's folder
        path = (root / file.lstrip("/")) if target.startswith("/") else (page_dir / file)
        path = Path(posixpath.normpath(str(path)))
        try:
            path.relative_to(docs)
            if not target.startswith("/"):
                return m[0]  # a page or file of the site: MkDocs checks it
            return f"[{text}]({posixpath.relpath(str(path), str(page_dir))}{'#' + anchor if anchor else ''})"
        except ValueError:
            pass
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            log.warning("%s: link to %s leaves the repository", src, target)
            return m[0]
        if not path.exists():
            log.warning("%s: link to %s: no such file or folder in the repository", src, target)
            return m[0]
        if repo_url:
            kind = "tree" if path.is_dir() else "blob"
            return f"[{text}]({repo_url}/{kind}/main/{rel}{'#' + anchor if anchor else ''})"
        if text.strip("`").rstrip("/") == rel:
            return f"`{rel}`"
        return text if f"`{rel}`" in text or f"`{rel}/`" in text else f"{text} (`{rel}`)"

    return _outside_code(markdown, lambda part: LINK.sub(relink, part))
