"""`asset predict` (issue 26): a model on a generated folder, a generated video file (MJPG .avi) and a live MJPEG
stream served over HTTP by a local process; rows equal what the Predictor decides on the same pixels; overlays;
Ctrl-C leaves every finished row and a playable overlay video; clear errors for bad sources and outputs."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from asset import predict
from asset.cli import main
from asset.predictor import Predictor
from tests import REPO
from tests.asset.backend_helpers import make_model_dir
from tests.asset.helpers import make_dataset

SIZE = 64


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A MobileNetV2-Unet fitted in a few full-batch steps on bright squares (no `asset train`: seconds)."""
    root = tmp_path_factory.mktemp("predict")
    data = make_dataset(root / "ds", n_train=12, n_test=4, size=SIZE)
    return make_model_dir(root / "m", data, train_steps=40)


def part(i: int, defect: bool) -> np.ndarray:
    rng = np.random.default_rng(1000 + i)
    img = rng.integers(60, 120, size=(SIZE, SIZE), dtype=np.uint8)
    if defect:
        img[8:24, 8:24] = 230
    return img


def reference(model_dir: Path, images: list[np.ndarray]) -> list:
    with Predictor(model_dir, backend="pytorch") as p:
        return p.predict(images)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> list[np.ndarray]:
    """Frames (gray) into an MJPG .avi; returns the frames as OpenCV decodes them back (RGB), which is what
    predict sees (MJPG is lossy)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, (SIZE, SIZE))
    assert writer.isOpened(), "no MJPG writer in this OpenCV build"
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    cap = cv2.VideoCapture(str(path))
    decoded = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(f, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(decoded) == len(frames)
    return decoded


def test_folder(model, tmp_path, capsys):
    folder = tmp_path / "parts"
    images = {}
    for i in range(6):
        name = f"line{i % 2}/part{i}.png"
        images[name] = part(i, defect=i % 2 == 0)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[name]).save(folder / name)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "notes.txt").write_text("not an image")
    out, save = tmp_path / "rows.csv", tmp_path / "overlays"
    rc = main(["predict", "--model", str(model), str(folder), "--out", str(out), "--save", str(save),
               "--batch-size", "4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1  # one image did not decode: reported, the others predicted
    assert "broken.png" in err and "6 predicted" in err and "1 unreadable" in err
    rows = read_csv(out)
    assert [r["name"] for r in rows] == sorted([*images, "broken.png"])
    broken = next(r for r in rows if r["name"] == "broken.png")
    assert "does not decode" in broken["error"] and broken["defective"] == ""
    names = sorted(images)
    refs = dict(zip(names, reference(model, [images[n] for n in names])))
    for r in rows:
        if r["name"] == "broken.png":
            continue
        ref = refs[r["name"]]
        assert r["defective"] == ("true" if ref.defective else "false")
        assert float(r["value"]) == pytest.approx(ref.value, abs=1e-7)
        assert float(r["threshold"]) == pytest.approx(ref.threshold)
        assert (int(r["width"]), int(r["height"]), r["frame"], r["error"]) == (SIZE, SIZE, "", "")
        overlay = Path(r["overlay"])
        assert overlay == save / Path(r["name"]).with_suffix(".png") and overlay.is_file()
        assert np.asarray(Image.open(overlay)).shape == (SIZE, SIZE, 3)
    # the fitted model tells the bright squares apart
    assert [refs[n].defective for n in names] == [int(n.split("part")[1][0]) % 2 == 0 for n in names]
    assert not list(save.rglob(".*tmp*"))

    # an existing --out is refused before anything runs; --overwrite replaces it
    assert main(["predict", "--model", str(model), str(folder), "--out", str(out), "--no-progress"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["predict", "--model", str(model), str(folder / "line0" / "part0.png"), "--out", str(out),
                 "--overwrite", "--no-progress"]) == 0
    assert [r["name"] for r in read_csv(out)] == [str(folder / "line0" / "part0.png")]


def test_glob_to_stdout_jsonl(model, tmp_path, capsys):
    for i in range(3):
        Image.fromarray(part(i, defect=i == 1)).save(tmp_path / f"p{i}.png")
    Image.fromarray(part(9, False)).save(tmp_path / "other.bmp")
    assert main(["predict", "--model", str(model), str(tmp_path / "p*.png"), "--format", "jsonl",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["name"]).name for r in rows] == ["p0.png", "p1.png", "p2.png"]
    assert all(isinstance(r["defective"], bool) and r["frame"] is None for r in rows)


def test_video_file(model, tmp_path, capsys):
    n = 9
    frames = write_video(tmp_path / "line.avi", [part(i, defect=i % 3 == 0) for i in range(n)], fps=10.0)
    out, save = tmp_path / "video.jsonl", tmp_path / "ov"
    assert main(["predict", "--model", str(model), str(tmp_path / "line.avi"), "--out", str(out), "--save", str(save),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"{n} predicted" in err and "frames/s" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(n))
    assert [r["time_s"] for r in rows] == pytest.approx([i / 10.0 for i in range(n)])
    refs = reference(model, frames)
    assert [r["defective"] for r in rows] == [p.defective for p in refs]
    assert [r["value"] for r in rows] == pytest.approx([p.value for p in refs], abs=1e-7)
    video = save / "line.overlay.avi"
    assert {r["overlay"] for r in rows} == {str(video)}
    cap = cv2.VideoCapture(str(video))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n
    cap.release()
    assert not list(save.glob(".*"))

    # every 4th frame, at most 2
    assert main(["predict", "--model", str(model), str(tmp_path / "line.avi"), "--stride", "4", "--max-frames", "2",
                 "--no-progress"]) == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [int(r["frame"]) for r in rows] == [0, 4]


def test_interrupt_keeps_every_finished_row(model, tmp_path):
    """Ctrl-C while the 5th frame is read, batches of 3: the first batch's 3 rows whole after the header (the 4th
    frame, read but not yet predicted, is not written), the overlay video closed and renamed into place."""
    n = 8
    write_video(tmp_path / "long.avi", [part(i, defect=i % 2 == 0) for i in range(n)])
    source = predict.open_source(str(tmp_path / "long.avi"))
    frames = iter(source)

    class Interrupted(predict.Source):
        kind, name, fps, total = source.kind, source.name, source.fps, source.total

        def __iter__(self):
            for k, f in enumerate(frames):
                if k == 4:
                    raise KeyboardInterrupt
                yield f

        def close(self):
            source.close()

    out, save = tmp_path / "rows.csv", tmp_path / "ov"
    with Predictor(model, backend="pytorch") as p:
        summary = predict.run(p, Interrupted(), predict.RowWriter(out), save=save, batch_size=3)
    assert summary.interrupted and summary.rows == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("name,frame,")
    assert [int(r["frame"]) for r in read_csv(out)] == [0, 1, 2]
    cap = cv2.VideoCapture(str(save / "long.overlay.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    cap.release()
    assert not list(save.glob(".*"))


def test_sigint_from_outside_stops_cleanly(model, tmp_path):
    """A real SIGINT to `asset predict` on an endless stream: exit code 130, every written row whole."""
    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, "-m", "tests.asset.mjpeg_server", str(port_file)], cwd=REPO)
    try:
        port = int(_wait_for(port_file.exists, 600) and port_file.read_text())
        out = tmp_path / "live.csv"
        proc = subprocess.Popen([sys.executable, "-m", "asset.cli", "predict", "--model", str(model),
                                 f"http://127.0.0.1:{port}/cam.mjpg", "--out", str(out), "--no-progress"],
                                cwd=REPO, stderr=subprocess.PIPE, text=True,
                                # a suite started in the background (`make test &`) ignores SIGINT, and children
                                # inherit that: give this one the terminal's default, as a user's Ctrl-C meets
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            assert _wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 4, 900), proc.poll()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, err
        assert "interrupted" in err
        rows = read_csv(out)
        assert len(rows) >= 3 and all(r["defective"] in ("true", "false") and r["value"] for r in rows)
        assert [int(r["frame"]) for r in rows] == list(range(len(rows)))
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_http_stream_from_a_local_process(model, tmp_path, capsys):
    """A live MJPEG stream (multipart/x-mixed-replace over HTTP, as IP cameras serve) from another process."""
    port_file = tmp_path / "port"
    server = subprocess.Popen([sys.executable, "-m", "tests.asset.mjpeg_server", str(port_file)], cwd=REPO)
    try:
        port = int(_wait_for(port_file.exists, 600) and port_file.read_text())
        url = f"http://user:secret@127.0.0.1:{port}/cam.mjpg"
        out, save = tmp_path / "live.csv", tmp_path / "ov"
        assert main(["predict", "--model", str(model), url, "--max-frames", "6", "--out", str(out), "--save",
                     str(save), "--no-progress"]) == 0
        err = capsys.readouterr().err
        assert "stream http://***@127.0.0.1" in err and "6 predicted" in err and "frames/s" in err
        rows = read_csv(out)
        assert len(rows) == 6 and [int(r["frame"]) for r in rows] == list(range(6))
        assert all(float(rows[k]["time_s"]) <= float(rows[k + 1]["time_s"]) for k in range(5))
        assert "secret" not in out.read_text()
        # the server alternates defect / no defect: the fitted model sees both
        assert {r["defective"] for r in rows} == {"true", "false"}
        assert (save / f"http_127.0.0.1_{port}_cam.mjpg.overlay.avi").is_file() or len(list(save.glob("*.avi"))) == 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_for(check, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def test_bad_sources(model, tmp_path, capsys):
    with pytest.raises(predict.PredictError, match="no such file or folder"):
        predict.open_source(str(tmp_path / "missing.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(predict.PredictError, match="no images"):
        predict.open_source(str(tmp_path / "empty"))
    with pytest.raises(predict.PredictError, match="matches no image"):
        predict.open_source(str(tmp_path / "*.png"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(predict.PredictError, match="neither an image"):
        predict.open_source(str(tmp_path / "notes.txt"))
    (tmp_path / "fake.avi").write_bytes(b"not a video at all")
    with pytest.raises(predict.PredictError, match="cannot open this video"):
        predict.open_source(str(tmp_path / "fake.avi"))
    with pytest.raises(predict.PredictError, match="camera63: cannot open this camera"):
        predict.open_source("63")
    assert predict.redact("rtsp://admin:pw@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
    assert main(["predict", "--model", str(model), str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
