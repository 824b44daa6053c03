"""ci/apt.py, the one apt-get installer of ci/engine.py and ci/slurm.py: nothing to do when nothing is missing; a
user who is not root gets the command to run, and the machine is left as it is."""

from __future__ import annotations

import pytest

from tests.containers.helpers import load_ci_module

apt = load_ci_module("ci_apt", "apt.py")


class Refused(RuntimeError):
    pass


def test_nothing_missing_runs_nothing(monkeypatch):
    monkeypatch.setattr(apt.subprocess, "run", lambda *a, **k: pytest.fail("apt-get ran"))
    apt.install([], Refused, print)


def test_not_root_is_told_the_command_and_nothing_runs(monkeypatch):
    monkeypatch.setattr(apt.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(apt.subprocess, "run", lambda *a, **k: pytest.fail("apt-get ran"))
    with pytest.raises(Refused, match=r"missing munge, slurm-wlm; install as root: apt-get install munge slurm-wlm"):
        apt.install(["munge", "slurm-wlm"], Refused, print)


def test_a_failing_apt_get_is_the_callers_error(monkeypatch):
    import subprocess

    monkeypatch.setattr(apt.os, "geteuid", lambda: 0)
    monkeypatch.setattr(apt.shutil, "which", lambda exe: "/usr/bin/apt-get")
    calls = []

    def fake(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 100 if "install" in cmd else 0, "", "E: Unable to locate package nope")

    monkeypatch.setattr(apt.subprocess, "run", fake)
    with pytest.raises(Refused, match="apt-get install -y -qq --no-install-recommends nope failed:\nE: Unable to locate"):
        apt.install(["nope"], Refused, lambda m: None)
    assert calls[0] == ["apt-get", "update", "-qq"]
