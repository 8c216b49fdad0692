"""Compare the model families on one pinned synthetic dataset within one CPU time budget.

For each family's CPU config: train on the pinned training scene for ``--minutes`` (wall
clock, same for every family), then predict a separate pinned test scene with the best
checkpoint and evaluate it (``fieldseg evaluate``'s library side). Reports per family: val
mask AP@0.5 (COCO, the trainer's validation), scene object F1, under-segmentation (merged
rate) of truth fields under 1 ha, training chips per second and prediction seconds. Prints a
table and, last, one JSON line.

    .venv/bin/python benchmarks/models.py [--minutes 10] [--families maskrcnn,unet_boundary,...]

Families are named by their CPU config (``yolact_plus``: YOLACT++). For YOLACT the test scene is
also predicted with ``suppress_claimed`` off, the same weights, to choose that default.

On two CPU cores this compares learning per CPU minute, not GPU speed; ``--device cuda`` runs
the same configs, budget and data on a GPU (mixed precision where the config asks for it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from fieldseg.checkpoint import load_checkpoint
from fieldseg.evaluation import EvaluationSettings, evaluate_files
from fieldseg.inference import predict_scene
from fieldseg.synthetic import synth
from fieldseg.tiling import tile_scenes
from fieldseg.training import train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: model -> its CPU config
FAMILY_CONFIGS = {
    "maskrcnn": "maskrcnn_r18_cpu.yaml",
    "unet_boundary": "unet_boundary_r18_cpu.yaml",
    "yolact": "yolact_r18_cpu.yaml",
    "yolact_plus": "yolact_plus_r18_cpu.yaml",
}
TRAIN_SIZE, TRAIN_SEED = 1024, 7
TEST_SIZE, TEST_SEED = 1024, 8
CHIP_SIZE, OVERLAP = 128, 32


def scenes(workdir: Path) -> tuple[Path, Path, Path]:
    """The pinned dataset (train scene tiled) and the test scene with its truth (cached)."""
    data = workdir / "models_dataset"
    if not (data / "dataset.json").exists():
        scene, fields = workdir / "models_train.tif", workdir / "models_train.gpkg"
        synth(scene, fields, size=TRAIN_SIZE, seed=TRAIN_SEED, overwrite=True)
        tile_scenes([scene], fields, data, chip_size=CHIP_SIZE, overlap=OVERLAP,
                    seed=TRAIN_SEED, overwrite=True)  # fmt: skip
    test_scene, test_truth = workdir / "models_test.tif", workdir / "models_test.gpkg"
    if not test_truth.exists():
        synth(test_scene, test_truth, size=TEST_SIZE, seed=TEST_SEED, overwrite=True)
    return data, test_scene, test_truth


def run_family(
    family: str,
    minutes: float,
    data: Path,
    test_scene: Path,
    truth: Path,
    workdir: Path,
    device: str = "cpu",
) -> dict[str, object]:
    """Train, predict and evaluate one family; its figures."""
    run_dir = workdir / f"models_run_{family}"
    shutil.rmtree(run_dir, ignore_errors=True)
    torch.manual_seed(0)
    started = time.perf_counter()
    summary = train(
        data,
        CONFIGS / FAMILY_CONFIGS[family],
        run_dir,
        overrides=[
            "training.epochs=10000",
            f"training.max_minutes={minutes}",
            "training.early_stopping_patience=null",
        ],
        device=device,
    )
    train_seconds = time.perf_counter() - started
    n_train = len(json.loads((data / "train.json").read_text())["images"])
    best = max(summary.history, key=lambda r: r.get("val_segm_AP50") or 0.0)
    fields = workdir / f"models_fields_{family}.gpkg"
    started = time.perf_counter()
    predict_scene(test_scene, run_dir, fields, chip_size=256, overlap=64, device=device,
                  overwrite=True, show_progress=False)  # fmt: skip
    predict_seconds = time.perf_counter() - started
    report = evaluate_files(fields, truth, settings=EvaluationSettings(mask_ap=False)).report
    small = report["by_size"]["<1 ha"]
    extra = {}
    if family.startswith("yolact"):
        unsuppressed = _without_claim_suppression(run_dir, test_scene, truth, workdir, device)
        extra = {"without_claim_suppression": unsuppressed}
    return {
        "epochs": summary.epochs_done,
        "train_seconds": round(train_seconds, 1),
        "train_chips_per_s": round(summary.epochs_done * n_train / train_seconds, 2),
        "val_segm_AP50": round(best.get("val_segm_AP50") or 0.0, 4),
        "val_object_f1": best.get("val_object_f1"),
        "scene_object_f1": round(report["object"]["f1"], 4),
        "scene_precision": round(report["object"]["precision"], 4),
        "scene_recall": round(report["object"]["recall"], 4),
        "scene_merged_rate": round(report["object"]["merged_rate"], 4),
        "under_segmentation_lt_1ha": small["merged_rate"],
        "pixel_iou": round(report["pixel"]["pixel_iou"], 4),
        "predict_seconds": round(predict_seconds, 1),
        "n_fields": report["counts"]["n_predicted"],
        **extra,
    }


def _without_claim_suppression(
    run_dir: Path, test_scene: Path, truth: Path, workdir: Path, device: str
) -> dict[str, float]:
    """YOLACT's scene figures with ``suppress_claimed`` switched off, the same weights."""
    model = load_checkpoint(run_dir).build_model()
    model.config = model.config.model_copy(update={"suppress_claimed": False})
    fields = workdir / "models_fields_no_suppression.gpkg"
    predict_scene(test_scene, model, fields, chip_size=256, overlap=64, device=device,
                  overwrite=True, show_progress=False)  # fmt: skip
    report = evaluate_files(fields, truth, settings=EvaluationSettings(mask_ap=False)).report
    return {
        "scene_object_f1": round(report["object"]["f1"], 4),
        "scene_merged_rate": round(report["object"]["merged_rate"], 4),
        "under_segmentation_lt_1ha": report["by_size"]["<1 ha"]["merged_rate"],
    }


def _device_name(device: str) -> str:
    """The device in words, for the JSON line."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per family")
    parser.add_argument("--families", default=",".join(FAMILY_CONFIGS))
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-output"))
    parser.add_argument("--device", default="cpu", help="cpu (the stated budget) or cuda")
    args = parser.parse_args()
    args.workdir.mkdir(exist_ok=True)
    data, test_scene, truth = scenes(args.workdir)
    results = {}
    for family in args.families.split(","):
        results[family] = run_family(
            family, args.minutes, data, test_scene, truth, args.workdir, args.device
        )
        print(family, results[family], flush=True)
    columns = ("epochs", "train_chips_per_s", "val_segm_AP50", "scene_object_f1",
               "under_segmentation_lt_1ha", "predict_seconds")  # fmt: skip
    print(f"{'family':<15}" + "".join(f"{c:>28}" for c in columns))
    for family, row in results.items():
        print(f"{family:<15}" + "".join(f"{row[c]!s:>28}" for c in columns))
    print(json.dumps({
        "benchmark": "models", "minutes": args.minutes, "threads": torch.get_num_threads(),
        "device": _device_name(args.device),
        "train_scene": [TRAIN_SIZE, TRAIN_SEED], "test_scene": [TEST_SIZE, TEST_SEED],
        "chip_size": CHIP_SIZE, "families": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
