"""scripts/device.py interrupted at each step (issue 27): Ctrl-C or a Docker client timeout during a first start
leaves no container behind; during --update it leaves the previous server running under its name. A fake engine
(the Docker SDK calls device.py makes, nothing else) records what exists; the real-engine run is in
tests/containers/test_device.py."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import pytest
import requests
from docker.errors import ImageNotFound, NotFound

from tests.device.test_device import device, model_dir, root_with

IDS = itertools.count(1)


class Image:
    def __init__(self, ref: str, digest: str | None = None) -> None:
        self.id = f"sha256:{next(IDS):064x}"
        self.short_id = self.id[:19]
        self.tags = [ref]
        repo = ref.split("@")[0] if "@" in ref else ref.rsplit(":", 1)[0]
        self.attrs = {"Architecture": "amd64", "RepoDigests": [f"{repo}@{digest}"] if digest else []}


class Container:
    def __init__(self, engine: Engine, image: Image, name: str, labels: dict) -> None:
        self.engine, self.image, self.name, self.labels = engine, image, name, labels
        self.id = f"{next(IDS):064x}"
        self.status = "created"
        self.attrs = {"State": {"Status": "created"}, "RestartCount": 0, "Mounts": []}

    def _step(self, what: str) -> None:
        self.engine.step(what)

    def start(self):
        self._step("start")
        self.status = "running"

    def stop(self, timeout=10):
        self._step("stop")
        self.status = "exited"

    def rename(self, name):
        self._step("rename")
        self.engine.containers_by_name.pop(self.name)
        self.name = name
        self.engine.containers_by_name[name] = self

    def remove(self, force=False):
        if self.engine.containers_by_name.get(self.name) is not self:
            raise NotFound("gone")
        del self.engine.containers_by_name[self.name]

    def reload(self):
        self.attrs["State"]["Status"] = self.status

    def logs(self, tail=15):
        return b"log line"


class Engine:
    """The fake engine; `fail = (step, exception, after_effect)` raises at the first such step (after doing it,
    when after_effect: the engine acted, the answer was lost)."""

    def __init__(self, digest: str | None = None) -> None:
        self.containers_by_name: dict[str, Container] = {}
        self.images: dict[str, Image] = {}
        self.fail: tuple | None = None
        self.digest = digest
        self.removed_images: list[str] = []
        self.containers = self
        self.api = self

    def step(self, what: str, after=None) -> None:
        if self.fail and self.fail[0] == what:
            step, exc, after_effect = self.fail
            self.fail = None
            if after_effect and after is not None:
                after()
            raise exc

    # client
    def ping(self):
        return True

    def info(self):
        return {"Architecture": "x86_64", "Runtimes": {"runc": {}}, "MemTotal": 8 << 30}

    # client.api
    def pull(self, repo, tag=None, stream=True, decode=True):
        self.step("pull")
        ref = f"{repo}@{tag}" if tag and tag.startswith("sha256:") else f"{repo}:{tag}"
        self.images[ref] = Image(ref, self.digest)
        yield {"status": "Pull complete", "id": "0123456789ab"}

    # client.containers
    def create(self, image, name=None, labels=None, **kw):
        made = Container(self, self.images[image], name, labels or {})

        def register():
            self.containers_by_name[name] = made

        self.step("create", after=register)
        register()
        return made

    def get(self, name):
        if name not in self.containers_by_name:
            raise NotFound(name)
        return self.containers_by_name[name]

    def list(self, all=False):
        return list(self.containers_by_name.values())


class Images:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, ref):
        if ref not in self.engine.images:
            raise ImageNotFound(ref)
        return self.engine.images[ref]

    def remove(self, image_id, force=False):
        self.engine.removed_images.append(image_id)


@pytest.fixture
def engine(monkeypatch):
    eng = Engine()
    client = type("Client", (), {})()
    client.containers, client.api, client.images = eng, eng, Images(eng)
    client.ping, client.info = eng.ping, eng.info
    monkeypatch.setattr(device, "connect", lambda timeout=10.0: client)

    def wait_ready(container, port, timeout, out=None):
        eng.step("wait")
        if container.status != "running":
            raise device.DeviceError("the server container stopped")

    monkeypatch.setattr(device, "wait_ready", wait_ready)
    return eng


def args_for(tmp_path: Path, *extra: str):
    model = tmp_path / "models" / "demo"
    if not model.exists():
        model_dir(tmp_path, "onnx")
    root = tmp_path / "root"
    if not root.exists():
        root_with(tmp_path)
    return device.parse_args(["--model", str(model), "--platform", "x86-cpu", "--root", str(root),
                              "--registry", "reg.example:5000/defect", *extra])


def running_server(engine: Engine, tmp_path: Path) -> Container:
    assert device.run(args_for(tmp_path), io.StringIO()) == 0
    server = engine.containers_by_name[device.DEFAULT_NAME]
    assert server.status == "running"
    return server


STEPS_START = ["create", "start", "wait"]
STEPS_UPDATE = ["rename", "stop", "create", "start", "wait"]
ERRORS = [KeyboardInterrupt(), requests.exceptions.ReadTimeout("Read timed out. (read timeout=10)"),
          requests.exceptions.ConnectionError("engine went away"), RuntimeError("unexpected")]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("step", STEPS_START)
@pytest.mark.parametrize("after_effect", [False, True], ids=["before", "after"])
def test_an_interrupted_start_leaves_no_container(engine, tmp_path, step, error, after_effect):
    engine.fail = (step, error, after_effect)
    with pytest.raises((KeyboardInterrupt, device.DeviceError)) as raised:
        device.run(args_for(tmp_path), io.StringIO())
    assert isinstance(raised.value, KeyboardInterrupt) == isinstance(error, KeyboardInterrupt)
    assert engine.containers_by_name == {}  # even when the engine created it and the answer was lost


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("step", STEPS_UPDATE)
def test_an_interrupted_update_leaves_the_previous_server_running(engine, tmp_path, step, error):
    old = running_server(engine, tmp_path)
    engine.fail = (step, error, step == "create")
    with pytest.raises((KeyboardInterrupt, device.DeviceError)) as raised:
        device.run(args_for(tmp_path, "--update", "--tag", "v2"), io.StringIO())
    if isinstance(raised.value, device.DeviceError):
        assert "the previous container runs again" in str(raised.value)
    assert list(engine.containers_by_name) == [device.DEFAULT_NAME]
    assert engine.containers_by_name[device.DEFAULT_NAME] is old and old.status == "running"
    # and the next --update works (it does not say "nothing to update")
    assert device.run(args_for(tmp_path, "--update", "--tag", "v2"), io.StringIO()) == 0
    new = engine.containers_by_name[device.DEFAULT_NAME]
    assert new is not old and new.status == "running" and list(engine.containers_by_name) == [device.DEFAULT_NAME]
    assert engine.removed_images == [old.image.id]  # the replaced image is pruned


def test_an_update_cut_short_harder_is_taken_back_first(engine, tmp_path):
    old = running_server(engine, tmp_path)
    old.rename(f"{device.DEFAULT_NAME}-previous")  # the host lost power mid-update
    old.stop()
    out = io.StringIO()
    assert device.run(args_for(tmp_path, "--update", "--tag", "v2"), out) == 0
    assert "an interrupted update" in out.getvalue()
    assert list(engine.containers_by_name) == [device.DEFAULT_NAME]


def test_keep_old_image(engine, tmp_path):
    running_server(engine, tmp_path)
    assert device.run(args_for(tmp_path, "--update", "--tag", "v2", "--keep-old-image"), io.StringIO()) == 0
    assert engine.removed_images == []


def test_digest_pinning(engine, tmp_path):
    digest = "sha256:" + "ab" * 32
    engine.digest = digest
    out = io.StringIO()
    assert device.run(args_for(tmp_path, "--digest", digest), out) == 0
    server = engine.containers_by_name[device.DEFAULT_NAME]
    assert server.image.tags == [f"reg.example:5000/defect/asset@{digest}"]  # pulled and run by digest
    record = tmp_path / "pushed.json"
    record.write_text(json.dumps({"digest": f"reg.example:5000/defect/asset@{digest}"}))
    plan = device.make_plan(args_for(tmp_path, "--digest", str(record)), "amd64", {"runc"})
    assert plan.pull_ref == f"reg.example:5000/defect/asset@{digest}"


def test_a_pulled_image_without_the_digest_is_refused(engine, tmp_path):
    engine.digest = "sha256:" + "cd" * 32  # the registry answers with another image
    with pytest.raises(device.DeviceError, match="do not include reg.example:5000/defect/asset@sha256:abab"):
        device.run(args_for(tmp_path, "--digest", "sha256:" + "ab" * 32), io.StringIO())
    assert engine.containers_by_name == {}


@pytest.mark.parametrize("value, message", [
    ("sha256:123", "expected sha256:<64 hex digits>"),
    ("other/repo@sha256:" + "ab" * 32, "is for other/repo, not reg.example:5000/defect/asset"),
])
def test_bad_digests(tmp_path, value, message):
    with pytest.raises(device.DeviceError, match=message):
        device.make_plan(args_for(tmp_path, "--digest", value), "amd64", {"runc"})


def test_bind_rules(tmp_path):
    plan = device.make_plan(args_for(tmp_path), "amd64", {"runc"})
    assert plan.bind == "127.0.0.1" and plan.run_kwargs()["ports"] == {"8000/tcp": ("127.0.0.1", 8000)}
    with pytest.raises(device.DeviceError, match="--bind 0.0.0.0 without an API key"):
        device.make_plan(args_for(tmp_path, "--bind", "0.0.0.0"), "amd64", {"runc"})
    open_plan = device.make_plan(args_for(tmp_path, "--bind", "0.0.0.0", "--allow-no-api-key"), "amd64", {"runc"})
    assert open_plan.environment()["ASSET_ALLOW_NO_API_KEY"] == "1"
    key = tmp_path / "key"
    key.write_text("k3y\n")
    keyed = device.make_plan(args_for(tmp_path, "--api-key-file", str(key)), "amd64", {"runc"})
    kw = keyed.run_kwargs()
    assert keyed.bind == "0.0.0.0" and kw["ports"] == {"8000/tcp": ("0.0.0.0", 8000)}
    assert kw["volumes"][str(key)] == {"bind": device.KEY_MOUNT, "mode": "ro"}
    assert kw["environment"]["ASSET_API_KEY_FILE"] == device.KEY_MOUNT and "k3y" not in json.dumps(kw)
    key.write_text("")
    with pytest.raises(device.DeviceError, match="is empty"):
        device.make_plan(args_for(tmp_path, "--api-key-file", str(key)), "amd64", {"runc"})


def test_update_keeps_key_bind_and_memory(engine, tmp_path):
    key = tmp_path / "key"
    key.write_text("k3y\n")
    assert device.run(args_for(tmp_path, "--api-key-file", str(key), "--memory", "1g"), io.StringIO()) == 0
    first = engine.containers_by_name[device.DEFAULT_NAME]
    settings = json.loads(first.labels[device.LABEL])
    assert settings["api_key_file"] == str(key.resolve()) and settings["bind"] == "0.0.0.0"
    assert settings["memory"] == 1 << 30
    plan = device.make_plan(device.parse_args(["--update", "--root", str(tmp_path / "root"), "--platform",
                                               "x86-cpu"]), "amd64", {"runc"}, {**settings}, 8 << 30)
    assert plan.api_key_file == key.resolve() and plan.bind == "0.0.0.0" and plan.memory == 1 << 30
