"""Run configurations for ``fieldseg train``: YAML files, validated, with ``--set`` overrides.

A config has five sections: ``model`` (validated by its family, see :mod:`fieldseg.models`),
``optimizer``, ``schedule``, ``training`` and ``augmentation``, and optionally ``bands``, the
band names the config was written for (a dataset with other bands is then an error). An
unknown key anywhere is an error naming it, so a typo never silently falls back to a default.
The resolved config (file, overrides and defaults together) is what a run saves and what its
checkpoints carry.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fieldseg.augmentation import AugmentationConfig
from fieldseg.errors import ConfigError, InputFileError
from fieldseg.models import model_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OptimizerConfig(_Strict):
    """The optimiser of the training recipe."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")


class ScheduleConfig(_Strict):
    """The learning-rate schedule, stepped once per epoch, after an optional linear warm-up.

    The warm-up counts optimiser steps from the start of the run: the rate climbs linearly from
    ``warmup_factor`` times the scheduled rate to the scheduled rate over ``warmup_steps``
    steps (SGD recipes such as YOLACT's need it; Adam recipes usually do not).
    """

    name: Literal["step", "cosine", "constant"] = "step"
    step_size: int = Field(5, ge=1, description="epochs between decays (step)")
    gamma: float = Field(0.1, gt=0, le=1, description="decay factor (step)")
    warmup_steps: int = Field(0, ge=0, description="optimiser steps of linear warm-up")
    warmup_factor: float = Field(0.001, gt=0, le=1, description="rate share at the first step")

    def warmup_scale(self, step: int) -> float:
        """The share of the scheduled rate used at optimiser step ``step`` (0-based)."""
        if step >= self.warmup_steps:
            return 1.0
        return self.warmup_factor + (1 - self.warmup_factor) * step / self.warmup_steps


class TrainingConfig(_Strict):
    """How long and how a run trains."""

    epochs: int = Field(20, ge=1)
    batch_size: int = Field(8, ge=1)
    max_minutes: float | None = Field(None, gt=0, description="stop after this wall time")
    early_stopping_patience: int | None = Field(
        5,
        ge=1,
        description="epochs without a better val selection metric (segm mAP; U-Net: object "
        "F1) before stopping",
    )
    seed: int = 0
    loader_workers: int | None = Field(None, ge=0, description="default: 0 on CPU, 4 on GPU")
    mixed_precision: bool = Field(True, description="on CUDA only")
    grad_clip_norm: float | None = Field(10.0, gt=0)
    max_detections: int = Field(300, ge=1, description="maxDets of the val COCO evaluation")


class RunConfig(_Strict):
    """A whole run config, resolved."""

    model: dict[str, Any]
    bands: list[str] | None = Field(
        None, description="if set, the bands (in order) the dataset must have, e.g. for a sensor"
    )
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    training: TrainingConfig = TrainingConfig()
    augmentation: AugmentationConfig = AugmentationConfig()

    def resolved(self) -> dict[str, Any]:
        """Plain, complete data: every default written out (model section included)."""
        data = self.model_dump(mode="json")
        data["model"] = model_config(self.model).model_dump(mode="json")
        return data


def load_run_config(
    path: str | os.PathLike[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Read a YAML config (or start from ``base``), apply ``key=value`` overrides, validate.

    Args:
        path: the YAML file.
        overrides: ``section.key=value`` strings; values are read as YAML (``5``, ``1e-3``,
            ``true``, ``[3, 5]``).
        base: a resolved config to start from instead of a file (e.g. a checkpoint's).

    Raises:
        InputFileError: the file is missing or is not YAML.
        ConfigError: an unknown key, a bad value or a malformed override, naming it.
    """
    if base is not None:
        data: Any = copy.deepcopy(base)
    else:
        if path is None:
            raise ConfigError("a config file is needed (-c configs/....yaml)")
        path = Path(path)
        if not path.is_file():
            raise InputFileError(f"config not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputFileError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError("a config is a mapping of sections (model, optimizer, ...)")
    for override in overrides:
        _apply_override(data, override)
    if "model" not in data:
        raise ConfigError("the config has no model section")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"config: {where}: {error['msg']}") from exc
    model_config(config.model)  # the family validates its own section
    return config


def save_run_config(config: RunConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.resolved(), sort_keys=False))


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {override!r}")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {override!r}: the value is not valid YAML") from exc
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a section")
        node = child
    node[parts[-1]] = value
