"""Re-exporting a format (issue 27): the model directory stays valid and servable, the old export is what is
served until the new one is verified, concurrent exports both end recorded, and an export SHA256SUMS does not cover
is refused rather than loaded unverified.

The model-directory half runs on any machine in milliseconds (modeldir.install_export on plain files); the export
half re-exports every format that runs here (onnx, onnx-int8, openvino; TensorRT through the fakes of
test_trt_build.py) twice with different options, then starts the server on the directory."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from asset import files, modeldir
from asset.modeldir import ModelDirError
from tests import REPO


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def mdir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "weights.pt").write_bytes(b"weights")
    modeldir.write_card(d, {"arch": "unet", "exports": {}})
    return d


def stage_file(d: Path, name: str, data: bytes) -> Path:
    (d / "exports").mkdir(exist_ok=True)
    p = d / "exports" / f"{modeldir.TMP_PREFIX}{name}.x"
    p.write_bytes(data)
    return p


def stage_dir(d: Path, files: dict[str, bytes]) -> Path:
    p = d / "exports" / f"{modeldir.TMP_PREFIX}openvino.x"
    p.mkdir(parents=True)
    for name, data in files.items():
        (p / name).write_bytes(data)
    return p


def entry(key: str, **facts) -> dict:
    return {"file": modeldir.EXPORT_KINDS[key].file, **facts}


# ----------------------------------------------------------------------------- the model directory
def test_installing_a_file_export_twice_keeps_the_directory_valid(mdir):
    modeldir.install_export(mdir, "onnx", stage_file(mdir, "a", b"first onnx"), entry("onnx", opset=17))
    assert modeldir.verify(mdir)["exports"]["onnx"]["opset"] == 17
    card = modeldir.install_export(mdir, "onnx", stage_file(mdir, "b", b"second onnx"), entry("onnx", opset=18))
    assert card == modeldir.verify(mdir) and card["exports"]["onnx"]["opset"] == 18
    assert (mdir / "exports/model.onnx").read_bytes() == b"second onnx"
    assert modeldir.read_checksums(mdir)["exports/model.onnx"] == sha(mdir / "exports/model.onnx")
    assert not [p for p in (mdir / "exports").iterdir() if p.name.startswith(modeldir.TMP_PREFIX)]


def test_installing_a_directory_export_twice_drops_the_old_files(mdir):
    first = stage_dir(mdir, {"model.xml": b"<xml 1>", "model.bin": b"bin 1", "extra.bin": b"only in the first"})
    modeldir.install_export(mdir, "openvino", first, entry("openvino"))
    second = stage_dir(mdir, {"model.xml": b"<xml 2>", "model.bin": b"bin 2"})
    modeldir.install_export(mdir, "openvino", second, entry("openvino", n=2))
    sums = modeldir.read_checksums(mdir)
    assert sorted(r for r in sums if r.startswith("exports/")) == ["exports/openvino/model.bin",
                                                                   "exports/openvino/model.xml"]
    assert sorted(p.name for p in (mdir / "exports/openvino").iterdir()) == ["model.bin", "model.xml"]
    assert modeldir.verify(mdir)["exports"]["openvino"]["n"] == 2
    assert sorted(p.name for p in (mdir / "exports").iterdir()) == ["openvino"]  # no staged or old copy left


def test_the_directory_swap_works_without_renameat2(mdir, monkeypatch):
    monkeypatch.setattr(modeldir, "_exchange", lambda a, b: False)  # e.g. a file system without RENAME_EXCHANGE
    for n in (1, 2):
        modeldir.install_export(mdir, "openvino", stage_dir(mdir, {"model.xml": b"x%d" % n, "model.bin": b"b"}),
                                entry("openvino"))
    assert (mdir / "exports/openvino/model.xml").read_bytes() == b"x2"
    modeldir.verify(mdir)


def test_an_install_into_a_bad_directory_touches_nothing(mdir):
    modeldir.install_export(mdir, "onnx", stage_file(mdir, "a", b"first"), entry("onnx"))
    (mdir / "weights.pt").write_bytes(b"tampered")
    staged = stage_file(mdir, "b", b"second")
    before = {p: p.read_bytes() for p in mdir.rglob("*") if p.is_file() and p.name != modeldir.LOCK}
    with pytest.raises(ModelDirError, match=r"changed: \['weights.pt'\]"):
        modeldir.install_export(mdir, "onnx", staged, entry("onnx"))
    after = {p: p.read_bytes() for p in mdir.rglob("*") if p.is_file() and p.name != modeldir.LOCK}
    assert after == before  # the staged file is the caller's to remove


def test_an_export_missing_from_the_checksums_is_refused(mdir):
    modeldir.install_export(mdir, "onnx", stage_file(mdir, "a", b"onnx"), entry("onnx"))
    sums = (mdir / "SHA256SUMS").read_text().splitlines()
    (mdir / "SHA256SUMS").write_text("".join(f"{line}\n" for line in sums if "exports/model.onnx" not in line))
    with pytest.raises(ModelDirError, match=r"does not cover \['exports/model.onnx'\].*unverified"):
        modeldir.verify(mdir)


def test_a_file_added_to_a_directory_export_is_refused(mdir):
    modeldir.install_export(mdir, "openvino", stage_dir(mdir, {"model.xml": b"x", "model.bin": b"b"}),
                            entry("openvino"))
    (mdir / "exports/openvino/model.bin").unlink()
    (mdir / "exports/openvino/model.bin.new").write_bytes(b"other weights")  # not covered, in the IR's directory
    with pytest.raises(ModelDirError, match=r"does not cover \['exports/openvino/model.bin.new'\]"):
        modeldir.verify(mdir)


def test_the_lock_file_is_not_checksummed(mdir):
    modeldir.install_export(mdir, "onnx", stage_file(mdir, "a", b"onnx"), entry("onnx"))
    assert (mdir / modeldir.LOCK).exists() and modeldir.LOCK not in modeldir.read_checksums(mdir)
    modeldir.write_card(mdir, modeldir.verify(mdir))
    assert modeldir.LOCK not in modeldir.read_checksums(mdir)


def test_a_reader_waits_for_a_writer_holding_the_lock(mdir):
    """verify() in another process blocks while the directory's lock is held, and then reads the new state."""
    code = f"from asset import modeldir; print(modeldir.verify({str(mdir)!r})['exports'].get('onnx', {{}}).get('n'))"
    with modeldir.locked(mdir):
        reader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                reader.wait(timeout=1.5)  # blocked on the lock (it would answer at once otherwise)
            modeldir.install_export(mdir, "onnx", stage_file(mdir, "a", b"onnx"), entry("onnx", n=7))  # re-entrant
        except BaseException:
            reader.kill()
            raise
    out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0 and out.strip() == "7"


def test_a_read_only_directory_without_a_lock_file_still_verifies(mdir):
    (mdir / modeldir.LOCK).unlink(missing_ok=True)
    mdir.chmod(0o555)
    try:
        modeldir.verify(mdir)
    finally:
        mdir.chmod(0o755)


def _install_many(model_dir: str, key: str, n: int) -> None:
    d = Path(model_dir)
    for i in range(n):
        staged = d / "exports" / f"{modeldir.TMP_PREFIX}{key}.{i}"
        staged.write_bytes(f"{key} {i}".encode())
        modeldir.install_export(d, key, staged, entry(key, i=i))


def test_concurrent_installs_both_end_recorded(mdir):
    (mdir / "exports").mkdir()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_install_many, args=(str(mdir), key, 15)) for key in ("onnx", "onnx-int8")]
    for w in workers:
        w.start()
    _install_many(str(mdir), "tensorrt-fp32", 15)
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    card = modeldir.verify(mdir)
    assert {k: v["i"] for k, v in card["exports"].items()} == {"onnx": 14, "onnx-int8": 14, "tensorrt-fp32": 14}


def test_concurrent_records_both_end_in_the_card(mdir):
    ctx = multiprocessing.get_context("fork")

    def many(section):
        for i in range(20):
            modeldir.record(mdir, "notes", i, key=section)

    workers = [ctx.Process(target=many, args=(s,)) for s in ("a", "b")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    assert modeldir.verify(mdir)["notes"] == {"a": 19, "b": 19}


# ----------------------------------------------------------------------------- real exports
QUIET = {"log": lambda m: None}


def served_checksum(model: Path) -> str:
    """Start the server on `model` (lifespan: load, warm) and return the SHA256SUMS digest /model reports."""
    from fastapi.testclient import TestClient

    from asset.serve import Settings, create_app

    with TestClient(create_app(Settings(model=str(model), threads=1, warmup=False))) as client:
        import time

        for _ in range(600):
            r = client.get("/readyz")
            if r.status_code == 200 or "failed" in r.text:
                break
            time.sleep(0.05)
        assert r.status_code == 200, r.text
        return client.get("/model").json()["model"]["checksum"]


LOOSE_INT8 = {"max_accuracy_drop": 1.0}  # the network is untrained: these tests are about files, not accuracy


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """An untrained MobileNetV2-Unet, no export yet, its card completed as `asset train` writes it (the server needs
    the training size). No fitting: seconds."""
    from tests.asset.backend_helpers import make_model_dir
    from tests.asset.helpers import make_dataset

    root = tmp_path_factory.mktemp("reexport")
    m = make_model_dir(root / "m", make_dataset(root / "ds", n_train=8, n_test=4))
    card = modeldir.verify(m)
    card["input"]["train_size"] = [32, 32]
    modeldir.write_card(m, card)
    return m


def as_json(entry: dict) -> dict:
    return json.loads(json.dumps(entry, default=files.json_default))


@pytest.mark.parametrize("fmt,first,second", [
    ("onnx", {"opset": 17}, {"opset": 18, "dynamic": False}),
    ("onnx-int8", {"calib_images": 4, **LOOSE_INT8}, {"calib_images": 8, "per_channel": False, **LOOSE_INT8}),
    ("openvino", {"opset": 17}, {"opset": 18, "simplify": False}),
])
def test_reexport_twice_with_other_options_keeps_the_directory_servable(tmp_path, base_model, fmt, first, second):
    from asset.export import export_model
    from tests.asset.backend_helpers import copy_model

    m = copy_model(base_model, tmp_path / "m")
    key = modeldir.export_key(fmt)
    if fmt != "onnx":
        export_model(m, "onnx", verify_images=8, **QUIET)  # the source the others are made from
    onnx_sum = modeldir.read_checksums(m).get("exports/model.onnx")
    for options in (first, second):  # the second is the re-export
        e = export_model(m, fmt, verify_images=8, **options, **QUIET)
        card = modeldir.verify(m)  # was: "checksums do not match (changed: ['exports/model.onnx'])"
        assert card["exports"][key] == as_json(e)
        assert served_checksum(m) == sha(m / "SHA256SUMS")
    assert card["exports"][key]["opset"] == second.get("opset", 17)
    if fmt != "onnx":  # the other export is untouched
        assert modeldir.read_checksums(m)["exports/model.onnx"] == onnx_sum


def test_the_cli_reexport_of_the_issue(tmp_path, base_model):
    from asset.cli import main
    from tests.asset.backend_helpers import copy_model

    m = copy_model(base_model, tmp_path / "m")
    assert main(["export", "--model", str(m), "--format", "onnx", "--opset", "18", "--verify-images", "8"]) == 0
    assert modeldir.verify(m)["exports"]["onnx"]["opset"] == 18


def test_the_old_export_is_served_until_the_new_one_is_verified(tmp_path, base_model, monkeypatch):
    from asset.export import ExportError, export_model
    from asset.export import onnx as onnx_export
    from tests.asset.backend_helpers import copy_model

    m = copy_model(base_model, tmp_path / "m")
    export_model(m, "onnx", verify_images=8, **QUIET)
    old = sha(m / "exports/model.onnx")
    real = onnx_export.compare
    seen = []

    def checked(*a, **k):  # the new file is made and verified: the directory is still the old one, and valid
        figures = real(*a, **k)
        seen.append((sha(m / "exports/model.onnx"), modeldir.verify(m)["exports"]["onnx"]["opset"]))
        return figures

    monkeypatch.setattr(onnx_export, "compare", checked)
    export_model(m, "onnx", opset=18, verify_images=8, **QUIET)
    assert seen == [(old, 17)] and sha(m / "exports/model.onnx") != old

    def failing(*a, **k):
        raise ExportError("onnx failed verification against PyTorch (test)")

    installed = sha(m / "exports/model.onnx")
    monkeypatch.setattr(onnx_export, "compare", failing)
    with pytest.raises(ExportError):
        export_model(m, "onnx", opset=16, verify_images=8, **QUIET)
    assert sha(m / "exports/model.onnx") == installed and modeldir.verify(m)["exports"]["onnx"]["opset"] == 18
    assert not [p for p in (m / "exports").iterdir() if p.name.startswith(modeldir.TMP_PREFIX)]


def test_two_concurrent_exports_both_end_recorded(tmp_path, base_model):
    from tests.asset.backend_helpers import copy_model

    m = copy_model(base_model, tmp_path / "m")
    code = textwrap.dedent("""
        import sys
        from asset.export import export_model
        fmt, opset = sys.argv[1], int(sys.argv[2])
        export_model(sys.argv[3], fmt, opset=opset, verify_images=8, log=lambda m: None)
    """)
    runs = [subprocess.Popen([sys.executable, "-c", code, fmt, "18", str(m)], cwd=REPO, stderr=subprocess.PIPE,
                             text=True) for fmt in ("onnx", "openvino")]
    for r in runs:
        _, err = r.communicate(timeout=900)
        assert r.returncode == 0, err
    after = modeldir.verify(m)
    assert {key: after["exports"][key]["opset"] for key in after["exports"]} == {"onnx": 18, "openvino": 18}
    assert served_checksum(m) == sha(m / "SHA256SUMS")


def test_tensorrt_reexport_twice(tmp_path, base_model, monkeypatch):
    """The engine's install path (the build runs against test_trt_build.py's fakes: no TensorRT here)."""
    pytest.importorskip("onnxruntime")
    import asset.backends
    from asset.backends import load_backend
    from asset.export import tensorrt as T
    from tests.asset.backend_helpers import copy_model
    from tests.asset.test_trt_build import fake_modules

    calls: list = []
    trt, cuda, bindings, runtime, _ = fake_modules(calls)
    for name, mod in (("tensorrt", trt), ("cuda", cuda), ("cuda.bindings", bindings),
                      ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(asset.backends, "cuda_device_count", lambda: 1)
    m = copy_model(base_model, tmp_path / "m")
    from asset.export import export_model

    export_model(m, "onnx", verify_images=8, **QUIET)  # what engines are built from
    for options in ({"max_batch": 4, "workspace": 1.0}, {"max_batch": 8, "workspace": 2.0}):
        e = T.export_engine(m, precision="fp32", device="cuda", log=lambda s: None, verify_images=4, **options)
        card = modeldir.verify(m)
        assert card["exports"]["tensorrt-fp32"] == as_json(e) and e["profile"]["max"][0] == options["max_batch"]
        with load_backend("tensorrt", m, precision="fp32", device="cuda"):
            pass
    assert json.loads((m / "model.json").read_text())["exports"]["tensorrt-fp32"]["workspace_gb"] == 2.0
