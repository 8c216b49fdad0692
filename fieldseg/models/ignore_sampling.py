"""Sampling that honours ignore masks: unlabelled land is never taught as background.

In a sparse dataset (hand-drawn samples) most of a chip is unknown land that may hold undrawn
fields. Mask R-CNN's samplers would take anchors and proposals there as negatives and learn to
call fields background. These subclasses of torchvision's RPN and ROI heads mark an anchor or
proposal that would be a negative as *ignored* when at least ``ignore_share`` of its box lies in
the chip's ignore mask, so it is sampled neither as positive nor as negative. Positives are
never changed.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

#: A would-be negative box is ignored from this share of its area in the ignore mask on.
DEFAULT_IGNORE_SHARE = 0.5


def ignore_share(boxes: Tensor, ignore: Tensor, scale: tuple[float, float]) -> Tensor:
    """Share of each ``x0, y0, x1, y1`` box's pixels that lie in ``ignore``.

    Args:
        boxes: (N, 4) boxes in model-input pixels.
        ignore: (H, W) bool mask in chip pixels.
        scale: (rows, cols) chip pixels per model-input pixel (1 unless chips are upsampled).
    """
    height, width = ignore.shape
    integral = torch.zeros((height + 1, width + 1), dtype=torch.float64, device=ignore.device)
    integral[1:, 1:] = ignore.to(torch.float64).cumsum(0).cumsum(1)
    x0 = (boxes[:, 0] * scale[1]).floor().clamp(0, width).long()
    x1 = (boxes[:, 2] * scale[1]).ceil().clamp(0, width).long()
    y0 = (boxes[:, 1] * scale[0]).floor().clamp(0, height).long()
    y1 = (boxes[:, 3] * scale[0]).ceil().clamp(0, height).long()
    inside = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = ((x1 - x0) * (y1 - y0)).to(torch.float64)
    return torch.where(area > 0, inside / area.clamp(min=1), torch.zeros_like(area)).float()


def _ignore_negatives(
    labels: Tensor, boxes: Tensor, ignore: Tensor | None, image_size: tuple[int, int], share: float
) -> None:
    """Turn negatives (label 0) mostly inside ``ignore`` into ignored (-1), in place.

    An image whose every sample would be ignored keeps its negatives, so the losses never
    average over nothing.
    """
    if ignore is None or not bool(ignore.any()):
        return
    scale = (ignore.shape[0] / image_size[0], ignore.shape[1] / image_size[1])
    covered = (labels == 0) & (ignore_share(boxes, ignore, scale) >= share)
    if bool((labels[~covered] >= 0).any()):
        labels[covered] = -1


class IgnoreAwareRPN(RegionProposalNetwork):
    """torchvision's RPN, but anchors mostly in the ignore mask are not sampled as negatives."""

    ignore_share_threshold: float = DEFAULT_IGNORE_SHARE

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """As torchvision's, remembering the input sizes for the ignore masks' scale."""
        self._image_sizes = images.image_sizes
        return super().forward(images, features, targets)

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """As torchvision's, then negatives mostly in the ignore mask become ignored."""
        labels, matched = super().assign_targets_to_anchors(anchors, targets)
        for i, (anchors_i, target) in enumerate(zip(anchors, targets, strict=True)):
            _ignore_negatives(labels[i], anchors_i, target.get("ignore"),
                              self._image_sizes[i], self.ignore_share_threshold)  # fmt: skip
        return labels, matched


class IgnoreAwareRoIHeads(RoIHeads):
    """torchvision's ROI heads, but proposals mostly in the ignore mask are not negatives."""

    ignore_share_threshold: float = DEFAULT_IGNORE_SHARE

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """As torchvision's, remembering the targets' ignore masks for the sampling."""
        self._image_shapes = image_shapes
        self._ignore = [t.get("ignore") for t in targets] if targets is not None else None
        return super().forward(features, proposals, image_shapes, targets)

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        """As torchvision's, then negatives mostly in the ignore mask become ignored."""
        matched, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        if self._ignore is not None:
            for i, proposals_i in enumerate(proposals):
                _ignore_negatives(labels[i], proposals_i, self._ignore[i],
                                  self._image_shapes[i], self.ignore_share_threshold)  # fmt: skip
        return matched, labels


def make_ignore_aware(detector: torch.nn.Module, share: float = DEFAULT_IGNORE_SHARE) -> None:
    """Switch a torchvision Mask/Faster R-CNN's RPN and ROI heads to ignore-aware sampling.

    The subclasses only override methods, so the built modules are re-classed in place rather
    than rebuilt with every torchvision default spelled out twice.
    """
    detector.rpn.__class__ = IgnoreAwareRPN
    detector.roi_heads.__class__ = IgnoreAwareRoIHeads
    detector.rpn.ignore_share_threshold = share
    detector.roi_heads.ignore_share_threshold = share
