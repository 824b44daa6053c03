"""`datatool report`: one self-contained HTML page showing what a dataset holds.

Counts per split, label and group, image-size and defect-area histograms (inline SVG), and a
grid of thumbnails with the defect mask overlaid in red (as in Gibson & Cano, Figure 3). No
external assets: images are base64 data URIs, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datatools.masks import decode_mask, mask_area
from datatools.records import SPLITS
from datatools.validate import load_dataset

THUMB = 160
CSS = f"""
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1180px}}
h1{{margin-bottom:4px}} h2{{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}}
.meta{{color:#555}} table{{border-collapse:collapse;margin:8px 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} th{{background:#f3f3f3}}
td:first-child,th:first-child{{text-align:left}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}}
figure{{margin:0;width:{THUMB}px;font-size:12px}}
figure img{{width:{THUMB}px;height:{THUMB}px;object-fit:contain;background:#000}}
figcaption{{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}}
.def{{color:#c00;font-weight:600}} .ok{{color:#070}} .charts{{display:flex;flex-wrap:wrap;gap:24px}}
"""


def _esc(value) -> str:
    return html.escape(str(value))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def histogram_svg(values: list[float], title: str, unit: str, bins: int = 20, width: int = 520, height: int = 220) -> str:
    """A bar chart of `values` as inline SVG (empty-data safe)."""
    if not values:
        return f"<p>{_esc(title)}: no data</p>"
    lo, hi = float(min(values)), float(max(values))
    if hi == lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    left, bottom, top = 48, 36, 24
    plot_w, plot_h = width - left - 12, height - bottom - top
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>']
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + i * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" height="{h:.1f}" '
                     f'fill="#4a78b5"><title>{edges[i]:.4g}-{edges[i + 1]:.4g} {unit}: {count}</title></rect>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>')
    parts.append(f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>')
    parts.append(f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>')
    parts.append(f'<text x="{left}" y="{height - 18}" font-size="11">{lo:.4g}</text>')
    parts.append(f'<text x="{left + plot_w}" y="{height - 18}" text-anchor="end" font-size="11">{hi:.4g}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" font-size="11">{_esc(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BGR thumbnail: the image in gray/colour with the mask blended red and outlined."""
    if image.ndim == 2:
        bgr = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.shape[2] == 4:
        bgr = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    else:
        bgr = image
    if bgr.dtype != np.uint8:
        bgr = cv2.normalize(bgr, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    scale = THUMB / max(bgr.shape[:2])
    size = (max(1, round(bgr.shape[1] * scale)), max(1, round(bgr.shape[0] * scale)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    if small_mask.any():
        red = np.zeros_like(small)
        red[..., 2] = 255
        blended = cv2.addWeighted(small, 0.55, red, 0.45, 0)
        small = np.where(small_mask[..., None] > 0, blended, small)
        contours, _ = cv2.findContours(small_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(small, contours, -1, (0, 0, 255), 1)
    return small


def _data_uri(bgr: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", bgr)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def pick_thumbnails(samples: list[dict], count: int) -> list[dict]:
    """Deterministic, mixed selection: defective and OK alternately, spread over splits and groups."""
    by_kind: dict[bool, list[dict]] = {True: [], False: []}
    for s in sorted(samples, key=lambda s: (s["split"], s["group"], s["id"])):
        by_kind[s["defective"]].append(s)
    picked: list[dict] = []
    for kind in (True, False):
        pool = by_kind[kind]
        want = min(len(pool), max(count - min(len(by_kind[not kind]), count // 2), count // 2))
        if want and pool:
            step = len(pool) / want
            picked.extend(pool[int(i * step)] for i in range(want))
    return picked[:count]


def build_report(version_dir: Path, document: dict, thumbnails: int = 24, progress: bool | None = None) -> str:
    samples = document["samples"]
    splits = document["splits"]
    split_rows = [[s, splits[s]["images"], splits[s]["defective"], splits[s]["images"] - splits[s]["defective"]]
                  for s in SPLITS]
    split_rows.append(["all", sum(r[1] for r in split_rows), sum(r[2] for r in split_rows), sum(r[3] for r in split_rows)])

    per_group: dict[str, Counter] = defaultdict(Counter)
    for s in samples:
        per_group[s["group"]][(s["split"], s["defective"])] += 1
    group_rows = [[g] + [per_group[g][(sp, d)] for sp in SPLITS for d in (True, False)] for g in sorted(per_group)]
    group_header = ["group"] + [f"{sp} {'defective' if d else 'OK'}" for sp in SPLITS for d in (True, False)]

    sizes = Counter((s["width"], s["height"]) for s in samples)
    if len(sizes) <= 12:
        size_block = _table(["width x height", "images"], [[f"{w} x {h}", n] for (w, h), n in sorted(sizes.items())])
    else:
        size_block = ('<div class="charts">'
                      + histogram_svg([s["width"] for s in samples], "image width", "pixels")
                      + histogram_svg([s["height"] for s in samples], "image height", "pixels") + "</div>")

    areas = [(mask_area(s["mask"]), s["width"] * s["height"]) for s in samples if s["defective"]]
    area_block = ('<div class="charts">'
                  + histogram_svg([a for a, _ in areas], "defect area per defective image", "pixels")
                  + histogram_svg([100.0 * a / n for a, n in areas], "defect area per defective image", "% of image")
                  + "</div>")

    figures = []
    chosen = pick_thumbnails(samples, thumbnails)
    for s in tqdm(chosen, desc="thumbnails", unit="img", file=sys.stderr,
                  disable=(not sys.stderr.isatty()) if progress is None else not progress):
        image = cv2.imdecode(np.fromfile(version_dir / s["image"], np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            continue
        thumb = overlay(image, decode_mask(s["mask"]))
        label = '<span class="def">defective</span>' if s["defective"] else '<span class="ok">OK</span>'
        figures.append(f'<figure><img alt="{_esc(s["id"])}" src="{_data_uri(thumb)}">'
                       f'<figcaption title="{_esc(s["id"])}">{_esc(s["id"])}<br>{_esc(s["split"])} · {label}'
                       f"</figcaption></figure>")

    source = document["source"]
    options = ", ".join(f"{k}={v}" for k, v in source.get("options", {}).items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{_esc(document['name'])} {_esc(document['version'])} - dataset report</title>
<style>{CSS}</style></head><body>
<h1>{_esc(document['name'])} <small>{_esc(document['version'])}</small></h1>
<p class="meta">{_esc(source.get('dataset', ''))} {_esc(source.get('release', ''))} · converter
{_esc(source.get('converter', ''))} {_esc(source.get('converter_version', ''))} · {_esc(options)}<br>
Licence: {_esc(document['license'])} · schema {_esc(document['schema'])} · {len(samples)} images</p>
<h2>Counts per split</h2>
{_table(["split", "images", "defective", "OK"], split_rows)}
<h2>Counts per group</h2>
{_table(group_header, group_rows)}
<h2>Image sizes</h2>
{size_block}
<h2>Defect areas</h2>
{area_block}
<h2>Samples (defect mask in red)</h2>
<div class="grid">{''.join(figures)}</div>
</body></html>
"""


def write_report(path: Path, output: Path | None = None, thumbnails: int = 24, progress: bool | None = None) -> Path:
    """Write the report (default DIR/report.html) atomically and return its path."""
    version_dir, document = load_dataset(Path(path))
    output = Path(output) if output else version_dir / "report.html"
    text = build_report(version_dir, document, thumbnails=thumbnails, progress=progress)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, output)
    return output
