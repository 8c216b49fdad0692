"""Checkpoints: self-contained, safe to share, and loadable from a file or a run folder.

A checkpoint holds the model weights and everything needed to use them: the model family, the
resolved run config, the band names and statistics, the nodata value, the chip size, the class
names and the fieldseg version (see docs/formats.md). It holds plain types and tensors only, so
it loads with ``torch.load(weights_only=True)``: opening a checkpoint someone shared cannot run
code. Wherever a checkpoint is asked for, a run folder works too (meaning its ``best.pt``).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fieldseg import __version__
from fieldseg.atomic_output import atomic_file
from fieldseg.band_statistics import BandStatistics
from fieldseg.errors import InputFileError, first_line
from fieldseg.models import FieldModel, ModelSpec, build_model, model_config

CHECKPOINT_FORMAT = "fieldseg-checkpoint"
CHECKPOINT_VERSION = 1
BEST, LAST = "best.pt", "last.pt"


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module docstring for what it holds)."""

    data: dict[str, Any]
    #: The file it was read from (None when built in memory).
    path: Path | None = None

    @property
    def spec(self) -> ModelSpec:
        """What the model was built for."""
        return ModelSpec(
            bands=tuple(self.data["bands"]),
            statistics=tuple(BandStatistics(**s) for s in self.data["statistics"]),
            nodata=self.data["nodata"],
            chip_size=int(self.data["chip_size"]),
            categories=tuple(self.data["categories"]),
            pixel_size_m=self.data.get("pixel_size_m"),
            dtype=self.data.get("dtype"),
        )

    @property
    def config(self) -> dict[str, Any]:
        """The resolved run config the model was trained with."""
        return self.data["config"]

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return int(self.data["epoch"])

    def build_model(self) -> FieldModel:
        """The model with its trained weights, on the CPU, in eval mode."""
        model = build_model(model_config(self.config["model"]), self.spec)
        where = self.path or "the checkpoint"
        unfit = f"{where}: its weights do not fit the {model.family} model its config describes"
        try:
            loaded = model.load_state_dict(self.data["state_dict"], strict=False)
        except RuntimeError as exc:  # a weight of another shape
            detail = next((line.strip() for line in str(exc).splitlines()[1:] if line.strip()),
                          first_line(exc))  # fmt: skip
            raise InputFileError(f"{unfit} ({detail})") from exc
        if loaded.missing_keys or loaded.unexpected_keys:
            parts = [f"{len(keys)} {what}, e.g. {keys[0]}" for what, keys in
                     (("missing", loaded.missing_keys), ("unknown", loaded.unexpected_keys))
                     if keys]  # fmt: skip
            raise InputFileError(f"{unfit} ({'; '.join(parts)})")
        if self.path is not None:
            model.source = f"{self.data['family']}:{file_hash(self.path)}"
        return model.eval()


def save_checkpoint(
    path: str | os.PathLike[str],
    model: FieldModel,
    *,
    config: dict[str, Any],
    spec: ModelSpec,
    epoch: int,
    metrics: dict[str, float],
    training_state: dict[str, Any] | None = None,
) -> None:
    """Write a checkpoint atomically (a crash mid-write keeps the previous one).

    Args:
        path: the ``.pt`` file.
        model: the model whose weights to save.
        config: the resolved run config.
        spec: bands, statistics, nodata, chip size and classes the model was built for.
        epoch: epochs completed.
        metrics: the latest validation metrics.
        training_state: optimiser, schedule and history, for ``--resume``.
    """
    data = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "fieldseg_version": __version__,
        "family": model.family,
        "config": config,
        "bands": list(spec.bands),
        "statistics": [s.model_dump() for s in spec.statistics],
        "nodata": spec.nodata,
        "chip_size": spec.chip_size,
        "categories": list(spec.categories),
        "pixel_size_m": spec.pixel_size_m,
        "dtype": spec.dtype,
        "epoch": epoch,
        "metrics": metrics,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "training_state": training_state,
    }
    with atomic_file(path, overwrite=True) as tmp:
        torch.save(data, tmp)


def resolve_checkpoint_path(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run folder's ``best.pt`` (its ``last.pt`` if there is no best)."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise InputFileError(f"{path} holds no {BEST} or {LAST}: not a fieldseg run folder")
    if not path.is_file():
        raise InputFileError(f"checkpoint not found: {path}")
    return path


def read_torch_file(path: str | os.PathLike[str], what: str) -> Any:
    """Load a file saved by ``torch.save``, safely (``weights_only=True``), or fail in one line.

    PyTorch's own message for a file it cannot load this way spans many lines and advises
    ``weights_only=False``, which would let the file run code: it is never shown. What is kept
    is a short reason where there is a useful one (the file is empty, holds a Python object).

    Args:
        path: the file.
        what: what the file should have been, for the message (``"a fieldseg checkpoint"``).

    Raises:
        InputFileError: ``path`` cannot be read, or PyTorch cannot load it safely.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from exc
    except Exception as exc:  # zip, pickle and type errors all mean: not a usable file
        raise InputFileError(
            f"{path} is not {what} (PyTorch could not read it as one{_load_reason(path, exc)})"
        ) from exc


def _load_reason(path: str | os.PathLike[str], exc: Exception) -> str:
    """A short, safe reason why ``torch.load`` failed, as ``": reason"``, or ``""``."""
    try:
        if os.stat(path).st_size == 0:
            return ": the file is empty"
    except OSError:
        pass
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
    if found:
        return f": it holds a Python object, {found.group(1)}, never loaded as it could run code"
    return ""


def file_hash(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256: the ``model`` tag of predicted fields."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def non_finite_tensors(state_dict: dict[str, Any]) -> list[str]:
    """The names of the floating-point tensors of a state dict holding NaN or infinity."""
    return [
        name
        for name, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value).all())
    ]


#: What every checkpoint holds (``training_state`` and ``metrics`` may be empty).
REQUIRED_KEYS = ("family", "config", "bands", "statistics", "nodata", "chip_size",
                 "categories", "epoch", "state_dict")  # fmt: skip


def _check_contents(data: dict[str, Any], file: Path) -> None:
    """Refuse a checkpoint whose parts do not read as fieldseg writes them, naming the part."""
    try:
        spec = Checkpoint(data).spec
        int(data["epoch"])
        family = data["config"]["model"]["family"]
    except (KeyError, TypeError, ValueError) as exc:
        raise InputFileError(f"{file} is damaged: {first_line(exc) or type(exc).__name__}") from exc
    if len(spec.statistics) != len(spec.bands):
        raise InputFileError(
            f"{file} is damaged: it names {len(spec.bands)} bands but holds statistics of "
            f"{len(spec.statistics)}"
        )
    if not isinstance(data["state_dict"], dict):
        raise InputFileError(f"{file} is damaged: its state_dict is not a set of weights")
    if family != data["family"]:
        raise InputFileError(
            f"{file} is damaged: it says family {data['family']!r}, its config {family!r}"
        )


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load a checkpoint file or a run folder's best one, safely (``weights_only=True``).

    Raises:
        InputFileError: missing, unreadable, not a fieldseg checkpoint, from a newer fieldseg,
            or holding weights that are not finite (a diverged run: it would find nothing).
    """
    file = resolve_checkpoint_path(path)
    data = read_torch_file(file, "a fieldseg checkpoint")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise InputFileError(f"{file} is not a fieldseg checkpoint")
    version = data.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputFileError(f"{file} is damaged: its format_version is {version!r}")
    if version > CHECKPOINT_VERSION:
        raise InputFileError(f"{file} was written by a newer fieldseg; upgrade fieldseg")
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise InputFileError(f"{file} is damaged: it lacks {', '.join(missing)}")
    _check_contents(data, file)
    broken = non_finite_tensors(data.get("state_dict", {}))
    if broken:
        raise InputFileError(
            f"{file} holds NaN or infinite weights ({len(broken)} tensors, e.g. {broken[0]}): "
            "its training diverged; train again with a lower rate (--set optimizer.lr=...)"
        )
    return Checkpoint(data, path=file)
