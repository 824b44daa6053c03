"""Model directory: checksums, format versions, atomic records."""

import json

import pytest

from asset import modeldir
from asset.modeldir import ModelDirError


@pytest.fixture
def mdir(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "weights.pt").write_bytes(b"weights")
    (d / "checkpoints").mkdir()
    (d / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
    modeldir.write_card(d, {"arch": "unet"})
    return d


def test_verify_ok_and_sha256sum_format(mdir):
    card = modeldir.verify(mdir)
    assert card["format"] == modeldir.FORMAT
    lines = (mdir / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == ["model.json", "weights.pt"]  # checkpoints not covered


def test_tampered_weights_refused(mdir):
    (mdir / "weights.pt").write_bytes(b"other")
    with pytest.raises(ModelDirError, match=r"changed: \['weights.pt'\]"):
        modeldir.verify(mdir)


def test_missing_file_refused(mdir):
    (mdir / "weights.pt").unlink()
    with pytest.raises(ModelDirError, match="missing"):
        modeldir.verify(mdir)


def test_other_format_refused(mdir):
    card = json.loads((mdir / "model.json").read_text())
    card["format"] = "defect-model/0"
    (mdir / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelDirError, match="another version"):
        modeldir.verify(mdir)


def test_not_a_model_dir(tmp_path):
    with pytest.raises(ModelDirError, match="no such"):
        modeldir.verify(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="not a model directory"):
        modeldir.verify(tmp_path)


def test_record_adds_section_and_new_files(mdir):
    (mdir / "exports").mkdir()
    (mdir / "exports" / "model.onnx").write_bytes(b"onnx")
    card = modeldir.record(mdir, "exports", {"file": "exports/model.onnx"}, key="onnx")
    assert card["exports"]["onnx"]["file"] == "exports/model.onnx"
    assert "exports/model.onnx" in modeldir.read_checksums(mdir)
    modeldir.verify(mdir)
    assert not list(mdir.glob(".tmp-*"))


def rewrite_card(mdir, **changes):
    card = json.loads((mdir / "model.json").read_text())
    card.update(changes)
    modeldir.write_card(mdir, card)  # checksums rewritten: only the containment check can refuse it


@pytest.mark.parametrize("changes", [
    {"weights": "../../etc/passwd"},
    {"weights": "/etc/passwd"},
    {"weights": "..\\..\\etc\\passwd"},
    {"exports": {"onnx": {"file": "exports/../../outside.onnx"}}},
    {"training": {"config": "/etc/shadow"}},
])
def test_card_paths_outside_the_directory_refused(mdir, changes):
    rewrite_card(mdir, **changes)
    for read in (modeldir.verify, modeldir.read_card_unverified):
        with pytest.raises(ModelDirError, match="outside the model directory"):
            read(mdir)


def test_checksum_paths_outside_the_directory_refused(mdir, tmp_path):
    sums = (mdir / "SHA256SUMS").read_text()
    (mdir / "SHA256SUMS").write_text(sums + f"{'0' * 64}  ../../etc/passwd\n")
    with pytest.raises(ModelDirError, match=r"SHA256SUMS line 3 names '../../etc/passwd'.*outside"):
        modeldir.verify(mdir)
    (mdir / "SHA256SUMS").write_text(sums + f"{'0' * 64}  /etc/passwd\n")
    with pytest.raises(ModelDirError, match="outside the model directory"):
        modeldir.verify(mdir)


def test_symlink_escaping_the_directory_refused(mdir, tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"weights")  # same bytes: the checksum alone would accept it
    (mdir / "weights.pt").unlink()
    (mdir / "weights.pt").symlink_to(secret)
    with pytest.raises(ModelDirError, match="is a link to .*outside the model directory"):
        modeldir.verify(mdir)


# ---------------------------------------------------------------------- exports: the contract with the backends
def test_export_kinds_keys_files_and_defaults():
    kinds = modeldir.EXPORT_KINDS
    assert {k: (v.format, v.backend, v.precision, v.file) for k, v in kinds.items()} == {
        "onnx": ("onnx", "onnxruntime", "fp32", "exports/model.onnx"),
        "onnx-int8": ("onnx-int8", "onnxruntime", "int8", "exports/model-int8.onnx"),
        "openvino": ("openvino", "openvino", "fp32", "exports/openvino/model.xml"),
        "tensorrt-fp16": ("tensorrt", "tensorrt", "fp16", "exports/model-fp16.engine"),
        "tensorrt-fp32": ("tensorrt", "tensorrt", "fp32", "exports/model-fp32.engine"),
        "tensorrt-int8": ("tensorrt", "tensorrt", "int8", "exports/model-int8.engine"),
    }
    assert all(k == v.key for k, v in kinds.items())
    assert modeldir.export_key("tensorrt") == "tensorrt-fp16"  # the format's default precision
    assert modeldir.export_key("tensorrt", "int8") == "tensorrt-int8"
    assert modeldir.export_key("onnx-int8") == modeldir.export_key("onnx-int8", "int8") == "onnx-int8"
    with pytest.raises(ModelDirError, match="unknown export format 'tflite'; valid: onnx, onnx-int8, openvino"):
        modeldir.export_key("tflite")
    with pytest.raises(ModelDirError, match="'onnx' has no fp16 export; it has fp32"):
        modeldir.export_key("onnx", "fp16")


@pytest.mark.parametrize("backend,precision,keys", [
    ("pytorch", "fp32", ()), ("pytorch", "fp16", ()),
    ("onnxruntime", "fp32", ("onnx",)), ("onnxruntime", "int8", ("onnx-int8",)),
    ("openvino", "fp32", ("openvino", "onnx")),  # the IR, else OpenVINO reads the ONNX export
    ("openvino", "int8", ("onnx-int8",)),  # OpenVINO runs the QDQ model
    ("tensorrt", "fp32", ("tensorrt-fp32",)), ("tensorrt", "fp16", ("tensorrt-fp16",)),
    ("tensorrt", "int8", ("tensorrt-int8",)),
])
def test_export_keys_for_each_backend(backend, precision, keys):
    assert modeldir.export_keys_for(backend, precision) == keys
    assert modeldir.export_key_for(backend, precision) == (keys[0] if keys else None)


def test_export_key_for_a_precision_nothing_runs():
    with pytest.raises(ModelDirError, match="no export runs on backend 'onnxruntime' at fp16"):
        modeldir.export_key_for("onnxruntime", "fp16")


def test_export_command_names_format_and_precision_when_it_has_several():
    assert modeldir.export_command("onnx", "models/m") == "asset export --model models/m --format onnx"
    assert modeldir.export_command("openvino", "m") == "asset export --model m --format openvino"
    assert modeldir.export_command("tensorrt-int8", "m") == "asset export --model m --format tensorrt --precision int8"
    with pytest.raises(ModelDirError, match="unknown export 'tflite'"):
        modeldir.export_command("tflite", "m")


def test_find_export_first_recorded_and_contained(mdir):
    assert modeldir.find_export(modeldir.verify(mdir), mdir, ("openvino", "onnx")) is None
    (mdir / "exports").mkdir()
    (mdir / "exports" / "model.onnx").write_bytes(b"onnx")
    card = modeldir.record(mdir, "exports", {"file": "exports/model.onnx"}, key="onnx")
    key, entry, path = modeldir.find_export(card, mdir, ("openvino", "onnx"))
    assert (key, entry["file"], path) == ("onnx", "exports/model.onnx", mdir / "exports/model.onnx")
    card["exports"]["openvino"] = {"file": "../elsewhere/model.xml"}
    with pytest.raises(ModelDirError, match="outside the model directory"):
        modeldir.find_export(card, mdir, ("openvino", "onnx"))


def test_runtime_modules_do_not_import_the_export_package():
    """The backends and the model directory read exports through the contract alone (no build-time imports)."""
    import subprocess
    import sys

    code = ("import sys, asset.modeldir, asset.backends, asset.backends.base, asset.backends.ov, "
            "asset.backends.ort, asset.backends.trt, asset.backends.pytorch; "
            "print(sorted(m for m in sys.modules if m.startswith('asset.export')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
