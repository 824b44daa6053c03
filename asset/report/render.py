"""The report as blocks (headings, paragraphs, tables, plots), written once as Markdown (plots as PNG files beside it)
and once as a self-contained HTML page (plots embedded as data URIs). report.json holds the same numbers."""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

from asset import files
from asset.report.analysis import Point, pareto_front, recommend, spearman, summary
from asset.report.collect import Collected, Model, ReportError

ENCODER_NAMES = {"mobilenet_v2": "MobileNetV2", "inceptionv4": "InceptionV4", "xception": "Xception",
                 "tu-efficientnet_lite0": "EfficientNet-Lite0", "timm-mobilenetv3_small_100": "MobileNetV3-S",
                 "timm-mobilenetv3_large_100": "MobileNetV3-L", "mobileone_s0": "MobileOne-S0"}
TOP = 5


def encoder_name(enc: str) -> str:
    if enc in ENCODER_NAMES:
        return ENCODER_NAMES[enc]
    m = re.fullmatch(r"(resnet|resnext|densenet|vgg|dpn|senet|se_resnet|regnetx|regnety)(.*)", enc)
    if m:
        return {"resnet": "ResNet", "resnext": "ResNeXt", "densenet": "DenseNet", "vgg": "VGG", "dpn": "DPN",
                "senet": "SENet", "se_resnet": "SE-ResNet", "regnetx": "RegNetX", "regnety": "RegNetY"}[m[1]] + m[2]
    m = re.fullmatch(r"(timm-)?efficientnet-(b\d)", enc)
    if m:
        return f"EfficientNet-{m[2].upper()}"
    return enc


def model_name(m: Model) -> str:
    """Encoder-Decoder, as in the paper (e.g. MobileNetV2-Unet)."""
    from asset.models.registry import ARCHITECTURES, arch_key

    try:
        arch = ARCHITECTURES[arch_key(m.arch)].name
    except ValueError:
        arch = m.arch
    return f"{encoder_name(m.encoder)}-{arch}"


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}"


def _iou(v):
    return "-" if v is None else f"{v:.3f}"


def resolve_device(c: Collected, device: str) -> str:
    """--device: a column (LABEL:BACKEND) or a device label that has exactly one column."""
    if device in c.columns:
        return device
    mine = [col for col in c.columns if col.rsplit(":", 1)[0] == device]
    if len(mine) == 1:
        return mine[0]
    listed = ", ".join(c.columns) or "none (no benchmark figures)"
    if mine:
        raise ReportError(f"--device {device!r} has several backends; name one of: {', '.join(mine)}")
    raise ReportError(f"--device {device!r} is not among the devices of this report: {listed}")


class Builder:
    """Collects the blocks of the page and the numbers of report.json."""

    def __init__(self):
        self.blocks: list[tuple] = []
        self.plots: dict[str, bytes] = {}

    def add(self, *block):
        self.blocks.append(block)


def build(c: Collected, budget_ms: float | None = None, device: str | None = None,
          reference: str | None = None) -> tuple[Builder, dict]:
    if (budget_ms is None) != (device is None):
        raise ReportError("--budget-ms and --device go together")
    dev_col = resolve_device(c, device) if device else None
    ref_col = resolve_device(c, reference) if reference else (c.columns[0] if c.columns else None)
    b = Builder()
    data: dict = {"columns": c.columns, "reference": ref_col, "datasets": {}, "failed": c.failed,
                  "skipped": c.skipped, "left_out": c.left_out}
    b.add("h1", "Sweep report")
    b.add("p", f"Inference time: ms per image at batch 1 (median), one column per device and backend; reference "
               f"device for the speed table: {ref_col or 'none'}. Accuracy: image-level, IoU: dataset pixel IoU.")
    for ds in sorted({m.dataset for m in c.models.values()}):
        data["datasets"][ds] = _dataset(b, c, ds, ref_col, budget_ms, dev_col)
    if c.failed:
        b.add("h2", "Failed models")
        b.add("ul", [f"{k}: {why}" for k, why in c.failed])
    if c.skipped:
        b.add("h2", "Skipped combinations")
        b.add("ul", [f"{k}: {why}" for k, why in c.skipped])
    if c.left_out:
        b.add("h2", "Left out")
        b.add("ul", list(c.left_out))
    return b, data


def _dataset(b: Builder, c: Collected, ds: str, ref_col, budget_ms, dev_col) -> dict:
    models = [m for m in c.models.values() if m.dataset == ds]
    out: dict = {}
    b.add("h2", f"Dataset {ds}")
    sources = sorted({m.test_source for m in models})
    if sources != ["test"]:
        b.add("p", f"Test columns: {', '.join(sources)} (cross-dataset protocol).")
    notes: list[str] = []

    def ms_text(m: Model, col: str) -> str:
        cell = c.cells.get((m.key, col))
        if cell is not None and cell.ms is not None:
            return f"{cell.ms:.2f}"
        why = cell.reason if cell is not None else f"no benchmark of this model on {col}"
        if why not in notes:
            notes.append(why)
        return f"- [{notes.index(why) + 1}]"

    headers = ["Rank", "Test acc (%)", "Test IoU", "Val acc (%)", "Val IoU", "Architecture"] + \
              [f"{col} (ms)" for col in c.columns]

    def row(i, m):
        return [str(i), _pct(m.test_acc), _iou(m.test_iou), _pct(m.val_acc), _iou(m.val_iou), model_name(m)] + \
               [ms_text(m, col) for col in c.columns]

    by_acc = sorted(models, key=lambda m: (m.test_acc is None, -(m.test_acc or 0), -(m.test_iou or 0),
                                           -(m.val_acc or 0), model_name(m)))
    rows = [row(i + 1, m) for i, m in enumerate(by_acc[:TOP])]
    b.add("h3", f"Top {TOP} by test accuracy ({len(models)} models)")
    b.add("table", headers, rows)
    out["top_accuracy"] = {"headers": headers, "rows": rows}
    timed = [m for m in models if ref_col and (c.cells.get((m.key, ref_col)) or None) and
             c.cells[(m.key, ref_col)].ms is not None]
    by_ms = sorted(timed, key=lambda m: (c.cells[(m.key, ref_col)].ms, model_name(m)))
    rows2 = [row(i + 1, m) for i, m in enumerate(by_ms[:TOP])]
    b.add("h3", f"Top {TOP} by inference time on {ref_col or 'the reference device (none given)'}")
    b.add("table", headers, rows2)
    out["top_speed"] = {"headers": headers, "rows": rows2}
    if notes:
        b.add("ol", notes)
    out["footnotes"] = notes
    s_test, s_val = summary([m.test_acc for m in models]), summary([m.val_acc for m in models])
    out["summary"] = {"test": s_test, "val": s_val}
    b.add("p", f"Over all {len(models)} models: test accuracy median {_pct(s_test['median'])}%, mean "
               f"{_pct(s_test['mean'])}%; validation accuracy median {_pct(s_val['median'])}%, mean "
               f"{_pct(s_val['mean'])}%.")
    out["pareto"] = {}
    for col in c.columns:
        pts = _points(c, models, col)
        if not pts:
            continue
        front = pareto_front(pts)
        out["pareto"][col] = [p.name for p in front]
        b.add("h3", f"Accuracy vs latency on {col}: Pareto front")
        b.add("table", ["Architecture", "ms", "Test acc (%)", "Test IoU"],
              [[p.name, f"{p.ms:.2f}", _pct(p.acc), _iou(p.iou)] for p in front])
        fname = "plots/" + re.sub(r"[^A-Za-z0-9._-]+", "_", f"{ds}-{col}") + ".png"
        b.plots[fname] = plot_png(pts, front, f"{ds}: test accuracy vs ms per image on {col}")
        b.add("img", fname, f"Pareto front of {ds} on {col}")
    if budget_ms is not None:
        out["recommendation"] = _recommend(b, _points(c, models, dev_col), budget_ms, dev_col)
    out["spearman"] = []
    pairs = [(a, z) for i, a in enumerate(c.columns) for z in c.columns[i + 1:]]
    if pairs:
        rows3 = []
        for a, z in pairs:
            both = [m for m in models if all((c.cells.get((m.key, col)) or _NONE).ms is not None for col in (a, z))]
            rho = spearman([c.cells[(m.key, a)].ms for m in both], [c.cells[(m.key, z)].ms for m in both])
            out["spearman"].append({"a": a, "b": z, "n": len(both), "rho": rho})
            rows3.append([a, z, str(len(both)), "-" if rho is None else f"{rho:.3f}"])
        b.add("h3", "Rank correlation of model speed between devices (Spearman)")
        b.add("table", ["Device A", "Device B", "Models timed on both", "Spearman rho"], rows3)
        b.add("p", "rho = 1: the same speed ranking on both; lower: the fastest model on one is not the fastest on the "
                   "other ('-': fewer than 3 common models, or all times equal).")
    return out


class _Missing:
    ms = None


_NONE = _Missing()


def _points(c: Collected, models: list[Model], col: str | None) -> list[Point]:
    pts = []
    for m in models:
        cell = c.cells.get((m.key, col)) if col else None
        if cell is not None and cell.ms is not None and m.test_acc is not None:
            pts.append(Point(model_name(m), cell.ms, m.test_acc, m.test_iou))
    return pts


def _recommend(b: Builder, pts: list[Point], budget_ms: float, col: str) -> dict:
    r = recommend(pts, budget_ms)
    b.add("h3", f"Recommendation: budget {budget_ms:g} ms per image on {col}")
    lines = []
    if r["best"] is None:
        f = r["fastest"]
        lines.append(f"No model meets {budget_ms:g} ms on {col}" +
                     (f"; the fastest is {f.name} at {f.ms:.2f} ms ({_pct(f.acc)}%)." if f else "."))
    else:
        best = r["best"]
        lines.append(f"Recommended: {best.name}, test accuracy {_pct(best.acc)}%, {best.ms:.2f} ms.")
        ru = r["runner_up"]
        if ru is not None:
            lines.append(f"Runner-up: {ru.name}, {_pct(ru.acc)}% ({100 * (ru.acc - best.acc):+.2f} points), "
                         f"{ru.ms:.2f} ms ({ru.ms - best.ms:+.2f} ms).")
        else:
            lines.append("Runner-up: none (only one model meets the budget).")
        above = r["better_over_budget"]
        if above is not None:
            lines.append(f"More accurate but over budget: {above.name}, {_pct(above.acc)}% "
                         f"({100 * (above.acc - best.acc):+.2f} points) at {above.ms:.2f} ms "
                         f"({above.ms - budget_ms:+.2f} ms over).")
    b.add("ul", lines)
    return {k: (v.name if isinstance(v, Point) else v) for k, v in r.items()} | {"device": col, "text": lines}


# ----------------------------------------------------------------------------- plot
def plot_png(points: list[Point], front: list[Point], title: str, size=(760, 460)) -> bytes:
    """Test accuracy against time per image for every model (grey), the Pareto front in red: a staircase, since no
    model is reachable between two of its models. matplotlib's Agg canvas: no display, no global pyplot state."""
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    ax = fig.add_subplot()
    ax.scatter([p.ms for p in points], [100 * p.acc for p in points], s=30, color="lightgray", edgecolors="gray",
               zorder=2, label="models")
    if front:
        front_ms, front_acc = [p.ms for p in front], [100 * p.acc for p in front]
        ax.step(front_ms, front_acc, where="post", color="red", linewidth=2, zorder=3)
        ax.scatter(front_ms, front_acc, s=45, color="red", zorder=4, label="Pareto front")
        right_edge = max(p.ms for p in points)
        for p in front:  # names to the left of points near the right edge, so that they stay inside the axes
            left = p.ms > 0.65 * right_edge
            ax.annotate(p.name, (p.ms, 100 * p.acc), xytext=(-7 if left else 7, 6), textcoords="offset points",
                        ha="right" if left else "left", fontsize=8, color="darkred")
    ax.set_xlabel("ms per image (batch 1)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=10, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# ----------------------------------------------------------------------------- writers
def to_markdown(b: Builder) -> str:
    out = []
    for blk in b.blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3"):
            out.append("#" * int(kind[1]) + " " + blk[1])
        elif kind == "p":
            out.append(blk[1])
        elif kind == "ul":
            out.append("\n".join(f"- {x}" for x in blk[1]))
        elif kind == "ol":
            out.append("\n".join(f"[{i + 1}] {x}" for i, x in enumerate(blk[1])))
        elif kind == "table":
            cells = lambda r: "| " + " | ".join(str(x).replace("|", "/") for x in r) + " |"  # noqa: E731
            out.append("\n".join([cells(blk[1]), "|" + "---|" * len(blk[1])] + [cells(r) for r in blk[2]]))
        elif kind == "img":
            out.append(f"![{blk[2]}]({blk[1]})")
    return "\n\n".join(out) + "\n"


def to_html(b: Builder) -> str:
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>Sweep report</title><style>"
           "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
           "text-align:right}td:nth-child(6),th{text-align:left}img{max-width:100%}</style></head><body>"]
    for blk in b.blocks:
        kind = blk[0]
        if kind in ("h1", "h2", "h3", "p"):
            out.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind in ("ul", "ol"):
            out.append(f"<{kind}>" + "".join(f"<li>{e(x)}</li>" for x in blk[1]) + f"</{kind}>")
        elif kind == "table":
            out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in blk[1]) + "</tr>" +
                       "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in r) + "</tr>" for r in blk[2]) +
                       "</table>")
        elif kind == "img":
            data = base64.b64encode(b.plots[blk[1]]).decode()
            out.append(f"<img alt='{e(blk[2])}' src='data:image/png;base64,{data}'>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(b: Builder, data: dict, out_dir: Path) -> dict[str, Path]:
    """report.md + plots/*.png, report.html (self-contained), report.json; each file written atomically."""
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    for name, png in b.plots.items():
        files.write_bytes_atomic(out_dir / name, png)
    paths = {"md": out_dir / "report.md", "html": out_dir / "report.html", "json": out_dir / "report.json"}
    files.write_text_atomic(paths["md"], to_markdown(b))
    files.write_text_atomic(paths["html"], to_html(b))
    files.write_json_atomic(paths["json"], data)
    return paths
