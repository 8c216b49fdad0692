"""``fieldseg train``: a model family trained on a tiled dataset, on GPU or CPU.

The loop is family-agnostic: the model gives named losses (:meth:`FieldModel.training_step`)
and predictions (:meth:`FieldModel.predict`); the recipe (optimiser, schedule, augmentation)
comes from the run config. Every epoch is validated with COCO segm and bbox mAP; metrics go to
``metrics.jsonl`` and ``metrics.csv``; ``last.pt`` and ``best.pt`` are written atomically.

A resumed run continues as configured (see :func:`fieldseg.run_config.load_resumed_config`), so
the config it records is the one it used. A run folder that holds no checkpoint yet (a run
stopped before its first epoch was saved) is a run that never started, and is reused.
"""

from __future__ import annotations

import csv
import errno
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from fieldseg.atomic_output import OutputPathError
from fieldseg.augmentation import ChipAugmentation
from fieldseg.checkpoint import (
    BEST,
    LAST,
    file_hash,
    load_checkpoint,
    non_finite_tensors,
    save_checkpoint,
)
from fieldseg.chip_dataset import ChipDataset, EmptySplitError, Target, collate_chips
from fieldseg.coco_evaluation import evaluate_chip_predictions
from fieldseg.dataset_description import DESCRIPTION_FILE, DatasetDescription
from fieldseg.devices import select_device
from fieldseg.distributed import DistContext, init_distributed
from fieldseg.errors import (
    ConfigError,
    FieldsegError,
    InputFileError,
    OutputExistsError,
    first_line,
)
from fieldseg.models import FieldModel, ModelSpec, build_model, model_config
from fieldseg.models.input_layer import load_weights_file
from fieldseg.progress import progress, progress_shown
from fieldseg.run_config import RunConfig, load_resumed_config, load_run_config, save_run_config
from fieldseg.training_curves import plot_training_curves
from fieldseg.wording import counted

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
CURVES_FILE = "training_curves.png"
METRICS_JSONL, METRICS_CSV = "metrics.jsonl", "metrics.csv"
#: What train writes in a run folder before its first epoch is saved (config.yaml first, then
#: the metrics of epoch 1 just before last.pt): a folder holding config.yaml and at most these
#: is a run that never started (stopped by Ctrl-C or an error), reused without --overwrite.
UNSTARTED_RUN_FILES = frozenset({CONFIG_FILE, METRICS_JSONL, METRICS_CSV})


class TrainingError(FieldsegError):
    """Training cannot go on (a NaN loss, say); the last good checkpoint is kept."""


@dataclass
class TrainSummary:
    """What a run did."""

    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_metric: float | None
    stopped_because: str
    history: list[dict[str, Any]] = field(default_factory=list)
    #: the val metric that chose the best epoch (the family's ``selection_metric``)
    metric_name: str = "segm_mAP"
    #: False in the other processes of a distributed run: they do not validate, so their
    #: summary holds no best epoch and is not the run's
    is_main: bool = True


#: A run config: a YAML file, or its sections as a mapping (``{"model": {...}, ...}``).
ConfigSource = str | os.PathLike[str] | Mapping[str, Any]
#: Config overrides: ``"section.key=value"`` strings, or a mapping ``{"section.key": value}``.
Overrides = Sequence[str] | Mapping[str, Any]


def train(
    dataset_dir: str | os.PathLike[str],
    config_path: ConfigSource | None,
    run_dir: str | os.PathLike[str],
    *,
    overrides: Overrides = (),
    device: str = "auto",
    resume: bool = False,
    pretrained: str = "none",
    weights: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    show_progress: bool | None = None,
) -> TrainSummary:
    """Train a model on a tiled dataset and write a run folder.

    Args:
        dataset_dir: a folder written by ``fieldseg tile``.
        config_path: the YAML run config, or its sections as a mapping; none with
            ``resume`` (the run's own is used).
        run_dir: the run folder: ``config.yaml``, ``last.pt``, ``best.pt``, ``metrics.*``.
        overrides: config overrides, ``section.key=value`` strings (``training.epochs=3``)
            or a mapping (``{"training.epochs": 3}``); with ``resume`` only those of
            :data:`fieldseg.run_config.RESUMABLE_KEYS`.
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue the run in ``run_dir`` from its ``last.pt``.
        pretrained: ``imagenet``, ``coco`` or ``none``.
        weights: a state dict to start from (e.g. a Sentinel-2 pretrained backbone).
        overwrite: start over in a ``run_dir`` that holds an earlier run. Its files are set
            aside and deleted once the new run has saved its first epoch; a run that fails or
            is interrupted before that puts them back.
        show_progress: progress bars on or off for this call; None: as set globally
            (:func:`fieldseg.progress.set_progress_enabled`, on where stderr is a terminal).

    Returns:
        What the run did and why it stopped.

    Raises:
        ConfigError: a bad config or override; ``config_path`` or an override of the recipe
            with ``resume``.
        OutputExistsError: ``run_dir`` holds an earlier run (or other files).
        OutputPathError: ``run_dir`` is a file or cannot be created or written.
    """
    if resume:
        _check_resume_options(config_path, pretrained, weights)
    context = init_distributed(device)
    try:
        with progress_shown(show_progress):
            return _train(context, dataset_dir, config_path, Path(run_dir),
                          overrides=overrides, device=device, resume=resume,
                          pretrained=pretrained, weights=weights, overwrite=overwrite)  # fmt: skip
    except BaseException:
        if context.is_main:  # failed or interrupted before its first epoch was saved
            _restore_previous_run(Path(run_dir))
        raise
    finally:
        context.close()


def train_loader(
    data: ChipDataset,
    *,
    batch_size: int,
    workers: int,
    sampler: DistributedSampler | None,
    generator: torch.Generator,
    pin_memory: bool,
) -> DataLoader:
    """The training loader: shuffled (or the distributed sampler's share), chips as a list.

    Workers are started afresh for every epoch rather than kept (``persistent_workers``): a
    kept worker holds its own copy of the dataset, which :meth:`ChipDataset.set_epoch` does not
    reach, so every epoch would repeat the first epoch's augmentations.
    """
    return DataLoader(
        data,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator if sampler is None else None,
        collate_fn=collate_chips,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def _train(
    ctx: DistContext,
    dataset_dir: str | os.PathLike[str],
    config_path: ConfigSource | None,
    run_dir: Path,
    *,
    overrides: Overrides,
    device: str,
    resume: bool,
    pretrained: str,
    weights: str | os.PathLike[str] | None,
    overwrite: bool,
) -> TrainSummary:
    """The run of :func:`train` in one process of a (possibly one-process) group."""
    settings = _override_strings(overrides)
    description = DatasetDescription.load(dataset_dir)
    spec = ModelSpec.from_description(description)
    resumed = _resume_state(run_dir) if resume else None
    dataset_hash = _dataset_hash(dataset_dir)
    if resumed is not None:
        config = load_resumed_config(resumed.config, settings)
        _check_same_bands(resumed.spec, spec)
        _warn_if_other_dataset(resumed.data["training_state"], dataset_hash, dataset_dir)
    else:
        config = (
            load_run_config(None, settings, base=dict(config_path))
            if isinstance(config_path, Mapping)
            else load_run_config(config_path, settings)
        )
        _check_run_dir(run_dir, overwrite=overwrite)
    if config.bands is not None and list(config.bands) != list(spec.bands):
        raise ConfigError(
            f"the config is for bands {config.bands}; the dataset has {list(spec.bands)}"
        )
    resolved = config.resolved()

    torch.manual_seed(config.training.seed)
    chosen = select_device(device, ctx)
    train_data = ChipDataset(
        dataset_dir,
        "train",
        augmentation=ChipAugmentation(config.augmentation, description.bands),
        seed=config.training.seed,
    )
    if train_data.n_instances == 0:
        raise InputFileError(f"the train split of {dataset_dir} holds no annotated field")
    val_data = _optional_split(dataset_dir, "val")

    model = build_model(model_config(config.model), spec, pretrained=pretrained)
    if weights is not None:
        loaded, total = load_weights_file(model, weights, spec.bands)
        logger.info("loaded %d of %d tensors from %s", loaded, total, weights)
    # every process has checked its input (data, model, weights) before the main one writes
    # anything, so a mistake leaves no run folder behind to block the next try
    ctx.barrier()
    if ctx.is_main:
        if resumed is None:
            _set_previous_run_aside(run_dir)
        with _run_dir_errors(run_dir):
            save_run_config(config, run_dir / CONFIG_FILE)
    ctx.barrier()
    model.to(chosen)
    optimizer = _optimizer(config, model)
    scheduler = _scheduler(config, optimizer)
    amp = config.training.mixed_precision and chosen.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    best: tuple[int, float] | None = None
    if resumed is not None:
        model.load_state_dict(resumed.data["state_dict"])
        state = resumed.data["training_state"]
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = list(state["history"])
        start_epoch = resumed.epoch
        best = tuple(state["best"]) if state["best"] is not None else None  # type: ignore[assignment]
        if state.get("selection_metric", FieldModel.selection_metric) != model.selection_metric:
            best = None  # chosen by another metric (an older version): not comparable
    # several processes: gradients are averaged across them (weights start equal: DDP
    # broadcasts the main process's at construction)
    trainable: torch.nn.Module = (
        DistributedDataParallel(model, device_ids=[chosen.index] if chosen.type == "cuda" else None)
        if ctx.distributed
        else model
    )

    workers = config.training.loader_workers
    if workers is None:
        workers = 4 if chosen.type == "cuda" else 0
    generator = torch.Generator().manual_seed(config.training.seed)
    sampler = (
        DistributedSampler(
            train_data,
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=config.training.seed,
        )
        if ctx.distributed
        else None
    )
    loader = train_loader(
        train_data,
        batch_size=config.training.batch_size,
        workers=workers,
        sampler=sampler,
        generator=generator,
        pin_memory=chosen.type == "cuda",
    )
    if ctx.is_main:
        logger.info(
            "training %s on %s (%s) on %s, epochs %d to %d%s",
            model.family, counted(len(train_data), "train chip"),
            f"{len(val_data)} val" if val_data is not None else "no val split", chosen,
            start_epoch + 1, config.training.epochs,
            f", at most {config.training.max_minutes:g} minutes"
            if config.training.max_minutes else "",
        )  # fmt: skip
    started = time.monotonic()
    seconds_before = float(history[-1].get("seconds", 0.0)) if history else 0.0  # resumed
    deadline = (
        started + 60 * config.training.max_minutes if config.training.max_minutes else math.inf
    )
    stopped = "epochs done"
    epoch = start_epoch
    for epoch in range(start_epoch + 1, config.training.epochs + 1):
        train_data.set_epoch(epoch)
        generator.manual_seed(config.training.seed + epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        losses, out_of_time = _train_epoch(
            trainable, loader, optimizer, scaler, chosen, config, epoch, deadline, amp, ctx
        )
        if ctx.any(bool(non_finite_tensors(trainable.state_dict()))):  # a last step, unseen
            raise _diverged(f"the weights became NaN or infinite in epoch {epoch}", epoch)
        lr = optimizer.param_groups[0]["lr"]  # this epoch's scheduled rate (before warm-up)
        scheduler.step()
        if not ctx.is_main:  # the main process validates, logs and writes; the others follow
            if ctx.from_main(False):
                break
            continue
        record: dict[str, Any] = {
            "epoch": epoch,
            "lr": lr,
            "seconds": round(seconds_before + time.monotonic() - started, 1),
            **{f"train_{k}": v for k, v in losses.items()},
        }
        if val_data is not None:
            record.update({f"val_{k}": v for k, v in _validate(model, val_data, config).items()})
        history.append(record)
        with _run_dir_errors(run_dir):
            _log_metrics(run_dir, history)
        metric = record.get(f"val_{model.selection_metric}")
        improved = _improves(metric, best)
        if improved:
            best = (epoch, float(metric))  # type: ignore[arg-type]
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": history,
            "best": list(best) if best is not None else None,
            "selection_metric": model.selection_metric,
            "dataset": dataset_hash,
        }
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float))}
        with _run_dir_errors(run_dir):
            save_checkpoint(run_dir / LAST, model, config=resolved, spec=spec, epoch=epoch,
                            metrics=metrics, training_state=state)  # fmt: skip
            if improved or val_data is None:
                save_checkpoint(run_dir / BEST, model, config=resolved, spec=spec,
                                epoch=epoch, metrics=metrics)  # fmt: skip
            _drop_previous_run(run_dir)  # this run has a checkpoint of its own now
        logger.info(_epoch_line(record))
        patience = config.training.early_stopping_patience
        if out_of_time:
            stopped = f"--max-minutes {config.training.max_minutes:g} reached"
        elif patience is not None and _stalled(epoch, best, patience):
            stopped = f"no better val {model.selection_metric} for {patience} epochs"
        if ctx.from_main(stopped != "epochs done"):
            break
    if history and ctx.is_main:
        with _run_dir_errors(run_dir):
            plot_training_curves(history, run_dir / CURVES_FILE)
    return TrainSummary(
        run_dir=run_dir,
        epochs_done=epoch,
        best_epoch=best[0] if best else None,
        best_metric=best[1] if best else None,
        stopped_because=stopped,
        history=history,
        metric_name=model.selection_metric,
        is_main=ctx.is_main,
    )


def _diverged(what: str, epoch: int) -> TrainingError:
    """The error of a run whose loss or weights stopped being finite.

    No checkpoint of the failing epoch is written, so the last one saved is the last good one.
    """
    if epoch == 1:  # no epoch finished, so no checkpoint to start from
        return TrainingError(
            f"{what}; training stopped before any epoch finished, so there is no checkpoint: "
            "run again with a lower rate (--set optimizer.lr=...; the same -o folder is reused)"
        )
    return TrainingError(
        f"{what}; training stopped and {LAST} keeps the last good epoch: start a new run from "
        f"it with a lower rate (-o NEW --weights RUN/{LAST} --set optimizer.lr=...)"
    )


def _train_epoch(
    model: FieldModel,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    config: RunConfig,
    epoch: int,
    deadline: float,
    amp: bool,
    ctx: DistContext,
) -> tuple[dict[str, float], bool]:
    """One pass over the train chips; mean losses, and whether the time budget ran out."""
    model.train()
    sums: dict[str, float] = {}
    steps = 0
    first_step = (epoch - 1) * len(loader)  # optimiser steps before this epoch (warm-up)
    bar = progress(loader, total=len(loader), desc=f"epoch {epoch}", unit="batch",
                   show=ctx.is_main)  # fmt: skip
    for images, targets in bar:
        images_on = [image.to(device, non_blocking=True) for image in images]
        targets_on = [_to_device(t, device) for t in targets]
        with torch.autocast(device_type=device.type, enabled=amp):
            losses = model(images_on, targets_on)
        total = sum(losses.values())
        if ctx.any(not bool(torch.isfinite(total))):
            raise _diverged(f"the loss became {total.item()} at epoch {epoch}, step {steps + 1}",
                            epoch)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        if config.training.grad_clip_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.training.grad_clip_norm)
        with _warmed_up(optimizer, config.schedule.warmup_scale(first_step + steps)):
            scaler.step(optimizer)
        scaler.update()
        steps += 1
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        sums["loss"] = sums.get("loss", 0.0) + float(total.detach())
        bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}")
        if ctx.any(time.monotonic() > deadline):
            break
    means = {name: value / max(steps, 1) for name, value in sums.items()}
    return means, ctx.any(time.monotonic() > deadline)


@contextmanager
def _warmed_up(optimizer: torch.optim.Optimizer, scale: float) -> Iterator[None]:
    """Scale the learning rates for one step, then give the schedule its own rates back."""
    if scale >= 1.0:
        yield
        return
    scheduled = [group["lr"] for group in optimizer.param_groups]
    for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
        group["lr"] = lr * scale
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, scheduled, strict=True):
            group["lr"] = lr


def _improves(metric: float | None, best: tuple[int, float] | None) -> bool:
    """Whether an epoch's val metric makes it the best so far.

    A higher value does; so does a tie at zero: a model that has found nothing yet is no
    better for being earlier, and the later one has trained longer (an untrained model must
    not stay best.pt because nothing beat its zero).
    """
    if metric is None or math.isnan(metric):
        return False
    return best is None or metric > best[1] or metric == best[1] == 0.0


def _stalled(epoch: int, best: tuple[int, float] | None, patience: int) -> bool:
    """Early stopping: ``patience`` epochs without a better val metric, once it is above 0.

    A model that has found nothing yet has not stalled; it may need more epochs to begin.
    """
    return best is not None and best[1] > 0.0 and epoch - best[0] >= patience


@torch.no_grad()
def _validate(model: FieldModel, data: ChipDataset, config: RunConfig) -> dict[str, float]:
    """COCO segm and bbox mAP of the model on a split, after the family's calibration on it."""
    calibrated, predictions = model.calibrate_and_predict(
        data, batch_size=config.training.batch_size
    )
    metrics = evaluate_chip_predictions(
        data.coco_document, predictions, max_detections=config.training.max_detections
    )
    return {**metrics, **calibrated}


def _optional_split(dataset_dir: str | os.PathLike[str], split: str) -> ChipDataset | None:
    try:
        return ChipDataset(dataset_dir, split)
    except EmptySplitError:
        logger.warning("the %s split is empty: no validation, every epoch saved as best", split)
        return None


def _dataset_hash(dataset_dir: str | os.PathLike[str]) -> str:
    """A short hash of the dataset's description: what a resumed run checks it goes on with."""
    return file_hash(Path(dataset_dir) / DESCRIPTION_FILE)


def _warn_if_other_dataset(state: dict[str, Any], dataset_hash: str, dataset_dir: object) -> None:
    """Warn when a run resumes on a dataset other than the one it trained on so far."""
    trained_on = state.get("dataset")  # None: a run of an older fieldseg, nothing to compare
    if trained_on is not None and trained_on != dataset_hash:
        best = state.get("best")
        logger.warning(
            "--resume on %s, another dataset than this run trained on so far (its dataset.json "
            "differs)%s",
            dataset_dir,
            f": its best epoch, {best[0]}, was chosen on the other dataset's val split"
            if best
            else "",
        )


def _resume_state(run_dir: Path) -> Any:
    """The checkpoint ``--resume`` continues from: ``run_dir``'s ``last.pt``."""
    names = _folder_names(run_dir, what="--resume: ")
    if LAST not in names:
        if _is_unstarted_run(run_dir, names):
            raise InputFileError(
                f"--resume: {run_dir} holds no {LAST}: the run stopped before its first epoch "
                "was saved; start it again without --resume (the folder is reused)"
            )
        raise InputFileError(f"--resume: {run_dir} holds no {LAST} to continue from")
    checkpoint = load_checkpoint(run_dir / LAST)
    if checkpoint.data.get("training_state") is None:
        raise InputFileError(f"--resume: {run_dir / LAST} holds no training state")
    return checkpoint


def _override_strings(overrides: Overrides) -> list[str]:
    """``section.key=value`` strings from any accepted form of ``overrides``."""
    if isinstance(overrides, str):
        return [overrides]  # one override, not a sequence of its characters
    if isinstance(overrides, Mapping):
        # values as JSON, which the overrides read as YAML: 3, 1e-3, true, "adam", [3, 5]
        return [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    return list(overrides)


def _check_resume_options(
    config_path: ConfigSource | None,
    pretrained: str,
    weights: str | os.PathLike[str] | None,
) -> None:
    """Refuse the options a resumed run could only ignore: it keeps its config and weights."""
    if config_path is not None:
        raise ConfigError(
            "-c cannot be used with --resume: a resumed run continues with its own config "
            "(config.yaml in its folder); change when it stops with --epochs, --max-minutes or "
            "--set training.early_stopping_patience=N"
        )
    for option, given in (
        ("--weights", weights is not None),
        ("--pretrained", pretrained != "none"),
    ):
        if given:
            raise ConfigError(
                f"{option} cannot be used with --resume: a resumed run continues from the "
                f"weights in its {LAST}"
            )


#: The files of a run (what ``--overwrite`` replaces).
RUN_FILES = (LAST, BEST, CONFIG_FILE, CURVES_FILE, METRICS_JSONL, METRICS_CSV)
#: Where an overwritten run's files wait until the new run has saved its first epoch.
PREVIOUS_RUN = ".previous-run"


def _check_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """Refuse a run folder that holds something, unless it is an earlier run and ``overwrite``.

    A folder holding only what a run writes before its first epoch is saved (see
    :data:`UNSTARTED_RUN_FILES`) is a run that never started: there is nothing in it to resume
    or to lose, so it is reused, with a note, without ``--overwrite``.

    Raises:
        OutputExistsError: the folder holds an earlier run (without ``overwrite``) or files
            fieldseg did not write.
        OutputPathError: ``run_dir`` is a file, or cannot be read.
    """
    names = _folder_names(run_dir)
    if PREVIOUS_RUN in names:  # an --overwrite run was killed (SIGKILL) while its files waited
        if LAST in names:
            _drop_previous_run(run_dir)  # the new run had saved an epoch of its own
        else:
            _restore_previous_run(run_dir)
            logger.warning("run folder %s: put back the run that an --overwrite run killed "
                           "before its first epoch had set aside", run_dir)  # fmt: skip
        names = _folder_names(run_dir)
    if not names:
        return
    if _is_unstarted_run(run_dir, names):
        logger.info(
            "run folder %s: a run stopped there before its first epoch was saved (it holds %s, "
            "no checkpoint); starting afresh in it",
            run_dir,
            ", ".join(sorted(names)),
        )
        return
    if not overwrite:
        raise OutputExistsError(
            f"run folder {run_dir} is not empty; pass --resume to continue it or "
            "--overwrite to start over"
        )
    if CONFIG_FILE not in names:
        raise OutputExistsError(
            f"{run_dir} holds no {CONFIG_FILE}: not a fieldseg run, so it is not replaced"
        )


def _folder_names(run_dir: Path, what: str = "") -> set[str]:
    """The names in ``run_dir`` (none if it does not exist yet).

    Raises:
        OutputPathError: ``run_dir`` is a file, or cannot be looked into (``what`` starts the
            message).
    """
    with _run_dir_errors(run_dir):
        if not run_dir.exists():
            return set()
        if not run_dir.is_dir():
            raise OutputPathError(f"{what}run folder {run_dir} is a file; -o names a folder")
        return {p.name for p in run_dir.iterdir()}


def _is_unstarted_run(run_dir: Path, names: set[str]) -> bool:
    """Whether ``names`` in ``run_dir`` are what a run wrote before it saved its first epoch.

    Plain files of :data:`UNSTARTED_RUN_FILES` only, and a ``config.yaml`` as train writes it
    (resolved: every default written out), so that a config of the user's own that happens to
    lie in the folder under that name is never taken for one and replaced.
    """
    if CONFIG_FILE not in names or not names <= UNSTARTED_RUN_FILES:
        return False
    if not all((run_dir / name).is_file() for name in names):
        return False
    try:
        written = yaml.safe_load((run_dir / CONFIG_FILE).read_text(encoding="utf-8"))
        return load_run_config(run_dir / CONFIG_FILE).resolved() == written
    except (FieldsegError, OSError, ValueError, yaml.YAMLError):
        return False


def _set_previous_run_aside(run_dir: Path) -> None:
    """Move an earlier run's files (checked by :func:`_check_run_dir`) aside; make the folder.

    They are deleted once the new run has saved its first epoch, and put back if it fails or
    is interrupted before that, so ``--overwrite`` never leaves a folder without a run.
    """
    with _run_dir_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        present = [name for name in RUN_FILES if (run_dir / name).exists()]
        if not present:
            return
        aside = run_dir / PREVIOUS_RUN
        shutil.rmtree(aside, ignore_errors=True)  # one left by a killed run
        aside.mkdir()
        for name in present:
            (run_dir / name).rename(aside / name)


def _drop_previous_run(run_dir: Path) -> None:
    """Delete the files an overwritten run left aside (none: nothing to do)."""
    aside = run_dir / PREVIOUS_RUN
    if aside.exists():
        with _run_dir_errors(run_dir):
            shutil.rmtree(aside)


def _restore_previous_run(run_dir: Path) -> None:
    """Put an overwritten run's files back in place of the new run's (none: nothing to do)."""
    aside = run_dir / PREVIOUS_RUN
    if not aside.is_dir():
        return
    try:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        for kept in aside.iterdir():
            kept.rename(run_dir / kept.name)
        aside.rmdir()
    except OSError as exc:  # keep the original error; say where the old run is
        logger.warning("could not put the earlier run back from %s: %s", aside, exc)


@contextmanager
def _run_dir_errors(run_dir: Path) -> Iterator[None]:
    """Turn an OSError creating, reading or writing the run folder into one clear error.

    ``-o`` under a file, in ``/proc``, in a read-only folder, on a full disk: the message says
    why (the system's reason) and where, instead of a traceback.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        if exc.errno == errno.ENOTDIR:  # say which part of the path is a file
            blocking = next((p for p in reversed(run_dir.parents) if p.is_file()), None)
            if blocking is not None:
                reason = f"{reason} ({blocking} is a file)"
        elif exc.filename is not None and Path(exc.filename) != run_dir:
            reason = f"{reason} ({exc.filename})"
        raise OutputPathError(f"cannot write the run folder {run_dir}: {reason}") from exc


def _check_same_bands(trained: ModelSpec, dataset: ModelSpec) -> None:
    if trained.bands != dataset.bands:
        raise ConfigError(
            f"the run was trained on bands {list(trained.bands)}, the dataset has "
            f"{list(dataset.bands)}"
        )


def _optimizer(config: RunConfig, model: FieldModel) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    o = config.optimizer
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def _scheduler(config: RunConfig, optimizer: torch.optim.Optimizer) -> Any:
    s = config.schedule
    if s.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=s.step_size, gamma=s.gamma)
    if s.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.training.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def _to_device(target: Target, device: torch.device) -> Target:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


def _log_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from the whole history (small; survives resume)."""
    with open(run_dir / METRICS_JSONL, "w") as out:
        for record in history:
            # NaN (a val set with nothing to find) or infinity is null: JSON has neither
            plain = {k: None if isinstance(v, float) and not math.isfinite(v) else v
                     for k, v in record.items()}  # fmt: skip
            out.write(json.dumps(plain, allow_nan=False) + "\n")
    columns = list(dict.fromkeys(k for record in history for k in record))
    with open(run_dir / METRICS_CSV, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)


def _epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}", f"loss {record.get('train_loss', float('nan')):.3f}"]
    for key in ("val_segm_mAP", "val_segm_AP50", "val_bbox_mAP", "val_object_f1"):
        if key in record:
            parts.append(f"{key[4:]} {record[key]:.3f}")
    return ", ".join(parts)
