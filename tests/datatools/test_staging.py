"""Staging folders: a killed run's folder is removed whatever its PID; a live run's folder is never touched.

Runs are real processes: a conversion that blocks after staging its first image (killed, or let go),
so the lock is tested across processes, as between two containers sharing an output volume.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import datatools.store
from datatools.convert import write_dataset
from datatools.store import new_staging_dir, remove_stale_staging
from tests import REPO
from tests.datatools.test_core import make_parsed

# A conversion of the tiny dataset whose first sample blocks until a line arrives on stdin.
BLOCKED_RUN = """
import sys
import time
from pathlib import Path
import datatools.convert as convert
from tests.datatools.test_core import make_parsed

real = convert.process_sample
def blocking(job):
    record = real(job)
    print("staged", flush=True)
    if workers == 1:
        sys.stdin.readline()
    else:  # in a pool worker: stay busy until killed
        time.sleep(600)
    return record
convert.process_sample = blocking
raw, out, workers = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
print(convert.write_dataset(make_parsed(raw), out, workers=workers), flush=True)
"""


def start_blocked_run(raw: Path, out: Path, workers: int = 1) -> subprocess.Popen:
    """Its own session, so that the test can end the run's pool workers too."""
    proc = subprocess.Popen([sys.executable, "-c", BLOCKED_RUN, str(raw), str(out), str(workers)], cwd=REPO,
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout.readline().strip() == "staged"
    return proc


def staging_dirs(name_dir: Path) -> list[Path]:
    return sorted(p for p in name_dir.glob(".tmp-*") if p.is_dir() and not p.is_symlink())


def test_killed_run_folder_is_removed_by_next_conversion(tmp_path):
    proc = start_blocked_run(tmp_path / "raw", tmp_path / "out")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = staging_dirs(tmp_path / "out" / "tiny")
    assert len(left) == 1 and (left[0] / "images").is_dir()  # the killed run left its folder
    version = write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out", workers=1)
    assert staging_dirs(tmp_path / "out" / "tiny") == []
    assert (version / "dataset.json").is_file()


def test_killed_run_folder_is_removed_while_its_workers_linger(tmp_path):
    """Pool workers outlive a SIGKILLed parent for a while; they must not keep its folder alive."""
    proc = start_blocked_run(tmp_path / "raw", tmp_path / "out", workers=2)
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(staging_dirs(tmp_path / "out" / "tiny")) == 1
        write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out", workers=1)
        assert staging_dirs(tmp_path / "out" / "tiny") == []
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the orphaned workers of the run started above
        except ProcessLookupError:
            pass


def test_stale_folder_removed_even_when_its_pid_is_alive(tmp_path):
    """In a container every run is PID 1, and PIDs are reused: a name's PID says nothing."""
    name_dir = tmp_path / "out" / "tiny"
    name_dir.mkdir(parents=True)
    for pid in (1, os.getpid()):  # both alive: the old PID check kept these for ever
        (name_dir / f".tmp-{pid}-0badc0de" / "images").mkdir(parents=True)
        (name_dir / f".tmp-{pid}-0badc0de" / "images" / "x.png").write_bytes(b"partial")
    write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out", workers=1)
    assert staging_dirs(name_dir) == []


def test_live_concurrent_run_is_not_disturbed(tmp_path):
    proc = start_blocked_run(tmp_path / "raw", tmp_path / "out")
    try:
        name_dir = tmp_path / "out" / "tiny"
        live = staging_dirs(name_dir)
        assert len(live) == 1
        # another conversion into the same root, with different options, while the first is staging
        other = write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out", workers=2, val_fraction=0.4)
        assert (other / "dataset.json").is_file()
        assert remove_stale_staging(name_dir) == []
        assert staging_dirs(name_dir) == live and (live[0] / "images").is_dir()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    first = Path(out.strip().splitlines()[-1])
    assert (first / "dataset.json").is_file() and first != other
    assert staging_dirs(name_dir) == []


def test_own_staging_is_locked_while_converting(tmp_path, monkeypatch):
    """write_dataset holds the lock for the whole run (workers included): a cleaner mid-run removes nothing."""
    import datatools.convert as convert

    seen = []
    real = convert.process_sample

    def cleaning(job):
        seen.append(remove_stale_staging(Path(job[1]).parent))
        return real(job)

    monkeypatch.setattr(convert, "process_sample", cleaning)
    version = write_dataset(make_parsed(tmp_path / "raw"), tmp_path / "out", workers=1)
    assert seen and all(r == [] for r in seen)
    assert (version / "dataset.json").is_file()


def test_staging_recreated_when_a_cleaner_wins_the_race(tmp_path, monkeypatch):
    """A cleaner may remove a folder between its mkdir and its lock: the run takes a new one."""
    real_flock = datatools.store.fcntl.flock
    removed = []

    def flock_after_cleaner(fd, op):
        if not removed:
            path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            shutil.rmtree(path)
            removed.append(path)
        return real_flock(fd, op)

    monkeypatch.setattr(datatools.store.fcntl, "flock", flock_after_cleaner)
    staging, fd = new_staging_dir(tmp_path)
    try:
        assert staging != removed[0] and staging.is_dir() and not removed[0].exists()
    finally:
        os.close(fd)


def test_link_temporaries_and_other_entries_left_alone(tmp_path):
    (tmp_path / "0123456789ab").mkdir()
    os.symlink("0123456789ab", tmp_path / ".tmp-latest.1")
    (tmp_path / ".tmp-file").write_text("not a folder")
    assert remove_stale_staging(tmp_path) == []
    assert (tmp_path / ".tmp-latest.1").is_symlink() and (tmp_path / ".tmp-file").is_file()
