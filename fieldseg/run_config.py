"""Run configurations for ``fieldseg train``: YAML files, validated, with ``--set`` overrides.

A config has five sections: ``model`` (validated by its family, see :mod:`fieldseg.models`),
``optimizer``, ``schedule``, ``training`` and ``augmentation``, and optionally ``bands``, the
band names the config was written for (a dataset with other bands is then an error). An
unknown key anywhere is an error naming it, so a typo never silently falls back to a default.
The resolved config (file, overrides and defaults together) is what a run saves and what its
checkpoints carry. A resumed run keeps its own config: only when it stops and how fast it loads
may change (:data:`RESUMABLE_KEYS`), so the saved config always says what the run really used.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fieldseg.augmentation import AugmentationConfig
from fieldseg.errors import ConfigError, InputFileError, first_line
from fieldseg.models import model_config

#: The settings a resumed run may change: when it stops and how fast it loads chips. They take
#: effect from the resumed epoch on and leave what the earlier epochs did true; everything else
#: (model, bands, optimizer, schedule, augmentation, the rest of training) is the run's recipe,
#: restored from its checkpoint or fixed for its whole history (see load_resumed_config).
RESUMABLE_KEYS = (
    "training.epochs",
    "training.max_minutes",
    "training.early_stopping_patience",
    "training.loader_workers",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


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
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="no training step after this wall time, counted from the first step; "
        "the last epoch's validation and checkpoints follow",
    )
    early_stopping_patience: int | None = Field(
        5,
        ge=1,
        description="epochs without a better val selection metric (segm mAP; U-Net: object "
        "F1) before stopping; counted once it is above 0",
    )
    seed: int = Field(0, ge=0)
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
        InputFileError: the file is missing, a folder, not text or not YAML.
        ConfigError: an unknown key, a bad value or a malformed override, naming it.
    """
    if base is not None:
        data: Any = copy.deepcopy(base)
    else:
        if path is None:
            raise ConfigError("a config file is needed (-c configs/....yaml)")
        data = _read_yaml(Path(path))
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


def load_resumed_config(
    base: dict[str, Any], overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """The config of a resumed run: its own (``base``), with the overrides that can take effect.

    A resumed run continues as configured: its weights, optimiser state (learning rates
    included) and schedule state come from its checkpoint, so a new ``optimizer.lr`` say would
    be recorded but never used. Only :data:`RESUMABLE_KEYS` (when the run stops, how fast it
    loads) may change; an override that gives another key another value is refused by name.
    An override that repeats the run's own value is accepted.

    Raises:
        ConfigError: an override of a key that cannot change when resuming (or any error of
            :func:`load_run_config`).
    """
    before = load_run_config(base=base).resolved()
    config = load_run_config(base=base, overrides=overrides)
    after = config.resolved()
    for key in _changed_keys(before, after):
        if key not in RESUMABLE_KEYS:
            raise ConfigError(
                f"--resume: {key} cannot change when resuming (this run has "
                f"{key}={_show(_lookup(before, key))}); a resumed run continues as configured "
                f"and only {', '.join(RESUMABLE_KEYS)} may change. Start a new run (another "
                "-o, or --overwrite) to change it"
            )
        if key == "training.epochs" and config.schedule.name == "cosine":
            raise ConfigError(
                "--resume: training.epochs cannot change in a run with the cosine schedule "
                f"(this run has training.epochs={_show(_lookup(before, key))}): it set the "
                "length of the schedule when the run started"
            )
    return config


def save_run_config(config: RunConfig, path: str | os.PathLike[str]) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config.resolved(), sort_keys=False))


def _read_yaml(path: Path) -> Any:
    """The YAML data of a config file; every way it can be unusable is one clear error."""
    if path.is_dir():
        raise InputFileError(f"config {path} is a folder; -c expects a YAML file")
    if not path.is_file():
        raise InputFileError(f"config not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputFileError(f"{path} is not a YAML config: it is not a text file") from exc
    except OSError as exc:
        raise InputFileError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise InputFileError(f"{path} is not valid YAML: {_yaml_problem(exc)}") from exc


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (PyYAML's own text spans lines)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return first_line(exc)


def _changed_keys(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (sections recursed)."""
    changed = []
    for key in dict.fromkeys([*before, *after]):
        old, new = before.get(key), after.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            changed.extend(_changed_keys(old, new, f"{prefix}{key}."))
        elif old != new:
            changed.append(f"{prefix}{key}")
    return changed


def _lookup(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _show(value: Any) -> str:
    """A config value as one would write it after ``--set key=``."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


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
