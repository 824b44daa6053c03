"""Server settings: command-line options, or environment variables (what a container sets)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


class SettingsError(ValueError):
    """A setting out of range; the message names it and the valid range."""


@dataclass
class Settings:
    model: str = ""
    backend: str = "onnxruntime"
    precision: str = "fp32"
    device: str = "cpu"
    threads: int | None = None
    api_key: str | None = None
    api_key_file: str | None = None  # read into api_key (a Docker secret, a file only root can read)
    allow_no_api_key: bool = False  # serve beyond loopback without a key: only when the user says so
    limit_concurrency: int = 64    # connections at once (uvicorn); beyond it: 503 before any work
    max_batch: int | None = None   # largest batch the dynamic batcher forms (Triton: max_batch_size); default below
    max_wait_ms: float = 5.0       # how long the first request of a batch waits for company (Triton: max_queue_delay)
    queue_size: int = 64           # requests waiting at most; beyond it: 503 + Retry-After
    max_body_mb: float = 20.0      # request bodies above this: 413, refused before they are read whole
    max_pixels: int = 40_000_000   # images above this pixel count: 413, refused before decoding (decompression bombs)
    max_batch_images: int = 32     # images in one POST /predict/batch
    max_batch_pixels: int = 40_000_000  # pixels of all the images of one request together: beyond it, 413
    max_inflight_pixels: int = 80_000_000  # decoded pixels held by all requests at once: beyond it, 503 + Retry-After
    max_input_factor: float = 16.0  # network pixels per image <= this x the training input size (asset/tiling.py)
    warmup: bool = True
    load_attempts: int = 3          # tries to load the model before giving up (asset serve then exits non-zero)
    load_retry_s: float = 2.0       # wait before the second try; doubled for each further one

    ENV = {
        "model": "ASSET_MODEL", "backend": "ASSET_BACKEND", "precision": "ASSET_PRECISION", "device": "ASSET_DEVICE",
        "threads": "ASSET_THREADS", "api_key": "ASSET_API_KEY", "max_batch": "ASSET_MAX_BATCH",
        "max_wait_ms": "ASSET_MAX_WAIT_MS", "queue_size": "ASSET_QUEUE_SIZE", "max_body_mb": "ASSET_MAX_BODY_MB",
        "max_pixels": "ASSET_MAX_PIXELS", "max_batch_images": "ASSET_MAX_BATCH_IMAGES",
        "max_batch_pixels": "ASSET_MAX_BATCH_PIXELS", "max_inflight_pixels": "ASSET_MAX_INFLIGHT_PIXELS",
        "max_input_factor": "ASSET_MAX_INPUT_FACTOR", "api_key_file": "ASSET_API_KEY_FILE",
        "allow_no_api_key": "ASSET_ALLOW_NO_API_KEY", "limit_concurrency": "ASSET_LIMIT_CONCURRENCY",
        "load_attempts": "ASSET_LOAD_ATTEMPTS", "load_retry_s": "ASSET_LOAD_RETRY_S",
    }
    TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

    def __post_init__(self) -> None:
        if self.max_batch is None:  # measured (README, make bench): past batch 2-4 a CPU engine gets slower per image
            on_gpu = self.backend == "tensorrt" or not str(self.device).startswith("cpu")
            self.max_batch = 8 if on_gpu else 4

    @classmethod
    def from_env(cls, environ=None, **overrides) -> Settings:
        """Defaults, then ASSET_* environment variables, then explicit (non-None) overrides."""
        environ = os.environ if environ is None else environ
        values: dict = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in cls.ENV.items():
            if environ.get(var) not in (None, ""):
                raw = environ[var]
                kind = types[name]
                if "bool" in str(kind):
                    if raw.strip().lower() not in cls.TRUE + cls.FALSE:
                        raise SettingsError(f"{var}={raw!r}: use 1 or 0 (true / false)")
                    values[name] = raw.strip().lower() in cls.TRUE
                    continue
                try:
                    if "int" in str(kind):
                        values[name] = int(raw)
                    elif "float" in str(kind):
                        values[name] = float(raw)
                    else:
                        values[name] = raw
                except ValueError:
                    raise SettingsError(f"{var}={raw!r} is not a number") from None
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

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)
