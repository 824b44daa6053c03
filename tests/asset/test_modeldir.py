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
