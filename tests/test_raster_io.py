"""Raster I/O helpers: JSON encodings round-trip, scene description, nodata rule and checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from fieldseg.errors import ConfigError, CRSError
from fieldseg.raster_io import (
    STRIP_CACHE_BOUNDS,
    check_nodata_value,
    crs_from_json,
    crs_to_json,
    nodata_mask,
    read_raster_info,
    same_nodata,
    strip_block_cache,
    transform_from_json,
    transform_to_json,
    write_geotiff,
)


def test_crs_json_round_trip_keeps_epsg_and_wkt() -> None:
    utm = CRS.from_epsg(32633)
    encoded = crs_to_json(utm)
    assert encoded["epsg"] == 32633 and encoded["wkt"].startswith(("PROJCS", "PROJCRS"))
    assert crs_from_json(encoded) == utm
    custom = CRS.from_proj4("+proj=laea +lat_0=52 +lon_0=10 +x_0=4321000 +y_0=3210000")
    assert crs_to_json(custom)["epsg"] in (None, 3035)
    assert crs_from_json(crs_to_json(custom)) == custom


def test_transform_json_round_trip() -> None:
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0)
    assert transform_to_json(transform) == [10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0]
    assert transform_from_json(transform_to_json(transform)) == transform


def test_read_raster_info_describes_a_scene(tmp_path: Path) -> None:
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5800000.0)
    data = np.arange(2 * 20 * 30, dtype=np.int16).reshape(2, 20, 30)
    path = tmp_path / "s.tif"
    write_geotiff(path, data, transform=transform, crs=CRS.from_epsg(32633), nodata=-1,
                  band_names=["red", None])  # fmt: skip
    info = read_raster_info(path)
    assert (info.width, info.height, info.count, info.dtype) == (30, 20, 2, "int16")
    assert info.band_names == ("red", "band_2")
    assert info.nodata == -1 and info.pixel_size == (10.0, 10.0)
    assert info.transform == transform and info.crs == CRS.from_epsg(32633)


def test_read_raster_info_without_crs(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    transform = Affine(10, 0, 0, 0, -10, 0)
    write_geotiff(path, np.zeros((1, 20, 20), dtype=np.uint8), transform=transform, crs=None)
    with pytest.raises(CRSError, match="has no CRS"):
        read_raster_info(path)
    assert read_raster_info(path, require_crs=False).crs is None


def test_nodata_rule_any_band_and_nan() -> None:
    data = np.ones((2, 2, 2), dtype=np.float32)
    data[0, 0, 0] = -9  # one band missing is enough
    data[1, 1, 1] = np.nan
    assert nodata_mask(data, -9).tolist() == [[True, False], [False, True]]
    assert nodata_mask(data, None).tolist() == [[False, False], [False, True]]


def test_same_nodata_and_value_checks() -> None:
    assert same_nodata(None, None) and same_nodata(np.nan, np.nan) and same_nodata(0, 0.0)
    assert not same_nodata(None, 0) and not same_nodata(1, 2)
    check_nodata_value(65535, "uint16", "file")
    check_nodata_value(0.5, "float32", "file")
    for bad in (-1, 65536, 0.5, np.nan):
        with pytest.raises(ConfigError, match="cannot be a uint16 pixel value"):
            check_nodata_value(bad, "uint16", "--nodata")


def _gdal_cache_max() -> int | None:
    """GDAL's block cache size in bytes as GDAL itself reports it, where its library is found."""
    import ctypes
    import ctypes.util
    import glob

    found = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*"))
    path = found[0] if found else ctypes.util.find_library("gdal")
    if path is None:
        return None
    gdal = ctypes.CDLL(path)
    gdal.GDALGetCacheMax64.restype = ctypes.c_int64
    return int(gdal.GDALGetCacheMax64())


def test_strip_reads_cap_gdals_block_cache_unless_the_user_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    wide = tmp_path / "wide.tif"
    write_geotiff(wide, np.zeros((4, 64, 40_000), np.uint16), crs=CRS.from_epsg(32633),
                  transform=Affine(10, 0, 0, 0, -10, 0))  # fmt: skip
    before = _gdal_cache_max()
    # two strips of 256 + 512 rows x 40,000 px x 4 bands x 2 bytes
    expected = 2 * (256 + 512) * 40_000 * 4 * 2
    with strip_block_cache(wide, 256), rasterio.open(wide):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == expected
        if before is not None:  # what GDAL itself uses: bytes, not megabytes
            assert _gdal_cache_max() == expected
    assert _gdal_cache_max() == before  # the old size is back
    narrow = tmp_path / "narrow.tif"
    write_geotiff(narrow, np.zeros((4, 64, 64), np.uint16), crs=CRS.from_epsg(32633),
                  transform=Affine(10, 0, 0, 0, -10, 0))  # fmt: skip
    with strip_block_cache(narrow, 256):  # a small raster still gets the floor
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == STRIP_CACHE_BOUNDS[0]
    with rasterio.Env(GDAL_CACHEMAX=1 << 30), strip_block_cache(wide, 256):
        assert rasterio.env.getenv()["GDAL_CACHEMAX"] == 1 << 30
    monkeypatch.setenv("GDAL_CACHEMAX", "2048")
    with strip_block_cache(wide, 256):
        assert "GDAL_CACHEMAX" not in (rasterio.env.getenv() if rasterio.env.hasenv() else {})


def test_a_corrupt_tile_names_gdals_reason(tmp_path: Path) -> None:
    """rasterio says only "Read failed. See previous exception"; the reason is GDAL's."""
    from rasterio.windows import Window

    from fieldseg.errors import InputFileError
    from fieldseg.raster_io import read_window

    path = tmp_path / "scene.tif"
    data = np.random.default_rng(0).integers(0, 1000, (1, 256, 256)).astype(np.uint16)
    with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=1,
                       dtype="uint16", crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0),
                       tiled=True, compress="deflate") as dst:  # fmt: skip
        dst.write(data)
    with rasterio.open(path) as src:  # where GDAL wrote the first tile
        start = int(src.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1)) + 16
    raw = bytearray(path.read_bytes())
    raw[start : start + 512] = bytes(b ^ 0x5A for b in raw[start : start + 512])
    path.write_bytes(raw)
    with rasterio.open(path) as src, pytest.raises(InputFileError) as caught:
        read_window(src, Window(0, 0, 256, 256), fill_value=0)
    message = str(caught.value)
    assert message.startswith(f"cannot read {path} at Window(")
    assert "IReadBlock failed" in message and "previous exception" not in message, message
