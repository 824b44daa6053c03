#!/usr/bin/env python3
"""Pull and run the defect-detection server on this device, through the Docker SDK for Python.

    python3 scripts/device.py --model /data/models/demo --registry registry.example:5000
    python3 scripts/device.py --model /data/models/demo --dry-run     # what it would do
    python3 scripts/device.py --update                                 # newer image, same model mount
    python3 scripts/device.py --model M --api-key-file /etc/defect/key  # reachable from other machines, with a key

A standalone script, not an `asset` command: device hosts (a Jetson, a Raspberry Pi) run the asset only inside
its image, so the host needs Python 3 and `docker` (scripts/requirements-device.txt), not the asset package.

Steps: detect the device (x86-64 with or without the NVIDIA runtime, Jetson + L4T release from
/etc/nv_tegra_release, Raspberry Pi from /proc/device-tree/model, other arm64) -> platform image
REGISTRY/asset:PLATFORM-TAG (ci/docker-bake.json) -> check the model directory has an export that image runs ->
pull with per-layer progress -> check the image's architecture -> start the server container (model directory
mounted read-only, nvidia runtime where needed, restart policy, port) -> wait for /readyz -> print the URL.
A container that does not become ready is removed; an update that fails puts the previous container back.

Interrupted at any step (Ctrl-C, an engine that does not answer within the client's timeout, any error): a new
container is removed (looked up by name when the engine created it but the answer was lost), and during --update
the previous container is renamed back and started again, so the device keeps its server. An update cut short
harder (the host lost power) leaves NAME-previous: the next --update takes it back first.

Closed by default: without an API key (--api-key-file, mounted read-only as a file, never in the container's
environment or command line) the port is published on 127.0.0.1 only (--network host: the server listens there);
--bind 0.0.0.0 then needs --allow-no-api-key. With a key it is published on every interface.
The container runs with a read-only root file system (a tmpfs /tmp), no-new-privileges, every capability dropped
and a memory limit (--memory, default 75% of the engine's memory). --digest pins the image (sha256:..., or the
pipeline's record out/ci/pushed/UNIT.json) and checks the pulled image's RepoDigests. After a successful update
the previous image is removed unless a container still uses it (--keep-old-image keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_REPO = "asset"  # ${REGISTRY}/asset:<platform>-<tag> (ci/docker-bake.json); the pipeline also pushes latest-<platform>
DEFAULT_REGISTRY = "defect"
DEFAULT_TAG = "latest"
DEFAULT_NAME = "defect-asset"
MODEL_MOUNT = "/models/model"
CONTAINER_PORT = 8000
KEY_MOUNT = "/run/secrets/asset-api-key"  # the API key file, mounted read-only
TMPFS = {"/tmp": "rw,noexec,nosuid,size=256m"}  # the only writable place on the read-only root
MEMORY_SHARE = 0.75  # default memory limit: this share of the engine's memory
MIN_L4T = 38  # the Jetson image is JetPack 7 (L4T r38, Python 3.12): see platforms/jetson/Dockerfile
LABEL = "org.defect-detection.device"  # marks containers this program started; JSON of their settings


def image_ref(registry: str, platform: str, tag: str) -> str:
    """The pipeline (ci/pipeline.py) pushes REGISTRY/asset:<platform>-<commit> and REGISTRY/asset:latest-<platform>."""
    suffix = f"latest-{platform}" if tag == DEFAULT_TAG else f"{platform}-{tag}"
    return f"{registry.rstrip('/')}/{IMAGE_REPO}:{suffix}"


class DeviceError(RuntimeError):
    """Something the user must fix; the message says what. Nothing is left half-started."""


@dataclass(frozen=True)
class Platform:
    name: str
    arch: str  # Docker's name: amd64 | arm64
    runtime: str | None  # container runtime the server needs
    device: str  # --device of `asset serve`
    # (backend, precision, model.json export key), in order of preference
    runs: tuple[tuple[str, str, str], ...]


_ORT = (("onnxruntime", "fp32", "onnx"), ("onnxruntime", "int8", "onnx-int8"))
_TRT = (("tensorrt", "fp16", "tensorrt-fp16"), ("tensorrt", "int8", "tensorrt-int8"),
        ("tensorrt", "fp32", "tensorrt-fp32"))
PLATFORMS = {
    "x86-cpu": Platform("x86-cpu", "amd64", None, "cpu", _ORT),
    "x86-cuda": Platform("x86-cuda", "amd64", "nvidia", "cuda", _TRT + _ORT),
    "jetson": Platform("jetson", "arm64", "nvidia", "cuda", _TRT + _ORT[:1]),  # PyPI's aarch64 ORT: CPU only
    "rpi4": Platform("rpi4", "arm64", None, "cpu", _ORT),
}


@dataclass
class Device:
    arch: str  # amd64 | arm64
    kind: str  # x86-64 | x86-64 + NVIDIA | jetson | raspberry-pi | arm64
    description: str
    platform: str
    l4t: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)


def docker_arch(machine: str) -> str:
    """uname -m / Docker's Architecture -> amd64 | arm64 (DeviceError for anything else)."""
    m = machine.lower()
    if m in ("x86_64", "amd64"):
        return "amd64"
    if m in ("aarch64", "arm64"):
        return "arm64"
    if m.startswith("arm"):
        raise DeviceError(f"this is a 32-bit ARM system ({machine}): the images are arm64 only, install a 64-bit OS "
                          "(e.g. 64-bit Raspberry Pi OS)")
    raise DeviceError(f"unsupported architecture {machine!r}: images exist for x86-64 (amd64) and arm64")


def parse_l4t(text: str) -> tuple[int, ...]:
    """'# R36 (release), REVISION: 4.0, GCID: ...' -> (36, 4, 0)."""
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    if not m:
        raise DeviceError(f"/etc/nv_tegra_release is not in the L4T format ('# R36 (release), REVISION: 4.0, ...'): "
                          f"{text.strip()[:80]!r}")
    return (int(m.group(1)), *(int(v) for v in m.group(2).strip(".").split(".")))


def read_board_model(root: Path) -> str | None:
    """/proc/device-tree/model (NUL-terminated), None when absent."""
    try:
        return (root / "proc/device-tree/model").read_bytes().rstrip(b"\x00\n ").decode("utf-8", "replace")
    except OSError:
        return None


def detect(root: Path, machine: str, runtimes) -> Device:
    """What this device is and which platform image it runs. `root` is where /etc and /proc are (/ on a device);
    `machine` is the architecture (the engine's); `runtimes` the engine's container runtimes (None: unknown, no
    engine to ask)."""
    root = Path(root)
    arch = docker_arch(machine)
    nvidia = runtimes is not None and "nvidia" in set(runtimes)
    if arch == "amd64":
        if nvidia:
            return Device(arch, "x86-64 + NVIDIA", "x86-64 with the NVIDIA container runtime", "x86-cuda")
        return Device(arch, "x86-64", "x86-64 without an NVIDIA container runtime", "x86-cpu")
    board = read_board_model(root)
    tegra = root / "etc/nv_tegra_release"
    if tegra.is_file():
        l4t = parse_l4t(tegra.read_text(errors="replace"))
        release = "L4T R" + ".".join(str(v) for v in l4t)
        dev = Device(arch, "jetson", f"NVIDIA Jetson ({board or 'unknown board'}), {release}", "jetson", l4t=l4t)
        if l4t[0] < MIN_L4T:
            dev.notes.append(f"the Jetson image is built on JetPack 7 (L4T R{MIN_L4T}, Python 3.12); this Jetson runs "
                             f"{release}: flash JetPack 7, or build platforms/jetson/Dockerfile with L4T_BASE set to a "
                             "Python >= 3.11 image of your release")
        if runtimes is not None and not nvidia:
            dev.notes.append("the Docker engine has no 'nvidia' runtime: install nvidia-container-toolkit "
                             "(part of JetPack) and restart docker")
        return dev
    if board and board.startswith("Raspberry Pi"):
        return Device(arch, "raspberry-pi", board, "rpi4")
    return Device(arch, "arm64", f"arm64 board ({board or 'no device-tree model'}): the generic arm64 image "
                  "(ONNX Runtime on the CPU)", "rpi4")


# ----------------------------------------------------------------------------- model directory
def read_model(model_dir: Path) -> dict:
    """model.json of a model directory (no asset package needed here); DeviceError when it is not one."""
    model_dir = Path(model_dir)
    card = model_dir / "model.json"
    if not model_dir.is_dir():
        raise DeviceError(f"model directory {model_dir} does not exist")
    if not card.is_file():
        raise DeviceError(f"{model_dir} is not a model directory (no model.json): pass the directory made by "
                          "`asset train` and exported with `asset export`")
    try:
        doc = json.loads(card.read_text())
    except (OSError, ValueError) as exc:
        raise DeviceError(f"{card} cannot be read: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != "defect-model/1":
        raise DeviceError(f"{card} is not a defect-model/1 model card")
    return doc


def choose_backend(plat: Platform, model_dir: Path, card: dict) -> tuple[str, str, str]:
    """(backend, precision, export key) the image serves this model with: the first export it can run."""
    exports = card.get("exports") or {}
    present = {k for k, e in exports.items()
               if isinstance(e, dict) and e.get("file") and (Path(model_dir) / e["file"]).exists()}
    for backend, precision, key in plat.runs:
        if key in present:
            return backend, precision, key
    wanted = " or ".join(dict.fromkeys(k for _, _, k in plat.runs))
    how = ("asset export --model M --format onnx" if plat.runtime is None else
           "asset export --model M --format onnx (or --format tensorrt, on this device)")
    have = ", ".join(sorted(present)) or "none"
    raise DeviceError(f"{model_dir} has no export the {plat.name} image can run: it needs {wanted} in model.json "
                      f"exports (have: {have}); make one with `{how}`")


# ----------------------------------------------------------------------------- plan
@dataclass
class Plan:
    device: Device
    platform: Platform
    image: str
    name: str
    model_dir: Path
    backend: str
    precision: str
    export: str
    port: int
    network: str  # bridge (port published) | host
    restart: str
    timeout: float
    bind: str = "127.0.0.1"  # host address the port is published on (bridge) or the server listens on (host)
    api_key_file: Path | None = None
    allow_no_api_key: bool = False
    memory: int | None = None  # bytes; None: no limit
    digest: str | None = None  # REPO@sha256:... the image must have

    @property
    def pull_ref(self) -> str:
        """What is pulled: the digest when pinned, else the tag."""
        return self.digest or self.image

    @property
    def listen_port(self) -> int:
        return self.port if self.network == "host" else CONTAINER_PORT

    def command(self) -> list[str]:
        host = self.bind if self.network == "host" else "0.0.0.0"  # bridge: the publish decides who reaches it
        cmd = ["serve", "--model", MODEL_MOUNT, "--backend", self.backend, "--precision", self.precision,
               "--host", host, "--port", str(self.listen_port)]
        return cmd + (["--device", "cuda"] if self.platform.device == "cuda" and self.backend == "tensorrt" else [])

    def settings(self) -> dict:
        """Recorded in the container's label so that --update can start its successor alike."""
        return {"model_dir": str(self.model_dir), "port": self.port, "network": self.network,
                "restart": self.restart, "platform": self.platform.name, "bind": self.bind,
                "api_key_file": str(self.api_key_file) if self.api_key_file else None,
                "allow_no_api_key": self.allow_no_api_key, "memory": self.memory}

    def environment(self) -> dict:
        env = {"ASSET_PUBLISHED_HOST": self.bind}  # `asset serve` applies its key rule to where it is reachable
        if self.api_key_file:
            env["ASSET_API_KEY_FILE"] = KEY_MOUNT
        if self.allow_no_api_key:
            env["ASSET_ALLOW_NO_API_KEY"] = "1"
        if self.platform.runtime:
            env.update({"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"})
        return env

    def run_kwargs(self) -> dict:
        volumes = {str(self.model_dir): {"bind": MODEL_MOUNT, "mode": "ro"}}
        if self.api_key_file:
            volumes[str(self.api_key_file)] = {"bind": KEY_MOUNT, "mode": "ro"}
        kw = {"name": self.name, "command": self.command(), "detach": True, "volumes": volumes,
              "restart_policy": {"Name": self.restart} if self.restart != "no" else None,
              "labels": {LABEL: json.dumps(self.settings())}, "network_mode": self.network,
              "environment": self.environment(), "read_only": True, "tmpfs": dict(TMPFS),
              "security_opt": ["no-new-privileges:true"], "cap_drop": ["ALL"], "mem_limit": self.memory}
        if self.network == "bridge":
            kw["ports"] = {f"{CONTAINER_PORT}/tcp": (self.bind, self.port)}
        if self.platform.runtime:
            kw["runtime"] = self.platform.runtime
        return {k: v for k, v in kw.items() if v is not None}

    def describe(self) -> list[str]:
        rt = f"--runtime {self.platform.runtime} " if self.platform.runtime else ""
        net = "--network host" if self.network == "host" else f"-p {self.bind}:{self.port}:{CONTAINER_PORT}"
        restart = f"--restart {self.restart} " if self.restart != "no" else ""
        key = f"-v {self.api_key_file}:{KEY_MOUNT}:ro " if self.api_key_file else ""
        env = " ".join(f"-e {k}={v}" for k, v in self.environment().items())
        memory = f"--memory {self.memory} " if self.memory else ""
        hardening = f"--read-only --tmpfs /tmp --security-opt no-new-privileges:true --cap-drop ALL {memory}"
        return [
            f"device:    {self.device.description}",
            f"platform:  {self.platform.name} ({self.platform.arch})",
            f"image:     {self.image}" + (f" pinned to {self.digest}" if self.digest else ""),
            f"model:     {self.model_dir} -> {MODEL_MOUNT} (read-only), served with {self.backend} {self.precision} "
            f"(export {self.export})",
            f"container: docker run -d --name {self.name} {rt}{restart}{net} {hardening}{env} {key}"
            f"-v {self.model_dir}:{MODEL_MOUNT}:ro {self.pull_ref} {' '.join(self.command())}",
            f"access:    {'API key from ' + str(self.api_key_file) if self.api_key_file else 'no API key'}; "
            f"reachable on {self.bind}:{self.port}" + (" (this machine only)" if is_loopback(self.bind) else ""),
            f"ready:     GET http://127.0.0.1:{self.port}/readyz within {self.timeout:g} s, else the container is "
            "removed",
        ]


# ----------------------------------------------------------------------------- engine
def connect(timeout: float = 10.0):
    """A Docker client whose engine answers; DeviceError otherwise."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        raise DeviceError("the Docker SDK for Python is not installed: pip install -r scripts/requirements-device.txt"
                          ) from None
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as exc:
        raise DeviceError(f"no Docker engine answers at {where} ({_first_line(exc)}): start it "
                          "(sudo systemctl start docker), or add your user to the 'docker' group") from None
    return client


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def registry_of(image: str) -> str:
    first = image.split("/", 1)[0]
    return first if "/" in image and ("." in first or ":" in first or first == "localhost") else "docker.io"


class PullProgress:
    """Per-layer progress from the engine's pull stream: redrawn in place on a terminal, one line per layer
    state change otherwise (logs)."""

    def __init__(self, out=sys.stdout) -> None:
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.layers: dict[str, str] = {}
        self.drawn = 0

    def update(self, event: dict) -> None:
        layer, status = event.get("id"), event.get("status", "")
        if not layer or not re.fullmatch(r"[0-9a-f]{12}", layer):  # not a layer: "TAG: Pulling from ...", digest
            if status:
                self._line(f"{layer}: {status}" if layer else status)
            return
        detail = event.get("progressDetail") or {}
        text = status
        if detail.get("total"):
            text = f"{status} {100 * detail.get('current', 0) / detail['total']:5.1f}% of {detail['total'] / 1e6:.1f} MB"
        changed = self.layers.get(layer, "").split(" ")[0] != status.split(" ")[0]
        self.layers[layer] = text
        if self.tty:
            self._redraw()
        elif changed:
            print(f"  {layer}: {status}", file=self.out, flush=True)

    def _line(self, text: str) -> None:
        if self.tty:
            self.drawn = 0  # keep the layer block above, start a new one below
        print(text, file=self.out, flush=True)

    def _redraw(self) -> None:
        if self.drawn:
            self.out.write(f"\x1b[{self.drawn}F")
        for layer, text in self.layers.items():
            self.out.write(f"\x1b[2K  {layer}: {text}\n")
        self.drawn = len(self.layers)
        self.out.flush()


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def parse_digest(value: str, image: str) -> str:
    """--digest (sha256:HEX, REPO@sha256:HEX, or the pipeline's pushed record JSON) -> REPO@sha256:HEX of `image`'s
    repository."""
    repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
    text = value.strip()
    if Path(text).is_file():
        try:
            text = json.loads(Path(text).read_text())["digest"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DeviceError(f"--digest {value}: not a pushed record with a 'digest' ({exc})") from None
    name, _, digest = text.rpartition("@")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise DeviceError(f"--digest {value}: expected sha256:<64 hex digits> (or REPO@sha256:..., or the "
                          "pipeline's out/ci/pushed/UNIT.json)")
    if name and name != repo:
        raise DeviceError(f"--digest {value} is for {name}, not {repo}")
    return f"{repo}@{digest}"


def check_digest(img, digest: str) -> None:
    """The pulled image must carry `digest` (REPO@sha256:...) in its RepoDigests."""
    have = img.attrs.get("RepoDigests") or []
    if digest not in have:
        raise DeviceError(f"the pulled image's digests {have or '(none)'} do not include {digest}: refusing to run it")


def pull(client, image: str, out=sys.stdout):
    """Pull `image` (REPO:TAG or REPO@sha256:...) showing per-layer progress; the pulled Image. DeviceError when the
    registry does not answer or has no such image."""
    from docker.errors import APIError, DockerException

    if "@" in image:
        repo, tag = image.split("@", 1)
    else:
        repo, _, tag = image.rpartition(":")
        if "/" in tag or not repo:
            repo, tag = image, "latest"
    progress = PullProgress(out)
    print(f"pulling {image}", file=out, flush=True)
    try:
        for event in client.api.pull(repo, tag=tag, stream=True, decode=True):
            if "error" in event:
                raise DeviceError(_pull_message(image, event["error"]))
            progress.update(event)
    except APIError as exc:
        raise DeviceError(_pull_message(image, str(exc.explanation or exc))) from None
    except DockerException as exc:
        raise DeviceError(_pull_message(image, _first_line(exc))) from None
    except Exception as exc:  # noqa: BLE001 - requests' timeouts and connection errors are not DockerExceptions
        raise DeviceError(_pull_message(image, _first_line(exc))) from None
    return client.images.get(image)


def _pull_message(image: str, error: str) -> str:
    reg = registry_of(image)
    low = error.lower()
    if any(s in low for s in ("connection refused", "no such host", "timeout", "i/o timeout", "dial tcp",
                              "server gave http response", "no route", "eof")):
        return f"the registry {reg} does not answer ({error.strip()}): check --registry, the network and that it runs"
    if any(s in low for s in ("manifest unknown", "not found", "does not exist", "repository name not known")):
        return f"{image} is not in the registry {reg} ({error.strip()}): check --registry/--tag, or push the image"
    if "no matching manifest" in low:
        return f"{image} has no build for this engine's architecture ({error.strip()})"
    return f"cannot pull {image}: {error.strip()}"


def check_image_arch(img, image: str, engine_arch: str) -> None:
    arch = img.attrs.get("Architecture", "")
    if arch and arch != engine_arch:
        raise DeviceError(f"{image} is a linux/{arch} image and this engine runs linux/{engine_arch}: that tag holds "
                          f"another platform's build; push the linux/{engine_arch} one (ci/docker-bake.json)")


def wait_ready(container, port: int, timeout: float, out=sys.stdout) -> None:
    """Poll /readyz until 200; DeviceError (with the container's last log lines) when it exits, restarts or
    runs out of time."""
    url = f"http://127.0.0.1:{port}/readyz"
    deadline = time.monotonic() + timeout
    print(f"waiting for {url} (up to {timeout:g} s)", file=out, flush=True)
    while True:
        container.reload()
        state = container.attrs.get("State", {})
        if state.get("Status") in ("exited", "dead") or state.get("Restarting") or container.attrs.get("RestartCount"):
            raise DeviceError(f"the server container stopped (its log):\n{_tail(container)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise DeviceError(f"the server did not become ready within {timeout:g} s:\n{_tail(container)}")
        time.sleep(0.5)


def _tail(container, lines: int = 15) -> str:
    try:
        text = container.logs(tail=lines).decode("utf-8", "replace").rstrip()
    except Exception as exc:  # noqa: BLE001 - the log is only a hint
        text = f"(no log: {exc})"
    return "\n".join("  | " + line for line in text.splitlines()) or "  | (no output)"


def _remove(container) -> None:
    from docker.errors import NotFound

    try:
        container.remove(force=True)
    except NotFound:
        pass


def _cleanup(client, name: str, container, out) -> None:
    """Remove the container this program was starting: the object, or the one the engine made under `name` when
    the answer to create() never came (a client timeout). Best effort, and never interrupted half-way by a
    second Ctrl-C."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading_main() else None
    try:
        target = container or find_container(client, name)
        if target is not None:
            _remove(target)
    except Exception as exc:  # noqa: BLE001 - say what is left, the original error is what matters
        print(f"warning: could not remove the new container {name} ({_first_line(exc)}): docker rm -f {name}",
              file=out, flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def start(client, plan: Plan, out=sys.stdout):
    """Create and start the container and wait until ready; on any failure or interruption (Ctrl-C, a client
    timeout) the new container is removed and the error raised (DeviceError, or KeyboardInterrupt)."""
    from docker.errors import APIError

    container = None
    try:
        container = client.containers.create(plan.pull_ref, **{k: v for k, v in plan.run_kwargs().items()
                                                               if k != "detach"})
        container.start()
        wait_ready(container, plan.port, plan.timeout, out)
    except BaseException as exc:
        _cleanup(client, plan.name, container, out)
        if isinstance(exc, (DeviceError, KeyboardInterrupt, SystemExit)):
            raise
        what = exc.explanation if isinstance(exc, APIError) and exc.explanation else _first_line(exc)
        raise DeviceError(f"cannot start {plan.image}: {what}") from None
    return container


def _image_id(client, image: str) -> str | None:
    from docker.errors import ImageNotFound

    try:
        return client.images.get(image).id
    except ImageNotFound:
        return None


def find_container(client, name: str):
    from docker.errors import NotFound

    try:
        return client.containers.get(name)
    except NotFound:
        return None


# ----------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="device.py", description=__doc__.split("\n\n")[0] + " Detects the device, pulls its platform image, "
        "starts the server on a model directory and waits until it is ready.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Images: REGISTRY/asset:PLATFORM-TAG (ci/docker-bake.json), platforms " + ", ".join(PLATFORMS) + ".\n"
        "Exports each image runs: x86-cpu, rpi4: onnx or onnx-int8; x86-cuda: tensorrt-*, onnx, onnx-int8; jetson: "
        "tensorrt-*, onnx.\nThe engine is the one DOCKER_HOST names (default the local socket).")
    p.add_argument("--model", type=Path, metavar="MODEL_DIR", help="model directory to serve (mounted read-only); "
                   "with --update: default the running container's")
    p.add_argument("--registry", default=os.environ.get("DEFECT_REGISTRY", DEFAULT_REGISTRY),
                   help="registry/namespace of the images (env DEFECT_REGISTRY; default %(default)s)")
    p.add_argument("--tag", default=os.environ.get("DEFECT_TAG", DEFAULT_TAG),
                   help="REGISTRY/asset:PLATFORM-TAG, e.g. a commit the pipeline pushed; "
                        "'latest' means REGISTRY/asset:latest-PLATFORM (env DEFECT_TAG; default %(default)s)")
    p.add_argument("--platform", choices=list(PLATFORMS), help="platform image (default: detected)")
    p.add_argument("--port", type=int, help="port on this host (default 8000)")
    p.add_argument("--name", default=DEFAULT_NAME, help="container name (default %(default)s)")
    p.add_argument("--network", choices=["bridge", "host"], help="bridge: publish --port (default); host: the "
                   "server binds --port on the host's network")
    p.add_argument("--restart", choices=["no", "on-failure", "always", "unless-stopped"],
                   help="restart policy (default unless-stopped)")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for /readyz (default 180)")
    p.add_argument("--api-key-file", type=Path, default=os.environ.get("DEFECT_API_KEY_FILE") or None,
                   help="file holding the API key the server requires (X-API-Key), mounted read-only into the "
                        "container (env DEFECT_API_KEY_FILE); with it the port is published on every interface")
    p.add_argument("--bind", help="host address the port is published on (--network host: the server listens "
                   "on); default 0.0.0.0 with an API key, 127.0.0.1 without")
    p.add_argument("--allow-no-api-key", action="store_true", default=None,
                   help="allow --bind beyond loopback without an API key: anyone who reaches the port can use it")
    p.add_argument("--memory", help="memory limit of the container, e.g. 2g or 512m (default 75%% of the engine's "
                   "memory; 'none' for no limit)")
    p.add_argument("--digest", help="run exactly this image: sha256:..., REPO@sha256:..., or the pipeline's pushed "
                   "record (out/ci/pushed/UNIT.json); checked against the pulled image's RepoDigests")
    p.add_argument("--keep-old-image", action="store_true", help="after --update, keep the previous image (default: "
                   "removed when no container uses it, so that the device's disk does not fill)")
    p.add_argument("--update", action="store_true", help="replace the running container with the newest image, "
                   "keeping its model mount, port and settings")
    p.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    p.add_argument("--root", type=Path, default=Path("/"), help="where /etc and /proc are read from (default /; "
                   "to plan for another device's root file system)")
    p.add_argument("--machine", help="architecture (uname -m) to plan for (default: the engine's, else this host's)")
    args = p.parse_args(argv)
    if args.port is not None and not 1 <= args.port <= 65535:
        p.error(f"--port must be 1..65535, got {args.port}")
    if args.timeout <= 0:
        p.error("--timeout must be > 0")
    if not args.update and args.model is None:
        p.error("--model is required (unless --update reuses the running container's)")
    if args.memory is not None and args.memory != "none" and parse_memory(args.memory) is None:
        p.error(f"--memory {args.memory!r}: a size such as 512m, 2g or 2048m (or 'none')")
    return args


def parse_memory(text: str) -> int | None:
    """'512m', '2g', '1.5g', '1048576' -> bytes; None when it is not a size."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgKMG]?)[bB]?\s*", text or "")
    if not m:
        return None
    value = float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()]
    return int(value) if value >= 6 << 20 else None  # Docker's minimum is 6 MB


def make_plan(args, engine_arch: str | None, runtimes, previous: dict | None = None,
              engine_memory: int | None = None) -> Plan:
    prev = previous or {}
    machine = args.machine or engine_arch or platform.machine()
    device = detect(args.root, machine, runtimes)
    name = args.platform or prev.get("platform") or device.platform
    plat = PLATFORMS[name]
    if plat.arch != device.arch:
        raise DeviceError(f"the {name} image is linux/{plat.arch} and this device is linux/{device.arch}: "
                          f"use --platform {device.platform} (detected: {device.description})")
    if name == device.platform and device.notes:
        raise DeviceError("; ".join(device.notes))
    if plat.runtime and runtimes is not None and plat.runtime not in runtimes:
        raise DeviceError(f"the {name} image needs the '{plat.runtime}' container runtime, which this engine lacks "
                          "(docker info: Runtimes): install the NVIDIA container toolkit")
    model_dir = args.model or (Path(prev["model_dir"]) if prev.get("model_dir") else None)
    if model_dir is None:
        raise DeviceError("--model is required")
    model_dir = Path(model_dir).resolve()
    card = read_model(model_dir)
    backend, precision, key = choose_backend(plat, model_dir, card)
    key_file = getattr(args, "api_key_file", None) or (Path(prev["api_key_file"]) if prev.get("api_key_file") else None)
    if key_file is not None:
        key_file = Path(key_file).resolve()
        try:
            if not key_file.read_text(encoding="utf-8").strip():
                raise DeviceError(f"API key file {key_file} is empty")
        except OSError as exc:
            raise DeviceError(f"API key file {key_file}: {exc.strerror}") from None
    allow = bool(getattr(args, "allow_no_api_key", None) or prev.get("allow_no_api_key"))
    bind = getattr(args, "bind", None) or prev.get("bind") or ("0.0.0.0" if key_file else "127.0.0.1")
    if not key_file and not is_loopback(bind) and not allow:
        raise DeviceError(f"--bind {bind} without an API key would let anyone who reaches this device use the model: "
                          "pass --api-key-file FILE (a key only you know), keep the default (127.0.0.1, this machine "
                          "only), or say --allow-no-api-key")
    memory_arg = getattr(args, "memory", None)
    if memory_arg == "none":
        memory = None
    elif memory_arg:
        memory = parse_memory(memory_arg)
    elif prev.get("memory"):
        memory = int(prev["memory"])
    else:
        memory = int(engine_memory * MEMORY_SHARE) if engine_memory else None
    image = image_ref(args.registry, name, args.tag)
    digest = parse_digest(args.digest, image) if getattr(args, "digest", None) else None
    return Plan(device, plat, image, args.name, model_dir,
                backend, precision, key, args.port or prev.get("port") or 8000,
                args.network or prev.get("network") or "bridge", args.restart or prev.get("restart") or
                "unless-stopped", args.timeout, bind=bind, api_key_file=key_file, allow_no_api_key=allow,
                memory=memory, digest=digest)


def url_lines(plan: Plan) -> str:
    here = f"ready: http://127.0.0.1:{plan.port}/"
    if is_loopback(plan.bind):
        return here + " (this machine only: no API key; --api-key-file FILE to serve other machines)"
    return here + f" (from other machines: http://{socket.gethostname()}:{plan.port}/" + \
        (", header X-API-Key)" if plan.api_key_file else ", NO API KEY)")


def run(args, out=sys.stdout) -> int:
    client = None
    engine_arch, runtimes = None, None
    try:
        client = connect()
    except DeviceError as exc:
        if not args.dry_run:
            raise
        print(f"note: {exc} (planning from this host's files alone)", file=out)
    engine_memory = None
    if client is not None:
        info = client.info()
        engine_arch = docker_arch(info.get("Architecture") or platform.machine())
        runtimes = set((info.get("Runtimes") or {}).keys())
        engine_memory = info.get("MemTotal") or None
    old = find_container(client, args.name) if client is not None else None
    if old is None and client is not None and not args.dry_run:
        old = recover_previous(client, args.name, out)
    previous = None
    if args.update:
        if client is not None and old is None:
            raise DeviceError(f"nothing to update: no container named {args.name} (start it without --update)")
        if old is not None:
            label = old.labels.get(LABEL)
            if label is None:
                raise DeviceError(f"container {args.name} was not started by this program: remove it or pick --name")
            previous = json.loads(label)
            mount = next((m for m in old.attrs.get("Mounts", []) if m.get("Destination") == MODEL_MOUNT), None)
            if mount and mount.get("Source"):
                previous["model_dir"] = mount["Source"]  # the mount itself is what must not be lost
    elif old is not None:
        raise DeviceError(f"a container named {args.name} exists already ({old.status}, image "
                          f"{(old.image.tags or [old.image.short_id])[0]}): use --update to replace it, or --name")
    plan = make_plan(args, engine_arch, runtimes, previous, engine_memory)
    if args.dry_run:
        print("dry run: nothing is pulled or started", file=out)
        for line in plan.describe():
            print(line, file=out)
        if args.update:
            print(f"update:    pull, then replace container {plan.name} if the image changed (the old one is put "
                  "back if the new one does not become ready)", file=out)
        return 0
    print(plan.describe()[0], file=out)
    had = _image_id(client, plan.pull_ref)
    img = pull(client, plan.pull_ref, out)
    try:
        check_image_arch(img, plan.image, engine_arch)
        if plan.digest:
            check_digest(img, plan.digest)
    except DeviceError:
        if had is None:  # pulled just now: do not leave an image this device cannot run
            client.images.remove(img.id, force=True)
        raise
    if args.update:
        if old.image.id == img.id and old.status == "running":
            print(f"{plan.name} already runs the newest {plan.image} ({img.short_id.removeprefix('sha256:')})",
                  file=out)
            print(url_lines(plan), file=out)
            return 0
        old_image = old.image.id
        replace(client, old, plan, out)
        if not args.keep_old_image and old_image != img.id:
            prune_image(client, old_image, out)
    else:
        start(client, plan, out)
    print(url_lines(plan), file=out, flush=True)
    return 0


def recover_previous(client, name: str, out):
    """NAME-previous without NAME: an update cut short before it could put the old container back. Rename it back
    (and start it) so that the device serves again and --update has something to replace."""
    aside = find_container(client, f"{name}-previous")
    if aside is None or LABEL not in (aside.labels or {}):
        return None
    print(f"found {name}-previous without {name} (an interrupted update): putting it back", file=out, flush=True)
    aside.rename(name)
    aside.reload()
    if aside.status != "running":
        aside.start()
    return aside


def prune_image(client, image_id: str, out) -> None:
    """Remove an image no container uses any more (the one an update replaced)."""
    from docker.errors import APIError, ImageNotFound

    try:
        if any(c.image.id == image_id for c in client.containers.list(all=True)):
            return
        client.images.remove(image_id)
        print(f"removed the previous image {image_id.removeprefix('sha256:')[:12]}", file=out, flush=True)
    except (ImageNotFound, APIError) as exc:  # in use, or gone: keep going, the update itself succeeded
        print(f"note: kept the previous image {image_id[:19]} ({_first_line(exc)})", file=out, flush=True)


def replace(client, old, plan: Plan, out=sys.stdout) -> None:
    """Stop the old container, start the new one; if anything fails or is interrupted on the way (Ctrl-C, a client
    timeout), the new one is removed and the old one runs again under its name."""
    aside, old_image = f"{plan.name}-previous", old.image.short_id.removeprefix("sha256:")
    stale = find_container(client, aside)
    if stale is not None:
        _remove(stale)
    try:
        old.rename(aside)
        old.stop(timeout=10)
        start(client, plan, out)  # removes the new container itself when it fails
    except BaseException as exc:
        restored = restore(client, old, plan.name, out)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        why = str(exc) if isinstance(exc, DeviceError) else f"cannot update: {_first_line(exc)}"
        raise DeviceError(f"{why}\nthe update failed; " + ("the previous container runs again" if restored else
                          f"the previous container could not be restarted: docker start {plan.name}")) from None
    _remove(old)
    print(f"replaced {plan.name}: image {old_image} -> {plan.pull_ref}", file=out)


def restore(client, old, name: str, out) -> bool:
    """Put the old container back under `name` and running (after the new one was removed); True when it runs.
    Not interrupted by a second Ctrl-C."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading_main() else None
    try:
        leftover = find_container(client, name)
        if leftover is not None and leftover.id != old.id:
            _remove(leftover)  # a new container start() could not remove
        old.reload()
        if old.name != name:
            old.rename(name)
        if old.status != "running":
            old.start()
        return True
    except Exception as exc:  # noqa: BLE001 - report it with the original error
        print(f"warning: could not restart the previous container ({_first_line(exc)})", file=out, flush=True)
        return False
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except DeviceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
