"""Benchmark training-step throughput (chips/s) at 256 x 256 on this machine's CPU (or GPU).

Builds a small synthetic dataset (cached in benchmark-output/), then times training steps of the
Mask R-CNN configs (MobileNetV3, ResNet-18 and ResNet-50 FPN) on the same batches. Prints figures
and, last, one JSON line.

    .venv/bin/python benchmarks/train_step.py [--steps 5] [--batch-size 2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fieldseg.chip_dataset import ChipDataset, collate_chips
from fieldseg.dataset_description import DatasetDescription
from fieldseg.devices import select_device
from fieldseg.models import ModelSpec, build_model, model_config
from fieldseg.run_config import load_run_config
from fieldseg.synthetic import synth
from fieldseg.tiling import tile_scenes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def dataset(workdir: Path) -> Path:
    """A 768 px synthetic scene tiled into 256 px chips (made once)."""
    out = workdir / "train_step_dataset"
    if not (out / "dataset.json").exists():
        synth(workdir / "ts_scene.tif", workdir / "ts_fields.gpkg", size=768, seed=7,
              overwrite=True)  # fmt: skip
        tile_scenes([workdir / "ts_scene.tif"], workdir / "ts_fields.gpkg", out, chip_size=256,
                    overlap=0, split="1,0,0", overwrite=True)  # fmt: skip
    return out


def time_steps(config_name: str, data: ChipDataset, args: argparse.Namespace) -> float:
    """Chips per second of training steps (after one warm-up step)."""
    device = select_device(args.device)
    config = load_run_config(CONFIGS / config_name)
    spec = ModelSpec.from_description(DatasetDescription.load(data.root))
    torch.manual_seed(0)
    model = build_model(model_config(config.model), spec).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = [
        collate_chips([data[(i * args.batch_size + k) % len(data)] for k in range(args.batch_size)])
        for i in range(args.steps + 1)
    ]
    for index, (images, targets) in enumerate(batches):
        if index == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()}
                   for t in targets]  # fmt: skip
        loss = sum(model.training_step(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-output"))
    args = parser.parse_args()
    args.workdir.mkdir(exist_ok=True)
    data = ChipDataset(dataset(args.workdir), "train")
    rates = {}
    for key, config_name in (("mobilenet_v3_fpn", "maskrcnn_mobilenet_cpu.yaml"),
                             ("resnet18_fpn", "maskrcnn_r18_cpu.yaml"),
                             ("resnet50_fpn", "maskrcnn_r50_fpn.yaml")):  # fmt: skip
        rates[key] = time_steps(config_name, data, args)
        print(f"{key}: {rates[key]:.2f} chips/s")
    heavy = rates["resnet50_fpn"]
    print(json.dumps({
        "benchmark": "train_step",
        "device": str(select_device(args.device)),
        "threads": torch.get_num_threads(),
        "chip_size": 256,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "instances_per_chip": round(data.n_instances / len(data), 1),
        **{f"{key}_chips_per_s": round(rate, 3) for key, rate in rates.items()},
        **{f"speedup_{key}_over_r50": round(rate / heavy, 2) for key, rate in rates.items()
           if key != "resnet50_fpn"},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
