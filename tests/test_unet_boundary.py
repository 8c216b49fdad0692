"""The boundary-aware U-Net family: its targets, losses, prediction, checkpoint and learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fit_two_chips, make_tiny_dataset

from fieldseg.band_statistics import BandStatistics
from fieldseg.boundary_targets import BACKGROUND, BOUNDARY, IGNORE_INDEX, INTERIOR, boundary_target
from fieldseg.errors import ConfigError
from fieldseg.instance_extraction import ExtractionParams, label_f1
from fieldseg.models import ModelSpec, build_model, model_config
from fieldseg.models.unet_boundary import UNetBoundaryConfig, UNetBoundaryFieldModel
from fieldseg.run_config import load_run_config

CPU_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "unet_boundary_r18_cpu.yaml"
BANDS = ("red", "green", "blue", "nir")
TINY = UNetBoundaryConfig(encoder="resnet18", decoder_channels=[32, 16, 16, 16, 8])


def _statistics() -> list[BandStatistics]:
    return [BandStatistics(name=b, p2=0, p98=3000, mean=1000, std=500, n_pixels=1) for b in BANDS]


def _model(
    config: UNetBoundaryConfig = TINY, nodata: float | None = None
) -> UNetBoundaryFieldModel:
    torch.manual_seed(0)
    return UNetBoundaryFieldModel(config, BANDS, _statistics(), nodata, chip_size=64, num_classes=1)


# targets ----------------------------------------------------------------------------------


def test_two_touching_squares_are_separated_by_a_boundary_band() -> None:
    masks = torch.zeros(2, 8, 10, dtype=torch.uint8)
    masks[0, 2:6, 1:5] = 1
    masks[1, 2:6, 5:9] = 1
    target = boundary_target(masks)
    assert (target[:, 4] == torch.tensor([0, 0, 2, 2, 2, 2, 0, 0])).all()  # left field's edge
    assert (target[3, 1:9] == torch.tensor([2, 1, 1, 2, 2, 1, 1, 2])).all()  # one band each side
    assert int((target == INTERIOR).sum()) == 2 * 4  # 2 x 2 interior per 4 x 4 field
    assert int((target == BACKGROUND).sum()) == 80 - 32


def test_the_chip_edge_is_not_a_field_edge() -> None:
    masks = torch.zeros(1, 6, 6, dtype=torch.uint8)
    masks[0, :, :3] = 1  # a field cut by the chip's left, top and bottom edges
    target = boundary_target(masks)
    assert (target[:, 2] == BOUNDARY).all()  # only the edge against background
    assert (target[:, :2] == INTERIOR).all()


def test_boundary_width_and_ignored_pixels() -> None:
    masks = torch.zeros(1, 9, 9, dtype=torch.uint8)
    masks[0, 1:8, 1:8] = 1
    wide = boundary_target(masks, width=2)
    assert int((wide == INTERIOR).sum()) == 9  # 7 x 7 less two rings
    ignore = torch.zeros(9, 9, dtype=torch.bool)
    ignore[0] = True
    valid = torch.ones(9, 9, dtype=torch.bool)
    valid[:, 8] = False
    target = boundary_target(masks, ignore=ignore, valid=valid)
    assert (target[0] == IGNORE_INDEX).all() and (target[:, 8] == IGNORE_INDEX).all()
    assert int((target == IGNORE_INDEX).sum()) == 9 + 8


# model ------------------------------------------------------------------------------------


def _batch(size: tuple[int, int] = (64, 64)) -> tuple[list[torch.Tensor], list[dict]]:
    height, width = size
    image = torch.full((4, height, width), 800.0)
    masks = torch.zeros(2, height, width, dtype=torch.uint8)
    masks[0, 4:20, 4:30] = 1
    masks[1, 4:20, 30:50] = 1
    image[:, masks.sum(0).bool()] += 900
    target = {
        "masks": masks,
        "ignore": torch.zeros(height, width, dtype=torch.bool),
        "valid": torch.ones(height, width, dtype=torch.bool),
    }
    return [image], [target]


def test_losses_are_finite_and_gradients_reach_the_first_convolution() -> None:
    model = _model()
    images, targets = _batch()
    losses = model.training_step(images, targets)
    assert set(losses) == {"loss_ce", "loss_dice"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    first = model.net.encoder.conv1
    assert first.in_channels == 4
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0


def test_prediction_of_odd_sized_chips_gives_disjoint_masks_and_maps() -> None:
    model = _model()
    images, _ = _batch((70, 45))
    prediction = model.predict(images)[0]
    assert prediction.dense["extent"].shape == (70, 45)
    assert prediction.dense["boundary"].shape == (70, 45)
    assert prediction.masks.shape[1:] == (70, 45)
    assert (prediction.dense_masks() > 0).sum(dim=0).max() <= 1  # disjoint
    assert len(prediction.scores) == len(prediction.masks) == len(prediction.labels)


def test_only_one_category_and_no_coco_weights() -> None:
    with pytest.raises(ConfigError, match="one category"):
        UNetBoundaryFieldModel(TINY, BANDS, _statistics(), None, chip_size=64, num_classes=2)
    with pytest.raises(ConfigError, match="COCO"):
        UNetBoundaryFieldModel(
            TINY, BANDS, _statistics(), None, chip_size=64, num_classes=1, pretrained="coco"
        )


def test_extraction_thresholds_travel_in_the_state_dict() -> None:
    model = _model()
    tuned = ExtractionParams(extent_threshold=0.35, marker_threshold=0.45, marker_depth=1.0,
                             unclaimed_seeds=False, min_score=0.2)  # fmt: skip
    model.extraction_params = tuned
    copy = _model()
    copy.load_state_dict(model.state_dict())
    assert copy.extraction_params == tuned
    assert copy.default_score_threshold == 0.0  # the extraction's own floor decides


def test_checkpoints_from_before_the_depth_rule_keep_their_rule() -> None:
    """An ``extraction`` buffer of the first four settings loads with the rule it was tuned
    for: component markers, unclaimed seeds, no score floor."""
    state = _model().state_dict()
    state["extraction"] = torch.tensor([0.35, 0.45, 2.0, 4.0], dtype=torch.float64)
    copy = _model()
    copy.load_state_dict(state)
    assert copy.extraction_params == ExtractionParams(extent_threshold=0.35,
                                                      marker_threshold=0.45)  # fmt: skip


def test_cpu_config_builds_through_the_family_registry() -> None:
    config = load_run_config(CPU_CONFIG)
    section = model_config(config.model)
    assert section.family == "unet_boundary"
    spec = ModelSpec(
        bands=BANDS, statistics=tuple(_statistics()), nodata=None, chip_size=128,
        categories=("field",),
    )  # fmt: skip
    model = build_model(section, spec)
    assert isinstance(model, UNetBoundaryFieldModel)


def test_calibration_without_a_field_to_find_is_nan_not_perfect() -> None:
    """Finding nothing where there is nothing would score F1 1 and win the epoch selection."""
    config = load_run_config(CPU_CONFIG)
    spec = ModelSpec(
        bands=BANDS, statistics=tuple(_statistics()), nodata=None, chip_size=64,
        categories=("field",),
    )  # fmt: skip
    model = build_model(model_config(config.model), spec).eval()
    before = model.extraction_params
    image = torch.rand(len(BANDS), 64, 64) * 1000
    empty = {"masks": torch.zeros((0, 64, 64), dtype=torch.uint8)}
    tuned = model.calibrate([(image, empty), (image, empty)])  # type: ignore[arg-type]
    assert set(tuned) == {"object_f1"} and np.isnan(tuned["object_f1"])
    assert model.extraction_params == before


# learning ---------------------------------------------------------------------------------

#: Eight fields (pixel boxes c0, r0, c1, r1) over two 64 px chips, several touching.
FIELDS = [(4, 4, 24, 20), (24, 4, 58, 20), (6, 34, 28, 60), (28, 34, 60, 58),
          (68, 4, 90, 28), (90, 4, 124, 28), (70, 36, 100, 60), (106, 30, 124, 60)]  # fmt: skip


@pytest.mark.slow
def test_overfits_two_tiny_chips(tmp_path: Path) -> None:
    """Object F1 >= 0.9 on two chips of touching fields after a short fit."""
    model, chips, images, targets = fit_two_chips(tmp_path, FIELDS, CPU_CONFIG, steps=60, lr=3e-3)
    assert len(chips) == 2 and chips.n_instances == 8
    tuned = model.calibrate(chips)
    predictions = model.predict(images)
    tp = n_pred = n_true = 0
    for prediction, target in zip(predictions, targets, strict=True):
        labels = np.zeros(prediction.masks.shape[1:], np.int64)
        for k, mask in enumerate(prediction.dense_masks().numpy() > 0, start=1):
            labels[mask] = k
        truth = np.zeros_like(labels)
        for k, mask in enumerate(target["masks"].numpy().astype(bool), start=1):
            truth[mask] = k
        match = label_f1(labels, truth)
        tp, n_pred, n_true = tp + match.tp, n_pred + match.n_predicted, n_true + match.n_truth
    f1 = 2 * tp / (n_pred + n_true)
    assert f1 >= 0.9, (f1, tuned)
    assert tuned["object_f1"] >= 0.9
    # validation runs the model once: calibrating again gives the same settings, and the
    # fields it returns are predict's
    again, by_id = model.calibrate_and_predict(chips)
    assert again == tuned
    for (_, target), prediction in zip(chips, predictions, strict=True):
        same = by_id[int(target["image_id"])]
        assert torch.equal(same.scores, prediction.scores)
        assert torch.equal(same.dense_masks(), prediction.dense_masks())


@pytest.mark.slow
def test_train_picks_the_epoch_with_the_best_calibrated_object_f1_then_predict_runs(
    tmp_path: Path,
) -> None:
    """``train`` then ``predict_scene`` as a user runs them: best.pt is chosen by val object
    F1 (what predict's fields come from, not mask mAP), and predict writes valid fields."""
    import geopandas as gpd

    from fieldseg.checkpoint import load_checkpoint
    from fieldseg.inference import predict_scene
    from fieldseg.training import train

    dataset = make_tiny_dataset(tmp_path)
    summary = train(dataset, CPU_CONFIG, tmp_path / "run",
                    overrides=["training.epochs=3", "training.batch_size=4"])  # fmt: skip
    assert summary.metric_name == "object_f1"
    f1 = [record["val_object_f1"] for record in summary.history]
    # the first best epoch; of epochs tied at 0 (nothing found yet), the latest
    best = len(f1) - 1 if max(f1) == 0 else int(np.argmax(f1))
    assert summary.best_epoch == summary.history[best]["epoch"]
    assert summary.best_metric == pytest.approx(max(f1))
    assert load_checkpoint(tmp_path / "run").epoch == summary.best_epoch
    result = predict_scene(tmp_path / "scene.tif", tmp_path / "run", tmp_path / "predicted.gpkg",
                           show_progress=False)  # fmt: skip
    fields = gpd.read_file(tmp_path / "predicted.gpkg", layer="fields")
    assert len(fields) == result.n_fields
    assert fields["model"].str.startswith("unet_boundary").all()
    assert fields.geometry.is_valid.all()
