"""``fieldseg train``: dataset + config -> run folder with checkpoints and metrics."""

from __future__ import annotations

from pathlib import Path

import click

from fieldseg.cli.options import device_option, overwrite_option


@click.command()
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="YAML run config, e.g. configs/maskrcnn_r18_cpu.yaml (not with --resume: a resumed "
    "run keeps its own).",
)
@click.option(
    "-o",
    "--output",
    "run_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder: config.yaml, last.pt, best.pt, metrics.jsonl, metrics.csv.",
)
@click.option("--epochs", type=click.IntRange(min=1), help="Override training.epochs.")
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0, min_open=True),
    help="Take no training step after this wall time, counted from the first step (override "
    "training.max_minutes); the last epoch's validation and checkpoints follow.",
)
@device_option
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in the output folder from its last.pt, as it was configured: only "
    "--epochs, --max-minutes and --set training.early_stopping_patience=N or "
    "training.loader_workers=N may change.",
)
@click.option(
    "--pretrained",
    type=click.Choice(["imagenet", "coco", "none"]),  # models.base.PRETRAINED_CHOICES
    default="none",
    show_default=True,
    help="Start from torchvision's weights (downloaded once).",
)
@click.option(
    "--weights",
    type=click.Path(path_type=Path),
    help="Start from a state dict on disk (e.g. a Sentinel-2 pretrained backbone) or a run.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config entry, e.g. --set optimizer.lr=3e-4 (repeatable).",
)
@overwrite_option
def train(
    dataset_dir: Path,
    config_path: Path | None,
    run_dir: Path,
    epochs: int | None,
    max_minutes: float | None,
    device: str,
    resume: bool,
    pretrained: str,
    weights: Path | None,
    overrides: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Train a field model on a DATASET_DIR written by `fieldseg tile`.

    Bands, their order and statistics come from the dataset; the recipe from the config. Every
    epoch is validated with COCO mask and box mAP on the val split (the U-Net also with the
    object F1 of its calibrated extraction); the best epoch by mask mAP (U-Net: object F1) is
    kept as OUTPUT/best.pt, the latest as OUTPUT/last.pt (both usable wherever a model is
    asked for).

    --resume continues a run as it was configured: its weights, optimizer state (learning
    rate included) and schedule come from last.pt. Only when it stops may change
    (training.epochs, not with the cosine schedule; training.max_minutes, counted from the
    resume; training.early_stopping_patience) and training.loader_workers: any other --set,
    and -c, --weights or --pretrained, are refused. A folder holding only config.yaml (a run
    stopped before its first epoch was saved) is reused without --overwrite. With --overwrite
    the earlier run is deleted only once the new one has saved its first epoch.
    """
    from fieldseg.training import train as run_training
    from fieldseg.wording import counted

    extra = list(overrides)
    if epochs is not None:
        extra.append(f"training.epochs={epochs}")
    if max_minutes is not None:
        extra.append(f"training.max_minutes={max_minutes}")
    summary = run_training(
        dataset_dir,
        config_path,
        run_dir,
        overrides=extra,
        device=device,
        resume=resume,
        pretrained=pretrained,
        weights=weights,
        overwrite=overwrite,
    )
    if not summary.is_main:  # the first process reports the run
        return
    best = (
        f"best val {summary.metric_name} {summary.best_metric:.3f} at epoch {summary.best_epoch}"
        if summary.best_metric is not None
        else "no validation"
    )
    click.echo(
        f"run: {summary.run_dir}: {counted(summary.epochs_done, 'epoch')} "
        f"({summary.stopped_because}); {best}"
    )
