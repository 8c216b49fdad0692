"""The CUDA paths: masks made and resolved on a GPU, mixed-precision training, GPU prediction.

Skipped without a CUDA device (CI has none); run on a GPU machine before a release. The CPU
equivalents of every path here are tested elsewhere: these tests check that a GPU gives the
same fields, or valid ones where floating point may differ.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import geopandas as gpd
import pytest
import rasterio
import shapely
import torch
from conftest import OracleScene, make_tiny_dataset, overlapping_pairs
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import clip_boxes_to_image

from fieldseg.checkpoint import load_checkpoint
from fieldseg.inference import predict_scene
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.models.mask_pasting import paste_masks_in_boxes
from fieldseg.oracle import DenseOracleFieldModel, OracleFieldModel
from fieldseg.training import train
from fieldseg.vector_io import read_vector

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_boxed_pasting_on_the_gpu_equals_torchvisions() -> None:
    generator = torch.Generator().manual_seed(0)
    n, height, width = 40, 64, 57
    masks = torch.rand((n, 1, 28, 28), generator=generator)
    corner = torch.rand((n, 2), generator=generator) * torch.tensor([width, height]) - 4
    boxes = torch.cat([corner, corner + torch.rand((n, 2), generator=generator) * 30], dim=1)
    boxes = clip_boxes_to_image(boxes, (height, width)).cuda()
    masks = masks.cuda()
    boxed = paste_masks_in_boxes(masks, boxes, height, width)
    assert boxed.boxes.device.type == "cuda"
    assert torch.equal(boxed.dense(), paste_masks_in_image(masks, boxes, (height, width))[:, 0])
    on_cpu = paste_masks_in_boxes(masks.cpu(), boxes.cpu(), height, width)
    assert torch.equal(boxed.boxes.cpu(), on_cpu.boxes)
    assert torch.equal(boxed.touches_edge().cpu(), on_cpu.touches_edge())


def test_boxed_masks_on_the_gpu_select_and_touch_edges_as_on_the_cpu() -> None:
    stack = torch.zeros((3, 20, 20))
    stack[0, 0:5, 3:8] = 0.9  # on the top edge
    stack[1, 8:12, 8:12] = 0.7  # inside
    stack[2, 10:20, 15:20] = 0.6  # on the bottom and right edges
    gpu, cpu = BoxedMasks.from_dense(stack.cuda()), BoxedMasks.from_dense(stack)
    assert gpu.touches_edge().device.type == "cuda"
    assert gpu.touches_edge().cpu().tolist() == cpu.touches_edge().tolist() == [True, False, True]
    chosen = gpu.select(torch.tensor([True, False, True], device="cuda"))
    assert torch.equal(chosen.dense().cpu(), stack[[0, 2]])


@pytest.mark.parametrize("dense", [False, True], ids=["instances", "blended"])
def test_predict_on_the_gpu_writes_the_fields_of_the_cpu(
    scene: OracleScene, tmp_path: Path, dense: bool
) -> None:
    """The oracles read their chips from the GPU: the same fields as on the CPU, exactly."""
    frames = []
    for device in ("cpu", "cuda"):
        model = (
            DenseOracleFieldModel(noisy=True, seed=1)
            if dense
            else OracleFieldModel(noisy=True, seed=1)
        )
        out = tmp_path / f"{device}.gpkg"
        predict_scene(scene.ids, model, out, chip_size=96, overlap=32, device=device,
                      show_progress=False, min_area_m2=0.0)  # fmt: skip
        frames.append(read_vector(out))
    on_cpu, on_gpu = frames
    assert len(on_cpu) == len(on_gpu) > 100
    assert shapely.equals(on_cpu.geometry.values, on_gpu.geometry.values).all()
    assert (on_cpu["score"].values == on_gpu["score"].values).all()
    assert overlapping_pairs(on_gpu) == 0


class _RecordingScaler(torch.amp.GradScaler):
    """A GradScaler that notes whether it was enabled (mixed precision on)."""

    made: list[bool] = []  # noqa: RUF012 (a record shared across instances on purpose)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _RecordingScaler.made.append(self.is_enabled())


@pytest.mark.parametrize(
    "config",
    [
        "maskrcnn_r18_cpu.yaml",
        "unet_boundary_r18_cpu.yaml",
        "yolact_r18_cpu.yaml",
        "yolact_plus_r18_cpu.yaml",
    ],
)
def test_each_family_trains_in_mixed_precision_and_predicts_on_the_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str
) -> None:
    dataset = make_tiny_dataset(tmp_path)
    _RecordingScaler.made = []
    monkeypatch.setattr(torch.amp, "GradScaler", _RecordingScaler)
    run_dir = tmp_path / "run"
    summary = train(dataset, CONFIGS / config, run_dir, device="cuda",
                    overrides=["training.epochs=2", "training.batch_size=4"])  # fmt: skip
    assert _RecordingScaler.made == [True]  # mixed precision, chosen for CUDA
    assert summary.epochs_done == 2
    assert all(math.isfinite(row["train_loss"]) for row in summary.history)
    # the checkpoint holds CPU tensors: it loads and builds without a GPU
    checkpoint = load_checkpoint(run_dir)
    model = checkpoint.build_model()
    assert all(p.device.type == "cpu" for p in model.parameters())

    out = tmp_path / "predicted.gpkg"
    predict_scene(tmp_path / "scene.tif", run_dir, out, device="cuda", show_progress=False,
                  score_threshold=0.05)  # fmt: skip
    fields = read_vector(out)
    with rasterio.open(tmp_path / "scene.tif") as src:
        bounds, crs = shapely.box(*src.bounds), src.crs
    assert fields.crs == gpd.GeoSeries([], crs=crs).crs
    assert fields.geometry.is_valid.all() and overlapping_pairs(fields) == 0
    assert shapely.covers(bounds.buffer(1e-6), fields.geometry.values).all()
