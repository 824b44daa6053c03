#!/usr/bin/env python3
"""The pipeline's stages, written once and called by GitHub Actions, GitLab CI and ci/run-local.sh.

    python3 ci/pipeline.py lint                 # ruff, hadolint, workflow/GitLab schemas, actionlint
    python3 ci/pipeline.py unit                 # make test
    python3 ci/pipeline.py units [--format github-matrix|json|lines] [TARGET|GROUP ...]
    python3 ci/pipeline.py build x86-cpu-amd64 [--build-arg K=V ...]
    python3 ci/pipeline.py test  x86-cpu-amd64  # ci/test-image.sh inside the built image
    python3 ci/pipeline.py push  x86-cpu-amd64  # only after its test passed: COMMIT tag and latest-<platform>
    python3 ci/pipeline.py notify               # one mail listing every failed stage (nothing when none failed)
    python3 ci/pipeline.py stage JOB -- CMD...  # any command as a recorded stage

A unit is one bake target for one platform (`datatool-dagm-arm64`); arm64 units build and run under
QEMU. Every stage runs through `stage`: its output goes to the console and to
$PIPELINE_OUT/logs/JOB.log (default out/ci), its exit status to $PIPELINE_OUT/status/JOB, and the
stage's own status is returned unchanged. `notify` reads those files (CI jobs hand them on as
artifacts) and mails the failed ones through ci/notify.py.

Images are tagged REGISTRY/<repo>:<platform>-<commit> and pushed with REGISTRY/<repo>:latest-<platform>,
where <repo> and REGISTRY come from ci/docker-bake.json (REGISTRY=... in the environment overrides its
default, as bake does) and <platform> is the platform image's name (x86-cpu, rpi4, ...) or, for images
built for several architectures (datatools), the architecture (amd64, arm64).
Environment: DOCKER (the client; default: one that can build with BuildKit), PIPELINE_BUILDER
(auto|bake|docker), REGISTRY, REGISTRY_USER/REGISTRY_PASSWORD (docker login before pushing),
PIPELINE_COMMIT/PIPELINE_BRANCH, PIPELINE_BAKE_FILE (default ci/docker-bake.json),
PIPELINE_BUILD_NETWORK (e.g. host), PIPELINE_OFFLINE=1 (build from local stand-in bases and a
host-made wheelhouse, with no network: machines that cannot pull).
Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import notify  # noqa: E402  (ci/ is not a package: these run as plain scripts on bare runners)
import pipeline_bake  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def bake_file() -> Path:
    """ci/docker-bake.json, or $PIPELINE_BAKE_FILE (relative to the repository, JSON)."""
    return REPO / os.environ.get("PIPELINE_BAKE_FILE", "ci/docker-bake.json")


class PipelineError(RuntimeError):
    """A stage cannot go on; the message says why."""


def out_dir() -> Path:
    return Path(os.environ.get("PIPELINE_OUT", "out/ci"))


_CLIENT: list[str] = []


def docker() -> str:
    """$DOCKER, else the first client that can build with BuildKit: one with buildx, or one older than 23
    (Debian's docker.io 20.10 at /usr/bin/docker does BuildKit without buildx; newer ones refuse to)."""
    if os.environ.get("DOCKER"):
        return os.environ["DOCKER"]
    if not _CLIENT:
        candidates = [c for c in (shutil.which("docker"), "/usr/bin/docker") if c and os.access(c, os.X_OK)]
        _CLIENT.append(next((c for c in candidates if pipeline_bake.buildx_available(c) or _client_major(c) < 23),
                            "docker"))
    return _CLIENT[0]


def _client_major(client: str) -> int:
    result = subprocess.run([client, "version", "--format", "{{.Client.Version}}"], capture_output=True, text=True)
    head = result.stdout.strip().split(".")[0]
    return int(head) if head.isdigit() else 999


# --- recorded stages ------------------------------------------------------------------------------------

def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def run_stage(job: str, command: list[str]) -> int:
    """Run `command`, teeing its output to the console and the job's log; record and return its status."""
    if not job or "/" in job or job.startswith("."):
        raise PipelineError(f"bad job name {job!r}")
    log_path = out_dir() / "logs" / f"{job}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    print(f"== stage {job}: {' '.join(command)}", flush=True)
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(command)}\n")
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as error:
            message = f"cannot start {command[0]}: {error.strerror}\n"
            sys.stdout.write(message)
            log.write(message)
            status = 127
        else:
            assert process.stdout is not None
            for raw in process.stdout:
                line = raw.decode("utf-8", errors="replace")
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
            status = process.wait()
    _write_atomic(out_dir() / "status" / job, f"{status}\n")
    verdict = "ok" if status == 0 else f"FAILED (exit {status})"
    print(f"== stage {job}: {verdict} in {time.monotonic() - started:.0f} s", flush=True)
    return status


def recorded_statuses() -> dict[str, int]:
    """Every recorded stage and its status, in the order the stages finished."""
    folder = out_dir() / "status"
    if not folder.is_dir():
        return {}
    files = sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: (p.stat().st_mtime, p.name))
    statuses = {}
    for path in files:
        text = path.read_text().strip()
        statuses[path.name] = int(text) if text.lstrip("-").isdigit() else 1
    return statuses


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else ""


def commit_id() -> str:
    """The commit being built: the CI's variable, else git's HEAD (+ -dirty for uncommitted changes)."""
    for name in ("PIPELINE_COMMIT", "GITHUB_SHA", "CI_COMMIT_SHA"):
        if os.environ.get(name):
            return os.environ[name]
    head = git("rev-parse", "HEAD")
    if not head:
        raise PipelineError("no commit: set PIPELINE_COMMIT, or run inside the git checkout")
    return head + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run_info() -> notify.RunInfo:
    detected = notify.run_info_from_env()
    if detected.commit != "unknown":
        return detected
    branch = os.environ.get("PIPELINE_BRANCH") or git("rev-parse", "--abbrev-ref", "HEAD") or "unknown"
    return notify.RunInfo(commit_id(), branch, detected.url)


def notify_failures(lines: int, pipeline_failed: bool = False) -> int:
    """One mail for every failed stage; 0 without sending when none failed, else ci/notify.py's status.

    `pipeline_failed`: the CI says something failed (its notification job runs only then). When no
    recorded stage failed, the failure was outside them (a checkout, a runner, an action): say so."""
    failed = [job for job, status in recorded_statuses().items() if status != 0]
    if not failed and not pipeline_failed:
        print("notify: no stage failed, nothing to send")
        return 0
    failures = [notify.Failure(job, out_dir() / "logs" / f"{job}.log") for job in failed] or \
        [notify.Failure("a step outside the recorded stages (see the run)", None)]
    return notify.notify(failures, run_info(), lines)


# --- units: one bake target for one platform --------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    target: pipeline_bake.Target
    platform: str

    @property
    def arch(self) -> str:
        return self.platform.split("/")[1]

    @property
    def id(self) -> str:
        return f"{self.target.name}-{self.arch}"

    @property
    def repository(self) -> str:
        if not self.target.tags:
            raise PipelineError(f"bake target {self.target.name} has no tags: its repository is unknown")
        first = self.target.tags[0]
        name, sep, tag = first.rpartition(":")
        repo = name if sep and "/" not in tag else first
        return repo.lower()  # references must be lower case (a GitHub owner's name may not be)

    @property
    def label(self) -> str:
        """The <platform> of the tags: the target's name, or its architecture when several are built."""
        parts = []
        if self.repository.rsplit("/", 1)[-1] != self.target.name:
            parts.append(self.target.name)
        if len(self.target.platforms) > 1 or not parts:
            parts.append(self.arch)
        return "-".join(parts)

    def commit_tag(self, commit: str) -> str:
        return f"{self.repository}:{self.label}-{commit}"

    def latest_tag(self) -> str:
        return f"{self.repository}:latest-{self.label}"


def units(names: list[str] | None = None) -> list[Unit]:
    builder = os.environ.get("PIPELINE_BUILDER", "auto")
    targets = pipeline_bake.resolve(bake_file(), names or None,
                                    use_buildx=None if builder == "auto" else builder == "bake", docker=docker())
    return [Unit(t, p) for t in targets for p in (t.platforms or ["linux/amd64"])]


def find_unit(unit_id: str) -> Unit:
    """A unit by its id (TARGET-ARCH), whether or not its target is in the default group."""
    target = unit_id.rpartition("-")[0]
    try:
        candidates = units([target]) if target else []
    except pipeline_bake.BakeError:
        candidates = []
    for unit in candidates:
        if unit.id == unit_id:
            return unit
    raise PipelineError(f"unknown unit {unit_id!r}; known: {', '.join(u.id for u in units())}")


def select_units(names: list[str], only: list[str]) -> list[Unit]:
    """The units of these bake names, narrowed to the `only` ids when given (an unknown id is an error)."""
    chosen = units(names)
    if not only:
        return chosen
    unknown = sorted(set(only) - {u.id for u in chosen})
    if unknown:
        raise PipelineError(f"unknown unit(s) {', '.join(unknown)}; known: {', '.join(u.id for u in chosen)}")
    return [u for u in chosen if u.id in only]


def format_units(selected: list[Unit], fmt: str) -> str:
    rows = [{"unit": u.id, "target": u.target.name, "platform": u.platform} for u in selected]
    if fmt == "lines":
        return "".join(f"{r['unit']} {r['target']} {r['platform']}\n" for r in rows)
    if fmt == "github-matrix":
        return json.dumps({"include": rows}) + "\n"
    return json.dumps(rows, indent=2) + "\n"


# --- the image stages (run inside `stage` by the public commands) ----------------------------------------

def _run(command: list[str], **kwargs) -> None:
    print(f"$ {' '.join(command)}", flush=True)
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise PipelineError(f"{command[0]} {command[1]} exited with {result.returncode}")


def offline_build_args(unit: Unit) -> dict[str, str]:
    """BASE and WHEELS for a machine that cannot pull: a local stand-in base (ci/base-images.py) and a
    wheelhouse image of the requirement files the unit's Dockerfile copies (ci/wheelhouse.py)."""
    arch = unit.arch
    bases = subprocess.run([sys.executable, "ci/base-images.py", arch], cwd=REPO, capture_output=True, text=True)
    base = next((line.split()[1] for line in bases.stdout.splitlines() if line.split()[:1] == [arch]), None)
    if bases.returncode != 0 or not base:
        raise PipelineError(f"ci/base-images.py {arch} failed:\n{bases.stderr[-3000:]}")
    context = REPO / unit.target.context
    # the hash lock the Dockerfile installs (ci/lock.py): the wheelhouse is downloaded from it, each wheel checked;
    # an image without one (x86-cuda: see ci/lock.py) from its requirement files
    text = (REPO / unit.target.dockerfile_path).read_text()
    files = []
    for pattern in (r"[\w./-]*requirements[\w-]*\.lock", r"[\w./-]*requirements[\w-]*\.txt"):
        files = files or sorted({str(context / r) for r in re.findall(pattern, text) if (context / r).is_file()})
    files = files or [str(context / "requirements.lock")]
    tag = f"defect-ci/wheels:{unit.id}"
    wheels = subprocess.run([sys.executable, "ci/wheelhouse.py", "--platform", unit.platform,
                             *(x for f in files for x in ("-r", f)), "--image", tag],
                            cwd=REPO, capture_output=True, text=True)
    if wheels.returncode != 0:
        raise PipelineError(f"ci/wheelhouse.py for {unit.id} failed:\n{wheels.stdout[-2000:]}{wheels.stderr[-3000:]}")
    print(f"offline build of {unit.id}: BASE={base} WHEELS={tag} (from {', '.join(files)})")
    return {"BASE": base, "WHEELS": tag}


def build(unit: Unit, build_args: dict[str, str]) -> None:
    image = unit.commit_tag(commit_id())
    target = unit.target
    network = os.environ.get("PIPELINE_BUILD_NETWORK")  # "host" with an engine started without a bridge
    if os.environ.get("PIPELINE_OFFLINE") == "1":
        build_args = {**offline_build_args(unit), **build_args}
        network = "none"  # and so proven: nothing is fetched during the build
    use_bake = os.environ.get("PIPELINE_BUILDER", "auto") == "bake" or (
        os.environ.get("PIPELINE_BUILDER", "auto") == "auto" and pipeline_bake.buildx_available(docker()))
    if use_bake:
        sets = [f"{target.name}.platform={unit.platform}", f"{target.name}.tags={image}",
                *(f"{target.name}.args.{k}={v}" for k, v in build_args.items()),
                *([f"{target.name}.network={network}"] if network else [])]
        _run([docker(), "buildx", "bake", "-f", str(bake_file()), "--load",
              *(x for s in sets for x in ("--set", s)), target.name], cwd=REPO)
    else:  # docker build with BuildKit (Debian's 20.10 client does it without buildx)
        command = [docker(), "build", "--platform", unit.platform, "-f", target.dockerfile_path, "-t", image,
                   *(["--network", network] if network else [])]
        for key, value in {**target.args, **build_args}.items():
            command += ["--build-arg", f"{key}={value}"]
        for key, value in target.labels.items():
            command += ["--label", f"{key}={value}"]
        if target.target:
            command += ["--target", target.target]
        _run([*command, target.context], cwd=REPO, env={**os.environ, "DOCKER_BUILDKIT": "1"})
    print(f"built {image} ({unit.platform})")


def test(unit: Unit) -> None:
    image = unit.commit_tag(commit_id())
    _run(["bash", "ci/test-image.sh", unit.target.name, image], cwd=REPO)


def push(unit: Unit) -> None:
    """Push the commit tag and latest-<platform>, only when this unit's test stage passed; record the digest."""
    tested = recorded_statuses().get(f"test-{unit.id}")
    if tested != 0:
        raise PipelineError(f"not pushing {unit.id}: its test stage " +
                            ("did not run" if tested is None else f"failed (exit {tested})"))
    image, latest = unit.commit_tag(commit_id()), unit.latest_tag()
    user, password = os.environ.get("REGISTRY_USER"), os.environ.get("REGISTRY_PASSWORD")
    if user and password:
        host = unit.repository.split("/")[0]
        _run([docker(), "login", "--username", user, "--password-stdin", host], input=password.encode())
    _run([docker(), "push", image])
    _run([docker(), "tag", image, latest])
    _run([docker(), "push", latest])
    inspect = subprocess.run([docker(), "image", "inspect", "--format", "{{json .RepoDigests}} {{.Id}}", image],
                             capture_output=True, text=True)
    if inspect.returncode != 0:
        raise PipelineError(f"docker image inspect {image} failed: {inspect.stderr.strip()}")
    digests_json, image_id = inspect.stdout.strip().rsplit(" ", 1)
    digest = next((d for d in json.loads(digests_json) if d.startswith(unit.repository + "@")), None)
    if not digest:
        raise PipelineError(f"pushed {image} but the engine records no digest for {unit.repository}")
    record = {"unit": unit.id, "tags": [image, latest], "digest": digest, "image_id": image_id}
    _write_atomic(out_dir() / "pushed" / f"{unit.id}.json", json.dumps(record, indent=2) + "\n")
    print(f"pushed {image} and {latest}: {digest}")


# --- command line -------------------------------------------------------------------------------------------

def _self(*args: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), *args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("lint", help="static checks (ci/stages/lint.sh)")
    sub.add_parser("unit", help="the test suite (make test)")
    p_units = sub.add_parser("units", help="list the units (bake target x platform)")
    p_units.add_argument("names", nargs="*", help="bake targets or groups (default: the group default)")
    p_units.add_argument("--format", choices=["json", "lines", "github-matrix"], default="lines")
    p_units.add_argument("--only", default="", help="comma list of unit ids to keep (e.g. rpi4-arm64)")
    p_units.add_argument("--output", type=Path, help="write the list there too (for ci/run-local.sh)")
    for name in ("build", "test", "push"):
        p = sub.add_parser(name, help=f"{name} one unit, as a recorded stage")
        p.add_argument("unit")
        if name == "build":
            p.add_argument("--build-arg", action="append", default=[], metavar="K=V")
        p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # the stage's own process
    p_notify = sub.add_parser("notify", help="mail the failed stages (none failed: nothing sent, exit 0)")
    p_notify.add_argument("--lines", type=int, default=50)
    p_notify.add_argument("--pipeline-failed", action="store_true",
                          help="the CI reports a failure: mail even when no recorded stage failed")
    sub.add_parser("commit", help="print the commit the images are tagged with")
    p_stage = sub.add_parser("stage", help="run a command as a recorded stage: stage JOB -- CMD ...")
    p_stage.add_argument("job")
    p_stage.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)

    try:
        if args.command == "lint":
            return run_stage("lint", ["bash", str(REPO / "ci/stages/lint.sh")])
        if args.command == "unit":
            return run_stage("unit", ["make", "-C", str(REPO), "test"])
        if args.command == "stage":
            command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
            if not command:
                parser.error("stage JOB -- CMD ...: the command is missing")
            return run_stage(args.job, command)
        if args.command == "units":
            text = format_units(select_units(args.names, [u for u in args.only.split(",") if u]), args.format)
            sys.stdout.write(text)
            if args.output:
                _write_atomic(args.output, text)
            return 0
        if args.command == "commit":
            print(commit_id())
            return 0
        if args.command == "notify":
            return notify_failures(args.lines, args.pipeline_failed)
        if not args.inside:  # build/test/push: re-enter inside a recorded stage
            extra = [x for kv in getattr(args, "build_arg", []) for x in ("--build-arg", kv)]
            return run_stage(f"{args.command}-{args.unit}", _self(args.command, args.unit, "--inside", *extra))
        unit = find_unit(args.unit)
        if args.command == "build":
            pairs = [kv.split("=", 1) for kv in args.build_arg]
            if any(len(p) != 2 or not p[0] for p in pairs):
                raise PipelineError(f"--build-arg takes K=V, got {args.build_arg}")
            build(unit, dict(pairs))
        elif args.command == "test":
            test(unit)
        else:
            push(unit)
        return 0
    except (PipelineError, pipeline_bake.BakeError) as error:
        print(f"pipeline: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
