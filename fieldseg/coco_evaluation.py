"""COCO mask and box AP of chip predictions against a split's COCO file (COCOeval).

The ground truth is a split's COCO document as ``fieldseg tile`` writes it (see
docs/formats.md); predictions are the :class:`~fieldseg.models.base.ChipPrediction` a model
returns per chip. Scoring is ``COCOeval`` for ``segm`` and ``bbox``: faster-coco-eval's
``COCOeval_faster``, a compiled port of pycocotools' that gives its figures (the tests check them
against pycocotools itself) several times faster on chips of many fields; RLE masks are
pycocotools'. With three adaptations to field chips:

* **Crowded chips.** A chip of small fields holds hundreds of them, beyond COCO's 100
  detections per image. ``maxDets`` becomes ``[max_detections // 10, max_detections // 2,
  max_detections]`` and AP is read at the last of them. pycocotools' ``summarize()`` cannot be
  used for that: its ``stats[1]`` and ``stats[2]`` (AP50, AP75) are taken at ``maxDets[2]``,
  but ``stats[0]`` (AP@[.5:.95]) is hard-wired to ``maxDets=100`` (pycocotools 2.0.x) and is
  ``-1`` when 100 is not in ``maxDets`` -- or, worse, silently the AP at 100 detections when
  it is one of the smaller entries. The three APs are therefore read from
  ``COCOeval.eval["precision"]`` exactly as ``summarize()`` computes them (area range
  ``all``), but always at ``maxDets[-1]``.
* **Ignore regions.** An image's ``ignore_mask`` (valid pixels whose label is unknown: slivers,
  unlabelled land of sparse datasets, fields of other splits) becomes one ``iscrowd=1``
  ground-truth annotation per category (``COCOeval`` matches crowds within a category only). A
  detection matches a crowd region when the share of *its own* area inside the region reaches
  the IoU threshold (pycocotools' crowd IoU is intersection over the detection's area); it is
  then ignored, neither true nor false positive, and a crowd region absorbs any number of
  detections. A detection that matches a real field at the threshold is matched to the field
  first. For ``bbox`` the crowd region is the bounding box of the ignore mask, so box AP with
  ignore masks is more lenient than mask AP: in a sparse chip that box usually spans the chip.
* **No ground truth.** Where no category has a (non-crowd) annotation, pycocotools reports
  ``-1``; such metrics come back as ``float("nan")``, never as a crash.

Only COCO's area range ``all`` is evaluated (its small/medium/large ranges are not reported
and would multiply ``COCOeval``'s per-image matching, quadratic in a chip's instances, by
four); the numbers for ``all`` are the same either way.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from faster_coco_eval import COCO
from faster_coco_eval import COCOeval_faster as COCOeval
from pycocotools import mask as mask_utils

from fieldseg.coco_format import decode_mask, encode_rle, rle_from_json

if TYPE_CHECKING:  # importing fieldseg.models loads torchvision
    from fieldseg.models.base import ChipPrediction

IOU_TYPES = ("segm", "bbox")
"""The COCO evaluations run, and the prefixes of the returned metric names."""

ALL_AREAS = (0.0, 1e5**2)
"""COCO's area range ``all``, the only one evaluated."""


def evaluate_chip_predictions(
    ground_truth: dict[str, Any],
    predictions: Mapping[int, ChipPrediction],
    *,
    max_detections: int = 300,
    mask_threshold: float = 0.5,
) -> dict[str, float]:
    """COCO segm and bbox AP of chip predictions (pycocotools).

    Each predicted mask is binarised (probability strictly above ``mask_threshold``, as
    :func:`fieldseg.models.base.touches_edge` does), encoded as RLE, and boxed from the binary
    mask as COCO ``[x, y, w, h]`` (pycocotools ``toBbox``); a prediction whose binary mask is
    empty is dropped. Scores are taken as given and the label is the category. Images of the
    ground truth without an entry in ``predictions`` predict nothing. Each image's
    ``ignore_mask`` is a crowd region of every category (see the module docstring).

    The ground truth is not modified; its annotations are renumbered in the in-memory copy,
    since pycocotools takes an annotation id of 0 for "unmatched".

    Args:
        ground_truth: a split's COCO document as fieldseg writes it (``images``,
            ``annotations``, ``categories``; images may carry ``ignore_mask``, an RLE or null).
        predictions: image id -> the prediction for that chip, masks ``(N, H, W)`` in the
            image's pixels, on any device.
        max_detections: detections per image and category that count, highest score first
            (COCO's ``maxDets[-1]``, 100 by default in pycocotools; fieldseg's Mask R-CNN
            returns up to 300).
        mask_threshold: probability above which a mask pixel is part of the instance.

    Returns:
        ``segm_mAP``, ``segm_AP50``, ``segm_AP75``, ``bbox_mAP``, ``bbox_AP50``, ``bbox_AP75``
        (AP averaged over IoU 0.50:0.95, at 0.50 and at 0.75, area range ``all``, at
        ``max_detections``; NaN where the ground truth holds no annotation to find),
        ``n_images`` (images of the ground truth) and ``n_predictions`` (detections evaluated,
        after empty masks are dropped, before the ``max_detections`` cut).

    Raises:
        ValueError: ``max_detections`` below 1, a prediction for an image that is not in the
            ground truth, masks that do not match their image's size, arrays of different
            lengths, or a label that is not one of the ground truth's categories (pycocotools
            would silently leave it out of the score).
    """
    if max_detections < 1:
        raise ValueError(f"max_detections must be at least 1, got {max_detections}")
    images: list[dict[str, Any]] = list(ground_truth.get("images", []))
    categories: list[dict[str, Any]] = list(ground_truth.get("categories", []))
    images_by_id = {image["id"]: image for image in images}
    category_ids = [category["id"] for category in categories]
    unknown = sorted(set(predictions) - set(images_by_id))
    if unknown:
        raise ValueError(
            f"predictions for image ids not in the ground truth: {', '.join(map(str, unknown))}"
        )

    truth = _ground_truth_annotations(ground_truth.get("annotations", []), images, category_ids)
    detections = _detections(predictions, images_by_id, set(category_ids), mask_threshold)
    max_dets = [max(1, max_detections // 10), max(1, max_detections // 2), max_detections]

    metrics: dict[str, float] = {}
    for iou_type in IOU_TYPES:
        evaluation = _run_cocoeval(images, categories, truth, detections, iou_type, max_dets)
        metrics[f"{iou_type}_mAP"] = _average_precision(evaluation, None)
        metrics[f"{iou_type}_AP50"] = _average_precision(evaluation, 0.5)
        metrics[f"{iou_type}_AP75"] = _average_precision(evaluation, 0.75)
    metrics["n_images"] = len(images)  # counts stay whole numbers in metrics.jsonl
    metrics["n_predictions"] = len(detections)
    return metrics


def _ground_truth_annotations(
    annotations: Sequence[dict[str, Any]],
    images: Sequence[dict[str, Any]],
    category_ids: Sequence[int],
) -> list[dict[str, Any]]:
    """The annotations to score against: the file's own plus a crowd per category per ignore mask.

    Ids are renumbered from 1: ``COCOeval`` stores matched ids in arrays where 0 means
    unmatched.
    """
    truth = []
    for annotation in annotations:
        entry = dict(annotation)
        entry["iscrowd"] = int(annotation.get("iscrowd", 0))
        entry["id"] = len(truth) + 1
        truth.append(entry)
    for image in images:
        ignore = image.get("ignore_mask")
        if not ignore:
            continue
        area = int(decode_mask(ignore).sum())
        if area == 0:
            continue
        bbox = [float(v) for v in mask_utils.toBbox(rle_from_json(ignore))]
        for category_id in category_ids:
            truth.append(
                {
                    "id": len(truth) + 1,
                    "image_id": image["id"],
                    "category_id": category_id,
                    "iscrowd": 1,
                    "area": area,
                    "bbox": bbox,
                    "segmentation": ignore,
                }
            )
    return truth


def _detections(
    predictions: Mapping[int, ChipPrediction],
    images_by_id: Mapping[int, dict[str, Any]],
    category_ids: set[int],
    mask_threshold: float,
) -> list[dict[str, Any]]:
    """COCO result entries (mask RLE, box, area, score, category) of non-empty predicted masks."""
    detections: list[dict[str, Any]] = []
    for image_id, prediction in predictions.items():
        image = images_by_id[image_id]
        masks = prediction.dense_masks().detach()
        n = len(prediction)
        if masks.ndim != 3 or masks.shape[0] != n or prediction.labels.shape[0] != n:
            raise ValueError(
                f"image {image_id}: masks {tuple(masks.shape)}, {n} scores and "
                f"{prediction.labels.shape[0]} labels do not describe the same instances"
            )
        if n == 0:
            continue
        if tuple(masks.shape[1:]) != (image["height"], image["width"]):
            raise ValueError(
                f"image {image_id}: masks are {tuple(masks.shape[1:])} (H, W) but the image is "
                f"{image['height']} x {image['width']}"
            )
        binary = (masks > mask_threshold).cpu().numpy()
        scores = prediction.scores.detach().cpu().tolist()
        labels = prediction.labels.detach().cpu().tolist()
        bad = sorted({int(label) for label in labels} - category_ids)
        if bad:
            raise ValueError(
                f"image {image_id}: labels {bad} are not categories of the ground truth"
            )
        areas = binary.sum(axis=(1, 2))
        kept = np.flatnonzero(areas > 0).tolist()
        rles = [encode_rle(binary[i]) for i in kept]
        boxes = mask_utils.toBbox(rles) if rles else np.zeros((0, 4))
        for i, rle, box in zip(kept, rles, boxes, strict=True):
            detections.append(
                {
                    "id": len(detections) + 1,  # 0 would read as "unmatched" to COCOeval
                    "image_id": image_id,
                    "category_id": int(labels[i]),
                    "segmentation": rle,
                    "bbox": [float(v) for v in box],
                    "area": int(areas[i]),
                    "score": float(scores[i]),
                    "iscrowd": 0,
                }
            )
    return detections


def _run_cocoeval(
    images: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    truth: Sequence[dict[str, Any]],
    detections: Sequence[dict[str, Any]],
    iou_type: str,
    max_dets: list[int],
) -> COCOeval:
    """``evaluate()`` and ``accumulate()`` of one iou type, pycocotools' prints silenced.

    Both COCO objects are built in memory from copies of the entries, since ``COCOeval``
    writes into them (``ignore``, ``_ignore``, decoded segmentations). ``COCO.loadRes`` is not
    used: it fails on an empty result list, and gives results that carry a box the box's area.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        coco_truth = COCO()
        coco_truth.dataset = {
            "images": images,
            "categories": categories,
            "annotations": [dict(annotation) for annotation in truth],
        }
        coco_truth.createIndex()
        coco_detections = COCO()
        coco_detections.dataset = {
            "images": images,
            "categories": categories,
            "annotations": [dict(detection) for detection in detections],
        }
        coco_detections.createIndex()
        evaluation = COCOeval(coco_truth, coco_detections, iouType=iou_type)
        evaluation.params.maxDets = list(max_dets)
        # Only area "all" is reported; the small/medium/large ranges would triple the work.
        evaluation.params.areaRng = [list(ALL_AREAS)]
        evaluation.params.areaRngLbl = ["all"]
        evaluation.evaluate()
        evaluation.accumulate()
    return evaluation


def _average_precision(evaluation: COCOeval, iou_threshold: float | None) -> float:
    """AP over IoU 0.50:0.95 (``None``) or at one IoU, area ``all``, at ``maxDets[-1]``.

    As ``COCOeval.summarize()`` computes it (the mean of the interpolated precisions that are
    not -1), but always at the largest ``maxDets`` (see the module docstring). NaN where every
    entry is -1: no category has a ground-truth annotation.
    """
    params = evaluation.params
    precision = evaluation.eval["precision"]  # (iou, recall, category, area, max dets)
    if iou_threshold is not None:
        precision = precision[np.isclose(params.iouThrs, iou_threshold)]
    area = params.areaRngLbl.index("all")
    values = precision[:, :, :, area, -1]
    values = values[values > -1]
    return float(values.mean()) if values.size else float("nan")
