"""YOLACT's masks: prototypes times coefficients, cropped to the box, and kept from leaking.

YOLACT (Bolya et al. 2019) predicts, once per image, ``k`` prototype masks and, per instance,
``k`` coefficients; an instance's mask is the sigmoid of their linear combination, cropped to
the instance's box so that prototypes firing elsewhere in the image do not leak in. For fields,
whose neighbours touch, the crop is not enough: a mask can still spill into the neighbour inside
its own box. :func:`suppress_claimed` removes what a higher-ranked instance already claims.
"""

from __future__ import annotations

import torch


def assemble_masks(prototypes: torch.Tensor, coefficients: torch.Tensor) -> torch.Tensor:
    """Mask logits (N, h, w) from prototypes (k, h, w) and coefficients (N, k).

    Logits, not probabilities: the loss takes them with a numerically safe BCE.
    """
    k, h, w = prototypes.shape
    return (coefficients @ prototypes.reshape(k, h * w)).reshape(-1, h, w)


def box_crop_mask(boxes: torch.Tensor, height: int, width: int, scale: float = 1.0) -> torch.Tensor:
    """(N, height, width) bool: True inside each box.

    Args:
        boxes: (N, 4) ``x0, y0, x1, y1`` at the image's resolution, in pixel edges.
        height: rows of the mask grid.
        width: columns of the mask grid.
        scale: mask grid pixels per image pixel (1 / prototype stride). A grid pixel is inside
            when its centre is, so a box smaller than a grid pixel still keeps the pixel under
            its centre.
    """
    n = boxes.shape[0]
    device = boxes.device
    scaled = boxes * scale
    # a box always keeps at least the grid pixel under its centre, however small it is
    centre = (scaled[:, :2] + scaled[:, 2:]) / 2
    low = torch.minimum(scaled[:, :2], centre.floor())
    high = torch.maximum(scaled[:, 2:], centre.floor() + 1)
    cols = torch.arange(width, device=device, dtype=boxes.dtype) + 0.5
    rows = torch.arange(height, device=device, dtype=boxes.dtype) + 0.5
    inside_cols = (cols.view(1, -1) > low[:, 0:1]) & (cols.view(1, -1) < high[:, 0:1])
    inside_rows = (rows.view(1, -1) > low[:, 1:2]) & (rows.view(1, -1) < high[:, 1:2])
    return inside_rows.view(n, height, 1) & inside_cols.view(n, 1, width)


def crop_to_boxes(masks: torch.Tensor, boxes: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Masks (N, h, w) set to zero outside their boxes (see :func:`box_crop_mask`)."""
    inside = box_crop_mask(boxes, masks.shape[1], masks.shape[2], scale)
    return masks * inside


def suppress_claimed(masks: torch.Tensor, claim_threshold: float) -> torch.Tensor:
    """Remove from each mask the pixels a higher-ranked mask claims with high confidence.

    Args:
        masks: (N, H, W) probabilities, ranked: row 0 is the most confident instance.
        claim_threshold: a pixel is claimed by an instance whose probability there reaches it.

    Returns:
        The masks with every pixel zeroed where an earlier (higher-ranked) mask reaches
        ``claim_threshold``; the first mask is unchanged. A lower-ranked instance keeps what no
        better one is sure of, so a field's mask cannot spill into a neighbour that the model
        already found with confidence.
    """
    if masks.shape[0] < 2:
        return masks
    claimed = torch.cummax(masks, dim=0).values >= claim_threshold
    earlier = torch.zeros_like(claimed)
    earlier[1:] = claimed[:-1]
    return masks.masked_fill(earlier, 0.0)
