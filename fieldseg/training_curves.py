"""A PNG of a run's training curves: losses on the left, validation metrics on the right."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fieldseg.atomic_output import atomic_file

#: Validation metrics drawn, when the history has them.
VAL_METRICS = ("val_segm_mAP", "val_segm_AP50", "val_bbox_mAP", "val_object_f1")


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Draw the per-epoch losses and validation metrics of ``history`` into a PNG."""
    # a bare Figure draws off screen without pyplot, so a notebook's backend is left alone
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [record["epoch"] for record in history]
    losses = [k for k in dict.fromkeys(k for r in history for k in r) if k.startswith("train_")]
    figure = Figure(figsize=(11, 4), layout="constrained")
    left, right = figure.subplots(1, 2)
    for key in losses:
        style = {"linewidth": 2.5, "color": "black"} if key == "train_loss" else {"alpha": 0.8}
        left.plot(epochs, [r.get(key) for r in history], marker="o", label=key[6:], **style)
    left.set(title="training losses", xlabel="epoch", ylabel="loss")
    left.legend(fontsize="small")
    drawn = [k for k in VAL_METRICS if any(k in r for r in history)]
    for key in drawn:
        right.plot(epochs, [r.get(key) for r in history], marker="o", label=key[4:])
    right.set(title="validation", xlabel="epoch", ylabel="COCO AP, object F1", ylim=(0, 1))
    if drawn:
        right.legend(fontsize="small")
    else:
        right.text(0.5, 0.5, "no val split", ha="center", va="center")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    with atomic_file(path, overwrite=True) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
