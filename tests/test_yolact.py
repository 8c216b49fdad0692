"""The YOLACT family: anchors and their targets, masks, losses, prediction, checkpoint, learning."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import fit_two_chips, make_tiny_dataset

from fieldseg.band_statistics import BandStatistics
from fieldseg.checkpoint import load_checkpoint, save_checkpoint
from fieldseg.coco_evaluation import evaluate_chip_predictions
from fieldseg.errors import ConfigError
from fieldseg.models import ModelSpec, build_model, model_config
from fieldseg.models.deformable import DeformableConv2d
from fieldseg.models.prototype_masks import (
    assemble_masks,
    box_crop_mask,
    crop_to_boxes,
    suppress_claimed,
)
from fieldseg.models.yolact import YolactConfig, YolactFieldModel
from fieldseg.models.yolact_losses import classification_loss, mask_loss
from fieldseg.models.yolact_targets import (
    NEUTRAL,
    anchor_corners,
    decode_boxes,
    encode_boxes,
    make_anchors,
    match_anchors,
)
from fieldseg.run_config import load_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BANDS = ("red", "green", "blue", "nir")
TINY = YolactConfig(
    backbone="resnet18",
    fpn_channels=16,
    prototype_channels=16,
    head_channels=16,
    num_prototypes=8,
    masks_per_chip=20,
)


def _statistics() -> list[BandStatistics]:
    return [BandStatistics(name=b, p2=0, p98=3000, mean=1000, std=500, n_pixels=1) for b in BANDS]


def _model(config: YolactConfig = TINY) -> YolactFieldModel:
    torch.manual_seed(0)
    return YolactFieldModel(config, BANDS, _statistics(), None, chip_size=64, num_classes=1)


# anchors and their targets -----------------------------------------------------------------


def test_anchors_sit_at_cell_centres_size_by_size_then_ratio_by_ratio() -> None:
    anchors = make_anchors([(2, 3), (1, 1)], [4, 8], [[4, 8], [16, 32]], [0.5, 2.0])
    assert anchors.shape == (2 * 3 * 4 + 1 * 4, 4)
    # first cell of level 0: centre (2, 2), size 4 ratio 0.5, size 4 ratio 2, size 8 ...
    assert anchors[0, :2].tolist() == [2.0, 2.0]
    assert anchors[0, 2:].tolist() == pytest.approx([4 * math.sqrt(0.5), 4 / math.sqrt(0.5)])
    assert anchors[1, 2:].tolist() == pytest.approx([4 * math.sqrt(2), 4 / math.sqrt(2)])
    assert anchors[2, 2] * anchors[2, 3] == pytest.approx(64)
    # the second cell is one stride to the right, the fourth one stride down
    assert anchors[4, :2].tolist() == [6.0, 2.0]
    assert anchors[12, :2].tolist() == [2.0, 6.0]
    assert anchors[-1, :2].tolist() == [4.0, 4.0]


def test_boxes_encode_and_decode_back() -> None:
    anchors = torch.tensor([[10.0, 10.0, 8.0, 8.0], [40.0, 20.0, 16.0, 4.0]])
    boxes = torch.tensor([[5.0, 7.0, 17.0, 12.0], [30.0, 18.0, 50.0, 23.0]])
    deltas = encode_boxes(boxes, anchors)
    assert torch.allclose(decode_boxes(deltas, anchors), boxes, atol=1e-4)
    assert torch.allclose(encode_boxes(anchor_corners(anchors), anchors), torch.zeros(2, 4))


def test_anchors_match_by_iou_and_every_field_keeps_its_best_anchor() -> None:
    anchors = torch.tensor(
        [
            [10.0, 10.0, 10.0, 10.0],  # the field itself: positive
            [12.0, 10.0, 10.0, 10.0],  # IoU 8/12 = 0.67: positive
            [14.0, 10.0, 10.0, 10.0],  # IoU 6/14 = 0.43: neutral
            [40.0, 40.0, 10.0, 10.0],  # far away: background
            [60.0, 60.0, 20.0, 20.0],  # best for the tiny field (IoU 4/400): positive anyway
        ]
    )
    boxes = torch.tensor([[5.0, 5.0, 15.0, 15.0], [59.0, 59.0, 61.0, 61.0]])
    targets = match_anchors(anchors, boxes, torch.tensor([1, 1]))
    assert targets.labels.tolist() == [1, 1, NEUTRAL, 0, 1]
    assert targets.matched[[0, 1, 4]].tolist() == [0, 0, 1]
    assert torch.allclose(targets.box_targets[0], torch.zeros(4))


def test_unlabelled_anchors_are_not_background_in_sparse_chips() -> None:
    anchors = torch.tensor([[8.0, 8.0, 8.0, 8.0], [24.0, 8.0, 8.0, 8.0], [24.0, 24.0, 8.0, 8.0]])
    ignore = torch.zeros(32, 32, dtype=torch.bool)
    ignore[:, 16:] = True  # the right half is unlabelled
    ignore[16:, 16:20] = False  # a quarter of the third anchor is labelled
    targets = match_anchors(anchors, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64),
                            ignore=ignore, ignore_share=0.5)  # fmt: skip
    assert targets.labels.tolist() == [0, NEUTRAL, NEUTRAL]


# masks -------------------------------------------------------------------------------------


def test_masks_are_prototypes_times_coefficients() -> None:
    prototypes = torch.zeros(2, 4, 4)
    prototypes[0, :, :2] = 1.0  # left half
    prototypes[1, :, 2:] = 1.0  # right half
    coefficients = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    logits = assemble_masks(prototypes, coefficients)
    assert logits.shape == (2, 4, 4)
    assert logits[0, 0].tolist() == [2.0, 2.0, -1.0, -1.0]
    assert logits[1, 3].tolist() == [0.0, 0.0, 3.0, 3.0]


def test_masks_are_cropped_to_their_boxes_at_prototype_resolution() -> None:
    boxes = torch.tensor([[2.0, 0.0, 6.0, 4.0], [5.0, 5.0, 6.0, 6.0]])
    inside = box_crop_mask(boxes, 4, 4, scale=0.5)  # an 8 x 8 chip, prototypes at stride 2
    assert inside[0].nonzero().tolist() == [[0, 1], [0, 2], [1, 1], [1, 2]]
    # a 1 px field smaller than a prototype pixel keeps the pixel under its centre
    assert inside[1].nonzero().tolist() == [[2, 2]]
    masks = torch.ones(2, 4, 4)
    assert crop_to_boxes(masks, boxes, scale=0.5).sum().item() == 5


def test_higher_ranked_instances_keep_what_they_claim() -> None:
    masks = torch.zeros(3, 1, 4)
    masks[0, 0] = torch.tensor([0.9, 0.8, 0.2, 0.0])
    masks[1, 0] = torch.tensor([0.6, 0.9, 0.9, 0.3])  # leaks into the first field's pixels
    masks[2, 0] = torch.tensor([0.0, 0.0, 0.8, 0.9])
    kept = suppress_claimed(masks, claim_threshold=0.7)
    assert kept[0].equal(masks[0])
    assert kept[1, 0].tolist() == pytest.approx([0.0, 0.0, 0.9, 0.3])
    # the third loses the pixel the second claims, although the second lost its own claim there
    assert kept[2, 0].tolist() == pytest.approx([0.0, 0.0, 0.0, 0.9])


# losses ------------------------------------------------------------------------------------


def test_hard_negative_mining_keeps_the_worst_background_anchors() -> None:
    logits = torch.zeros(1, 6, 2)
    logits[0, :, 1] = torch.tensor([2.0, -3.0, 1.0, 0.5, -1.0, 3.0])
    labels = torch.tensor([[1, 0, 0, 0, 0, NEUTRAL]])
    loss = classification_loss(logits, labels, negatives_per_positive=2)
    log_probs = F.log_softmax(logits[0], dim=-1)
    # one positive, the two hardest negatives (anchors 2 and 3); the neutral one is left out
    expected = -(log_probs[0, 1] + log_probs[2, 0] + log_probs[3, 0])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_mask_loss_weighs_small_fields_as_much_as_large_ones() -> None:
    truth = torch.zeros(2, 16, 16)
    inside = torch.zeros(2, 16, 16, dtype=torch.bool)
    inside[0, :2, :2] = True  # a 4 px field
    inside[1, :, :] = True  # a 256 px field
    truth[inside] = 1.0
    logits = torch.zeros(2, 16, 16)  # 0.5 everywhere: log(2) per pixel
    per_instance = mask_loss(logits, truth, inside) / 2
    assert per_instance.item() == pytest.approx(math.log(2), rel=1e-5)


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    torch.manual_seed(1)
    images, targets = [], []
    for shift in (0, 8):
        image = torch.rand(4, 64, 64) * 500 + 500
        masks = torch.zeros(3, 64, 64, dtype=torch.uint8)
        masks[0, 4 + shift : 20 + shift, 4:30] = 1
        masks[1, 4 + shift : 20 + shift, 30:60] = 1
        masks[2, 36:60, 10 + shift : 40 + shift] = 1
        for mask, level in zip(masks, (1500, 2200, 2900), strict=True):
            image[:, mask.bool()] += level
        boxes = []
        for mask in masks:
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
        images.append(image)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "labels": torch.ones(3, dtype=torch.int64), "masks": masks,
                        "ignore": torch.zeros(64, 64, dtype=torch.bool)})  # fmt: skip
    return images, targets


def test_every_loss_falls_and_gradients_reach_protonet_and_coefficients() -> None:
    model = _model(TINY.model_copy(update={"mask_rescoring": True}))
    images, targets = _batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.training_step(images, targets)
    assert set(first) == {"loss_class", "loss_box", "loss_mask", "loss_semantic",
                          "loss_mask_iou"}  # fmt: skip
    sum(first.values()).backward()
    assert model.protonet.tail[-2].weight.grad.abs().sum() > 0
    assert model.head.coefficients.weight.grad.abs().sum() > 0
    assert model.mask_iou.body[0].weight.grad.abs().sum() > 0
    for _ in range(12):
        optimizer.zero_grad()
        sum(model.training_step(images, targets).values()).backward()
        optimizer.step()
    last = model.training_step(images, targets)
    for name, value in first.items():
        assert last[name].item() < value.item(), name


def test_chips_without_fields_train_background_and_reach_every_parameter() -> None:
    """No positive anchor: finite losses, and a gradient (zero or not) for every parameter."""
    model = _model(TINY.model_copy(update={"mask_rescoring": True}))
    images, targets = _batch()
    for target in targets:
        target.update(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                      masks=torch.zeros(0, 64, 64, dtype=torch.uint8))  # fmt: skip
    losses = model.training_step(images, targets)
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert losses["loss_class"] > 0 and losses["loss_box"] == 0 and losses["loss_mask"] == 0
    sum(losses.values()).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_predictions_are_soft_masks_inside_their_boxes_at_chip_size() -> None:
    model = _model(TINY.model_copy(update={"score_threshold": 0.0, "detections_per_chip": 20}))
    images = [torch.rand(4, 50, 70) * 2000, torch.rand(4, 40, 33) * 2000]
    predictions = model.predict(images)
    for image, prediction in zip(images, predictions, strict=True):
        n = len(prediction)
        assert prediction.masks.shape == (n, *image.shape[-2:])
        assert prediction.masks.dtype == torch.float32
        assert bool(((prediction.masks >= 0) & (prediction.masks <= 1)).all())
        assert prediction.scores.tolist() == sorted(prediction.scores.tolist(), reverse=True)
        assert prediction.labels.tolist() == [1] * n
        assert bool((prediction.masks.flatten(1).amax(dim=1) > 0.5).all())


def test_claimed_pixels_are_suppressed_only_when_asked() -> None:
    model = _model(TINY.model_copy(update={"score_threshold": 0.0, "suppress_claimed": False}))
    with torch.no_grad():  # confident masks filling their boxes: overlapping boxes overlap
        model.protonet.tail[-2].bias.fill_(1.0)
        model.head.coefficients.weight.zero_()
        model.head.coefficients.bias.fill_(1.0)
    image = [torch.rand(4, 64, 64) * 2000]
    leaky = model.predict(image)[0]
    model.config = model.config.model_copy(update={"suppress_claimed": True})
    clean = model.predict(image)[0]
    strong = (leaky.masks >= model.config.claim_threshold).int().sum(dim=0)
    assert int(strong.max()) > 1  # untrained masks overlap
    strong = (clean.masks >= model.config.claim_threshold).int().sum(dim=0)
    assert int(strong.max()) <= 1


# configs and checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "deformable"),
    [
        ("yolact_r18_cpu.yaml", 0),
        ("yolact_plus_r18_cpu.yaml", 3),  # stages 3 to 5 of 2 blocks: the first of each
        ("yolact_r50_fpn.yaml", 0),
        ("yolact_plus_r50_fpn.yaml", 5),  # stages of 4, 6 and 3 blocks: every third, 2 + 2 + 1
    ],
)
def test_configs_build_through_the_family_registry(name: str, deformable: int) -> None:
    config = load_run_config(CONFIGS / name)
    spec = ModelSpec(bands=BANDS, statistics=tuple(_statistics()), nodata=None, chip_size=128,
                     categories=("field",))  # fmt: skip
    model = build_model(model_config(config.model), spec)
    assert isinstance(model, YolactFieldModel)
    assert model.backbone.stem[0].in_channels == 4
    assert sum(isinstance(m, DeformableConv2d) for m in model.modules()) == deformable
    assert (model.mask_iou is not None) == name.startswith("yolact_plus")


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="no COCO weights"):
        YolactFieldModel(TINY, BANDS, _statistics(), None, chip_size=64, num_classes=1,
                         pretrained="coco")  # fmt: skip
    with pytest.raises(ConfigError, match="one per level"):
        _model(TINY.model_copy(update={"anchor_sizes": [[4], [8]]}))
    with pytest.raises(ConfigError, match=r"model\.prototype_stride"):
        model_config({"family": "yolact", "prototype_stride": 3})


@pytest.mark.usefixtures("offline_weights")
def test_offline_imagenet_weights_are_one_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"--pretrained none.*--weights PATH"):
        YolactFieldModel(TINY, BANDS, _statistics(), None, chip_size=64, num_classes=1,
                         pretrained="imagenet")  # fmt: skip


def test_checkpoint_round_trip_gives_the_same_predictions(tmp_path: Path) -> None:
    config = load_run_config(CONFIGS / "yolact_r18_cpu.yaml", ["model.score_threshold=0"])
    spec = ModelSpec(bands=BANDS, statistics=tuple(_statistics()), nodata=None, chip_size=64,
                     categories=("field",))  # fmt: skip
    torch.manual_seed(0)
    model = build_model(model_config(config.model), spec)
    save_checkpoint(tmp_path / "model.pt", model, config=config.resolved(), spec=spec, epoch=1,
                    metrics={})  # fmt: skip
    loaded = load_checkpoint(tmp_path / "model.pt").build_model()
    image = [torch.rand(4, 64, 64) * 2000]
    before, after = model.predict(image)[0], loaded.predict(image)[0]
    assert len(before) == len(after) > 0
    assert torch.allclose(before.masks, after.masks) and torch.allclose(before.scores, after.scores)


# learning ----------------------------------------------------------------------------------

FIELDS = [(4, 4, 24, 20), (30, 6, 58, 26), (6, 34, 28, 60), (36, 36, 60, 58),
          (68, 4, 90, 28), (96, 8, 124, 22), (70, 36, 100, 60), (106, 30, 124, 60)]  # fmt: skip


@pytest.mark.slow
def test_cpu_config_overfits_two_tiny_chips(tmp_path: Path) -> None:
    """Mask AP@0.5 >= 0.9 on two chips of eight fields after a short fit."""
    config = CONFIGS / "yolact_r18_cpu.yaml"
    model, chips, images, targets = fit_two_chips(tmp_path, FIELDS, config, steps=40, lr=1e-3)
    predictions = dict(zip([t["image_id"] for t in targets], model.predict(images), strict=True))
    metrics = evaluate_chip_predictions(chips.coco_document, predictions)
    assert metrics["segm_AP50"] >= 0.9, metrics


@pytest.mark.slow
def test_train_and_predict_end_to_end_through_the_stitcher(tmp_path: Path) -> None:
    """``train`` with the CPU config, then ``predict_scene``: a clean partition of fields."""
    import geopandas as gpd
    import rasterio

    from fieldseg.inference import predict_scene
    from fieldseg.training import train

    dataset = make_tiny_dataset(tmp_path)
    summary = train(dataset, CONFIGS / "yolact_r18_cpu.yaml", tmp_path / "run",
                    overrides=["training.epochs=2", "training.batch_size=4",
                               "schedule.warmup_steps=3", "model.score_threshold=0"])  # fmt: skip
    assert summary.epochs_done == 2
    assert {"train_loss_mask", "train_loss_class", "val_segm_mAP"} <= set(summary.history[-1])
    # a barely trained model is unsure of everything: no score floor, so the stitcher has work
    result = predict_scene(tmp_path / "scene.tif", tmp_path / "run", tmp_path / "predicted.gpkg",
                           score_threshold=0.0, show_progress=False)  # fmt: skip
    fields = gpd.read_file(tmp_path / "predicted.gpkg", layer="fields")
    assert len(fields) == result.n_fields > 0
    with rasterio.open(tmp_path / "scene.tif") as scene:
        assert fields.crs == scene.crs
    assert fields["model"].str.startswith("yolact").all()
    assert fields.geometry.is_valid.all()
    pairs = fields.sindex.query(fields.geometry, predicate="intersects")
    overlap = sum(
        fields.geometry.iloc[i].intersection(fields.geometry.iloc[j]).area
        for i, j in pairs.T
        if i < j
    )
    assert overlap == 0.0
