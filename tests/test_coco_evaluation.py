"""COCO AP of chip predictions: pycocotools' numbers, crowded chips, ignore regions, edge cases."""

from __future__ import annotations

import contextlib
import copy
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from fieldseg.coco_evaluation import evaluate_chip_predictions
from fieldseg.coco_format import encode_rle, rle_to_json
from fieldseg.models.base import ChipPrediction, touches_edge

SIZE = 32
AP_KEYS = ("segm_mAP", "segm_AP50", "segm_AP75", "bbox_mAP", "bbox_AP50", "bbox_AP75")


def rect(rows: slice, cols: slice, size: int = SIZE) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[rows, cols] = True
    return mask


def ell(vertical: tuple[slice, slice], horizontal: tuple[slice, slice]) -> np.ndarray:
    return rect(*vertical) | rect(*horizontal)


# Two 32 x 32 chips: three fields (two rectangles, an L) and two fields (a square, an L).
FIELDS = {
    1: [
        rect(slice(2, 10), slice(2, 12)),
        rect(slice(14, 20), slice(4, 24)),
        ell((slice(22, 30), slice(2, 6)), (slice(26, 30), slice(2, 14))),
    ],
    2: [
        rect(slice(3, 13), slice(3, 13)),
        ell((slice(16, 30), slice(18, 22)), (slice(26, 30), slice(22, 30))),
    ],
}


def rle_json(mask: np.ndarray) -> dict[str, Any]:
    return rle_to_json(encode_rle(mask))


def ground_truth(
    fields: dict[int, Sequence[np.ndarray]],
    *,
    size: int = SIZE,
    ignore: dict[int, np.ndarray] | None = None,
    categories: Sequence[int] = (1,),
    labels: dict[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """A COCO document as fieldseg writes it, with ids from 1."""
    images, annotations = [], []
    for image_id, masks in fields.items():
        ignore_mask = (ignore or {}).get(image_id)
        images.append(
            {
                "id": image_id,
                "width": size,
                "height": size,
                "file_name": f"chips/scene/chip_{image_id}.tif",
                "ignore_mask": None if ignore_mask is None else rle_json(ignore_mask),
            }
        )
        for i, mask in enumerate(masks):
            rle = encode_rle(mask)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": (labels or {}).get(image_id, [1] * len(masks))[i],
                    "iscrowd": 0,
                    "segmentation": rle_to_json(rle),
                    "area": int(mask.sum()),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "field_id": len(annotations) + 1,
                    "truncated": False,
                }
            )
    return {
        "info": {},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class_{c}"} for c in categories],
    }


def prediction(
    masks: Sequence[np.ndarray],
    scores: Sequence[float] | None = None,
    labels: Sequence[int] | None = None,
    *,
    size: int = SIZE,
) -> ChipPrediction:
    stacked = (
        torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in masks]))
        if masks
        else torch.zeros((0, size, size))
    )
    n = len(masks)
    return ChipPrediction(
        masks=stacked,
        scores=torch.tensor([0.9] * n if scores is None else list(scores), dtype=torch.float32),
        labels=torch.tensor([1] * n if labels is None else list(labels), dtype=torch.int64),
        touches_edge=touches_edge(stacked),
    )


def perfect(fields: dict[int, Sequence[np.ndarray]]) -> dict[int, ChipPrediction]:
    return {image_id: prediction(masks) for image_id, masks in fields.items()}


def assert_all(metrics: dict[str, float], value: float, *, exact: bool = False) -> None:
    """Every AP equals ``value``; to the last bits only when ``exact``.

    pycocotools computes precision as tp / (tp + fp + eps): a single true positive scores
    1 / (1 + 2.2e-16), one ulp under 1, where two or more round to exactly 1.
    """
    got = {k: metrics[k] for k in AP_KEYS}
    expected = dict.fromkeys(AP_KEYS, value)
    assert got == (expected if exact else pytest.approx(expected, abs=1e-12))


def test_perfect_predictions_score_one() -> None:
    document = ground_truth(FIELDS)
    before = copy.deepcopy(document)
    metrics = evaluate_chip_predictions(document, perfect(FIELDS))
    assert_all(metrics, 1.0, exact=True)
    assert metrics["n_images"] == 2 and metrics["n_predictions"] == 5
    assert document == before  # the caller's document is left alone


def test_no_predictions_score_zero() -> None:
    assert_all(evaluate_chip_predictions(ground_truth(FIELDS), {}), 0.0, exact=True)
    empty = {1: prediction([]), 2: prediction([])}
    metrics = evaluate_chip_predictions(ground_truth(FIELDS), empty)
    assert_all(metrics, 0.0, exact=True)
    assert metrics["n_predictions"] == 0


def test_predictions_for_one_image_only() -> None:
    metrics = evaluate_chip_predictions(ground_truth(FIELDS), {1: prediction(FIELDS[1])})
    for key in AP_KEYS:
        # all three of image 1 found, none of image 2: precision 1 up to recall 3/5
        assert 0.0 < metrics[key] < 1.0
        assert metrics[key] == pytest.approx(0.6, abs=0.01)


def test_a_shifted_prediction_counts_at_ap50_not_at_ap75() -> None:
    field = rect(slice(4, 14), slice(4, 14))
    shifted = rect(slice(4, 14), slice(6, 16))  # two columns right: IoU 80 / 120
    iou = mask_utils.iou([encode_rle(shifted)], [encode_rle(field)], [0])[0, 0]
    assert iou == pytest.approx(2 / 3)
    metrics = evaluate_chip_predictions(ground_truth({1: [field]}), {1: prediction([shifted])})
    for kind in ("segm", "bbox"):  # rectangles: the boxes overlap as much as the masks
        assert metrics[f"{kind}_AP50"] == pytest.approx(1.0)  # one TP: 1 / (1 + eps)
        assert metrics[f"{kind}_AP75"] == 0.0
        # a match at IoU 0.50, 0.55, 0.60, 0.65 out of the ten thresholds 0.50:0.95
        assert metrics[f"{kind}_mAP"] == pytest.approx(0.4)


def test_soft_masks_are_binarised_at_the_threshold() -> None:
    soft = {
        image_id: prediction([np.where(m, 0.6, 0.4) for m in masks])
        for image_id, masks in FIELDS.items()
    }
    metrics = evaluate_chip_predictions(ground_truth(FIELDS), soft)
    assert_all(metrics, 1.0, exact=True)
    # above every probability: every binary mask is empty, so every prediction is dropped
    strict = evaluate_chip_predictions(ground_truth(FIELDS), soft, mask_threshold=0.7)
    assert strict["n_predictions"] == 0
    assert_all(strict, 0.0, exact=True)


def test_more_than_a_hundred_fields_in_a_chip() -> None:
    size = 64
    squares = [
        rect(slice(r, r + 2), slice(c, c + 2), size)
        for r in range(0, size, 4)
        for c in range(0, size, 4)
    ][:150]
    document = ground_truth({1: squares}, size=size)
    predicted = {1: prediction(squares, scores=np.linspace(0.99, 0.5, 150).tolist(), size=size)}
    metrics = evaluate_chip_predictions(document, predicted)
    assert_all(metrics, 1.0, exact=True)
    assert metrics["n_predictions"] == 150
    # pycocotools' default of 100 detections per image loses a third of the fields
    capped = evaluate_chip_predictions(document, predicted, max_detections=100)
    for key in AP_KEYS:
        assert capped[key] < 1.0
        assert capped[key] == pytest.approx(67 / 101)  # precision 1 up to recall 100/150


def test_a_false_positive_in_the_ignore_mask_is_not_counted() -> None:
    field = rect(slice(2, 10), slice(2, 10))
    unlabelled = rect(slice(16, 32), slice(0, 32))  # bottom half: label unknown
    in_ignore = rect(slice(20, 26), slice(20, 28))
    outside = rect(slice(2, 8), slice(20, 28))
    scores = [0.95, 0.9]  # the false positive outranks the true one

    without = evaluate_chip_predictions(
        ground_truth({1: [field]}), {1: prediction([in_ignore, field], scores)}
    )
    assert_all(without, 0.5)  # precision 1/2 at recall 1
    with_ignore = evaluate_chip_predictions(
        ground_truth({1: [field]}, ignore={1: unlabelled}),
        {1: prediction([in_ignore, field], scores)},
    )
    assert_all(with_ignore, 1.0)
    # a false positive on labelled land still counts, ignore mask or not
    elsewhere = evaluate_chip_predictions(
        ground_truth({1: [field]}, ignore={1: unlabelled}),
        {1: prediction([outside, field], scores)},
    )
    assert_all(elsewhere, 0.5)


def test_a_prediction_partly_in_the_ignore_mask_and_the_box_of_the_mask() -> None:
    field = rect(slice(2, 10), slice(2, 10))
    scores = [0.95, 0.9]
    # half of the false positive lies in the ignore mask: crowd IoU is intersection over the
    # detection's area, 0.5, so it is ignored at IoU 0.50 and false at 0.55 and above
    half_in = rect(slice(13, 19), slice(20, 28))
    metrics = evaluate_chip_predictions(
        ground_truth({1: [field]}, ignore={1: rect(slice(16, 32), slice(0, 32))}),
        {1: prediction([half_in, field], scores)},
    )
    for kind in ("segm", "bbox"):
        assert metrics[f"{kind}_AP50"] == pytest.approx(1.0)
        assert metrics[f"{kind}_AP75"] == pytest.approx(0.5)
        assert metrics[f"{kind}_mAP"] == pytest.approx((1.0 + 9 * 0.5) / 10)
    # two slivers in opposite corners: for boxes the crowd region is the box around both, so
    # a false positive on labelled land between them costs mask AP but not box AP
    slivers = rect(slice(0, 3), slice(28, 32)) | rect(slice(29, 32), slice(0, 3))
    between = rect(slice(14, 20), slice(14, 20))
    metrics = evaluate_chip_predictions(
        ground_truth({1: [field]}, ignore={1: slivers}), {1: prediction([between, field], scores)}
    )
    assert metrics["segm_mAP"] == pytest.approx(0.5)
    assert metrics["bbox_mAP"] == pytest.approx(1.0)


def test_the_ignore_mask_holds_for_every_category() -> None:
    fields = {1: [rect(slice(2, 10), slice(2, 10)), rect(slice(2, 10), slice(14, 24))]}
    labels = {1: [1, 2]}
    unlabelled = rect(slice(16, 32), slice(0, 32))
    predicted = {
        1: prediction(
            [fields[1][0], fields[1][1], rect(slice(20, 26), slice(4, 12))],
            scores=[0.9, 0.8, 0.95],
            labels=[1, 2, 2],  # the false positive is of the second category
        )
    }
    kwargs = {"categories": (1, 2), "labels": labels}
    without = evaluate_chip_predictions(ground_truth(fields, **kwargs), predicted)
    assert without["segm_mAP"] == pytest.approx(0.75)  # category 1: 1.0, category 2: 0.5
    with_ignore = evaluate_chip_predictions(
        ground_truth(fields, ignore={1: unlabelled}, **kwargs), predicted
    )
    assert_all(with_ignore, 1.0)


def test_agrees_with_pycocotools_called_directly() -> None:
    document = ground_truth(FIELDS)
    found = {
        1: [
            (FIELDS[1][0], 0.9),  # exact
            (rect(slice(14, 20), slice(6, 24)), 0.7),  # most of the second field
            (rect(slice(0, 6), slice(24, 32)), 0.8),  # nothing there
        ],
        2: [
            (rect(slice(16, 30), slice(18, 22)), 0.6),  # the L's upright only
            (FIELDS[2][0], 0.85),
            (FIELDS[2][0] & rect(slice(3, 9), slice(3, 13)), 0.5),  # a duplicate, half of it
        ],
    }
    predicted = {
        image_id: prediction([m for m, _ in items], [s for _, s in items])
        for image_id, items in found.items()
    }
    ours = evaluate_chip_predictions(document, predicted, max_detections=100)

    segm_results, bbox_results = [], []
    for image_id, items in found.items():
        for mask, score in items:
            rle = encode_rle(mask)
            common = {"image_id": image_id, "category_id": 1, "score": score}
            segm_results.append({**common, "segmentation": rle})
            bbox_results.append({**common, "bbox": mask_utils.toBbox(rle).tolist()})
    for iou_type, results in (("segm", segm_results), ("bbox", bbox_results)):
        with contextlib.redirect_stdout(io.StringIO()):
            truth = COCO()
            truth.dataset = copy.deepcopy(document)
            truth.createIndex()
            evaluation = COCOeval(truth, truth.loadRes(results), iou_type)
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()  # default maxDets [1, 10, 100]
        expected = evaluation.stats[:3].tolist()
        got = [ours[f"{iou_type}_mAP"], ours[f"{iou_type}_AP50"], ours[f"{iou_type}_AP75"]]
        assert got == pytest.approx(expected, abs=1e-12)
        assert 0.0 < expected[0] < expected[1] < 1.0  # a case that is not trivial


def test_the_fast_engine_scores_as_pycocotools_on_crowded_chips_with_ignore_masks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """faster-coco-eval (the engine used) against pycocotools itself: random fields, shifted,
    missing and false predictions, two categories and ignore masks, 100 detections kept."""
    import fieldseg.coco_evaluation as engine

    rng = np.random.default_rng(5)
    size, fields, found, ignore, labels = 64, {}, {}, {}, {}
    for image_id in (1, 2, 3):
        boxes = [(int(r), int(c), int(h), int(w)) for r, c, h, w in zip(
            rng.integers(0, 56, 80), rng.integers(0, 56, 80), rng.integers(2, 8, 80),
            rng.integers(2, 8, 80), strict=True)]  # fmt: skip
        masks = [rect(slice(r, r + h), slice(c, c + w), size) for r, c, h, w in boxes]
        fields[image_id] = masks[:60]
        labels[image_id] = rng.integers(1, 3, 60).tolist()
        shifted = [np.roll(m, int(rng.integers(-2, 3)), axis=1) for m in masks[:50]]
        predicted = shifted + masks[60:]  # 10 fields missed, 20 false ones
        found[image_id] = prediction(
            predicted, rng.uniform(0.3, 1.0, len(predicted)).tolist(),
            labels[image_id][:50] + rng.integers(1, 3, 20).tolist(), size=size,
        )  # fmt: skip
        ignore[image_id] = rect(slice(48, 64), slice(0, 64), size)
    document = ground_truth(fields, size=size, ignore=ignore, categories=(1, 2), labels=labels)
    fast = evaluate_chip_predictions(document, found, max_detections=100)
    monkeypatch.setattr(engine, "COCO", COCO)
    monkeypatch.setattr(engine, "COCOeval", COCOeval)
    reference = evaluate_chip_predictions(document, found, max_detections=100)
    assert fast == pytest.approx(reference, abs=1e-12)
    assert 0.05 < fast["segm_mAP"] < fast["segm_AP50"] < 1.0  # not a trivial case


def test_predictions_for_an_unknown_image_are_refused() -> None:
    with pytest.raises(ValueError, match="not in the ground truth: 7"):
        evaluate_chip_predictions(ground_truth(FIELDS), {7: prediction(FIELDS[1])})


def test_malformed_predictions_are_refused() -> None:
    document = ground_truth(FIELDS)
    with pytest.raises(ValueError, match="not categories"):
        evaluate_chip_predictions(document, {1: prediction(FIELDS[1], labels=[1, 1, 3])})
    with pytest.raises(ValueError, match="the image is 32 x 32"):
        small = [m[:16, :16] for m in FIELDS[1]]
        evaluate_chip_predictions(document, {1: prediction(small, size=16)})


def test_a_ground_truth_without_annotations_gives_nan() -> None:
    empty = ground_truth({1: [], 2: []})
    for predicted in ({}, {1: prediction(FIELDS[1])}):
        metrics = evaluate_chip_predictions(empty, predicted)
        assert all(math.isnan(metrics[key]) for key in AP_KEYS)
        assert metrics["n_images"] == 2
        assert metrics["n_predictions"] == len(predicted and FIELDS[1])
    # an ignore region is no annotation to find either
    only_ignored = ground_truth({1: []}, ignore={1: rect(slice(0, 16), slice(0, 32))})
    metrics = evaluate_chip_predictions(only_ignored, {1: prediction(FIELDS[1])})
    assert all(math.isnan(metrics[key]) for key in AP_KEYS)
    # nor is a split without chips
    no_images = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "field"}]}
    metrics = evaluate_chip_predictions(no_images, {})
    assert all(math.isnan(metrics[key]) for key in AP_KEYS) and metrics["n_images"] == 0
