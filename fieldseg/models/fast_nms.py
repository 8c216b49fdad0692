"""Fast NMS (YOLACT, Bolya et al. 2019, sec. 3.4): non-maximum suppression as one matrix operation.

Standard NMS walks the boxes from the highest score down and discards a box when it overlaps a
box *kept so far*; the walk is sequential. Fast NMS drops the "kept so far": within each class,
boxes are sorted by score, their pairwise IoU matrix is computed, the upper triangle is kept
(entry ``(i, j)`` with ``i < j``: box ``i`` scored higher than box ``j``), and a box is discarded
when its largest IoU with any higher-scoring box of its class exceeds the threshold. A box that is
itself suppressed can thus still suppress others, so Fast NMS keeps a subset of what standard NMS
keeps: on a chain ``A > B > C`` where A overlaps B and B overlaps C but A does not overlap C,
standard NMS keeps A and C, Fast NMS only A. In exchange there is no loop, only a few tensor ops.

Conventions follow :func:`torchvision.ops.nms`: a box is discarded when its IoU with a
higher-scoring box is strictly greater than ``iou_threshold`` (equal is kept), and zero-area
boxes (IoU 0 / 0) neither suppress nor are suppressed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["fast_nms"]


def fast_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float,
    *,
    max_candidates: int | None = None,
) -> Tensor:
    """Class-aware Fast NMS: boxes of different labels never suppress each other.

    Within a class, equal scores are ordered by input index (the earlier box counts as the
    higher-scoring one), so results are deterministic; :func:`torchvision.ops.nms` does not
    promise any order for ties.

    Args:
        boxes: ``(N, 4)`` boxes, ``x1, y1, x2, y2``.
        scores: ``(N,)`` scores.
        labels: ``(N,)`` integer class ids.
        iou_threshold: a box whose IoU with a higher-scoring box of its class is greater than
            this is discarded.
        max_candidates: per class, only this many top-scoring boxes are considered; the others
            are discarded before suppression, as YOLACT does (top-k per class).

    Returns:
        int64 indices into the inputs of the kept boxes, by decreasing score (ties by index), on
        the inputs' device.

    Raises:
        ValueError: if the shapes disagree or ``max_candidates`` is below 1.
    """
    return _fast_nms(boxes, scores, labels, iou_threshold, max_candidates, strategy="auto")


def _fast_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    iou_threshold: float,
    max_candidates: int | None,
    strategy: str,
) -> Tensor:
    """:func:`fast_nms` with the vectorisation chosen by ``strategy``: auto, padded or masked.

    Both strategies give identical results; they differ only in memory. ``padded`` stacks the
    classes into a ``(C, k, k)`` IoU batch (``k``: the largest class), ``masked`` computes one
    ``(M, M)`` matrix over all ``M`` candidates and zeroes the pairs of different labels. ``auto``
    takes the smaller: padded wins with many balanced classes (80 classes of 200 boxes: 3.2 M
    entries against 256 M), masked when one class dominates (one class of 200 and 79 singletons:
    78 K against 3.2 M). Label masking is preferred over torchvision's coordinate-offset trick,
    which shifts each class far away and so loses float precision in the IoUs.
    """
    _check_inputs(boxes, scores, labels, max_candidates)
    device = boxes.device
    if scores.numel() == 0:
        return torch.empty(0, dtype=torch.int64, device=device)

    # Group by class, by decreasing score within a class, ties by input index (both sorts stable).
    by_score = torch.argsort(scores, descending=True, stable=True)
    order = by_score[torch.argsort(labels[by_score], stable=True)]
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    num_classes = counts.numel()
    class_index = torch.repeat_interleave(torch.arange(num_classes, device=device), counts)
    rank = (
        torch.arange(order.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[class_index]
    )
    if max_candidates is not None:
        considered = rank < max_candidates
        order, class_index, rank = order[considered], class_index[considered], rank[considered]
        counts = counts.clamp(max=max_candidates)

    candidates = order.numel()
    largest = int(counts.max())
    if strategy == "auto":
        strategy = "padded" if num_classes * largest**2 <= candidates**2 else "masked"
    candidate_boxes = boxes[order]
    if strategy == "padded":
        padded = candidate_boxes.new_zeros((num_classes, largest, 4))
        padded[class_index, rank] = candidate_boxes
        # Rows above a real box are real boxes of its class (padding sits after them), so the
        # padding only ever lands in columns that are read back for padding, never for a box.
        max_iou = _max_iou_with_higher(_batched_box_iou(padded))[class_index, rank]
    elif strategy == "masked":
        iou = box_iou(candidate_boxes, candidate_boxes)
        iou = iou * (class_index[:, None] == class_index[None, :])
        max_iou = _max_iou_with_higher(iou)
    else:
        raise ValueError(f"unknown Fast NMS strategy {strategy!r}: use auto, padded or masked")

    kept = order[max_iou <= _threshold_below(iou_threshold, max_iou.dtype, device)]
    kept = kept.sort().values
    return kept[torch.argsort(scores[kept], descending=True, stable=True)]


def _check_inputs(
    boxes: Tensor, scores: Tensor, labels: Tensor, max_candidates: int | None
) -> None:
    """Raise ValueError for shapes that do not describe N boxes, or a useless ``max_candidates``."""
    n = scores.shape[0] if scores.dim() == 1 else -1
    if boxes.dim() != 2 or boxes.shape[1] != 4 or scores.dim() != 1 or labels.shape != (n,):
        raise ValueError(
            "fast_nms expects boxes (N, 4), scores (N,) and labels (N,); got "
            f"{tuple(boxes.shape)}, {tuple(scores.shape)} and {tuple(labels.shape)}"
        )
    if boxes.shape[0] != n:
        raise ValueError(f"fast_nms got {boxes.shape[0]} boxes but {n} scores")
    if max_candidates is not None and max_candidates < 1:
        raise ValueError(f"max_candidates must be at least 1 (or None), got {max_candidates}")


def _batched_box_iou(boxes: Tensor) -> Tensor:
    """Pairwise IoU within each set of ``(C, k, 4)`` boxes: ``(C, k, k)``.

    The same arithmetic as :func:`torchvision.ops.box_iou` (which is 2-D only before
    torchvision 0.21), so both strategies give bit-identical IoUs.
    """
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    top_left = torch.max(boxes[..., :, None, :2], boxes[..., None, :, :2])
    bottom_right = torch.min(boxes[..., :, None, 2:], boxes[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[..., :, None] + area[..., None, :] - inter)


def _max_iou_with_higher(iou: Tensor) -> Tensor:
    """For each box (column), its largest IoU with a higher-scoring box (a row above it).

    Zero-area pairs give NaN (0 / 0); they count as no overlap, as in torchvision's NMS.
    """
    return iou.nan_to_num(0.0).triu(diagonal=1).max(dim=-2).values


def _threshold_below(threshold: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The largest ``dtype`` value not above ``threshold``, so ``iou <= it`` iff ``iou <= t``.

    torchvision compares the float IoU with the threshold in double precision; rounding the
    threshold down instead of to nearest gives the same decisions without float64 (unsupported
    on some devices), e.g. an IoU of ``float32(0.3)`` is above a threshold of 0.3.
    """
    bound = torch.tensor(threshold, dtype=dtype, device=device)
    if math.isfinite(threshold) and bound.item() > threshold:
        bound = torch.nextafter(bound, torch.tensor(-math.inf, dtype=dtype, device=device))
    return bound
