"""How fast a model family learns on this machine: the val mAP curve within a CPU budget.

Synthesises a pinned scene (fixed seed and size), tiles it into 128 px chips with a spatial
train/val split (cached in benchmark-output/), then trains the family's CPU config with a wall
clock budget and validates after every epoch. Prints the curve and, last, one JSON line.

    .venv/bin/python benchmarks/learning.py --family maskrcnn --minutes 15 [--set key=value]

On two CPU cores this compares learning per CPU minute, not GPU throughput.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from fieldseg.devices import select_device
from fieldseg.synthetic import synth
from fieldseg.tiling import tile_scenes
from fieldseg.training import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: family -> its CPU config
FAMILY_CONFIGS = {"maskrcnn": "maskrcnn_r18_cpu.yaml"}
SCENE_SIZE, SCENE_SEED, CHIP_SIZE = 640, 21, 128


def dataset(workdir: Path) -> Path:
    """The pinned dataset: one 640 px synthetic scene, 128 px chips, 75 % train / 25 % val."""
    out = workdir / "learning_dataset"
    if not (out / "dataset.json").exists():
        scene, fields = workdir / "learning_scene.tif", workdir / "learning_fields.gpkg"
        synth(scene, fields, size=SCENE_SIZE, seed=SCENE_SEED, overwrite=True)
        tile_scenes([scene], fields, out, chip_size=CHIP_SIZE, overlap=0, split="0.75,0.25,0",
                    seed=SCENE_SEED, overwrite=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILY_CONFIGS), default="maskrcnn")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-output"))
    args = parser.parse_args()
    args.workdir.mkdir(exist_ok=True)
    data = dataset(args.workdir)
    run_dir = args.workdir / f"learning_run_{args.family}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [
        "training.epochs=10000",
        f"training.max_minutes={args.minutes}",
        "training.early_stopping_patience=null",
        *args.overrides,
    ]
    summary = train(data, CONFIGS / FAMILY_CONFIGS[args.family], run_dir, overrides=overrides,
                    device=args.device)  # fmt: skip
    curve = [
        {
            "epoch": record["epoch"],
            "minutes": round(record["seconds"] / 60, 2),
            "train_loss": round(record.get("train_loss", float("nan")), 4),
            "val_segm_mAP": round(record.get("val_segm_mAP", float("nan")), 4),
            "val_segm_AP50": round(record.get("val_segm_AP50", float("nan")), 4),
        }
        for record in summary.history
    ]
    for point in curve:
        print(
            f"epoch {point['epoch']:3d}  {point['minutes']:6.2f} min"
            f"  loss {point['train_loss']:.3f}  val segm mAP {point['val_segm_mAP']:.4f}"
            f"  AP50 {point['val_segm_AP50']:.4f}"
        )
    print(json.dumps({
        "benchmark": "learning",
        "family": args.family,
        "config": FAMILY_CONFIGS[args.family],
        "overrides": args.overrides,
        "device": str(select_device(args.device)),
        "threads": torch.get_num_threads(),
        "budget_minutes": args.minutes,
        "scene": {"size": SCENE_SIZE, "seed": SCENE_SEED, "chip_size": CHIP_SIZE},
        "epochs": summary.epochs_done,
        "best_val_segm_mAP": max((p["val_segm_mAP"] for p in curve), default=None),
        "best_val_segm_AP50": max((p["val_segm_AP50"] for p in curve), default=None),
        "curve": curve,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
