"""YOLACT's anchors and what each anchor is trained to predict.

Anchors sit at the centre of every cell of every pyramid level, one per size and aspect ratio.
Each anchor is matched to the truth box it overlaps most: positive at IoU >= 0.5, background
below 0.4, not trained on in between; every truth field also claims its best anchor, so a field
too small for any anchor to reach 0.5 is still learned. In sparse datasets an anchor lying
mostly in the ignore mask is never background: nobody said what is there. Boxes are encoded
as offsets from their anchor (SSD's encoding, with its variances).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.ops import box_iou

#: SSD's variances: centre offsets are divided by 0.1, log size ratios by 0.2, so that both
#: reach a similar range for the box loss.
CENTRE_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
#: Label of anchors left out of the classification loss.
NEUTRAL = -1


def make_anchors(
    feature_sizes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float],
    device: torch.device | None = None,
) -> torch.Tensor:
    """(A, 4) anchors ``cx, cy, w, h`` in image pixels, level by level, cell by cell.

    Within a cell, anchors go size by size and, for each size, ratio by ratio (``w / h``); the
    prediction head orders its outputs the same way.
    """
    out = []
    for (rows, cols), stride, level_sizes in zip(feature_sizes, strides, sizes, strict=True):
        shapes = torch.tensor(
            [(s * r**0.5, s / r**0.5) for s in level_sizes for r in aspect_ratios],
            dtype=torch.float32,
            device=device,
        )
        ys = (torch.arange(rows, dtype=torch.float32, device=device) + 0.5) * stride
        xs = (torch.arange(cols, dtype=torch.float32, device=device) + 0.5) * stride
        cy, cx = torch.meshgrid(ys, xs, indexing="ij")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], dim=1)
        n_cells, n_shapes = centres.shape[0], shapes.shape[0]
        out.append(
            torch.cat(
                [
                    centres.repeat_interleave(n_shapes, dim=0),
                    shapes.repeat(n_cells, 1),
                ],
                dim=1,
            )
        )
    return torch.cat(out)


def anchor_corners(anchors: torch.Tensor) -> torch.Tensor:
    """``cx, cy, w, h`` -> ``x0, y0, x1, y1``."""
    half = anchors[:, 2:] / 2
    return torch.cat([anchors[:, :2] - half, anchors[:, :2] + half], dim=1)


def encode_boxes(boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Regression targets (A, 4) of ``x0, y0, x1, y1`` boxes against their anchors."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    size = (boxes[:, 2:] - boxes[:, :2]).clamp(min=1e-3)
    offset = (centre - anchors[:, :2]) / (CENTRE_VARIANCE * anchors[:, 2:])
    scale = torch.log(size / anchors[:, 2:]) / SIZE_VARIANCE
    return torch.cat([offset, scale], dim=1)


def decode_boxes(deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """``x0, y0, x1, y1`` boxes from regression outputs (A, 4) and their anchors."""
    centre = anchors[:, :2] + deltas[:, :2] * CENTRE_VARIANCE * anchors[:, 2:]
    # a log ratio past ~8 (box 3000x its anchor) is a diverging output, not a field
    size = anchors[:, 2:] * torch.exp((deltas[:, 2:] * SIZE_VARIANCE).clamp(max=8.0))
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


@dataclass
class AnchorTargets:
    """What every anchor of one chip is trained on.

    Attributes:
        labels: (A,) class id (1.. for fields), 0 for background, ``NEUTRAL`` for anchors left
            out of the classification loss.
        matched: (A,) index of the truth instance each anchor is matched to (meaningful where
            ``labels > 0``).
        box_targets: (A, 4) encoded boxes of the matched instances.
    """

    labels: torch.Tensor
    matched: torch.Tensor
    box_targets: torch.Tensor

    @property
    def positive(self) -> torch.Tensor:
        """(A,) True for anchors trained to find a field."""
        return self.labels > 0


def match_anchors(
    anchors: torch.Tensor,
    boxes: torch.Tensor,
    labels: torch.Tensor,
    *,
    positive_iou: float = 0.5,
    negative_iou: float = 0.4,
    ignore: torch.Tensor | None = None,
    ignore_share: float = 0.5,
) -> AnchorTargets:
    """Match anchors (A, 4 ``cx, cy, w, h``) to truth boxes (G, 4 ``x0, y0, x1, y1``).

    Args:
        anchors: the chip's anchors.
        boxes: its truth boxes, in pixel edges.
        labels: (G,) their class ids (1..).
        positive_iou: an anchor overlapping a truth box this much (IoU) is trained on it.
        negative_iou: an anchor overlapping every truth box less than this is background.
        ignore: (H, W) bool, True where the chip is not labelled (sparse datasets).
        ignore_share: an unmatched anchor with more than this share of its area (within the
            chip) in ``ignore`` is neutral, not background.
    """
    n = anchors.shape[0]
    device = anchors.device
    corners = anchor_corners(anchors)
    target_labels = torch.zeros(n, dtype=torch.int64, device=device)
    matched = torch.zeros(n, dtype=torch.int64, device=device)
    if boxes.shape[0]:
        iou = box_iou(corners, boxes)  # (A, G)
        best_iou, matched = iou.max(dim=1)
        # every truth box keeps its best anchor, even below the positive threshold
        best_anchor = iou.argmax(dim=0)
        matched[best_anchor] = torch.arange(boxes.shape[0], device=device)
        best_iou[best_anchor] = 2.0
        target_labels = labels[matched].clone()
        target_labels[best_iou < positive_iou] = NEUTRAL
        target_labels[best_iou < negative_iou] = 0
    if ignore is not None and bool(ignore.any()):
        background = target_labels == 0
        unlabelled = _ignored_share(corners[background], ignore) > ignore_share
        indices = background.nonzero().squeeze(1)
        target_labels[indices[unlabelled]] = NEUTRAL
    box_targets = (
        encode_boxes(boxes[matched], anchors)
        if boxes.shape[0]
        else torch.zeros(n, 4, device=device)
    )
    return AnchorTargets(labels=target_labels, matched=matched, box_targets=box_targets)


def _ignored_share(corners: torch.Tensor, ignore: torch.Tensor) -> torch.Tensor:
    """Share of each box's area inside the chip that ``ignore`` covers (summed-area table)."""
    height, width = ignore.shape
    table = torch.zeros(height + 1, width + 1, device=ignore.device)
    table[1:, 1:] = ignore.float().cumsum(0).cumsum(1)
    x0 = corners[:, 0].floor().clamp(0, width).long()
    y0 = corners[:, 1].floor().clamp(0, height).long()
    x1 = corners[:, 2].ceil().clamp(0, width).long()
    y1 = corners[:, 3].ceil().clamp(0, height).long()
    area = ((x1 - x0) * (y1 - y0)).clamp(min=1)
    covered = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    return covered / area
