"""The blended probability maps of ``fieldseg predict --write-rasters DIR``, as GeoTIFFs.

For models with per-pixel outputs, prediction blends the chips' extent and boundary maps
(:mod:`fieldseg.dense_stitching`) and extracts fields on the blend. This module writes that
blend as it streams, so that a user can see in QGIS what the fields were extracted from:
``DIR/extent.tif`` and ``DIR/boundary.tif``, one band each, on the predicted area's grid.

Choices, and why:

* **float32 probabilities in [0, 1]**, not bytes scaled to 0-255: QGIS's identify tool, its
  raster calculator and its colour ramps then show the probability itself, and the model's
  thresholds (stored as tags, e.g. ``extent_threshold``) apply as they are. A scale factor in
  the metadata would have to be noticed and applied by hand in most tools. The price is size:
  about four times a byte map before compression.
* **NaN nodata** (declared in the file) where no chip saw a valid pixel: scene nodata, padding,
  pixels outside ``--extent``. GDAL and QGIS treat NaN as nodata even where the declaration is
  lost, and no computation can mistake it for a probability.
* **Tiled (256 px), deflate with the floating-point predictor, internal overviews** (averages,
  halving until the map fits in one tile), so a whole scene opens and pans quickly. Values keep
  11 significant bits (GDAL's ``DISCARD_LSB``: within 0.00025 of the blend, 16 times finer than
  a 0-255 step; 0 and 1 stay exact), which makes noisy maps compress to about half.

Memory stays bounded: rows arrive from the blender once final and are buffered only until a row
of tiles is complete, which is then written in one windowed write (each tile is compressed once).
The buffer holds one tile height times the area width per map. Both files are written under
temporary names and renamed into place only when complete (:mod:`fieldseg.atomic_output`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.windows import Window

from fieldseg.atomic_output import (
    OutputPathError,
    atomic_file,
    check_output_path,
    finish_then_exit,
)

#: The maps written, in order: file ``DIR/<name>.tif`` with one band.
MAP_NAMES = ("extent", "boundary")
#: Each map's band description (what QGIS shows as the band name).
BAND_DESCRIPTIONS = {
    "extent": "extent probability: P(interior) + P(boundary), blended across chips",
    "boundary": "boundary probability: P(boundary), blended across chips",
}
#: GeoTIFF tile side in pixels; also the number of rows buffered before a write.
TILE = 256
#: float32 mantissa bits cleared (rounded) before compression: 23 - 13 = 10 bits are kept.
DISCARD_MANTISSA_BITS = 13


def raster_paths(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """The file of each map in ``directory``: ``{"extent": DIR/extent.tif, ...}``."""
    return {name: Path(directory) / f"{name}.tif" for name in MAP_NAMES}


def check_raster_outputs(
    directory: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: tuple[str | os.PathLike[str], ...] = (),
) -> dict[str, Path]:
    """Check, before any work, that the maps may be written into ``directory``.

    The directory is created when missing; other files in it are left alone. Only the map
    files themselves are refused when they exist and ``overwrite`` is not set.

    Raises:
        OutputPathError: ``directory`` is a file, or a map would replace an input.
        OutputExistsError: a map file exists and ``overwrite`` is not set.
    """
    folder = Path(directory)
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"--write-rasters {folder} is a file; it names a folder of maps")
    paths = raster_paths(folder)
    for path in paths.values():
        check_output_path(path, overwrite=overwrite, inputs=inputs)
    return paths


def overview_factors(height: int, width: int) -> list[int]:
    """Overview levels (2, 4, ...) halving the map until it fits in one tile."""
    factors = []
    factor = 2
    while math.ceil(max(height, width) / (factor // 2)) > TILE:
        factors.append(factor)
        factor *= 2
    return factors


class ProbabilityRasterWriter:
    """Write blended probability rows into ``DIR/extent.tif`` and ``DIR/boundary.tif``.

    Use as a context manager; pass :meth:`write_rows` to
    :class:`~fieldseg.dense_stitching.DenseBlender` as its ``row_sink``. Rows must arrive in
    order, each once, until all ``height`` rows are written; on a clean exit the files are
    completed (overviews) and take their final names, on an error nothing is left behind.

    Args:
        directory: the folder of the maps (created when missing).
        crs, transform: the predicted area's grid (the scene's, or its window's).
        height, width: the predicted area in pixels.
        overwrite: replace existing map files.
        tags: extra dataset metadata written to every map (e.g. the model, its thresholds).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        crs: CRS,
        transform: Affine,
        height: int,
        width: int,
        overwrite: bool = False,
        tags: Mapping[str, object] | None = None,
    ) -> None:
        self.paths = raster_paths(directory)
        self.crs, self.transform = crs, transform
        self.height, self.width = height, width
        self.overwrite = overwrite
        self.tags = {key: str(value) for key, value in (tags or {}).items()}
        self.rows_written = 0  # rows handed to GDAL
        self._stack: contextlib.ExitStack | None = None
        self._datasets: dict[str, rasterio.io.DatasetWriter] = {}
        self._buffer = {name: np.empty((0, width), np.float32) for name in MAP_NAMES}
        self._buffer_row = 0  # area row of the buffer's first row

    def __enter__(self) -> ProbabilityRasterWriter:
        stack = contextlib.ExitStack()
        try:
            for name, path in self.paths.items():
                tmp = stack.enter_context(atomic_file(path, overwrite=self.overwrite))
                dataset = stack.enter_context(rasterio.open(tmp, "w", **self._profile()))
                dataset.set_band_description(1, BAND_DESCRIPTIONS[name])
                dataset.update_tags(fieldseg_map=name, units="probability", **self.tags)
                self._datasets[name] = dataset
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def write_rows(
        self, row: int, extent: np.ndarray, boundary: np.ndarray, valid: np.ndarray
    ) -> None:
        """Take the final rows from area row ``row`` on: (rows, width) maps and validity."""
        expected = self._buffer_row + len(self._buffer["extent"])
        if row != expected:
            raise ValueError(f"rows must arrive in order: got row {row}, expected {expected}")
        nan = np.float32(np.nan)
        for name, values in (("extent", extent), ("boundary", boundary)):
            finished = np.where(valid, values, nan).astype(np.float32, copy=False)
            self._buffer[name] = np.concatenate([self._buffer[name], finished])
        self._flush(complete_tiles_only=True)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        return finish_then_exit(self._stack, self._finish, kind, error, traceback)

    # ---------------------------------------------------------------------------------------

    def _profile(self) -> dict[str, object]:
        return {
            "driver": "GTiff",
            "dtype": "float32",
            "count": 1,
            "width": self.width,
            "height": self.height,
            "crs": self.crs,
            "transform": self.transform,
            "nodata": float("nan"),
            "tiled": True,
            "blockxsize": TILE,
            "blockysize": TILE,
            "compress": "deflate",
            "predictor": 3,  # floating-point predictor: smooth probabilities compress better
            "DISCARD_LSB": DISCARD_MANTISSA_BITS,
            "BIGTIFF": "IF_SAFER",
        }

    def _flush(self, *, complete_tiles_only: bool) -> None:
        """Write the buffered rows that fill whole rows of tiles (all of them at the end)."""
        buffered = len(self._buffer["extent"])
        count = buffered // TILE * TILE if complete_tiles_only else buffered
        if count == 0:
            return
        window = Window(0, self._buffer_row, self.width, count)
        for name, dataset in self._datasets.items():
            dataset.write(self._buffer[name][:count], 1, window=window)
            self._buffer[name] = self._buffer[name][count:]
        self._buffer_row += count
        self.rows_written = self._buffer_row

    def _finish(self) -> None:
        self._flush(complete_tiles_only=False)
        if self.rows_written != self.height:
            raise RuntimeError(
                f"probability maps got {self.rows_written} of {self.height} rows"
            )  # a bug: the blender hands every row over once
        factors = overview_factors(self.height, self.width)
        for dataset in self._datasets.values():
            if factors:
                dataset.build_overviews(factors, Resampling.average)
                dataset.update_tags(ns="rio_overview", resampling="average")
