"""Network construction (torch). `build_model` validates and builds; `load_network` restores a model directory's net."""

from asset.models.registry import ARCHITECTURES, ModelConfigError, check_combination, get_architecture

__all__ = ["ARCHITECTURES", "ModelConfigError", "build_model", "check_combination", "get_architecture",
           "load_network", "required_divisor"]


def __getattr__(name):  # lazy: importing asset.models must not import torch
    if name in ("build_model", "load_network", "required_divisor", "EncoderWeightsError"):
        from asset.models import factory

        return getattr(factory, name)
    raise AttributeError(name)
