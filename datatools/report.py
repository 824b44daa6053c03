"""`datatool report`: one self-contained HTML page showing what a dataset holds.

Counts per split, label and group, image-size and defect-area histograms (inline SVG), and a
grid of thumbnails with the defect mask overlaid in red (as in Gibson & Cano, Figure 3). No
external assets: images are base64 data URIs, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from datatools.errors import DatasetError
from datatools.masks import decode_mask, mask_area
from datatools.records import SPLITS
from datatools.validate import load_dataset

THUMB = 160
CSS = f"""
body{{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1180px}}
h1{{margin-bottom:4px}} h2{{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}}
.meta th,.meta td{{text-align:left;border:none;background:none;padding:1px 12px 1px 0}}
.meta th{{color:#666;font-weight:normal}} table{{border-collapse:collapse;margin:8px 0}}
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


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _num(value: float) -> str:
    """Short axis label: whole numbers from 100 up, 3 significant digits below."""
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def histogram_svg(values: list[float], title: str, unit: str, bins: int = 20, width: int = 520, height: int = 230) -> str:
    """A bar chart of `values` as inline SVG, with axis ticks (empty-data safe)."""
    if not values:
        return f"<p>{_esc(title)}: no data</p>"
    lo, hi = float(min(values)), float(max(values))
    if hi == lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    left, bottom, top, right = 48, 40, 26, 28
    plot_w, plot_h = width - left - right, height - bottom - top
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / bins
    base = top + plot_h
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="{_esc(title)}" font-family="sans-serif">',
             f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{_esc(title)}</text>']
    for frac in (0.5, 1.0):
        y = base - plot_h * frac
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_num(peak * frac)}</text>')
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + i * bar_w
        parts.append(f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" height="{h:.1f}" '
                     f'fill="#4a78b5"><title>{edges[i]:.4g} to {edges[i + 1]:.4g} {_esc(unit)}: {count}</title></rect>')
    parts.append(f'<line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}" stroke="#333"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="#333"/>')
    parts.append(f'<text x="{left - 6}" y="{base + 4}" text-anchor="end" font-size="11">0</text>')
    for value in _ticks(lo, hi):
        x = left + plot_w * (value - lo) / (hi - lo)
        parts.append(f'<line x1="{x:.1f}" y1="{base}" x2="{x:.1f}" y2="{base + 4}" stroke="#333"/>')
        parts.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle" font-size="11">{_num(value)}</text>')
    parts.append(f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle" font-size="11">'
                 f'{_esc(unit)} (images per bar on the vertical axis)</text>')
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
    # Area-average then "> 0", so thin defects (cracks, scratches) survive the downscale.
    small_mask = (cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8)
    if small_mask.any():
        red = np.zeros_like(small)
        red[..., 2] = 255
        blended = cv2.addWeighted(small, 0.6, red, 0.4, 0)
        small = np.where(small_mask[..., None] > 0, blended, small)
        contours, _ = cv2.findContours(small_mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(small, contours, -1, (0, 0, 255), 1)
    return small


def _data_uri(bgr: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", bgr)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _spread(pool: list[dict]) -> list[dict]:
    """Order samples so that any prefix covers the groups and splits evenly (deterministic).

    Round-robin over groups; each group cycles through its splits, starting at a different split
    per group; within a (group, split) the order is a hash of the id, so it is not just the first ids.
    """
    buckets: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for s in pool:
        buckets[s["group"]][s["split"]].append(s)
    queues = []
    for g_index, group in enumerate(sorted(buckets)):
        splits = [sp for sp in SPLITS if buckets[group][sp]]
        splits = splits[g_index % len(splits):] + splits[:g_index % len(splits)]
        for sp in splits:
            buckets[group][sp].sort(key=lambda s: hashlib.sha256(s["id"].encode()).hexdigest())
        queues.append([buckets[group][sp] for sp in splits])
    ordered: list[dict] = []
    turn = 0
    while any(any(q) for q in queues):
        for split_queues in queues:
            for offset in range(len(split_queues)):
                queue = split_queues[(turn + offset) % len(split_queues)]
                if queue:
                    ordered.append(queue.pop(0))
                    break
        turn += 1
    return ordered


def pick_thumbnails(samples: list[dict], count: int) -> list[dict]:
    """Deterministic, mixed selection: half defective (when there are enough), spread over groups and splits.

    Defective images come first, then OK ones.
    """
    defective = _spread([s for s in samples if s["defective"]])
    ok = _spread([s for s in samples if not s["defective"]])
    n_def = min(len(defective), max((count + 1) // 2, count - len(ok)))
    return defective[:n_def] + ok[:count - n_def]


def build_report(version_dir: Path, document: dict, thumbnails: int = 24, progress: bool | None = None) -> str:
    samples = document["samples"]
    splits = document["splits"]
    split_rows = [[s, splits[s]["images"], splits[s]["defective"], splits[s]["images"] - splits[s]["defective"]]
                  for s in SPLITS]
    split_rows.append(["all", sum(r[1] for r in split_rows), sum(r[2] for r in split_rows), sum(r[3] for r in split_rows)])
    split_header = ["split", "images", "defective", "OK"]
    unmasked = Counter(s["split"] for s in samples if not s.get("mask_labelled", True))
    if unmasked:  # image-level labels: defective images without a mask
        split_header.append("defective without mask")
        for row in split_rows:
            row.append(sum(unmasked.values()) if row[0] == "all" else unmasked[row[0]])

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

    # image-level labels (mask_labelled false) have no defect area to show
    areas = [(mask_area(s["mask"]), s["width"] * s["height"]) for s in samples
             if s["defective"] and s.get("mask_labelled", True)]
    pixels = [a for a, _ in areas]
    percent = [100.0 * a / n for a, n in areas]
    area_block = ('<div class="charts">'
                  + histogram_svg(pixels, "defect area per defective image, pixels", "pixels")
                  + histogram_svg(percent, "defect area per defective image, % of image", "% of image")
                  + "</div>")
    if areas:
        stats = [[unit, len(v), f"{min(v):.4g}", f"{float(np.median(v)):.4g}", f"{float(np.mean(v)):.4g}",
                  f"{max(v):.4g}"] for unit, v in (("pixels", pixels), ("% of image", percent))]
        area_block += _table(["defect area", "images", "min", "median", "mean", "max"], stats)

    figures = []
    chosen = pick_thumbnails(samples, thumbnails)
    for s in tqdm(chosen, desc="thumbnails", unit="img", file=sys.stderr,
                  disable=(not sys.stderr.isatty()) if progress is None else not progress):
        image = cv2.imdecode(np.fromfile(version_dir / s["image"], np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            continue
        thumb = overlay(image, decode_mask(s["mask"]))
        label = '<span class="def">defective</span>' if s["defective"] else '<span class="ok">OK</span>'
        if not s.get("mask_labelled", True):
            label += " (no mask)"
        figures.append(f'<figure><img alt="{_esc(s["id"])}" src="{_data_uri(thumb)}">'
                       f'<figcaption title="{_esc(s["id"])}">{_esc(s["id"])}<br>{_esc(s["split"])} · {label}'
                       f"</figcaption></figure>")

    source = document["source"]
    options = ", ".join(f"{k}={v}" for k, v in source.get("options", {}).items())
    converter = f"{source.get('converter', '')} {source.get('converter_version', '')}".strip()
    meta_rows = [("source", " ".join(str(source.get(k, "")) for k in ("dataset", "release")).strip()),
                 ("url", source.get("url", "")),  # plain text, never a link or an asset
                 ("converter", converter), ("options", options), ("licence", document["license"]),
                 ("schema", document["schema"]), ("images", len(samples))]
    meta = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in meta_rows if v not in ("", None))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{_esc(document['name'])} {_esc(document['version'])} - dataset report</title>
<style>{CSS}</style></head><body>
<h1>{_esc(document['name'])} <small>{_esc(document['version'])}</small></h1>
<table class="meta">{meta}</table>
<h2>Counts per split</h2>
{_table(split_header, split_rows)}
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
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, output)
    except OSError as exc:
        if tmp.is_file():
            tmp.unlink()
        raise DatasetError(f"{output}: report cannot be written ({exc.strerror or exc})") from None
    return output
