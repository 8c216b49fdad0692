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

import numba
import numpy as np
import torch


class BoxedMasks:
    """N soft masks of an H x W chip, each stored as the crop of its box.

    The crops are kept either as given (one tensor each) or laid end to end in one flat
    tensor (:meth:`from_flat`, :meth:`from_labels`): the stitcher reads the flat form, so a
    chip of hundreds of masks costs no step per mask, and the crops are views into it, made
    when first asked for.

    Attributes:
        boxes: (N, 4) int64 ``(x0, y0, x1, y1)``, half-open, in chip pixels; the mask is zero
            outside ``rows y0:y1, columns x0:x1``. An empty box (x0 == x1 or y0 == y1) is an
            empty mask.
        crops: N float tensors, the i-th of shape ``(y1 - y0, x1 - x0)`` of box i.
        height: the chip's height H.
        width: the chip's width W.
    """

    def __init__(
        self, boxes: torch.Tensor, crops: Sequence[torch.Tensor], height: int, width: int
    ) -> None:
        self.boxes, self.height, self.width = boxes, int(height), int(width)
        self._crops: tuple[torch.Tensor, ...] | None = tuple(crops)
        self._values: torch.Tensor | None = None
        sizes = self._check_boxes()
        if len(self._crops) != len(sizes):
            raise ValueError(f"{len(sizes)} boxes but {len(self._crops)} crops")
        heights, widths = self._box_shapes()
        for i, crop in enumerate(self._crops):
            if tuple(crop.shape) != (int(heights[i]), int(widths[i])):
                raise ValueError(
                    f"crop {i} is {tuple(crop.shape)} but its box is "
                    f"{int(heights[i])} x {int(widths[i])}"
                )

    @classmethod
    def from_flat(
        cls, boxes: torch.Tensor, values: torch.Tensor, height: int, width: int
    ) -> BoxedMasks:
        """Masks whose crops lie end to end, row by row, in the 1-D tensor ``values``."""
        masks = cls.__new__(cls)
        masks.boxes, masks.height, masks.width = boxes, int(height), int(width)
        masks._crops, masks._values = None, values.reshape(-1)
        sizes = masks._check_boxes()
        if int(sizes.sum()) != masks._values.numel():
            raise ValueError(f"{masks._values.numel()} values for boxes of {int(sizes.sum())}")
        return masks

    def _box_shapes(self) -> tuple[np.ndarray, np.ndarray]:
        x0, y0, x1, y1 = self.boxes.cpu().numpy().reshape(-1, 4).T
        return y1 - y0, x1 - x0

    def _check_boxes(self) -> np.ndarray:
        """Each box's area, once the boxes are known to be (N, 4) and inside the chip."""
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must be (N, 4), got {tuple(self.boxes.shape)}")
        x0, y0, x1, y1 = self.boxes.cpu().numpy().T
        if len(x0) and not (
            (x0 >= 0).all() and (y0 >= 0).all() and (x1 <= self.width).all()
            and (y1 <= self.height).all() and (x0 <= x1).all() and (y0 <= y1).all()
        ):  # fmt: skip
            raise ValueError(f"boxes must lie inside the {self.height} x {self.width} chip")
        return (y1 - y0).astype(np.int64) * (x1 - x0)

    @property
    def crops(self) -> tuple[torch.Tensor, ...]:
        """The masks' crops, one tensor each (views into the flat values where kept so)."""
        if self._crops is None:
            heights, widths = self._box_shapes()
            sizes = (heights * widths).tolist()
            pieces = torch.split(self._values, sizes) if sizes else ()
            self._crops = tuple(
                piece.view(int(h), int(w))
                for piece, h, w in zip(pieces, heights.tolist(), widths.tolist(), strict=True)
            )
        return self._crops

    @property
    def values(self) -> torch.Tensor:
        """Every crop's values end to end, row by row (1-D; made once from the crops)."""
        if self._values is None:
            crops = self._crops or ()
            self._values = (
                torch.cat([c.detach().reshape(-1) for c in crops])
                if crops
                else torch.zeros(0, device=self.boxes.device)
            )
        return self._values

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

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
        boxes = self.boxes[index.to(self.boxes.device)].reshape(-1, 4)
        if self._crops is None:  # gather the kept crops' values, end to end
            starts, sizes = self.offsets()
            chosen = index.numpy()
            kept = sizes[chosen]
            gather = np.repeat(starts[chosen] - (np.cumsum(kept) - kept), kept)
            gather += np.arange(len(gather))
            values = self._values[torch.from_numpy(gather).to(self._values.device)]
            return BoxedMasks.from_flat(boxes, values, self.height, self.width)
        positions = index.tolist()
        return BoxedMasks(
            boxes=boxes,
            crops=tuple(self.crops[i] for i in positions),
            height=self.height,
            width=self.width,
        )

    def offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each crop starts in the flat values, and its size."""
        heights, widths = self._box_shapes()
        sizes = (heights * widths).astype(np.int64)
        return np.cumsum(sizes) - sizes, sizes

    def _crop(self, i: int) -> torch.Tensor:
        """Crop ``i`` alone (a view into the flat values; the crops are not all made)."""
        if self._crops is not None:
            return self._crops[i]
        x0, y0, x1, y1 = self.boxes[i].tolist()
        start = int(self.offsets()[0][i])
        size = (y1 - y0) * (x1 - x0)
        return self._values[start : start + size].view(y1 - y0, x1 - x0)

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
            crop = self._crop(i)
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
        """The boxed form of a (N, H, W) stack: each box the bounds of its nonzero pixels.

        The crops are gathered at once into the flat form, on the stack's device.
        """
        _, height, width = masks.shape
        nonzero = masks != 0
        rows = nonzero.any(dim=2).cpu().numpy()
        cols = nonzero.any(dim=1).cpu().numpy()
        boxes = _nonzero_boxes(rows, cols)
        where = torch.from_numpy(_box_pixels(boxes, height, width)).to(masks.device)
        values = masks.reshape(-1)[where]
        return cls.from_flat(torch.from_numpy(boxes).to(masks.device), values, height, width)

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
        labels = np.ascontiguousarray(labels)
        height, width = labels.shape
        source = (
            values.detach().float().cpu().numpy()
            if values is not None
            else np.ones((height, width), np.float32)
        )
        labels = labels.astype(np.int64, copy=False)
        boxes = _label_boxes(labels, int(count))
        flat = _crop_values(labels, np.ascontiguousarray(source), boxes)
        return cls.from_flat(torch.from_numpy(boxes), torch.from_numpy(flat), height, width)


@numba.njit(cache=True, nogil=True)
def _label_boxes(labels: np.ndarray, count: int) -> np.ndarray:
    """(count, 4) ``x0, y0, x1, y1`` of the pixels of labels 1..count (zeros: no pixel)."""
    boxes = np.zeros((count, 4), np.int64)
    seen = np.zeros(count, np.bool_)
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x] - 1
            if k < 0 or k >= count:
                continue
            if not seen[k]:
                seen[k] = True
                boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3] = x, y, x + 1, y + 1
            else:
                boxes[k, 0] = min(boxes[k, 0], x)
                boxes[k, 2] = max(boxes[k, 2], x + 1)
                boxes[k, 3] = y + 1  # rows come in order
    return boxes


@numba.njit(cache=True, nogil=True)
def _crop_values(labels: np.ndarray, source: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Each label's crop of ``source`` (zero off the label), end to end, row by row."""
    count = boxes.shape[0]
    start = np.zeros(count + 1, np.int64)
    for k in range(count):
        start[k + 1] = start[k] + (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])
    flat = np.zeros(start[count], np.float32)
    for y in range(labels.shape[0]):
        for x in range(labels.shape[1]):
            k = labels[y, x] - 1
            if k < 0 or k >= count:
                continue
            crop_width = boxes[k, 2] - boxes[k, 0]
            flat[start[k] + (y - boxes[k, 1]) * crop_width + x - boxes[k, 0]] = source[y, x]
    return flat


@numba.njit(cache=True, nogil=True)
def _nonzero_boxes(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 4) ``x0, y0, x1, y1`` bounding the True ``rows`` (N, H) and ``cols`` (N, W)."""
    boxes = np.zeros((rows.shape[0], 4), np.int64)
    for i in range(rows.shape[0]):
        ys, xs = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
        if len(ys) and len(xs):
            boxes[i, 0], boxes[i, 1] = xs[0], ys[0]
            boxes[i, 2], boxes[i, 3] = xs[-1] + 1, ys[-1] + 1
    return boxes


@numba.njit(cache=True, nogil=True)
def _box_pixels(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Where each box's pixels lie in a flattened (N, H, W) stack, box by box, row by row."""
    total = 0
    for i in range(boxes.shape[0]):
        total += (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
    out = np.empty(total, np.int64)
    at = 0
    for i in range(boxes.shape[0]):
        for y in range(boxes[i, 1], boxes[i, 3]):
            for x in range(boxes[i, 0], boxes[i, 2]):
                out[at] = (i * height + y) * width + x
                at += 1
    return out
