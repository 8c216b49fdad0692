"""The light Mask R-CNN config can learn: it overfits two tiny chips to mask AP@0.5 >= 0.9."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch
from affine import Affine
from rasterio.crs import CRS

from fieldseg.chip_dataset import ChipDataset, collate_chips
from fieldseg.coco_evaluation import evaluate_chip_predictions
from fieldseg.dataset_description import DatasetDescription
from fieldseg.models import ModelSpec, build_model, model_config
from fieldseg.raster_io import write_geotiff
from fieldseg.run_config import load_run_config
from fieldseg.tiling import tile_scenes

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_r18_cpu.yaml"
#: Eight fields (pixel boxes c0, r0, c1, r1) over two 64 px chips, each with its own brightness.
FIELDS = [(4, 4, 24, 20), (30, 6, 58, 26), (6, 34, 28, 60), (36, 36, 60, 58),
          (68, 4, 90, 28), (96, 8, 124, 22), (70, 36, 100, 60), (106, 30, 124, 60)]  # fmt: skip


@pytest.mark.slow
def test_light_config_overfits_two_chips(tmp_path: Path) -> None:
    transform = Affine(10, 0, 500_000, 0, -10, 5_800_000)
    rng = np.random.default_rng(0)
    data = rng.normal(800, 40, (4, 64, 128))
    polygons = []
    for k, (c0, r0, c1, r1) in enumerate(FIELDS):
        data[:, r0:r1, c0:c1] += 600 + 150 * (k % 4)
        polygons.append(shapely.box(*(transform * (c0, r1)), *(transform * (c1, r0))))
    write_geotiff(tmp_path / "scene.tif", data.clip(0).astype("uint16"), transform=transform,
                  crs=CRS.from_epsg(32633), band_names=["red", "green", "blue", "nir"])  # fmt: skip
    gpd.GeoDataFrame(geometry=polygons, crs=32633).to_file(tmp_path / "fields.gpkg")
    tile_scenes([tmp_path / "scene.tif"], tmp_path / "fields.gpkg", tmp_path / "ds",
                chip_size=64, overlap=0, split="1,0,0")  # fmt: skip
    chips = ChipDataset(tmp_path / "ds", "train")
    assert len(chips) == 2 and chips.n_instances == 8

    torch.manual_seed(0)
    config = load_run_config(CONFIG)
    spec = ModelSpec.from_description(DatasetDescription.load(tmp_path / "ds"))
    model = build_model(model_config(config.model), spec)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    images, targets = collate_chips([chips[0], chips[1]])
    for _ in range(45):
        loss = sum(model.training_step(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predictions = dict(zip([t["image_id"] for t in targets], model.predict(images), strict=True))
    metrics = evaluate_chip_predictions(chips.coco_document, predictions)
    assert metrics["segm_AP50"] >= 0.9, metrics
