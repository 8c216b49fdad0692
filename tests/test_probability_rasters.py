"""``predict --write-rasters``: the blended extent and boundary maps as GeoTIFFs.

The scene is a truth-id raster (200 x 280 px, 10 m, nodata -1) read by the dense oracle, cut
into 64 px chips overlapping by 16. With the exact oracle every chip agrees on the extent, so
the blend is exactly the truth; its boundary band is the truth's inner field edge, except that
a chip cannot see a field edge that runs along its own edge (the chip edge is not a field
edge), so there the blend is weaker, never stronger.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from click.testing import Result
from conftest import assert_user_error, run, stdout_of
from rasterio import features
from rasterio.crs import CRS
from rasterio.enums import Compression

from fieldseg import inference, probability_rasters
from fieldseg.atomic_output import OutputPathError
from fieldseg.boundary_targets import BOUNDARY, label_classes
from fieldseg.chip_grid import chip_starts
from fieldseg.dense_stitching import DenseBlender, edge_weights
from fieldseg.errors import ConfigError, OutputExistsError
from fieldseg.inference import PredictSummary, predict_scene
from fieldseg.instance_extraction import ExtractionParams
from fieldseg.oracle import DenseOracleFieldModel, OracleFieldModel
from fieldseg.probability_rasters import BAND_DESCRIPTIONS, TILE
from fieldseg.raster_io import write_geotiff

HEIGHT, WIDTH = 200, 280
CHIP, OVERLAP = 64, 16
NODATA = -1
TRANSFORM = Affine(10, 0, 500_000, 0, -10, 5_800_000)
CRS_UTM = CRS.from_epsg(32633)
#: (row0, row1, col0, col1) of the truth fields, ids 1.. in order
FIELDS = (
    (10, 60, 10, 80),
    (10, 60, 80, 150),  # touches the first: two boundary bands meet
    (70, 190, 20, 130),  # spans several chips
    (20, 120, 170, 270),
    (130, 136, 150, 215),  # a thin strip
    (150, 195, 140, 200),
)
#: nodata: a block inside field 3, and the whole last chip (row 136, col 216), never run
NODATA_BLOCKS = ((100, 115, 0, 40), (136, 200, 216, 280))
#: Rounding of the written values (``DISCARD_LSB``): within 2**-12 of the blend.
ROUNDING = 2.0**-12


@pytest.fixture(scope="module")
def ids_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ids = np.zeros((HEIGHT, WIDTH), np.int32)
    for k, (r0, r1, c0, c1) in enumerate(FIELDS, start=1):
        ids[r0:r1, c0:c1] = k
    for r0, r1, c0, c1 in NODATA_BLOCKS:
        ids[r0:r1, c0:c1] = NODATA
    path = tmp_path_factory.mktemp("rasters") / "ids.tif"
    write_geotiff(
        path, ids[None], crs=CRS_UTM, transform=TRANSFORM, nodata=NODATA, band_names=["field_id"]
    )
    return path


def _ids(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _predict(
    scene: Path, root: Path, model: object | None = None, **kwargs: object
) -> PredictSummary:
    options: dict[str, object] = {
        "chip_size": CHIP,
        "overlap": OVERLAP,
        "show_progress": False,
        "write_rasters": root / "maps",
    }
    options.update(kwargs)
    model = model or DenseOracleFieldModel(nodata=NODATA)
    return predict_scene(scene, model, root / "fields.gpkg", **options)  # type: ignore[arg-type]


def _read(path: Path) -> tuple[np.ndarray, rasterio.profiles.Profile, dict[str, object]]:
    with rasterio.open(path) as src:
        about = {
            "descriptions": src.descriptions,
            "tags": src.tags(),
            "compression": src.compression,
            "overviews": src.overviews(1),
        }
        return src.read(1), src.profile, about


def _chip_edges(length: int) -> np.ndarray:
    """Positions along one axis that lie on an inner chip edge (not the area's edge)."""
    edges = np.zeros(length, bool)
    for start in chip_starts(length, CHIP, CHIP - OVERLAP):
        edges[[start, min(start + CHIP, length) - 1]] = True
    edges[[0, length - 1]] = False
    return edges


def test_exact_oracle_maps_are_the_truth_on_the_scene_grid(ids_scene: Path, tmp_path: Path) -> None:
    summary = _predict(ids_scene, tmp_path)
    assert summary.rasters == {
        "extent": tmp_path / "maps" / "extent.tif",
        "boundary": tmp_path / "maps" / "boundary.tif",
    }
    assert summary.n_chips_skipped == 1  # the chip that is all nodata
    ids = _ids(ids_scene)
    nodata = ids == NODATA
    extent, profile, about = _read(summary.rasters["extent"])
    boundary, boundary_profile, boundary_about = _read(summary.rasters["boundary"])
    for prof in (profile, boundary_profile):
        assert prof["crs"] == CRS_UTM and prof["transform"] == TRANSFORM
        assert (prof["height"], prof["width"], prof["count"]) == (HEIGHT, WIDTH, 1)
        assert prof["dtype"] == "float32" and np.isnan(prof["nodata"])
        assert prof["tiled"] and (prof["blockxsize"], prof["blockysize"]) == (TILE, TILE)
    for info, name in ((about, "extent"), (boundary_about, "boundary")):
        assert info["descriptions"] == (BAND_DESCRIPTIONS[name],)
        assert info["compression"] == Compression.deflate
        assert info["overviews"] == [2]  # 280 px wide: one level fits a 256 px tile
        assert info["tags"]["fieldseg_map"] == name
        assert info["tags"]["model"] == "dense_oracle"
        assert float(info["tags"]["extent_threshold"]) == ExtractionParams().extent_threshold
    # exact: every chip agrees on the extent; nodata (and the chip never run) is NaN
    assert np.array_equal(np.isnan(extent), nodata) and np.array_equal(np.isnan(boundary), nodata)
    assert np.array_equal(extent[~nodata], (ids > 0)[~nodata].astype(np.float32))
    # boundary: the truth's inner edge (nodata is no field), weaker only on inner chip edges
    truth = (label_classes(torch.from_numpy(np.where(nodata, 0, ids))) == BOUNDARY).numpy()
    on_edge = _chip_edges(HEIGHT)[:, None] | _chip_edges(WIDTH)[None, :]
    exact = ~nodata & ~on_edge
    assert np.array_equal(boundary[exact], truth[exact].astype(np.float32))
    assert (boundary[~nodata & ~truth] == 0).all() and (boundary[~nodata & truth] > 0).all()


def _reference_blend(ids: np.ndarray, model: DenseOracleFieldModel) -> dict[str, np.ndarray]:
    """The whole scene's blend at once, chips in predict's order (row-major, skipping empty)."""
    ramp = edge_weights(CHIP, OVERLAP // 2)
    weights = np.outer(ramp, ramp)
    sums = {name: np.zeros(ids.shape, np.float64) for name in ("extent", "boundary", "weight")}
    for row in chip_starts(HEIGHT, CHIP, CHIP - OVERLAP):
        for col in chip_starts(WIDTH, CHIP, CHIP - OVERLAP):
            window = ids[row : row + CHIP, col : col + CHIP].astype(np.float32)
            valid = window != NODATA
            if not valid.any():
                continue
            image = np.where(valid, window, np.nan).astype(np.float32)[None]
            (maps,) = model.dense_maps([torch.from_numpy(image)])
            weight = weights * valid
            cut = (slice(row, row + CHIP), slice(col, col + CHIP))
            sums["extent"][cut] += weight * maps["extent"].numpy()
            sums["boundary"][cut] += weight * maps["boundary"].numpy()
            sums["weight"][cut] += weight
    covered = sums["weight"] > 0
    return {
        name: np.where(covered, sums[name] / np.where(covered, sums["weight"], 1), np.nan)
        for name in ("extent", "boundary")
    }


def test_noisy_maps_are_the_whole_scene_blend_high_inside_fields(
    ids_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Streamed row band by row band, the maps equal one blend of the whole scene.

    Tiles of 32 px, so that rows are written in several windowed writes that do not line up
    with the chip rows (stride 48).
    """
    monkeypatch.setattr(probability_rasters, "TILE", 32)
    summary = _predict(
        ids_scene, tmp_path, DenseOracleFieldModel(noisy=True, seed=4, nodata=NODATA)
    )
    ids = _ids(ids_scene)
    reference = _reference_blend(ids, DenseOracleFieldModel(noisy=True, seed=4, nodata=NODATA))
    extent, _, _ = _read(summary.rasters["extent"])
    boundary, _, _ = _read(summary.rasters["boundary"])
    with rasterio.open(summary.rasters["extent"]) as src:
        assert src.block_shapes == [(32, 32)] and src.overviews(1) == [2, 4, 8, 16]
    for got, want in ((extent, reference["extent"]), (boundary, reference["boundary"])):
        assert np.array_equal(np.isnan(got), np.isnan(want))
        assert np.nanmax(np.abs(got - want)) <= ROUNDING + 1e-6
        assert np.nanmin(got) >= 0 and np.nanmax(got) <= 1
    inside, outside = ids > 0, ids == 0
    assert extent[inside].mean() > 0.85 and extent[outside].mean() < 0.15
    truth = (label_classes(torch.from_numpy(np.where(ids < 0, 0, ids))) == BOUNDARY).numpy()
    assert boundary[truth].mean() > 2 * boundary[inside & ~truth].mean()


def test_bbox_and_extent_maps_lie_on_the_predicted_window(ids_scene: Path, tmp_path: Path) -> None:
    ids = _ids(ids_scene)
    col0, row0, cols, rows = 30, 40, 150, 100  # a box on pixel edges
    left, top = TRANSFORM * (col0, row0)
    box = (left, top - 10 * rows, left + 10 * cols, top)
    summary = _predict(ids_scene, tmp_path / "bbox", bbox=box)
    extent, profile, _ = _read(summary.rasters["extent"])
    assert profile["transform"] == TRANSFORM * Affine.translation(col0, row0)
    assert (profile["height"], profile["width"]) == (rows, cols)
    window = ids[row0 : row0 + rows, col0 : col0 + cols]
    assert np.array_equal(np.isnan(extent), window == NODATA)
    assert np.array_equal(extent[window != NODATA], (window > 0)[window != NODATA])

    # --extent: pixels whose centres lie outside its polygons are nodata too
    aoi = shapely.Point(TRANSFORM * (140, 100)).buffer(700)
    gpd.GeoDataFrame(geometry=[aoi], crs=CRS_UTM).to_file(tmp_path / "aoi.gpkg")
    summary = _predict(ids_scene, tmp_path / "aoi", extent=tmp_path / "aoi.gpkg")
    extent, profile, _ = _read(summary.rasters["extent"])
    grid = profile["transform"]
    c0, r0 = (round(v) for v in ~TRANSFORM * (grid.c, grid.f))
    window = ids[r0 : r0 + profile["height"], c0 : c0 + profile["width"]]
    inside = features.rasterize([(aoi, 1)], out_shape=window.shape, transform=grid).astype(bool)
    covered = inside & (window != NODATA)
    assert 0 < covered.sum() < covered.size
    assert np.array_equal(~np.isnan(extent), covered)
    assert np.array_equal(extent[covered], (window > 0)[covered])


def test_existing_maps_are_refused_and_a_failed_run_leaves_nothing(
    ids_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "notes.txt").write_text("mine")
    (maps / "extent.tif").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _predict(ids_scene, tmp_path)
    assert (maps / "extent.tif").read_text() == "mine"
    assert not (tmp_path / "fields.gpkg").exists()
    summary = _predict(ids_scene, tmp_path, overwrite=True)
    assert _read(summary.rasters["extent"])[1]["dtype"] == "float32"
    assert sorted(p.name for p in maps.iterdir()) == ["boundary.tif", "extent.tif", "notes.txt"]
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="is a file"):
        _predict(ids_scene, tmp_path / "other", write_rasters=tmp_path / "file")

    calls = []

    def failing(self: DenseOracleFieldModel, images: list[torch.Tensor]) -> list[object]:
        calls.append(1)
        if len(calls) > 12:  # in the third row of chips
            raise RuntimeError("the GPU fell over")
        return original(self, images)

    original = DenseOracleFieldModel.dense_maps
    monkeypatch.setattr(DenseOracleFieldModel, "dense_maps", failing)
    monkeypatch.setattr(probability_rasters, "TILE", 16)  # rows reach the files before it fails
    with pytest.raises(RuntimeError, match="fell over"):
        _predict(ids_scene, tmp_path / "failed", batch_size=1)
    assert not (tmp_path / "failed").exists()


def test_the_instances_route_is_refused_with_one_clear_error(
    ids_scene: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="--write-rasters needs blended per-pixel maps: oracle"):
        _predict(ids_scene, tmp_path, OracleFieldModel(nodata=NODATA))
    with pytest.raises(ConfigError, match="use --seams blend with a model that has them"):
        _predict(ids_scene, tmp_path, seams="instances")
    assert list(tmp_path.iterdir()) == []


def test_blended_rows_reach_the_sink_once_in_order_as_they_are_final() -> None:
    rows_seen: list[tuple[int, int]] = []
    starts = chip_starts(100, 32, 24)
    blender = DenseBlender(
        100,
        40,
        chip_size=32,
        overlap=8,
        params=ExtractionParams(),
        chip_rows=starts,
        chip_cols=[0, 8],
        row_sink=lambda row, extent, boundary, valid: rows_seen.append((row, len(extent))),
    )
    maps = np.full((32, 32), 0.25, np.float32)
    for index, row in enumerate(starts):
        for col in (0, 8):
            blender.add_chip(row, col, maps, maps, np.ones((32, 32), bool))
        if index + 1 < len(starts):
            blender.close_rows(starts[index + 1])
            assert rows_seen[-1][0] + rows_seen[-1][1] == starts[index + 1]  # streamed
        else:
            blender.finish()
    assert rows_seen[0][0] == 0 and len(rows_seen) == len(starts)
    assert all(a + n == b for (a, n), (b, _) in pairwise(rows_seen))
    assert rows_seen[-1][0] + rows_seen[-1][1] == 100


def test_cli_write_rasters(
    ids_scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-m` names a checkpoint; here it loads the dense oracle (the CLI only passes it on)."""
    dense = inference._LoadedModel(
        DenseOracleFieldModel(nodata=NODATA), "dense_oracle", CHIP, ("field",)
    )
    instances = inference._LoadedModel(OracleFieldModel(nodata=NODATA), "oracle", CHIP, ("field",))
    monkeypatch.setattr(
        inference, "_load_model", lambda path: instances if "instances" in str(path) else dense
    )

    def predict(model: str, out: str, *extra: str | Path) -> Result:
        return run(
            "predict",
            ids_scene,
            "-m",
            tmp_path / model,
            "-o",
            tmp_path / f"{out}.gpkg",
            "--overlap",
            str(OVERLAP),
            "--write-rasters",
            tmp_path / out,
            *extra,
        )

    result = predict("run", "maps")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"probability maps: {tmp_path / 'maps' / 'extent.tif'}" in stdout_of(result)
    with rasterio.open(tmp_path / "maps" / "boundary.tif") as src:
        assert src.transform == TRANSFORM and src.descriptions == (BAND_DESCRIPTIONS["boundary"],)
    assert_user_error(predict("run", "maps"), "--overwrite")
    assert predict("run", "maps", "--overwrite").exit_code == 0
    error = predict("instances", "maps_i")
    assert_user_error(error, "--write-rasters needs blended per-pixel maps", "--seams blend")
    error = predict("run", "maps_s", "--seams", "instances")
    assert_user_error(error, "--write-rasters needs blended per-pixel maps")
    assert "--write-rasters" in run("predict", "--help").output
