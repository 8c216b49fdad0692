"""The light Mask R-CNN config can learn: it overfits two tiny chips to mask AP@0.5 >= 0.9."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import two_chip_dataset

from fieldseg.chip_dataset import ChipDataset, collate_chips
from fieldseg.coco_evaluation import evaluate_chip_predictions
from fieldseg.dataset_description import DatasetDescription
from fieldseg.models import ModelSpec, build_model, model_config
from fieldseg.run_config import load_run_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_r18_cpu.yaml"
#: Eight fields (pixel boxes c0, r0, c1, r1) over two 64 px chips, each with its own brightness.
FIELDS = [(4, 4, 24, 20), (30, 6, 58, 26), (6, 34, 28, 60), (36, 36, 60, 58),
          (68, 4, 90, 28), (96, 8, 124, 22), (70, 36, 100, 60), (106, 30, 124, 60)]  # fmt: skip


@pytest.mark.slow
def test_light_config_overfits_two_chips(tmp_path: Path) -> None:
    chips = ChipDataset(two_chip_dataset(tmp_path, FIELDS), "train")
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
