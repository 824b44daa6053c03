"""Server settings: command-line options, or environment variables (what a container sets)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import ClassVar, get_args, get_type_hints

from asset.errors import AssetError


class SettingsError(AssetError, ValueError):
    """A setting out of range; the message names it and the valid range."""


def setting(default, help: str, *, metavar: str | None = None, public: bool = True):
    """One server setting: its flag (--name-with-dashes) and env variable (ASSET_NAME) follow from the field name."""
    return field(default=default, metadata={"help": help, "metavar": metavar, "public": public})


@dataclass
class Settings:
    model: str = setting("", "model directory", metavar="MODEL_DIR")
    backend: str = setting("onnxruntime", "onnxruntime (default), openvino, tensorrt or pytorch")
    precision: str = setting("fp32", "fp32 (default), int8 (onnxruntime/openvino), fp16 (tensorrt/pytorch cuda)")
    device: str = setting("cpu", "cpu (default) or cuda[:N]")
    threads: int | None = setting(None, "backend intra-op threads (default: usable cores)")
    api_key: str | None = setting(None, "require this X-API-Key on every route but the health probes (a command line "
                                        "is visible to every user of the machine: prefer --api-key-file)")
    api_key_file: str | None = setting(None, "read the API key from this file (e.g. a Docker secret, a file only "
                                             "root can read)")
    allow_no_api_key: bool = setting(False, "serve beyond loopback without an API key: anyone who reaches the port "
                                            "can use the model")
    limit_concurrency: int = setting(64, "connections at most; beyond them new requests get 503 at once (default 64)")
    max_batch: int | None = setting(None, "largest dynamic batch (default 4 on CPU, 8 on a GPU)")
    max_wait_ms: float = setting(5.0, "longest wait for a batch to fill (default 5 ms)")
    queue_size: int = setting(64, "requests waiting at most before 503 + Retry-After (default 64)")
    max_body_mb: float = setting(20.0, "largest request body, else 413 before it is read whole (default 20 MB)")
    max_pixels: int = setting(40_000_000, "largest image pixel count, else 413 before decoding (default 40,000,000)")
    max_batch_images: int = setting(32, "most images in one POST /predict/batch (default 32)")
    max_batch_pixels: int = setting(40_000_000, "most pixels of all images of one request together, else 413 "
                                                "(default 40,000,000)")
    max_inflight_pixels: int = setting(80_000_000, "most decoded pixels held by all requests at once, else 503 + "
                                                   "Retry-After (default 80,000,000)")
    max_input_factor: float = setting(16.0, "network pixels per image at most this x the training input size; "
                                            "larger images are tiled (default 16)")
    load_attempts: int = setting(3, "tries to load the model before the server exits non-zero (default 3)")
    load_retry_s: float = setting(2.0, "wait before the second load try, doubled for each further one (default 2)")
    host: str = setting("127.0.0.1", "bind address (default 127.0.0.1)")
    published_host: str | None = setting(None, "the address other machines reach the port on, when it is not --host "
                                               "(a container listens on 0.0.0.0 and is published with -p "
                                               "127.0.0.1:8000:8000): the no-API-key rule judges this address")
    port: int = setting(8000, "port (default 8000)")
    warmup: bool = setting(True, "run the model once before /readyz says ready", public=False)  # tests turn it off

    TRUE: ClassVar = ("1", "true", "yes", "on")
    FALSE: ClassVar = ("0", "false", "no", "off")

    def __post_init__(self) -> None:
        if self.max_batch is None:  # measured (README, make bench): past batch 2-4 a CPU engine gets slower per image
            on_gpu = self.backend == "tensorrt" or not str(self.device).startswith("cpu")
            self.max_batch = 8 if on_gpu else 4

    @classmethod
    def options(cls) -> list[tuple[str, type, str, str, dict]]:
        """(name, type, flag, env variable, field metadata) of each public setting."""
        hints = get_type_hints(cls)
        out = []
        for f in fields(cls):
            if f.metadata.get("public"):
                kind = next(t for t in get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
                out.append((f.name, kind, "--" + f.name.replace("_", "-"), "ASSET_" + f.name.upper(), dict(f.metadata)))
        return out

    @classmethod
    def env_names(cls) -> dict[str, str]:
        return {name: var for name, _, _, var, _ in cls.options()}

    @classmethod
    def add_arguments(cls, parser) -> None:
        """One option per public setting; unset options stay None so that the environment and defaults apply."""
        for name, kind, flag, var, meta in cls.options():
            help_text = f"{meta['help']} (env {var}{'=1' if kind is bool else ''})"
            if kind is bool:
                parser.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
            else:
                parser.add_argument(flag, dest=name, type=None if kind is str else kind, metavar=meta["metavar"],
                                    help=help_text)

    @classmethod
    def parse(cls, var: str, raw: str, kind: type):
        """An environment value as the setting's type."""
        if kind is bool:
            if raw.strip().lower() not in cls.TRUE + cls.FALSE:
                raise SettingsError(f"{var}={raw!r}: use 1 or 0 (true / false)")
            return raw.strip().lower() in cls.TRUE
        try:
            return kind(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r} is not a number") from None

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        """Defaults, then ASSET_* environment variables, then explicit (non-None) overrides."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        for name, kind, _, var, _ in cls.options():
            if environ.get(var) not in (None, ""):
                values[name] = cls.parse(var, environ[var], kind)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.read_key_file()
        settings.check()
        return settings

    def read_key_file(self) -> None:
        """api_key from api_key_file (when no key is given directly)."""
        if not self.api_key_file or self.api_key:
            return
        try:
            key = open(self.api_key_file, encoding="utf-8").read().strip()  # noqa: SIM115 - read whole at once
        except OSError as exc:
            raise SettingsError(f"API key file {self.api_key_file}: {exc.strerror}") from None
        if not key:
            raise SettingsError(f"API key file {self.api_key_file} is empty")
        self.api_key = key

    def check(self) -> None:
        if not self.model:
            raise SettingsError("no model: pass --model MODEL_DIR or set ASSET_MODEL")
        for name, low in (("max_batch", 1), ("queue_size", 1), ("limit_concurrency", 2), ("load_attempts", 1),
                          ("max_pixels", 1), ("max_batch_images", 1),
                          ("max_batch_pixels", 1), ("max_inflight_pixels", 1), ("max_input_factor", 1)):
            if getattr(self, name) < low:
                raise SettingsError(f"{name} must be >= {low}, got {getattr(self, name)}")
        largest = max(self.max_pixels, self.max_batch_pixels)
        if self.max_inflight_pixels < largest:
            raise SettingsError(f"max_inflight_pixels ({self.max_inflight_pixels}) must be >= max_pixels and "
                                f"max_batch_pixels ({largest}), or the largest allowed request could never run")
        if self.max_wait_ms < 0 or self.max_body_mb <= 0 or self.load_retry_s < 0:
            raise SettingsError("max_wait_ms and load_retry_s must be >= 0 and max_body_mb > 0")
        if self.threads is not None and self.threads < 1:
            raise SettingsError(f"threads must be >= 1, got {self.threads}")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"port must be 0..65535, got {self.port}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
