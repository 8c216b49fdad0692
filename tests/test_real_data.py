"""Real Sentinel-2 data: stack the 20 germany-coastal band files and tile them with --sparse.

The data lives in ``../shared/data/real/`` beside the repository; tests skip where it is absent.
Band order of the stack: date by date (20210615, 20210715, 20210815, 20210915, 20211015), and
within a date blue, green, red, nir (the order of Sentinel-2 bands B02, B03, B04, B08).
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import Dataset, check_against_truth, rasterize_truth, read_dataset, valid_mask

from fieldseg.stacking import stack_bands
from fieldseg.tiling import TileSummary, tile_scenes

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
COASTAL = REAL / "germany-coastal"
DATES = ("20210615", "20210715", "20210815", "20210915", "20211015")
COLOURS = ("blue", "green", "red", "nir")
LABELS = COASTAL / "labels" / "coastal_landscape_train20.shp"
NODATA = -10000

pytestmark = [
    pytest.mark.real_data,
    pytest.mark.skipif(
        not (COASTAL.is_dir() and LABELS.exists()),
        reason=f"real data not found at {COASTAL} (../shared/data/real beside the repository)",
    ),
]


def _band_files() -> list[Path]:
    return [COASTAL / f"s2_l3a_{d}_{c}.tif" for d in DATES for c in COLOURS]


@pytest.fixture(scope="module")
def coastal_vrt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("coastal") / "coastal.vrt"
    stack_bands(_band_files(), out)
    return out


@pytest.fixture(scope="module")
def coastal_sparse(
    tmp_path_factory: pytest.TempPathFactory, coastal_vrt: Path
) -> tuple[Dataset, TileSummary]:
    out = tmp_path_factory.mktemp("coastal_ds") / "dataset"
    summary = tile_scenes(
        [coastal_vrt], LABELS, out, chip_size=128, overlap=32, sparse=True, split="1,0,0"
    )
    return read_dataset(out), summary


def test_stack_twenty_band_files(coastal_vrt: Path) -> None:
    files = _band_files()
    assert all(f.exists() for f in files)
    with rasterio.open(coastal_vrt) as src:
        assert src.count == 20
        assert set(src.dtypes) == {"int16"}
        assert src.nodata == NODATA
        assert src.crs.to_epsg() == 32632
        assert src.descriptions == tuple(f"{d}_{c}" for d in DATES for c in COLOURS)
        window = ((200, 264), (300, 364))
        stacked = src.read(window=window)
    for index, path in enumerate(files):
        with rasterio.open(path) as band:
            assert band.transform == src.transform
            assert np.array_equal(stacked[index], band.read(1, window=window)), path.name


def _truth() -> dict[int, shapely.Geometry]:
    frame = gpd.read_file(LABELS)
    assert frame.crs.to_epsg() == 32632
    return {i: g for i, g in enumerate(frame.geometry, start=1)}


def test_sparse_tiling_of_the_coastal_stack(
    coastal_vrt: Path, coastal_sparse: tuple[Dataset, TileSummary]
) -> None:
    ds, summary = coastal_sparse
    assert summary.chips_written > 3
    assert ds.description["label_mode"] == "sparse"
    assert len(ds.description["bands"]) == 20
    assert ds.description["nodata"] == NODATA
    assert summary.labels is not None
    assert summary.labels.n_repaired == 0 and summary.labels.n_overlapping_pairs == 0

    with rasterio.open(coastal_vrt) as src:
        transform, shape = src.transform, (src.height, src.width)
    truth = _truth()
    # every drawn field with pixels in the image appears under its field_id
    in_image = {fid for fid, g in truth.items() if rasterize_truth(g, transform, shape).sum() > 0}
    assert len(in_image) == 20
    assert ds.field_ids() == in_image
    # pixel-exact masks; the ignore mask is everything that is not a drawn field
    check_against_truth(ds, truth, nodata=NODATA, scene_transform=transform, sparse=True)
    for image in ds.images:
        assert image.entry["ignore_mask"] is not None
        assert image.entry["crs"]["epsg"] == 32632
        _, meta = ds.chip(image)
        assert meta["shape"] == (20, 128, 128) and meta["dtype"] == "int16"
        assert meta["nodata"] == NODATA
        # no undrawn pixel is background: every pixel is a drawn field, ignored, or nodata
        data, _ = ds.chip(image)
        covered = image.ignore() | ~valid_mask(data, NODATA, image)
        for ann in image.annotations:
            covered |= rasterize_truth(truth[ann["field_id"]], image.transform, image.shape)
        assert covered.all()


def test_coastal_default_split_shares_no_pixels(tmp_path: Path, coastal_vrt: Path) -> None:
    summary = tile_scenes(
        [coastal_vrt], LABELS, tmp_path / "ds", chip_size=128, overlap=32, sparse=True,
        block_size=192, seed=2,
    )  # fmt: skip
    ds = read_dataset(tmp_path / "ds")
    assert summary.chips_written == len(ds.images) > 0
    boxes = [
        (im.split, im.col_off, im.row_off, im.col_off + 128, im.row_off + 128) for im in ds.images
    ]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a[0] != b[0]:
                assert not (a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4])
    stats = ds.description["normalisation"]
    assert len(stats) == 20
    assert all(s["n_pixels"] > 0 and s["p2"] <= s["mean"] <= s["p98"] for s in stats)
    assert all(s["p2"] > NODATA for s in stats)  # nodata never enters the statistics
