"""`asset train --resume` on a directory it cannot trust: checkpoints are verified against checkpoints/SHA256SUMS
and loaded with weights_only=True, so an altered checkpoint is refused and a pickled callable never runs."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import torch

from asset.cli import main
from asset.training.checkpoints import CHECKSUMS, CheckpointError, load_checkpoint, verify_checkpoint


@pytest.fixture
def run_copy(trained_model, tmp_path):
    return shutil.copytree(trained_model, tmp_path / "run")


def test_checkpoints_are_listed_and_load_as_data(run_copy):
    listed = (run_copy / "checkpoints" / CHECKSUMS).read_text().split()
    assert "last.ckpt" in listed and "best.ckpt" in listed
    for name in ("last.ckpt", "best.ckpt"):
        verify_checkpoint(run_copy / "checkpoints" / name)
        state = load_checkpoint(run_copy / "checkpoints" / name)
        assert any(k.startswith("net.") for k in state["state_dict"])


def test_tampered_checkpoint_refused(run_copy, capsys):
    last = run_copy / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF
    last.write_bytes(bytes(data))
    assert main(["train", "--resume", str(run_copy), "--no-progress", "--epochs", "9"]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt" in err and "does not match" in err and "nothing was loaded" in err


def test_unlisted_checkpoint_refused(run_copy, capsys):
    (run_copy / "checkpoints" / CHECKSUMS).unlink()
    assert main(["train", "--resume", str(run_copy), "--no-progress", "--epochs", "9"]) == 2
    assert "not listed" in capsys.readouterr().err


class Payload:
    """Unpickling this calls exec(): what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_checkpoint_with_pickled_callable_refused_without_running_it(run_copy, tmp_path, capsys):
    marker = tmp_path / "payload-ran"
    last = run_copy / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    state["hyper_parameters"] = {"x": Payload(marker)}
    torch.save(state, last)
    # whoever wrote the checkpoint can rewrite its checksum too: the checksum passes, weights_only must refuse it
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    sums = run_copy / "checkpoints" / CHECKSUMS
    lines = [line for line in sums.read_text().splitlines() if not line.endswith("  last.ckpt")]
    sums.write_text("\n".join(lines + [f"{digest}  last.ckpt"]) + "\n")
    verify_checkpoint(last)
    with pytest.raises(CheckpointError, match="other than tensors and plain data"):
        load_checkpoint(last)
    assert main(["train", "--resume", str(run_copy), "--no-progress", "--epochs", "9"]) == 2
    assert "nothing was executed" in capsys.readouterr().err
    assert not marker.exists()
