"""Give a backbone made for RGB images the dataset's bands, and load pretrained weights.

The first convolution is rebuilt for the band count: pretrained filters of the red, green and
blue channels are reused for the bands of those colours (on every date), their mean for the other
bands, all scaled so that activations keep their size. Weights come from torchvision's weights
API when online, or from a state dict on disk (``--weights PATH``); offline without a cached
copy, one clear message says how to go on.
"""

from __future__ import annotations

import os
import re
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from fieldseg.errors import ConfigError, InputFileError

#: Name tokens that mark a band as red, green or blue (Sentinel-2 codes included).
_COLOUR_TOKENS: dict[str, int] = {"red": 0, "b04": 0, "b4": 0, "green": 1, "b03": 1, "b3": 1,
                                  "blue": 2, "b02": 2, "b2": 2}  # fmt: skip

T = TypeVar("T")


def rgb_channels(band_names: Sequence[str]) -> list[int | None]:
    """For each band, the RGB channel (0, 1, 2) it matches by name, or None."""
    out: list[int | None] = []
    for name in band_names:
        tokens = re.split(r"[_\-\s.]+", name.lower())
        out.append(next((_COLOUR_TOKENS[t] for t in tokens if t in _COLOUR_TOKENS), None))
    return out


def adapt_first_conv(model: nn.Module, band_names: Sequence[str]) -> nn.Conv2d:
    """Replace the first 3-channel convolution of ``model`` by one taking ``band_names``.

    Returns:
        The new convolution.
    """
    parent, attribute, old = _first_rgb_conv(model)
    bands = len(band_names)
    new = nn.Conv2d(
        bands,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(filters_for_bands(old.weight, band_names))
        if old.bias is not None:
            new.bias.copy_(old.bias)  # type: ignore[union-attr]
    setattr(parent, attribute, new)
    return new


def filters_for_bands(rgb_weight: torch.Tensor, band_names: Sequence[str]) -> torch.Tensor:
    """First-layer filters for ``band_names`` from filters made for RGB (out, 3, k, k).

    A red, green or blue band (on any date) gets the filter of its colour, any other band the
    mean of the three; all are scaled by 3 / bands so that activations keep their size.
    """
    mean = rgb_weight.mean(dim=1)
    columns = [
        rgb_weight[:, channel] if channel is not None else mean
        for channel in rgb_channels(band_names)
    ]
    return torch.stack(columns, dim=1) * (3.0 / len(band_names))


def first_conv_name(model: nn.Module, bands: int) -> str | None:
    """The state-dict key of the first convolution's weight that takes ``bands`` channels."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == bands:
            return f"{name}.weight"
    return None


def _first_rgb_conv(model: nn.Module) -> tuple[nn.Module, str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            parent_name, _, attribute = name.rpartition(".")
            return model.get_submodule(parent_name), attribute, module
    raise ValueError("the model has no 3-channel convolution to adapt")


def download_weights(what: str, load: Callable[[], T]) -> T:
    """Run ``load`` (which downloads weights through torchvision), with a clear offline error."""
    try:
        return load()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        raise ConfigError(
            f"cannot download the {what} weights ({exc.__class__.__name__}: offline?); train "
            "from scratch with --pretrained none, or give a state dict on disk with --weights PATH"
        ) from exc


def load_weights_file(
    model: nn.Module, path: str | os.PathLike[str], band_names: Sequence[str]
) -> tuple[int, int]:
    """Load the tensors of a state dict file that fit ``model``; return (loaded, total in file).

    ``path`` may also be a fieldseg run folder, whose ``best.pt`` (else ``last.pt``) is read.

    The file's keys may carry another prefix than the model's (``encoder.`` against
    ``detector.backbone.body.``, say): the pair of prefixes under which most keys agree is
    used. Tensors whose shape differs (a head for other classes) are skipped. The first
    convolution must fit the bands: RGB filters are adapted to ``band_names`` as for the
    torchvision weights; filters for another band count, or a fieldseg checkpoint trained on
    other bands, are an error. Loaded with ``weights_only=True``, so a file cannot run code.

    Raises:
        InputFileError: the file is missing, unreadable or holds no state dict.
        ConfigError: nothing fits, or the file was made for other bands.
    """
    from fieldseg.checkpoint import read_torch_file, resolve_checkpoint_path  # imports models

    path = Path(path)
    if path.is_dir():  # a fieldseg run folder: its best.pt (or last.pt)
        path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise InputFileError(f"weights file not found: {path}")

    state = read_torch_file(path, "a weights file")
    trained_bands = state.get("bands") if isinstance(state, dict) else None
    if trained_bands is not None and list(trained_bands) != list(band_names):
        raise ConfigError(
            f"the checkpoint {path} was trained on bands {list(trained_bands)}; "
            f"the dataset has {list(band_names)}"
        )
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputFileError(f"{path} holds no state dict")
    own = model.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    file_prefix, model_prefix = _best_prefixes(list(tensors), list(own))
    first_conv = first_conv_name(model, len(band_names))
    matched: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        if not key.startswith(file_prefix):
            continue
        target = model_prefix + key[len(file_prefix) :]
        if target == first_conv and tensor.shape != own[target].shape:
            tensor = _first_conv_for_bands(tensor, own[target], band_names, path)
        if target in own and own[target].shape == tensor.shape:
            matched[target] = tensor
    if not matched:
        raise ConfigError(f"no tensor of {path} fits the model (wrong architecture?)")
    model.load_state_dict(matched, strict=False)
    return len(matched), len(state)


def _first_conv_for_bands(
    tensor: torch.Tensor, own: torch.Tensor, band_names: Sequence[str], path: Path
) -> torch.Tensor:
    """A file's first-layer filters fitted to the bands, or a clear error when they cannot be."""
    bands = len(band_names)
    if tensor.ndim == 4 and tensor.shape[0] == own.shape[0] and tensor.shape[2:] == own.shape[2:]:
        if tensor.shape[1] == 3:
            return filters_for_bands(tensor, band_names)
        raise ConfigError(
            f"the weights in {path} take {tensor.shape[1]} input bands; the dataset has {bands} "
            f"({', '.join(band_names)})"
        )
    return tensor  # another layout altogether: skipped like any misfit


def _best_prefixes(file_keys: list[str], model_keys: list[str]) -> tuple[str, str]:
    """The (file prefix, model prefix) pair under which the most keys are equal."""
    by_rest: dict[str, list[str]] = {}
    for name in model_keys:
        parts = name.split(".")
        for start in range(len(parts)):
            by_rest.setdefault(".".join(parts[start:]), []).append(".".join(parts[:start]))
    votes: dict[tuple[str, str], int] = {}
    for key in file_keys:
        parts = key.split(".")
        for start in range(len(parts)):
            file_prefix = ".".join(parts[:start])
            for model_prefix in by_rest.get(".".join(parts[start:]), []):
                pair = (_dotted(file_prefix), _dotted(model_prefix))
                votes[pair] = votes.get(pair, 0) + 1
    return max(votes, key=lambda pair: votes[pair]) if votes else ("", "")


def _dotted(prefix: str) -> str:
    return prefix + "." if prefix else ""
