"""Where models run: CUDA when present (or asked for), else the CPU."""

from __future__ import annotations

import torch

from fieldseg.distributed import DistContext
from fieldseg.errors import ConfigError


def select_device(requested: str = "auto", ctx: DistContext | None = None) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error.

    Under ``torchrun`` each process takes the GPU of its local rank.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", ctx.local_rank if ctx is not None else 0)
