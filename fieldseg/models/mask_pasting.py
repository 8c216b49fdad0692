"""Mask R-CNN's small square masks pasted into their boxes only, not into whole chips.

torchvision pastes every detection's 28 x 28 mask into a zero image of the whole chip
(``paste_masks_in_image``): 100 detections of a 256 px chip make a 26 MB stack, nearly all
zeros, that the stitcher then has to read. :func:`paste_masks_in_boxes` makes the same pixels
(torchvision's own expansion of masks and boxes, the same bilinear resize) but keeps each as
the crop of its box, in a :class:`BoxedMasks`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import expand_boxes, expand_masks
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes

from fieldseg.models.boxed_masks import BoxedMasks


def paste_masks_in_boxes(
    masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int, padding: int = 1
) -> BoxedMasks:
    """``paste_masks_in_image(masks, boxes, (height, width))``, each mask kept in its box.

    Args:
        masks: (N, 1, M, M) mask probabilities of the detections.
        boxes: (N, 4) float ``x0, y0, x1, y1`` of the detections, in image pixels.
        height: the image's height.
        width: the image's width.
        padding: the border torchvision adds to each mask before pasting (1).

    Returns:
        Per detection, the box it was pasted into, clipped to the image, and the pasted crop.
    """
    padded, scale = expand_masks(masks, padding=padding)
    pasted_boxes = expand_boxes(boxes, scale).to(torch.int64).tolist()
    out_boxes, crops = [], []  # the crops end to end: the flat form the stitcher reads
    for mask, (x0, y0, x1, y1) in zip(padded[:, 0], pasted_boxes, strict=True):
        size = (max(y1 - y0 + 1, 1), max(x1 - x0 + 1, 1))  # box corners are both inside
        resized = F.interpolate(mask[None, None], size=size, mode="bilinear", align_corners=False)
        left, top = max(x0, 0), max(y0, 0)
        right, bottom = min(x1 + 1, width), min(y1 + 1, height)
        if right <= left or bottom <= top:  # the box lies outside the image
            out_boxes.append((0, 0, 0, 0))
            continue
        out_boxes.append((left, top, right, bottom))
        crops.append(resized[0, 0, top - y0 : bottom - y0, left - x0 : right - x0].reshape(-1))
    boxes_tensor = torch.tensor(out_boxes, dtype=torch.int64, device=masks.device).reshape(-1, 4)
    values = torch.cat(crops) if crops else masks.new_zeros(0)
    return BoxedMasks.from_flat(boxes_tensor, values, height, width)


class BoxedMaskTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform, returning boxed masks (see the module docstring)."""

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> BoxedMaskTransform:
        """A boxed-mask transform with the settings of ``transform``."""
        return cls(
            transform.min_size,
            transform.max_size,
            transform.image_mean,
            transform.image_std,
            size_divisible=transform.size_divisible,
            fixed_size=transform.fixed_size,
            _skip_resize=transform._skip_resize,
        )

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """Boxes back to the original image size; masks pasted into their boxes only."""
        if self.training:
            return result
        for prediction, size, original in zip(
            result, image_shapes, original_image_sizes, strict=True
        ):
            prediction["boxes"] = resize_boxes(prediction["boxes"], size, original)
            if "masks" in prediction:
                prediction["masks"] = paste_masks_in_boxes(  # type: ignore[assignment]
                    prediction["masks"], prediction["boxes"], *original
                )
        return result
