"""YOLACT's loss terms, each a sum over a batch divided by what it counts.

- classification: softmax cross-entropy over the positive anchors and the hardest background
  anchors (``negatives_per_positive`` of them per positive, hard negative mining), divided by
  the positives;
- boxes: smooth L1 on the encoded boxes of positive anchors, divided by the positives;
- masks: per-pixel BCE of each trained instance's assembled mask against its truth mask at
  prototype resolution, counted inside the truth box only and divided by the box's area, so
  small fields weigh as much as large ones; averaged over instances;
- semantic: an auxiliary per-pixel BCE of each class's extent on the finest pyramid level,
  outside the ignore mask;
- mask IoU (YOLACT++): smooth L1 between the predicted and the true IoU of each trained mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(
    logits: torch.Tensor, labels: torch.Tensor, negatives_per_positive: float
) -> torch.Tensor:
    """Cross-entropy with hard negative mining.

    Args:
        logits: (B, A, C + 1) class logits, background first.
        labels: (B, A) targets: class id, 0 for background, negative to leave out.
        negatives_per_positive: background anchors kept per positive of the same chip (at
            least this many in a chip without fields, so empty chips still teach background).
    """
    log_probs = F.log_softmax(logits, dim=-1)
    background_loss = -log_probs[..., 0]
    positive = labels > 0
    candidates = labels == 0
    ranked = background_loss.detach().masked_fill(~candidates, -1.0)
    quota = (positive.sum(dim=1).clamp(min=1) * negatives_per_positive).long()
    quota = torch.minimum(quota, candidates.sum(dim=1))
    order = ranked.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    hard_negative = candidates & (rank < quota.unsqueeze(1))
    chosen = positive | hard_negative
    targets = labels.clamp(min=0)
    loss = F.nll_loss(log_probs[chosen], targets[chosen], reduction="sum")
    return loss / positive.sum().clamp(min=1)


def box_loss(deltas: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Smooth L1 of positive anchors' (B, A, 4) box outputs against their encoded targets."""
    positive = labels > 0
    loss = F.smooth_l1_loss(deltas[positive], targets[positive], reduction="sum", beta=1.0)
    return loss / positive.sum().clamp(min=1)


def mask_loss(logits: torch.Tensor, truth: torch.Tensor, inside_box: torch.Tensor) -> torch.Tensor:
    """Summed per-instance mask loss of one chip (divide by the instances trained).

    Args:
        logits: (N, h, w) assembled mask logits at prototype resolution.
        truth: (N, h, w) truth masks downsampled to that resolution (soft, in 0..1).
        inside_box: (N, h, w) bool, the truth boxes at that resolution.
    """
    pixels = F.binary_cross_entropy_with_logits(logits, truth, reduction="none") * inside_box
    area = inside_box.flatten(1).sum(dim=1).clamp(min=1)
    return (pixels.flatten(1).sum(dim=1) / area).sum()


def semantic_loss(
    logits: torch.Tensor, truth: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean BCE of (B, C, h, w) class extents, pixels weighted (0 where unlabelled)."""
    pixels = F.binary_cross_entropy_with_logits(logits, truth, reduction="none")
    if weight is None:
        return pixels.mean()
    weight = weight.unsqueeze(1).expand_as(pixels)
    return (pixels * weight).sum() / weight.sum().clamp(min=1)


def mask_iou_loss(predicted: torch.Tensor, true_iou: torch.Tensor) -> torch.Tensor:
    """Summed smooth L1 between predicted (N,) and true (N,) mask IoUs."""
    return F.smooth_l1_loss(predicted, true_iou, reduction="sum", beta=0.1)


def mask_iou(probabilities: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of masks (N, h, w) thresholded at 0.5 against truth masks (0 where both empty)."""
    predicted = probabilities > 0.5
    true = truth > 0.5
    intersection = (predicted & true).flatten(1).sum(dim=1)
    union = (predicted | true).flatten(1).sum(dim=1)
    return intersection.float() / union.clamp(min=1).float()


__all__ = [
    "box_loss",
    "classification_loss",
    "mask_iou",
    "mask_iou_loss",
    "mask_loss",
    "semantic_loss",
]
