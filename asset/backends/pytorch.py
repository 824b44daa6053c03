"""PyTorch eager backend: weights.pt through the SMP network (needs torch + segmentation-models-pytorch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from asset.backends.base import Backend, BackendError, parse_device


class TorchBackend(Backend):
    name = "pytorch"

    def __init__(self, model_dir: Path, card: dict, *, precision: str = "fp32", device: str = "cpu",
                 threads: int = 1, channels_last: bool = False) -> None:
        import torch

        from asset.models.factory import network_from_card

        kind, index = parse_device(device)
        if kind == "cuda" and not torch.cuda.is_available():
            raise BackendError("device cuda: torch sees no CUDA GPU here")
        if precision == "fp16" and kind != "cuda":
            raise BackendError("pytorch fp16 runs on cuda only (CPU half precision is slower than fp32)")
        if kind == "cpu":
            torch.set_num_threads(threads)
        self.file = Path(model_dir) / card.get("weights", "weights.pt")
        net = network_from_card(card)
        net.load_state_dict(torch.load(self.file, map_location="cpu", weights_only=True))
        self._device = torch.device(f"cuda:{index}" if kind == "cuda" else "cpu")
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._net = net.eval().to(self._device, dtype=self._dtype, memory_format=self._memory_format)
        self._torch = torch
        self.precision = precision
        self.device = str(self._device)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self._device, dtype=self._dtype, memory_format=self._memory_format)
            return self._net(x).float().cpu().numpy()

    def close(self) -> None:
        self._net = None
