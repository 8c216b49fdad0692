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
from rasterio.errors import RasterioIOError
from rasterio.transform import array_bounds
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from fieldseg.atomic_output import OutputPathError
from fieldseg.coco_format import encode_label_image, encode_rle
from fieldseg.errors import first_line
from fieldseg.raster_io import chip_valid_mask, open_raster, read_window, write_geotiff
from fieldseg.rasterization import count_pixels, rasterize_labels_in_strips

#: The label grid of a scene reaches this many pixels beyond the scene edge; fields reaching
#: further are counted one by one (see SceneLabels).
PIXEL_COUNT_MARGIN = 8

#: Outcome of a candidate chip that was not written.
SKIPPED_NODATA = "nodata"
SKIPPED_NO_DRAWN_FIELD = "no drawn field"


class SceneLabels:
    """A scene's fields rasterised once onto its pixel grid, kept in files beside the output.

    Pixel ``(row, col)`` of the scene holds ``i + 1`` for field row ``i`` (0: no field). The
    grid reaches :data:`PIXEL_COUNT_MARGIN` pixels beyond the scene (and over the padding of a
    scene smaller than a chip). ``field_pixels`` counts each field's pixels on the whole,
    unbounded grid, so a piece cut by the scene edge is known to be a piece and its share of the
    field is exact. Rasterising once, instead of once per chip, burns each field once however
    many chips see it. The label raster (``.labels-SCENE.npy``, int32) and the per-field table
    (``.fields-SCENE.npz``) are how worker processes share the work without copying it.
    """

    def __init__(
        self,
        geometries: np.ndarray,
        *,
        field_ids: np.ndarray,
        category_ids: np.ndarray,
        splits: np.ndarray | None,
        transform: Affine,
        width: int,
        height: int,
        chip_size: int,
        workdir: Path,
        scene_id: str,
    ) -> None:
        margin = PIXEL_COUNT_MARGIN
        shape = (max(height, chip_size) + 2 * margin, max(width, chip_size) + 2 * margin)
        self.labels_path = workdir / f".labels-{scene_id}.npy"
        self.fields_path = workdir / f".fields-{scene_id}.npz"
        labels = np.lib.format.open_memmap(self.labels_path, mode="w+", dtype=np.int32, shape=shape)
        origin = window_transform(Window(-margin, -margin, 1, 1), transform)
        field_pixels = rasterize_labels_in_strips(geometries, transform=origin, out=labels)
        labels.flush()
        del labels
        # fields reaching past the margin: count their whole extent, beyond the label grid
        grid_box = shapely.box(*array_bounds(*shape, origin))
        for index in np.flatnonzero(~shapely.within(geometries, grid_box)):
            field_pixels[index] = count_pixels(geometries[index], transform)
        split_names = np.array(SPLIT_CODES)
        split_codes = (
            np.full(len(field_ids), -1, dtype=np.int8)
            if splits is None
            else np.searchsorted(split_names, splits).astype(np.int8)
        )
        np.savez(
            self.fields_path,
            field_ids=np.asarray(field_ids, dtype=np.int64),
            category_ids=np.asarray(category_ids, dtype=np.int64),
            split_codes=split_codes,
            field_pixels=field_pixels,
        )
        self.field_pixels = field_pixels

    def close(self) -> None:
        """Delete the files."""
        for path in (self.labels_path, self.fields_path):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)


#: Split names in the order of their codes in the field table (sorted, for searchsorted).
SPLIT_CODES: tuple[str, ...] = ("test", "train", "val")


@dataclass(frozen=True)
class SceneJob:
    """Everything needed to cut chips of one scene: paths and settings, cheap to send."""

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
    fields_path: Path
    min_piece_pixels: int
    min_piece_share: float
    sparse: bool
    max_nodata: float
    compress: str
    out_dir: Path


@dataclass(frozen=True)
class _FieldTable:
    """Per-field arrays of a scene, indexed by field row (label value - 1)."""

    field_ids: np.ndarray
    category_ids: np.ndarray
    split_codes: np.ndarray
    field_pixels: np.ndarray

    def split(self, index: int) -> str | None:
        code = int(self.split_codes[index])
        return SPLIT_CODES[code] if code >= 0 else None


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


def chip_folder(scene_id: str) -> str:
    """Where a scene's chips go, relative to the dataset folder."""
    return f"chips/{scene_id}"


def cut_chips(job: SceneJob, windows: list[Window]) -> list[ChipRecord | str]:
    """Read, annotate and write the chips at ``windows``: a record, or why it was skipped."""
    with np.load(job.fields_path) as table:
        fields = _FieldTable(**{name: table[name] for name in table.files})
    labels = np.load(job.labels_path, mmap_mode="r")
    try:
        with open_raster(job.path) as src:
            return [_cut_chip(job, fields, src, labels, window) for window in windows]
    finally:
        del labels  # release the map: the file is deleted when the scene is done


def _cut_chip(
    job: SceneJob, fields: _FieldTable, src: Any, labels: np.ndarray, window: Window
) -> ChipRecord | str:
    data = read_window(src, window, fill_value=job.nodata)
    valid_window = window.intersection(Window(0, 0, job.width, job.height))
    valid = chip_valid_mask(data, job.nodata, int(valid_window.height), int(valid_window.width))
    nodata_fraction = 1.0 - float(valid.mean())
    if nodata_fraction > job.max_nodata:
        return SKIPPED_NODATA
    top = int(window.row_off) + PIXEL_COUNT_MARGIN
    left = int(window.col_off) + PIXEL_COUNT_MARGIN
    label = np.array(labels[top : top + int(window.height), left : left + int(window.width)])
    pieces, ignore = annotate(job, fields, label, valid)
    kept = [p for p in pieces if not p["sliver"]]
    if job.sparse and not kept:
        return SKIPPED_NO_DRAWN_FIELD
    name = f"{job.scene_id}_r{int(window.row_off):05d}_c{int(window.col_off):05d}.tif"
    file_name = f"{chip_folder(job.scene_id)}/{name}"
    try:  # into the scene's chip folder, made before the work began (never made here: a
        # worker left running after an interrupt must not make the removed dataset again)
        write_geotiff(
            job.out_dir / file_name,
            data,
            transform=window_transform(window, job.transform),
            crs=job.crs,
            nodata=job.nodata,
            band_names=job.band_names,
            compress=job.compress,
        )
    except (OSError, RasterioIOError) as exc:  # a full disk, above all
        raise OutputPathError(f"cannot write chip {file_name}: {first_line(exc)}") from exc
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
    job: SceneJob, fields: _FieldTable, label: np.ndarray, valid: np.ndarray
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
    totals = fields.field_pixels[indices]
    truncated = pixels < totals
    slivers = truncated & (
        (pixels < job.min_piece_pixels) | (pixels < job.min_piece_share * totals)
    )
    if slivers.any():
        ignore |= np.isin(label, values[slivers])
    boxes = mask_utils.toBbox(rles).tolist()
    pieces = [
        {
            "field_id": int(fields.field_ids[index]),
            "category_id": int(fields.category_ids[index]),
            "segmentation": rle,
            "area": int(area),
            "bbox": box,
            "truncated": bool(cut),
            "split": fields.split(index),
            "sliver": bool(sliver),
        }
        for index, rle, area, box, cut, sliver in zip(
            indices.tolist(), rles, pixels, boxes, truncated, slivers, strict=True
        )
    ]
    return pieces, (encode_rle(ignore) if ignore.any() else None)
