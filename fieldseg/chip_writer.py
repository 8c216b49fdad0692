"""Cut, annotate and write the chips of one scene: the per-chip work of ``fieldseg tile``.

The scene's fields are rasterised once (:class:`SceneLabels`) into a file beside the output, so
that chips can then be cut independently, in this process or in worker processes: a
:class:`SceneJob` carries only paths and settings, and :func:`cut_chips` does the rest.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pycocotools import mask as mask_utils
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from fieldseg.coco_format import encode_label_image, encode_rle
from fieldseg.raster_io import nodata_mask, open_raster, read_window, write_geotiff
from fieldseg.rasterization import count_pixels, rasterize_labels_in_strips

#: The label grid of a scene reaches this many pixels beyond the scene edge; fields reaching
#: further are counted one by one (see SceneLabels).
PIXEL_COUNT_MARGIN = 8

#: Outcome of a candidate chip that was not written.
SKIPPED_NODATA = "nodata"
SKIPPED_NO_DRAWN_FIELD = "no drawn field"


class SceneLabels:
    """A scene's fields rasterised once onto its pixel grid, kept in files on disk.

    Pixel ``(row, col)`` of the scene holds ``i + 1`` for field row ``i`` (0: no field). The
    grid reaches :data:`PIXEL_COUNT_MARGIN` pixels beyond the scene (and over the padding of a
    scene smaller than a chip). ``field_pixels`` counts each field's pixels on the whole,
    unbounded grid, so a piece cut by the scene edge is known to be a piece and its share of the
    field is exact. Rasterising once, instead of once per chip, burns each field once however
    many chips see it, and lets worker processes share the result through the file.
    """

    def __init__(
        self,
        geometries: np.ndarray,
        *,
        transform: Affine,
        width: int,
        height: int,
        chip_size: int,
        path: Path,
    ) -> None:
        margin = PIXEL_COUNT_MARGIN
        shape = (max(height, chip_size) + 2 * margin, max(width, chip_size) + 2 * margin)
        self.path = path
        labels = np.lib.format.open_memmap(path, mode="w+", dtype=np.int32, shape=shape)
        origin = window_transform(Window(-margin, -margin, 1, 1), transform)
        self.field_pixels = rasterize_labels_in_strips(geometries, transform=origin, out=labels)
        labels.flush()
        del labels
        # fields reaching past the margin: count their whole extent, beyond the label grid
        grid_box = shapely.box(*array_bounds(*shape, origin))
        for index in np.flatnonzero(~shapely.within(geometries, grid_box)):
            self.field_pixels[index] = count_pixels(geometries[index], transform)

    def close(self) -> None:
        """Delete the label file."""
        _forget_scene()
        with contextlib.suppress(OSError):
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class SceneJob:
    """Everything needed to cut chips of one scene, small enough to send to a worker.

    Per-field arrays are indexed by field row (label value - 1).
    """

    scene_index: int
    scene_id: str
    path: Path
    width: int
    height: int
    transform: Affine
    crs: CRS
    band_names: tuple[str, ...]
    nodata: float | None
    labels_path: Path
    field_ids: np.ndarray
    category_ids: np.ndarray
    splits: np.ndarray | None
    field_pixels: np.ndarray
    min_piece_pixels: int
    min_piece_share: float
    sparse: bool
    max_nodata: float
    compress: str
    out_dir: Path


@dataclass
class ChipRecord:
    """One written chip, before splits are decided."""

    scene: int
    window: Window
    valid_window: Window
    file_name: str
    nodata_fraction: float
    pieces: list[dict[str, Any]]  # annotations without ids, each with its field's split
    ignore: dict[str, Any] | None  # compressed RLE (pycocotools bytes form) or None
    slivers: int = 0
    split: str = "train"


def cut_chips(job: SceneJob, windows: list[Window]) -> list[ChipRecord | str]:
    """Read, annotate and write the chips at ``windows``: a record, or why it was skipped."""
    labels = _scene_labels(job.labels_path)
    out: list[ChipRecord | str] = []
    with open_raster(job.path) as src:
        for window in windows:
            out.append(_cut_chip(job, src, labels, window))
    return out


def _cut_chip(job: SceneJob, src: Any, labels: np.ndarray, window: Window) -> ChipRecord | str:
    data = read_window(src, window, fill_value=job.nodata)
    valid = ~nodata_mask(data, job.nodata)
    valid_window = window.intersection(Window(0, 0, job.width, job.height))
    valid[int(valid_window.height) :, :] = False  # padding beyond the scene is nodata
    valid[:, int(valid_window.width) :] = False
    nodata_fraction = 1.0 - float(valid.mean())
    if nodata_fraction > job.max_nodata:
        return SKIPPED_NODATA
    top = int(window.row_off) + PIXEL_COUNT_MARGIN
    left = int(window.col_off) + PIXEL_COUNT_MARGIN
    label = np.array(labels[top : top + int(window.height), left : left + int(window.width)])
    pieces, ignore = annotate(job, label, valid)
    kept = [p for p in pieces if not p["sliver"]]
    if job.sparse and not kept:
        return SKIPPED_NO_DRAWN_FIELD
    name = f"{job.scene_id}_r{int(window.row_off):05d}_c{int(window.col_off):05d}.tif"
    file_name = f"chips/{job.scene_id}/{name}"
    (job.out_dir / file_name).parent.mkdir(parents=True, exist_ok=True)
    write_geotiff(
        job.out_dir / file_name,
        data,
        transform=window_transform(window, job.transform),
        crs=job.crs,
        nodata=job.nodata,
        band_names=job.band_names,
        compress=job.compress,
    )
    return ChipRecord(
        scene=job.scene_index,
        window=window,
        valid_window=valid_window,
        file_name=file_name,
        nodata_fraction=nodata_fraction,
        pieces=kept,
        ignore=ignore,
        slivers=len(pieces) - len(kept),
    )


def annotate(
    job: SceneJob, label: np.ndarray, valid: np.ndarray
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Instance pieces of the fields in a chip's label image, and its ignore mask (RLE or None).

    A piece is truncated when the chip edge (or nodata) hides part of its field. A truncated
    piece below the sliver rule is marked ``sliver`` and its pixels join the ignore mask, so it
    is taught neither as a field nor as background. In sparse mode every valid pixel that is not
    a drawn field is ignored (nodata is told apart by the nodata rule, not listed here).
    """
    label[~valid] = 0
    ignore = (label == 0) & valid if job.sparse else np.zeros(label.shape, dtype=bool)
    values, rles, pixels = encode_label_image(label)
    if not rles:
        return [], (encode_rle(ignore) if ignore.any() else None)
    indices = values - 1
    totals = job.field_pixels[indices]
    truncated = pixels < totals
    slivers = truncated & (
        (pixels < job.min_piece_pixels) | (pixels < job.min_piece_share * totals)
    )
    if slivers.any():
        ignore |= np.isin(label, values[slivers])
    boxes = mask_utils.toBbox(rles).tolist()
    pieces = [
        {
            "field_id": int(job.field_ids[index]),
            "category_id": int(job.category_ids[index]),
            "segmentation": rle,
            "area": int(area),
            "bbox": box,
            "truncated": bool(cut),
            "split": job.splits[index] if job.splits is not None else None,
            "sliver": bool(sliver),
        }
        for index, rle, area, box, cut, sliver in zip(
            indices.tolist(), rles, pixels, boxes, truncated, slivers, strict=True
        )
    ]
    return pieces, (encode_rle(ignore) if ignore.any() else None)


_open_labels: dict[Path, np.ndarray] = {}


def _scene_labels(path: Path) -> np.ndarray:
    """The label file of the current scene, memory-mapped once per process."""
    if path not in _open_labels:
        _open_labels.clear()
        _open_labels[path] = np.load(path, mmap_mode="r")
    return _open_labels[path]


def _forget_scene() -> None:
    _open_labels.clear()
