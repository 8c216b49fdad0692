"""Soft instance masks stored inside their boxes: one chip's masks without the (N, H, W) stack.

A 256 px chip of small fields holds hundreds of instances, each a few dozen pixels: as a dense
stack that is 300 x 65,536 floats (79 MB) of which 0.1 % say anything, and every pass over it
(thresholding, row maxima, copies to the CPU) costs more than the stitching itself. A model
that knows where its masks are (the oracle, the U-Net's extracted fields, a box-cropped
instance head) returns :class:`BoxedMasks` instead: each mask as a crop of its box, zero
outside it. The stitcher reads both forms; ``dense()`` gives the stack where one is needed
(COCO evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class BoxedMasks:
    """N soft masks of an H x W chip, each stored as the crop of its box.

    Attributes:
        boxes: (N, 4) int64 ``(x0, y0, x1, y1)``, half-open, in chip pixels; the mask is zero
            outside ``rows y0:y1, columns x0:x1``. An empty box (x0 == x1 or y0 == y1) is an
            empty mask.
        crops: N float tensors, the i-th of shape ``(y1 - y0, x1 - x0)`` of box i.
        height: the chip's height H.
        width: the chip's width W.
    """

    boxes: torch.Tensor
    crops: tuple[torch.Tensor, ...]
    height: int
    width: int

    def __post_init__(self) -> None:
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        if len(self.crops) != self.boxes.shape[0]:
            raise ValueError(f"{self.boxes.shape[0]} boxes but {len(self.crops)} crops")
        boxes = self.boxes.cpu().numpy()
        x0, y0, x1, y1 = boxes.T
        if len(boxes) and not (
            (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= self.width).all()
            and (y1 <= self.height).all() and (x0 <= x1).all() and (y0 <= y1).all()
        ):  # fmt: skip
            raise ValueError(f"boxes must lie inside the {self.height} x {self.width} chip")
        for i, crop in enumerate(self.crops):
            if tuple(crop.shape) != (int(y1[i] - y0[i]), int(x1[i] - x0[i])):
                raise ValueError(
                    f"crop {i} is {tuple(crop.shape)} but its box is "
                    f"{int(y1[i] - y0[i])} x {int(x1[i] - x0[i])}"
                )

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(N, H, W), the shape of the dense stack these masks stand for."""
        return (len(self), self.height, self.width)

    def dense(self) -> torch.Tensor:
        """The (N, H, W) float32 stack, zero outside each box."""
        device = self.boxes.device
        stack = torch.zeros(self.shape, dtype=torch.float32, device=device)
        for i, (x0, y0, x1, y1) in enumerate(self.boxes.tolist()):
            stack[i, y0:y1, x0:x1] = self.crops[i].float()
        return stack

    def select(self, index: Sequence[int] | np.ndarray | torch.Tensor) -> BoxedMasks:
        """The masks at ``index`` (integer positions or a boolean selector), in that order.

        Raises:
            ValueError: a boolean selector whose length is not the number of masks.
        """
        if isinstance(index, torch.Tensor):
            index = index.cpu()
        index = torch.as_tensor(np.asarray(index))
        if index.dtype == torch.bool:
            if len(index) != len(self):
                raise ValueError(f"a selector of {len(index)} for {len(self)} masks")
            index = index.nonzero().flatten()
        index = index.to(torch.int64)  # an empty list arrives as floats
        positions = index.tolist()
        return BoxedMasks(
            boxes=self.boxes[index.to(self.boxes.device)].reshape(-1, 4),
            crops=tuple(self.crops[i] for i in positions),
            height=self.height,
            width=self.width,
        )

    def touches_edge(self, threshold: float = 0.5) -> torch.Tensor:
        """(N,) True where a mask above ``threshold`` reaches the chip's outermost row or column.

        Only masks whose box reaches an edge are read (most boxes lie inside the chip), and
        their edge rows and columns are compared at once (one copy from a GPU).
        """
        boxes = self.boxes.cpu().numpy()
        x0s, y0s, x1s, y1s = boxes.T
        reaching = ((x0s < x1s) & (y0s < y1s)) & (
            (y0s == 0) | (y1s == self.height) | (x0s == 0) | (x1s == self.width)
        )
        pieces, owners = [], []
        for i in np.flatnonzero(reaching).tolist():
            x0, y0, x1, y1 = boxes[i].tolist()
            crop = self.crops[i]
            edges = (
                (y0 == 0, crop[0]),
                (y1 == self.height, crop[-1]),
                (x0 == 0, crop[:, 0]),
                (x1 == self.width, crop[:, -1]),
            )
            for at_edge, values in edges:
                if at_edge:
                    pieces.append(values.reshape(-1))
                    owners.append(np.full(values.numel(), i))
        out = np.zeros(len(self), dtype=bool)
        if pieces:
            hit = (torch.cat(pieces) > threshold).cpu().numpy()
            out[np.concatenate(owners)[hit]] = True
        return torch.from_numpy(out).to(self.boxes.device)

    @classmethod
    def from_crops(
        cls,
        boxes: Sequence[tuple[int, int, int, int]],
        crops: Sequence[torch.Tensor],
        height: int,
        width: int,
        device: torch.device | str = "cpu",
    ) -> BoxedMasks:
        """Masks from plain ``(x0, y0, x1, y1)`` boxes and their crops (boxes on ``device``)."""
        box_tensor = torch.tensor(list(boxes), dtype=torch.int64, device=device).reshape(-1, 4)
        return cls(box_tensor, tuple(crops), height, width)

    @classmethod
    def from_dense(cls, masks: torch.Tensor) -> BoxedMasks:
        """The boxed form of a (N, H, W) stack: each box the bounds of its nonzero pixels."""
        _, height, width = masks.shape
        rows = (masks != 0).any(dim=2)
        cols = (masks != 0).any(dim=1)
        boxes, crops = [], []
        for i in range(masks.shape[0]):
            ys, xs = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
            if len(ys) == 0:
                boxes.append((0, 0, 0, 0))
                crops.append(masks.new_zeros((0, 0)))
                continue
            x0, y0, x1, y1 = int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1
            boxes.append((x0, y0, x1, y1))
            crops.append(masks[i, y0:y1, x0:x1].clone())  # not views that keep the stack
        return cls.from_crops(boxes, crops, height, width, masks.device)

    @classmethod
    def from_labels(
        cls, labels: np.ndarray, count: int, values: torch.Tensor | None = None
    ) -> BoxedMasks:
        """One mask per label 1..``count`` of a (H, W) label image (0: none).

        Mask k is ``values`` on the pixels labelled k and 0 elsewhere (1 without ``values``),
        cropped to the bounds of those pixels. A label with no pixel gives an empty mask. The
        masks are made on the CPU, where the stitcher reads them, whatever the device of
        ``values``.
        """
        from scipy import ndimage as ndi

        labels = np.asarray(labels)
        height, width = labels.shape
        source = values.detach().float().cpu().numpy() if values is not None else None
        boxes, crops = [], []
        slices = ndi.find_objects(labels, max_label=count) if count else []
        for k, found in enumerate(slices, start=1):
            if found is None:
                boxes.append((0, 0, 0, 0))
                crops.append(np.zeros((0, 0), np.float32))
                continue
            ys, xs = found
            inside = labels[ys, xs] == k
            crop = inside if source is None else np.where(inside, source[ys, xs], 0)
            boxes.append((xs.start, ys.start, xs.stop, ys.stop))
            crops.append(crop.astype(np.float32, copy=False))
        return cls.from_crops(boxes, [torch.from_numpy(c) for c in crops], height, width)
