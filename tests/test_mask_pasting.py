"""Mask R-CNN's masks pasted into their boxes give torchvision's pasted pixels exactly."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image
from torchvision.ops import clip_boxes_to_image

from fieldseg.models.mask_pasting import paste_masks_in_boxes


@pytest.mark.parametrize("seed", range(4))
def test_boxed_pasting_equals_torchvisions_whole_image_pasting(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    n, height, width = 12, 40, 33
    masks = torch.rand((n, 1, 28, 28), generator=generator)
    corner = torch.rand((n, 2), generator=generator) * torch.tensor([width + 10, height + 10]) - 5
    size = torch.rand((n, 2), generator=generator) * 25
    boxes = torch.cat([corner, corner + size], dim=1)
    boxes[0] = torch.tensor([3.0, 4.0, 3.2, 4.1])  # smaller than a pixel
    boxes[1] = torch.tensor([-4.0, 30.0, 50.0, 60.0])  # across three image edges
    boxes = clip_boxes_to_image(boxes, (height, width))  # as Mask R-CNN's detections are
    boxed = paste_masks_in_boxes(masks, boxes, height, width)
    expected = paste_masks_in_image(masks, boxes, (height, width))[:, 0]
    assert torch.equal(boxed.dense(), expected)
    x0, _, x1, y1 = boxed.boxes[1].tolist()
    assert x0 == 0 and x1 == width and y1 == height  # the pasted box is clipped to the image
    assert (boxed.boxes[:, 2:] - boxed.boxes[:, :2]).prod(dim=1).sum() < n * height * width / 4


def test_a_box_outside_the_image_gives_an_empty_mask() -> None:
    masks = torch.ones((1, 1, 28, 28))
    boxed = paste_masks_in_boxes(masks, torch.tensor([[-30.0, -30.0, -20.0, -20.0]]), 16, 16)
    assert boxed.boxes.tolist() == [[0, 0, 0, 0]] and not boxed.dense().any()
