"""Training configuration: YAML defaults + a config file + command-line overrides, validated (no torch)."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import yaml

from asset.errors import AssetError


class ConfigError(AssetError, ValueError):
    """An invalid option; the message names the key, the bad value and what is allowed."""


def default_config_text() -> str:
    return resources.files("asset").joinpath("configs/default.yaml").read_text()


def load_default() -> dict:
    return yaml.safe_load(default_config_text())


def deep_merge(base: dict, over: dict, where: str = "") -> dict:
    """`over` into a copy of `base`; unknown keys are errors (typos must not pass silently)."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        path = f"{where}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {', '.join(map(str, out))}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, path + ".")
        else:
            out[key] = value
    return out


def set_key(cfg: dict, dotted: str, value) -> None:
    node = cfg
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {dotted!r}; valid keys here: {', '.join(map(str, node))}")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise ConfigError(f"--set needs KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, flags: dict | None = None) -> dict:
    """defaults <- config file <- --set overrides <- explicit flags (dotted keys). Validated."""
    cfg = load_default()
    if path:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"{path}: config file cannot be read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: a config file must be a mapping")
        cfg = deep_merge(cfg, user)
    for text in overrides or []:
        set_key(cfg, *parse_override(text))
    for key, value in (flags or {}).items():
        if value is not None:
            set_key(cfg, key, value)
    validate_config(cfg)
    return cfg


def _fraction(name: str, value, allow_none=False):
    if value is None and allow_none:
        return
    try:
        ok = 0.0 <= float(value) <= 1.0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")


def _open_fraction_or_null(name: str, value, example: str) -> None:
    """null, or a number strictly between 0 and 1 (a probability or a decay: 0 and 1 are degenerate)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1):
        raise ConfigError(f"{name} must be null or a number strictly between 0 and 1 (e.g. {example}), got {value!r}")


def _positive_int(name: str, value, minimum: int = 1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


LOSSES = ("jaccard", "dice", "bce", "bce_jaccard", "bce_dice", "focal_dice")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step", "onecycle")


def validate_config(cfg: dict) -> None:
    """Range and choice checks of everything that can be checked without torch or the data."""
    from asset.algorithm import SIZE_MODES
    from asset.models.registry import check_combination

    if not isinstance(cfg.get("seed"), int):
        raise ConfigError(f"seed must be an integer, got {cfg.get('seed')!r}")
    d, m, t = cfg["data"], cfg["model"], cfg["trainer"]
    _positive_int("data.batch_size (--batch-size)", d["batch_size"])
    _positive_int("data.eval_batch_size", d["eval_batch_size"])
    if d["num_workers"] != "auto":
        _positive_int("data.num_workers", d["num_workers"], 0)
    if d["size_mode"] not in SIZE_MODES:
        raise ConfigError(f"data.size_mode must be one of {list(SIZE_MODES)}, got {d['size_mode']!r}")
    if d["size"] is not None and (not isinstance(d["size"], list | tuple) or len(d["size"]) != 2
                                  or not all(isinstance(v, int) and v > 0 for v in d["size"])):
        raise ConfigError(f"data.size must be null or [H, W] with positive integers, got {d['size']!r}")
    if d["size_mode"] == "resize" and d["size"] is None:
        raise ConfigError("data.size_mode 'resize' needs data.size [H, W]")
    check_combination(m["arch"], m["encoder"], 3)
    _positive_int("trainer.max_epochs (--epochs)", t["max_epochs"])
    try:
        lr = float(cfg["optimizer"]["lr"])
    except (TypeError, ValueError):
        lr = -1
    if not lr > 0:
        raise ConfigError(f"optimizer.lr (--lr) must be > 0, got {cfg['optimizer']['lr']!r}")
    for key, choices in (("loss.name", LOSSES), ("optimizer.name", OPTIMIZERS), ("scheduler.name", SCHEDULERS)):
        sec, name = key.split(".")
        if str(cfg[sec][name]).lower() not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {cfg[sec][name]!r}")
    _fraction("thresholds.pixel (--pixel-threshold)", cfg["thresholds"]["pixel"])
    _fraction("thresholds.image (--image-threshold)", cfg["thresholds"]["image"], allow_none=True)
    _fraction("loss.bce_weight", cfg["loss"]["bce_weight"])
    _fraction("data.mask_fraction", d.get("mask_fraction", 1.0))
    _open_fraction_or_null("model.head_prior", m.get("head_prior"), "0.01")
    _open_fraction_or_null("optimizer.ema_decay", cfg["optimizer"].get("ema_decay"), "0.9")
    from asset.algorithm import DECISION_RULES

    if m.get("decision") not in DECISION_RULES:
        raise ConfigError(f"model.decision must be one of {list(DECISION_RULES)}, got {m.get('decision')!r}")
    _positive_int("model.decision_channels", m.get("decision_channels"))
    if not isinstance(m.get("decision_detach"), bool):
        raise ConfigError(f"model.decision_detach must be true or false, got {m.get('decision_detach')!r}")
    weight = cfg["loss"].get("decision_weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
        raise ConfigError(f"loss.decision_weight must be a number > 0 (e.g. 1.0), got {weight!r}")
    _positive_int("loss.decision_ramp_epochs", cfg["loss"].get("decision_ramp_epochs"), 0)
    pos_weight = cfg["loss"].get("pos_weight")
    if pos_weight is not None and (isinstance(pos_weight, bool) or not isinstance(pos_weight, (int, float))
                                   or not pos_weight > 0):
        raise ConfigError(f"loss.pos_weight must be null or a number > 0 (e.g. 10), got {pos_weight!r}")
    if pos_weight is not None and str(cfg["loss"]["name"]).lower() not in ("bce", "bce_dice", "bce_jaccard"):
        raise ConfigError(f"loss.pos_weight weighs the BCE term: it applies to bce, bce_dice and bce_jaccard, not to "
                          f"loss.name={cfg['loss']['name']!r} (drop it, or pick one of those losses)")
