"""apt-get the Debian packages a CI helper needs (ci/engine.py, ci/slurm.py): as root only, so a user's machine
is never changed; anyone else gets the command to run. Standard library only."""

from __future__ import annotations

import os
import shutil
import subprocess


def install(missing: list[str], error: type[Exception], log) -> None:
    """apt-get update + install of `missing`; `error` (the caller's exception) says what failed and how to fix it."""
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise error(f"missing {', '.join(missing)}; install as root: apt-get install {' '.join(missing)}")
    log(f"installing {' '.join(missing)} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise error(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
