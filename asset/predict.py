"""`asset predict`: a model on unlabelled images, video files, streams and cameras (no torch unless the backend is
pytorch). The library behind asset/commands/predict.py:

    source = open_source("parts/")            # an image, a folder, a glob, a video file, rtsp://..., http://..., "0"
    with Predictor("models/m", backend="onnxruntime") as p, RowWriter(Path("out.csv")) as rows:
        summary = run(p, source, rows, save=Path("overlays"))

Every image or frame gives one row (decision, the value compared with the image threshold, score, defect fraction,
...), written and flushed as soon as it is known, so an interrupted run (Ctrl-C, SIGTERM) leaves every finished row
intact; overlays are written whole under a temporary name and renamed into place, a video's on close.
Video frames come from OpenCV's VideoCapture (FFmpeg: files, RTSP and HTTP streams; V4L2: cameras) in BGR and are
turned into RGB, as the training images were decoded.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asset.config import ConfigError

IMAGE_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv", ".webm", ".flv", ".ts", ".mjpeg",
              ".mjpg")
STREAM_RE = re.compile(r"^(rtsps?|rtmp|https?|udp|tcp|srt)://", re.IGNORECASE)
FIELDS = ("name", "frame", "time_s", "width", "height", "defective", "value", "threshold", "score", "defect_fraction",
          "max_prob", "overlay", "error")


class PredictError(ConfigError):
    """A source that cannot be read or an output that cannot be written; says which and why."""


@dataclass
class Frame:
    """One image to predict: a file's (name = its path) or a video's frame (name = the video, frame = its index)."""

    name: str
    image: np.ndarray | None
    frame: int | None = None
    time_s: float | None = None  # position in a video file, or seconds since a stream started
    error: str | None = None  # the image could not be read (then image is None)


def redact(url: str) -> str:
    """A stream address without its user:password (rows and logs must not carry credentials)."""
    return re.sub(r"^([a-zA-Z0-9+.-]+://)[^/@]*@", r"\1***@", url)


# ----------------------------------------------------------------------------- sources
class Source:
    """What to predict on. `kind`: image | folder | glob | video | stream | camera; `total` frames or images when
    known; `live` for streams and cameras (no end known, one frame at a time)."""

    kind: str = ""
    total: int | None = None
    live: bool = False
    name: str = ""
    fps: float | None = None

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass


class ImageFiles(Source):
    def __init__(self, kind: str, paths: list[Path], names: list[str], name: str) -> None:
        self.kind, self.paths, self.names, self.name = kind, paths, names, name
        self.total = len(paths)

    def __iter__(self) -> Iterator[Frame]:
        from asset.algorithm import load_image

        for path, name in zip(self.paths, self.names):
            try:
                image = load_image(path)
            except Exception as exc:  # Pillow raises many types on a bad file
                yield Frame(name, None, error=f"image does not decode ({type(exc).__name__}: {exc})")
                continue
            yield Frame(name, image)


class VideoFrames(Source):
    """A video file, stream or camera through cv2.VideoCapture; every `stride`-th frame, at most `max_frames`."""

    def __init__(self, kind: str, target: str | int, name: str, stride: int = 1, max_frames: int | None = None
                 ) -> None:
        import cv2

        self.kind, self.name, self.stride, self.max_frames = kind, name, int(stride), max_frames
        self.live = kind in ("stream", "camera")
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            self.cap.release()
            what = {"video": "video file (not a video OpenCV's FFmpeg reads?)",
                    "stream": "stream (unreachable, or a protocol/codec FFmpeg does not read?)",
                    "camera": "camera (no such device, no permission, or in use?)"}[kind]
            raise PredictError(f"{name}: cannot open this {what}")
        fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and fps > 0 else None
        if kind == "video":
            count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            if count > 0:
                self.total = -(-count // self.stride)
        if max_frames is not None:
            self.total = min(self.total, max_frames) if self.total is not None else max_frames

    def __iter__(self) -> Iterator[Frame]:
        import cv2

        start = time.monotonic()
        index, produced = -1, 0
        while self.max_frames is None or produced < self.max_frames:
            ok, frame = self.cap.read()
            if not ok or frame is None:
                return  # end of the file, or the stream stopped
            index += 1
            if index % self.stride:
                continue
            if self.kind == "video":
                t = index / self.fps if self.fps else None
            else:
                t = time.monotonic() - start
            image = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) if frame.ndim == 3 else frame
            produced += 1
            yield Frame(self.name, image, frame=index, time_s=None if t is None else round(t, 4))

    def close(self) -> None:
        self.cap.release()


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def open_source(spec: str, stride: int = 1, max_frames: int | None = None) -> Source:
    """SOURCE as `asset predict` takes it: a camera index (0, 1, ...), a stream URL (rtsp://, http://, ...), a
    video file (by extension), an image file, a folder (searched recursively) or a glob (quoted: 'parts/*.png')."""
    if stride < 1:
        raise PredictError(f"--stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise PredictError(f"--max-frames must be >= 1, got {max_frames}")
    spec = str(spec)
    if spec.isdigit():
        return VideoFrames("camera", int(spec), f"camera{spec}", stride, max_frames)
    if STREAM_RE.match(spec):
        return VideoFrames("stream", spec, redact(spec), stride, max_frames)
    path = Path(spec)
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise PredictError(f"{path}: no images ({' '.join(IMAGE_EXTS)}) in this folder or below it")
        return ImageFiles("folder", files, [p.relative_to(path).as_posix() for p in files], str(path))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in VIDEO_EXTS:
            return VideoFrames("video", str(path), str(path), stride, max_frames)
        if suffix in IMAGE_EXTS:
            return ImageFiles("image", [path], [str(path)], str(path))
        raise PredictError(f"{path}: neither an image ({' '.join(IMAGE_EXTS)}) nor a video ({' '.join(VIDEO_EXTS)})")
    if glob.has_magic(spec):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_EXTS)
        if not files:
            raise PredictError(f"{spec}: the pattern matches no image files")
        return ImageFiles("glob", files, [str(p) for p in files], spec)
    raise PredictError(f"{spec}: no such file or folder (SOURCE is an image, a folder, a glob, a video file, a "
                       "stream URL such as rtsp://host/path, or a camera index such as 0)")


# ----------------------------------------------------------------------------- output
def output_format(path: Path | None, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in ("csv", "jsonl"):
            raise PredictError(f"--format must be csv or jsonl, got {fmt!r}")
        return fmt
    return "jsonl" if path is not None and path.suffix.lower() in (".jsonl", ".ndjson", ".json") else "csv"


class RowWriter:
    """One row per prediction, flushed as written (CSV with a header, or JSON Lines) to `path` or stdout. An
    existing file is refused unless overwrite=True. Rows are whole lines: what an interrupted run wrote parses."""

    def __init__(self, path: Path | None, fmt: str | None = None, overwrite: bool = False) -> None:
        self.path = path
        self.fmt = output_format(path, fmt)
        self.rows = 0
        if path is None:
            self.fh = sys.stdout
            self._own = False
        else:
            if path.exists() and not overwrite:
                raise PredictError(f"{path}: already exists; pass --overwrite to replace it, or another --out")
            if path.is_dir():
                raise PredictError(f"{path}: is a directory; --out takes a file (.csv or .jsonl)")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                self.fh = open(path, "w", newline="", encoding="utf-8")
            except OSError as exc:
                raise PredictError(f"{path}: cannot be written ({exc.strerror or exc})") from None
            self._own = True
        if self.fmt == "csv":
            self._csv = csv.DictWriter(self.fh, fieldnames=FIELDS, lineterminator="\n")
            self._csv.writeheader()
            self.fh.flush()

    def write(self, row: dict) -> None:
        if self.fmt == "csv":
            self._csv.writerow({k: _csv_value(row.get(k)) for k in FIELDS})
        else:
            self.fh.write(json.dumps({k: row.get(k) for k in FIELDS}) + "\n")
        self.fh.flush()
        self.rows += 1

    def close(self) -> None:
        if self._own and not self.fh.closed:
            self.fh.close()
        elif not self._own:
            self.fh.flush()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def row_of(frame: Frame, pred=None, overlay: str | None = None) -> dict:
    row = {"name": frame.name, "frame": frame.frame, "time_s": frame.time_s, "overlay": overlay, "error": frame.error}
    if pred is not None:
        h, w = pred.mask.shape[:2]
        row.update({"width": int(w), "height": int(h), "defective": bool(pred.defective),
                    "value": round(float(pred.value), 8), "threshold": round(float(pred.threshold), 8),
                    "score": round(float(pred.score), 8), "defect_fraction": round(float(pred.defect_fraction), 8),
                    "max_prob": round(float(pred.max_prob), 6)})
    return row


# ----------------------------------------------------------------------------- overlays
def overlay(image: np.ndarray, pred) -> np.ndarray:
    """The image (RGB) with the predicted defect pixels tinted red and outlined, and a banner with the decision and
    the value the threshold was compared with. RGB uint8."""
    import cv2

    rgb = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    out = np.ascontiguousarray(rgb[:, :, :3], dtype=np.uint8).copy()
    m = pred.mask.astype(bool)
    if m.any():
        out[m] = (0.5 * out[m] + 0.5 * np.array([255, 0, 0])).astype(np.uint8)
        contours, _ = cv2.findContours(pred.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 0, 0), 1)
    text = f"{'DEFECTIVE' if pred.defective else 'OK'} {pred.value:.3g} (t {pred.threshold:.3g})"
    scale = max(0.3, min(out.shape[:2]) / 400)
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(out, (0, 0), (min(out.shape[1], tw + 6), th + base + 6), (0, 0, 0), -1)
    cv2.putText(out, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale,
                (255, 80, 80) if pred.defective else (80, 255, 80), 1, cv2.LINE_AA)
    return out


def _safe_relpath(name: str) -> Path:
    """A row name as a relative path under the overlay folder (no root, no '..')."""
    parts = [p for p in Path(name).parts if p not in ("", ".", "..") and p != Path(name).anchor]
    return Path(*parts) if parts else Path("image")


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


class VideoOverlay:
    """An annotated video (MJPG .avi) written under a temporary name and renamed into place on close (also after
    Ctrl-C), so the final name only ever holds a closed, playable file."""

    def __init__(self, path: Path, fps: float | None) -> None:
        self.path, self.fps = path, fps or 10.0
        self.tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
        self.writer = None
        self.size: tuple[int, int] | None = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        h, w = rgb.shape[:2]
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter.fourcc(*"MJPG"), float(self.fps), (w, h))
            if not self.writer.isOpened():
                raise PredictError(f"{self.path}: the overlay video cannot be written (MJPG)")
            self.size = (w, h)
        if (w, h) != self.size:  # a stream that changed resolution: keep the first size
            rgb = cv2.resize(rgb, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
            os.replace(self.tmp, self.path)


# ----------------------------------------------------------------------------- the loop
@dataclass
class Summary:
    rows: int = 0
    predicted: int = 0
    defective: int = 0
    errors: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    video_overlay: str | None = None

    @property
    def fps(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else 0.0


def _batches(frames: Iterator[Frame], size: int) -> Iterator[list[Frame]]:
    batch: list[Frame] = []
    for f in frames:
        batch.append(f)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run(predictor, source: Source, rows: RowWriter, *, save: Path | None = None, batch_size: int = 8,
        image_threshold: float | None = None, progress: bool = False) -> Summary:
    """Predict every image or frame of `source`, one row each (module doc). Ctrl-C (KeyboardInterrupt) stops it
    cleanly: the rows and overlays written so far stay, the overlay video is closed and renamed into place, and
    the summary says interrupted."""
    from tqdm import tqdm

    summary = Summary()
    video = None
    if save is not None and source.kind in ("video", "stream", "camera"):
        stem = Path(source.name).stem if source.kind == "video" else re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)
        video = VideoOverlay(Path(save) / f"{stem}.overlay.avi", source.fps)
    unit = "frame" if source.kind in ("video", "stream", "camera") else "img"
    bar = tqdm(total=source.total, unit=unit, desc=f"predicting {source.kind}", file=sys.stderr, disable=not progress,
               dynamic_ncols=True)
    start = time.monotonic()
    try:
        for batch in _batches(iter(source), 1 if source.live else max(1, int(batch_size))):
            good = [f for f in batch if f.image is not None]
            preds = iter(predictor.predict([f.image for f in good], image_threshold=image_threshold) if good else [])
            for f in batch:
                if f.image is None:
                    rows.write(row_of(f))
                    summary.errors += 1
                    print(f"warning: {f.name}: {f.error}", file=sys.stderr)
                else:
                    pred = next(preds)
                    where = None
                    if video is not None:
                        video.write(overlay(f.image, pred))
                        where = str(video.path)
                    elif save is not None:
                        target = Path(save) / _safe_relpath(f.name).with_suffix(".png")
                        write_png_atomic(target, overlay(f.image, pred))
                        where = str(target)
                    rows.write(row_of(f, pred, where))
                    summary.predicted += 1
                    summary.defective += int(pred.defective)
                summary.rows += 1
                bar.update()
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.monotonic() - start
        bar.close()
        source.close()
        if video is not None:
            video.close()
            summary.video_overlay = str(video.path) if video.path.exists() else None
        rows.close()
    return summary
