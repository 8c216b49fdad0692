"""Raster input and output: opening scenes with clear errors, windowed reads, GeoTIFF writing.

All of fieldseg reads rasters through :func:`open_raster` so that a missing, corrupt or
non-georeferenced file is reported the same way everywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from fieldseg.errors import ConfigError, CRSError, InputFileError, first_line

#: GeoTIFF creation options for chips and scenes: internally tiled and compressed.
GEOTIFF_PROFILE: dict[str, Any] = {
    "driver": "GTiff",
    "tiled": True,
    "blockxsize": 256,
    "blockysize": 256,
    "compress": "deflate",
    "interleave": "pixel",
}


@dataclass(frozen=True)
class RasterInfo:
    """What fieldseg needs to know about a scene before reading its pixels."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS
    transform: Affine
    nodata: float | None
    band_names: tuple[str, ...]

    @property
    def pixel_size(self) -> tuple[float, float]:
        """Pixel width and height in CRS units (both positive)."""
        return abs(self.transform.a), abs(self.transform.e)


#: Bounds (bytes) of GDAL's block cache while a scene is read strip by strip. GDAL's default is
#: 5 % of the machine's memory, which one pass over a whole Sentinel-2 tile fills (6 GB on a
#: 128 GB machine) with blocks that are never read again.
STRIP_CACHE_BOUNDS = (32 << 20, 512 << 20)


def strip_block_cache(path: str | os.PathLike[str], rows: int) -> contextlib.AbstractContextManager:
    """Cap GDAL's block cache at what reading ``rows``-row strips of the raster needs.

    A strip and the next one share blocks; the cap holds two strips' worth of blocks (the
    rows plus a block row, taken as at least 512 px tall, since a VRT's sources may have
    taller blocks than the VRT), within :data:`STRIP_CACHE_BOUNDS`: about 135 MB for a 4-band
    uint16 Sentinel-2 tile. GDAL's cache is process-wide: the cap holds for every reader in
    the process while the context is open. Enter it before opening the raster: rasterio
    puts the previous size back on exit only then. A ``GDAL_CACHEMAX`` the user set
    (environment or ``rasterio.Env``) is left alone.

    Raises:
        InputFileError: the raster cannot be opened.
    """
    user_env = rasterio.env.getenv() if rasterio.env.hasenv() else {}
    if "GDAL_CACHEMAX" in os.environ or "GDAL_CACHEMAX" in user_env:
        return contextlib.nullcontext()
    with open_raster(path) as src:
        block_rows = max(512, *(height for height, _ in src.block_shapes))
        itemsize = max(np.dtype(dtype).itemsize for dtype in src.dtypes)
        need = 2 * (rows + block_rows) * src.width * src.count * itemsize
    low, high = STRIP_CACHE_BOUNDS
    return rasterio.Env(GDAL_CACHEMAX=int(min(max(need, low), high)))  # bytes


def default_band_names(count: int) -> tuple[str, ...]:
    """Names used for bands that carry no description: ``band_1``, ``band_2``, ..."""
    return tuple(f"band_{i}" for i in range(1, count + 1))


@contextlib.contextmanager
def open_raster(path: str | os.PathLike[str]) -> Iterator[rasterio.io.DatasetReader]:
    """Open a raster for reading, turning GDAL's failures into one clear :class:`InputFileError`."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"raster not found: {path}")
    if path.is_dir():
        raise InputFileError(f"expected a raster file, got a directory: {path}")
    try:
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputFileError(f"cannot read raster {path}: {first_line(exc)}") from exc
    try:
        yield src
    finally:
        src.close()


def raster_info(src: rasterio.io.DatasetReader, *, require_crs: bool = True) -> RasterInfo:
    """Describe an open raster, checking that it is usable as a scene.

    Raises:
        CRSError: the raster has no CRS (and ``require_crs``).
        InputFileError: bands of different data types or nodata values.
    """
    path = Path(src.name)
    if require_crs and src.crs is None:
        raise CRSError(
            f"raster {path} has no CRS; assign one first (e.g. gdal_edit.py -a_srs EPSG:32633)"
        )
    if len(set(src.dtypes)) > 1:
        raise InputFileError(f"raster {path} mixes band data types {sorted(set(src.dtypes))}")
    if not all(same_nodata(v, src.nodatavals[0]) for v in src.nodatavals):
        raise InputFileError(
            f"raster {path} has different nodata values per band: {src.nodatavals}"
        )
    missing = [f for f in src.files if not f.startswith("/vsi") and not Path(f).exists()]
    if missing:
        raise InputFileError(f"raster {path} refers to a file that does not exist: {missing[0]}")
    names = tuple(
        desc if desc else default
        for desc, default in zip(src.descriptions, default_band_names(src.count), strict=True)
    )
    return RasterInfo(
        path=path,
        width=src.width,
        height=src.height,
        count=src.count,
        dtype=src.dtypes[0],
        crs=src.crs,
        transform=src.transform,
        nodata=src.nodata,
        band_names=names,
    )


def read_raster_info(path: str | os.PathLike[str], *, require_crs: bool = True) -> RasterInfo:
    """Open ``path`` just long enough to describe it (see :func:`raster_info`)."""
    with open_raster(path) as src:
        return raster_info(src, require_crs=require_crs)


def read_window(
    src: rasterio.io.DatasetReader, window: Window, *, fill_value: float | None
) -> np.ndarray:
    """Read all bands of ``window``, padding any part outside the raster with ``fill_value``.

    Raises:
        InputFileError: the file is truncated or corrupt where the window lies.
    """
    inside = (
        window.col_off >= 0
        and window.row_off >= 0
        and window.col_off + window.width <= src.width
        and window.row_off + window.height <= src.height
    )
    try:
        if inside:
            return src.read(window=window)
        return src.read(window=window, boundless=True, fill_value=fill_value or 0)
    except RasterioIOError as exc:
        raise InputFileError(f"cannot read {src.name} at {window}: {first_line(exc)}") from exc


def nodata_mask(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """Return a 2-D boolean mask that is True where a pixel is nodata.

    The rule, used everywhere: a pixel is nodata when ANY band equals the nodata value (or is
    NaN for float data), since a model cannot use a pixel with a missing band or date.
    """
    invalid = np.zeros(data.shape[-2:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        invalid |= np.isnan(data).any(axis=0)
    if nodata is not None and not np.isnan(nodata):
        invalid |= (data == np.asarray(nodata).astype(data.dtype)).any(axis=0)
    return invalid


def chip_valid_mask(
    data: np.ndarray, nodata: float | None, inside_rows: int, inside_cols: int
) -> np.ndarray:
    """True where a chip pixel is data: not nodata, and not padding beyond the scene.

    A chip of a scene smaller than a chip holds the scene in its first ``inside_rows`` rows
    and ``inside_cols`` columns (its window's width and height); the rest is padding.
    """
    valid = ~nodata_mask(data, nodata)
    valid[inside_rows:, :] = False
    valid[:, inside_cols:] = False
    return valid


def write_geotiff(
    path: str | os.PathLike[str],
    data: np.ndarray,
    *,
    transform: Affine,
    crs: CRS | None,
    nodata: float | None = None,
    band_names: Sequence[str] | None = None,
    compress: str = "deflate",
    tiled: bool = True,
) -> None:
    """Write a (bands, rows, cols) array as a georeferenced, compressed GeoTIFF."""
    if data.ndim == 2:
        data = data[np.newaxis]
    count, height, width = data.shape
    profile = dict(GEOTIFF_PROFILE)
    profile.update(
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
        compress=compress,
    )
    if compress.lower() in ("none", ""):
        profile.pop("compress")
    if not tiled or width < 16 or height < 16:
        profile.update(tiled=False)
        profile.pop("blockxsize")
        profile.pop("blockysize")
    else:
        profile.update(blockxsize=_block(width), blockysize=_block(height))
    if compress.lower() in ("deflate", "zstd", "lzw"):
        profile["predictor"] = 2 if np.issubdtype(data.dtype, np.integer) else 3
    if compress.lower() == "zstd":
        profile["zstd_level"] = 1  # fast; higher levels gain little on noisy reflectances
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if band_names is not None:
            for index, name in enumerate(band_names, start=1):
                dst.set_band_description(index, name)


def crs_to_json(crs: CRS) -> dict[str, Any]:
    """CRS encoding of docs/formats.md: WKT always, plus the EPSG code when there is one."""
    return {"wkt": crs.to_wkt(version="WKT2_2019"), "epsg": crs.to_epsg()}


def crs_from_json(value: dict[str, Any]) -> CRS:
    """Inverse of :func:`crs_to_json`; the WKT is authoritative."""
    return CRS.from_wkt(value["wkt"])


def transform_to_json(transform: Affine) -> list[float]:
    """Affine coefficients (a, b, c, d, e, f) as rasterio orders them."""
    return [float(v) for v in transform[:6]]


def transform_from_json(values: Sequence[float]) -> Affine:
    """Inverse of :func:`transform_to_json`."""
    return Affine(*values[:6])


def _block(size: int) -> int:
    """Largest GeoTIFF block (multiple of 16, at most 256) that fits ``size``."""
    return max(16, min(256, size // 16 * 16))


def same_nodata(a: float | None, b: float | None) -> bool:
    """Whether two nodata values mean the same (None only equals None; NaN equals NaN)."""
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b or (np.isnan(a) and np.isnan(b)))


def check_nodata_value(value: float | None, dtype: str, where: str) -> None:
    """Refuse a nodata value that the pixels of ``dtype`` cannot hold.

    Raises:
        ConfigError: a fractional, NaN or out-of-range value for integer pixels.
    """
    if value is None or not np.issubdtype(np.dtype(dtype), np.integer):
        return
    limits = np.iinfo(np.dtype(dtype))
    if np.isnan(value) or not float(value).is_integer() or not limits.min <= value <= limits.max:
        raise ConfigError(
            f"nodata {value} ({where}) cannot be a {dtype} pixel value "
            f"(whole numbers {limits.min} to {limits.max})"
        )
