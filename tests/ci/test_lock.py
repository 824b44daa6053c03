"""ci/lock.py: every image's hash lock matches today's requirement files, a stale one is caught offline, and pip
installs from a lock in this format only the wheels whose SHA-256 it lists."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests import REPO


def _lock_module():
    spec = importlib.util.spec_from_file_location("ci_lock", REPO / "ci/lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "ci"))
    spec.loader.exec_module(module)
    return module


def test_every_lock_matches_its_requirement_files():
    result = subprocess.run([sys.executable, "ci/lock.py", "--check"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 locks match their requirement files" in result.stdout


def test_a_changed_requirement_makes_its_lock_stale(tmp_path, monkeypatch):
    lock = _lock_module()
    for rel in ["asset/requirements-runtime.txt", "platforms/rpi4/requirements.lock"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, tmp_path / rel)
    monkeypatch.setattr(lock, "REPO", tmp_path)
    spec = lock.LOCKS["platforms/rpi4/requirements.lock"]
    assert lock.check("platforms/rpi4/requirements.lock", spec) == []
    runtime = tmp_path / "asset/requirements-runtime.txt"
    runtime.write_text(runtime.read_text().replace("tqdm==4.70.1", "tqdm==4.70.2"))
    problems = lock.check("platforms/rpi4/requirements.lock", spec)
    assert any("made from other requirement files (changed: asset/requirements-runtime.txt)" in p for p in problems)
    assert any("tqdm==4.70.2 (asset/requirements-runtime.txt) is locked as 4.70.1" in p for p in problems)
    (tmp_path / "platforms/rpi4/requirements.lock").unlink()
    assert lock.check("platforms/rpi4/requirements.lock", spec) == [
        "platforms/rpi4/requirements.lock is missing: run `make lock`"]


def test_render_merges_the_targets_hashes_and_refuses_two_versions(tmp_path, monkeypatch):
    lock = _lock_module()
    (tmp_path / "r.txt").write_text("numpy==2.4.6\n")
    monkeypatch.setattr(lock, "REPO", tmp_path)
    spec = {"requirements": ["r.txt"], "targets": [("linux/amd64", "3.11"), ("linux/arm64", "3.11")]}
    a, b = "a" * 64, "b" * 64
    text = lock.render("x.lock", spec, {("linux/amd64", "3.11"): {"numpy": ("2.4.6", a), "tqdm": ("4.70.1", b)},
                                        ("linux/arm64", "3.11"): {"numpy": ("2.4.6", b), "tqdm": ("4.70.1", b)}})
    assert f"numpy==2.4.6 \\\n    --hash=sha256:{a} \\\n    --hash=sha256:{b}\ntqdm==4.70.1 \\\n    --hash=sha256:{b}\n" in text
    assert "# source: r.txt sha256=" in text
    with pytest.raises(lock.LockError, match="numpy resolves to 2.4.6 and 2.5.0 on different targets"):
        lock.render("x.lock", spec, {("linux/amd64", "3.11"): {"numpy": ("2.4.6", a)},
                                     ("linux/arm64", "3.11"): {"numpy": ("2.5.0", a)}})


def _wheel(folder: Path, extra: str = "") -> Path:
    """A minimal pure-Python wheel, built by hand (no network, no build backend)."""
    path = folder / "lockdemo-1.0-py3-none-any.whl"
    files = {"lockdemo.py": f"VALUE = 1{extra}\n",
             "lockdemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: lockdemo\nVersion: 1.0\n",
             "lockdemo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{name},,\n" for name in files) + "lockdemo-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as z:
        for name, text in {**files, "lockdemo-1.0.dist-info/RECORD": record}.items():
            z.writestr(name, text)
    return path


def test_pip_installs_from_a_lock_only_the_wheel_it_names(tmp_path, monkeypatch):
    """What the Dockerfiles run (pip install --no-index --find-links WHEELHOUSE --require-hashes -r LOCK) against a
    lock rendered by ci/lock.py: the locked wheel installs; the same name and version with other bytes is refused."""
    lock = _lock_module()
    house = tmp_path / "wheels"
    house.mkdir()
    digest = hashlib.sha256(_wheel(house).read_bytes()).hexdigest()
    (tmp_path / "r.txt").write_text("lockdemo==1.0\n")
    monkeypatch.setattr(lock, "REPO", tmp_path)
    text = lock.render("r.lock", {"requirements": ["r.txt"], "targets": [("linux/amd64", "3.11")]},
                       {("linux/amd64", "3.11"): {"lockdemo": ("1.0", digest)}})
    (tmp_path / "r.lock").write_text(text)

    def install(target: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pip", "install", "--isolated", "--no-index", "--find-links",
                               str(house), "--require-hashes", "--only-binary=:all:", "--target",
                               str(tmp_path / target), "-r", str(tmp_path / "r.lock")], capture_output=True, text=True)

    ok = install("ok")
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "ok/lockdemo.py").is_file()
    _wheel(house, extra="  # tampered")
    refused = install("refused")
    assert refused.returncode != 0 and "DO NOT MATCH THE HASHES" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused/lockdemo.py").exists()
