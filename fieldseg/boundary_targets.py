"""Per-pixel training targets for semantic field models: background, field interior, boundary.

The rule (docs/formats.md, "Boundary targets"): every field's **own inner edge** is boundary,
``width`` pixels deep: a field pixel is boundary when a pixel of another field or of no field
lies within ``width`` steps (4-connected) of it. Two touching fields therefore meet as two
boundary bands, one on each side, and a model that learns them keeps the fields apart. The chip
edge is not an edge of a field (the field goes on beyond it), so pixels outside the chip count as
the field's own. Pixels that are ignored (unknown label) or invalid (nodata, padding) are
:data:`IGNORE_INDEX` and take part in no loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: Classes of the target, in channel order of the model output.
CLASSES = ("background", "interior", "boundary")
#: Target value of pixels left out of every loss (cross-entropy's ignore_index).
IGNORE_INDEX = -100


def instance_labels(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) instance masks -> (H, W) int64 label image, k + 1 for the k-th mask.

    Masks from ``fieldseg tile`` never overlap; where given ones do, the later mask wins.
    """
    height, width = masks.shape[-2:]
    labels = torch.zeros((height, width), dtype=torch.int64, device=masks.device)
    if masks.shape[0] == 0:
        return labels
    ids = torch.arange(1, masks.shape[0] + 1, device=masks.device).view(-1, 1, 1)
    stacked = torch.where(masks.bool(), ids, torch.zeros_like(ids))
    return stacked.amax(dim=0)


def boundary_target(
    masks: torch.Tensor,
    *,
    ignore: torch.Tensor | None = None,
    valid: torch.Tensor | None = None,
    width: int = 1,
) -> torch.Tensor:
    """The (H, W) int64 class target of one chip (module docstring for the rule).

    Args:
        masks: (N, H, W) instance masks of the chip's fields.
        ignore: (H, W) bool, True where the label is unknown.
        valid: (H, W) bool, False on nodata and padding.
        width: boundary depth in pixels (1 or 2 at 10 m).
    """
    target = label_classes(instance_labels(masks), width=width)
    if ignore is not None:
        target[ignore.bool()] = IGNORE_INDEX
    if valid is not None:
        target[~valid.bool()] = IGNORE_INDEX
    return target


def label_classes(labels: torch.Tensor, *, width: int = 1) -> torch.Tensor:
    """(H, W) field label image (0 none) -> (H, W) int64 background/interior/boundary classes."""
    if width < 1:
        raise ValueError(f"boundary width must be at least 1 pixel, got {width}")
    target = torch.where(labels > 0, INTERIOR, BACKGROUND).to(torch.int64)
    same = labels > 0  # pixels whose whole neighbourhood so far is their own field
    for _ in range(width):
        # replicate padding: beyond the chip edge the field goes on
        padded_labels = F.pad(labels[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        padded_same = F.pad(same[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0] > 0
        keep = same.clone()
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            neighbour = padded_labels[dy : dy + labels.shape[0], dx : dx + labels.shape[1]]
            inner = padded_same[dy : dy + labels.shape[0], dx : dx + labels.shape[1]]
            keep &= (neighbour == labels.float()) & inner
        same = keep
    target[(labels > 0) & ~same] = BOUNDARY
    return target
