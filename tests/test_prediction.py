"""``fieldseg predict`` end to end: the oracle through the real stitcher, outputs, bad input."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from conftest import OracleScene, assert_user_error, overlapping_pairs, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS
from rasterio import features

from fieldseg import inference
from fieldseg.atomic_output import OutputPathError
from fieldseg.chip_grid import chip_starts
from fieldseg.chip_resolution import resolve_chip
from fieldseg.errors import ConfigError, InputFileError, OutputExistsError
from fieldseg.field_polygons import FIELD_COLUMNS, FieldTracer, pixel_side_m, true_area_perimeter
from fieldseg.inference import predict_scene
from fieldseg.object_matching import match_objects
from fieldseg.oracle import OracleFieldModel, write_truth_raster
from fieldseg.raster_io import STRIP_CACHE_BOUNDS, write_geotiff
from fieldseg.stitching import FieldBatch, SceneStitcher
from fieldseg.synthetic import synth
from fieldseg.vector_io import read_vector


def _predict(scene: OracleScene, out: Path, **kwargs: object) -> gpd.GeoDataFrame:
    options = {"chip_size": 96, "overlap": 32, "show_progress": False, "min_area_m2": 0.0}
    options.update(kwargs)
    model = options.pop("model", OracleFieldModel())
    predict_scene(scene.ids, model, out, **options)  # type: ignore[arg-type]
    return read_vector(out, layer="fields" if out.suffix == ".gpkg" else None)


@pytest.mark.parametrize(("chip", "overlap"), [(48, 12), (64, 30), (80, 4)])
def test_exact_oracle_gives_the_truth_back(scene: OracleScene, tmp_path: Path, chip: int,
                                           overlap: int) -> None:  # fmt: skip
    truth = gpd.read_file(scene.truth)
    widths = truth.geometry.bounds.eval("maxx - minx") / 10
    assert (widths > chip).any()  # some fields are larger than a chip
    fields = _predict(scene, tmp_path / "fields.gpkg", chip_size=chip, overlap=overlap)
    matches = match_objects(fields.geometry.values, truth.geometry.values)
    assert matches.f1 >= 0.99 and len(fields) == len(truth)
    assert len(matches.split_truth) == 0 and len(matches.merged_truth) == 0
    assert overlapping_pairs(fields) == 0 and fields.geometry.is_valid.all()
    assert fields.crs == truth.crs
    assert fields["seam_merged"].any() and (fields["n_chips"] >= 2).any()
    # a noded coverage: neighbours share their vertices too, so reprojecting opens no sliver
    assert shapely.coverage_is_valid(fields.geometry.values)
    assert overlapping_pairs(fields.to_crs("EPSG:4326")) == 0
    # the right-hand rule: exteriors counter-clockwise, holes clockwise
    assert shapely.is_ccw(shapely.get_exterior_ring(fields.geometry.values)).all()


def test_the_oracle_predicts_without_warnings(
    scene: OracleScene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its scene holds field ids, not reflectances: no warning about the band statistics."""
    with caplog.at_level("WARNING", logger="fieldseg"):
        fields = _predict(scene, tmp_path / "fields.gpkg")
    assert len(fields) > 0 and caplog.records == []


def test_noisy_oracle_meets_the_targets(scene: OracleScene, tmp_path: Path) -> None:
    truth = gpd.read_file(scene.truth)
    fields = _predict(scene, tmp_path / "fields.gpkg", chip_size=128, overlap=32,
                      model=OracleFieldModel(noisy=True, seed=1))  # fmt: skip
    matches = match_objects(fields.geometry.values, truth.geometry.values)
    assert matches.f1 >= 0.95
    assert len(matches.merged_truth) <= 0.01 * len(truth)
    assert overlapping_pairs(fields) == 0 and fields.geometry.is_valid.all()
    assert fields["score"].between(0.5, 1.0).all()


def test_chips_resolved_on_threads_give_what_one_core_gives(
    scene: OracleScene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row's chips resolve on threads while the row above is stitched: same fields."""
    frames = []
    for cores in (1, 3):
        monkeypatch.setattr(inference, "usable_cores", lambda cores=cores: cores)
        fields = _predict(scene, tmp_path / f"fields_{cores}.gpkg", chip_size=64, overlap=16,
                          model=OracleFieldModel(noisy=True, seed=1))  # fmt: skip
        frames.append(fields.sort_values("field_id").reset_index(drop=True))
    one, many = frames
    assert len(one) > 50
    pd.testing.assert_frame_equal(one.drop(columns="geometry"), many.drop(columns="geometry"))
    assert one.geometry.geom_equals_exact(many.geometry, tolerance=0).all()


def test_outputs_in_every_format_hold_the_same_fields(scene: OracleScene, tmp_path: Path) -> None:
    frames = {suffix: _predict(scene, tmp_path / f"fields{suffix}")
              for suffix in (".gpkg", ".parquet", ".fgb", ".geojson")}  # fmt: skip
    reference = frames[".gpkg"].sort_values("field_id").reset_index(drop=True)
    assert list(reference.columns) == [*FIELD_COLUMNS, "geometry"]
    assert reference["field_id"].tolist() == list(range(1, len(reference) + 1))
    assert reference["model"].unique().tolist() == ["oracle"]
    assert reference["class"].unique().tolist() == ["field"]
    pixels = reference.geometry.area / 100
    assert np.allclose(reference["area_m2"], reference.geometry.area)
    assert np.allclose(pixels, pixels.round())  # traced on the pixel grid
    for suffix, frame in frames.items():
        frame = frame.sort_values("field_id").reset_index(drop=True)
        assert len(frame) == len(reference), suffix
        assert frame.crs == reference.crs, suffix
        assert np.allclose(frame["area_m2"], reference["area_m2"]), suffix
        assert shapely.equals(frame.geometry.values, reference.geometry.values).all(), suffix
    geo = json.loads(pq.read_schema(tmp_path / "fields.parquet").metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    with sqlite3.connect(tmp_path / "fields.gpkg") as db:
        styled = db.execute("SELECT f_table_name FROM layer_styles WHERE useAsDefault").fetchall()
        indexed = db.execute("SELECT count(*) FROM gpkg_extensions WHERE extension_name = "
                             "'gpkg_rtree_index' AND table_name = 'fields'").fetchone()  # fmt: skip
    assert styled == [("fields",)] and indexed == (1,)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def _shared_edges(frame: gpd.GeoDataFrame, ids: np.ndarray) -> dict[tuple[int, int], float]:
    """Length of the edge shared by each pair of fields (their ``ids``; overlaps count 1e9)."""
    geometries = frame.geometry.values
    a, b = shapely.STRtree(geometries).query(geometries, predicate="intersects")
    a, b = a[a < b], b[a < b]
    common = shapely.intersection(geometries[a], geometries[b])
    return {
        (min(int(ids[i]), int(ids[j])), max(int(ids[i]), int(ids[j]))): float(shapely.length(c))
        + float(shapely.area(c)) * 1e9
        for i, j, c in zip(a, b, common, strict=True)
    }


def test_simplified_neighbours_keep_sharing_their_edges(scene: OracleScene, tmp_path: Path) -> None:
    exact = _predict(scene, tmp_path / "exact.gpkg", chip_size=64, overlap=16)
    simple = _predict(scene, tmp_path / "simple.gpkg", chip_size=64, overlap=16, simplify_m=20)
    assert len(simple) == len(exact) and simple.geometry.is_valid.all()
    assert shapely.coverage_is_valid(simple.geometry.values)  # noded, also between batches
    vertices = shapely.get_num_coordinates(simple.geometry.values).sum()
    assert vertices < 0.7 * shapely.get_num_coordinates(exact.geometry.values).sum()
    # each simplified field is known by the exact field it overlaps most
    pairs = match_objects(simple.geometry.values, exact.geometry.values).pairs
    assert len(pairs) == len(exact)
    same = np.empty(len(simple), np.int64)
    same[pairs[:, 0]] = exact["field_id"].to_numpy()[pairs[:, 1]]
    shared_exact = _shared_edges(exact, exact["field_id"].to_numpy())
    shared_simple = _shared_edges(simple, same)
    assert all(length < 1e6 for length in shared_simple.values())  # no overlap anywhere
    edges = {pair for pair, length in shared_exact.items() if length >= 10}
    assert all(shared_simple.get(pair, 0) > 0 for pair in edges)  # neighbours still share
    assert simple["area_m2"].sum() == pytest.approx(exact["area_m2"].sum(), rel=0.01)
    truth = gpd.read_file(scene.truth)
    assert match_objects(simple.geometry.values, truth.geometry.values).f1 >= 0.99


@pytest.mark.parametrize("simplify_m", [10.0, 20.0])
def test_simplifying_never_loses_a_small_field(simplify_m: float) -> None:
    """A 5 px L-shaped field between two large ones would become a sliver under the 4 px
    minimum area and be dropped, leaving a hole: it keeps its exact edges instead."""
    labels = np.zeros((20, 20), np.int32)
    labels[2:18, 2:9] = 1
    labels[2:18, 11:18] = 2
    labels[9, 7:11] = 3
    labels[8, 10] = 3
    batch = FieldBatch(row_offset=0, labels=labels, score=np.ones(3, np.float32),
                       class_id=np.ones(3, np.int64), n_chips=np.ones(3, np.int32),
                       seam_merged=np.zeros(3, bool),
                       touches_edge_or_nodata=np.zeros(3, bool))  # fmt: skip

    def trace(simplify: float) -> gpd.GeoDataFrame:
        tracer = FieldTracer(Affine(10, 0, 500_000, 0, -10, 5_800_000), CRS.from_epsg(32633),
                             categories=["field"], model="m", min_area_m2=400.0,
                             simplify_m=simplify)  # fmt: skip
        return tracer.trace(batch)

    exact, simple = trace(0.0), trace(simplify_m)
    assert simple["area_m2"].tolist() == exact["area_m2"].tolist() == [11000.0, 11200.0, 500.0]
    assert simple.geometry.iloc[2].equals(exact.geometry.iloc[2])  # the small one exactly
    assert overlapping_pairs(simple) == 0 and simple.geometry.is_valid.all()
    union = shapely.union_all(simple.geometry.values)
    assert union.symmetric_difference(shapely.union_all(exact.geometry.values)).area < 1.0


def test_the_default_minimum_area_keeps_a_field_of_four_pixels(tmp_path: Path) -> None:
    """On the central meridian a UTM pixel covers 100.08 m2 of ground, not its nominal 100; the
    default minimum (four pixels) is measured as area_m2 is, so a 2 x 2 field stays."""
    ids = np.zeros((1, 40, 40), np.int32)
    ids[0, 10:12, 10:12] = 1
    ids[0, 20:30, 20:30] = 2
    path = tmp_path / "ids.tif"
    meridian = rasterio.Affine(10, 0, 500_000, 0, -10, 5_300_000)  # scale 0.9996
    write_geotiff(path, ids, crs="EPSG:32633", transform=meridian, band_names=["field_id"])
    predict_scene(path, OracleFieldModel(), tmp_path / "f.gpkg", chip_size=32, overlap=8,
                  show_progress=False)  # fmt: skip
    fields = read_vector(tmp_path / "f.gpkg", layer="fields")
    assert sorted(fields["area_m2"].tolist()) == [400.0, 10000.0]


def test_existing_output_is_refused_and_a_failed_run_leaves_nothing(
    scene: OracleScene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "fields.gpkg"
    out.write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        _predict(scene, out)
    assert out.read_text() == "mine"
    calls = []

    def failing(self: OracleFieldModel, images: list[torch.Tensor]) -> list[object]:
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("the GPU fell over")
        return [self._predict_chip(image) for image in images]

    monkeypatch.setattr(OracleFieldModel, "predict", failing)
    with pytest.raises(RuntimeError, match="fell over"):
        _predict(scene, tmp_path / "new.gpkg", chip_size=64, overlap=16, batch_size=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fields.gpkg"]


def test_bbox_extent_and_debug_layers(scene: OracleScene, tmp_path: Path) -> None:
    with rasterio.open(scene.ids) as src:
        left, bottom = src.bounds.left, src.bounds.bottom
    box = (left + 500, bottom + 800, left + 2100, bottom + 2600)
    fields = _predict(scene, tmp_path / "bbox.gpkg", bbox=box, debug_layers=True)
    assert len(fields) > 20
    assert fields.geometry.within(shapely.box(*box)).all()
    assert fields["touches_edge_or_nodata"].any() and not fields["touches_edge_or_nodata"].all()
    chips = gpd.read_file(tmp_path / "bbox.gpkg", layer="chips")
    seams = gpd.read_file(tmp_path / "bbox.gpkg", layer="seams")
    assert len(chips) == len(seams) > 1 and (seams.geom_type == "LineString").all()

    aoi = shapely.Point(left + 1600, bottom + 1600).buffer(900)
    gpd.GeoDataFrame(geometry=[aoi], crs=fields.crs).to_file(tmp_path / "aoi.gpkg")
    inside = _predict(scene, tmp_path / "aoi_fields.gpkg", extent=tmp_path / "aoi.gpkg")
    assert len(inside) > 10
    assert inside.geometry.within(aoi.buffer(7.1)).all()  # pixel centres inside the AOI
    # the AOI is an input: even --overwrite never writes the fields over it
    aoi_bytes = (tmp_path / "aoi.gpkg").read_bytes()
    with pytest.raises(OutputPathError, match=r"aoi\.gpkg would replace the input"):
        _predict(scene, tmp_path / "aoi.gpkg", extent=tmp_path / "aoi.gpkg", overwrite=True)
    assert (tmp_path / "aoi.gpkg").read_bytes() == aoi_bytes
    layer = f"{tmp_path / 'aoi.gpkg'}|layername=aoi"  # named as QGIS names a layer
    with pytest.raises(OutputPathError, match=r"aoi\.gpkg would replace the input"):
        _predict(scene, tmp_path / "aoi.gpkg", extent=layer, overwrite=True)
    assert (tmp_path / "aoi.gpkg").read_bytes() == aoi_bytes


def test_a_bbox_takes_the_pixels_whose_centres_lie_inside(scene: OracleScene) -> None:
    from fieldseg.inference import _prediction_area
    from fieldseg.raster_io import read_raster_info

    info = read_raster_info(scene.ids)
    left, top = info.transform.c, info.transform.f
    window, _ = _prediction_area(info, None, (left + 4, top - 106, left + 106, top - 4))
    assert (window.col_off, window.row_off, window.width, window.height) == (0, 0, 11, 11)
    # centres at 5, 15, ... m: a box from 9 to 2511 m holds those of pixels 1 to 250
    window, _ = _prediction_area(info, None, (left + 9, top - 2231, left + 2511, top - 9))
    assert (window.col_off, window.row_off, window.width, window.height) == (1, 1, 250, 222)


def test_nodata_is_never_a_field(tmp_path: Path) -> None:
    synth(tmp_path / "scene.tif", tmp_path / "truth.gpkg", size=256, seed=5, bands=4, dates=1,
          nodata_border=True)  # fmt: skip
    with rasterio.open(tmp_path / "scene.tif") as src:
        nodata = src.read(1) == src.nodata
        profile = src.profile
    write_truth_raster(tmp_path / "truth.gpkg", tmp_path / "scene.tif", tmp_path / "ids.tif")
    with rasterio.open(tmp_path / "ids.tif") as src:
        ids = src.read(1)
    ids[nodata] = -1
    profile.update(count=1, dtype="int32", nodata=-1)
    with rasterio.open(tmp_path / "ids_nodata.tif", "w", **profile) as dst:
        dst.write(ids[None])
    s = OracleScene(tmp_path)
    s.ids = tmp_path / "ids_nodata.tif"
    summary = predict_scene(s.ids, OracleFieldModel(nodata=-1), tmp_path / "fields.gpkg",
                            chip_size=64, overlap=16, show_progress=False)  # fmt: skip
    fields = read_vector(tmp_path / "fields.gpkg")
    assert summary.area_km2 == pytest.approx((~nodata).sum() * 100 / 1e6)  # data pixels only
    with rasterio.open(s.ids) as src:
        burnt = features.rasterize(
            [(g, 1) for g in fields.geometry], out_shape=ids.shape, transform=src.transform
        )
    assert not (burnt.astype(bool) & nodata).any()
    near = fields[fields["touches_edge_or_nodata"]]
    assert len(near) > 0 and len(near) < len(fields)


def test_a_scene_in_a_geographic_crs_gives_true_areas(scene: OracleScene, tmp_path: Path) -> None:
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(scene.ids) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds
        )
        profile = {**src.profile, "crs": "EPSG:4326", "transform": transform, "width": width,
                   "height": height}  # fmt: skip
        with rasterio.open(tmp_path / "ids_4326.tif", "w", **profile) as dst:
            reproject(rasterio.band(src, 1), rasterio.band(dst, 1), resampling=Resampling.nearest)
    geographic = OracleScene(tmp_path)
    geographic.ids = tmp_path / "ids_4326.tif"
    fields = _predict(geographic, tmp_path / "fields.gpkg", chip_size=64, overlap=16,
                      min_area_m2=None)  # fmt: skip
    truth = gpd.read_file(scene.truth)
    assert fields.crs.is_geographic
    assert fields["area_m2"].sum() == pytest.approx(truth.geometry.area.sum(), rel=0.03)
    assert fields["area_m2"].min() >= 4 * 100 * 0.9  # the default minimum: four ~10 m pixels
    assert len(fields) == pytest.approx(len(truth), rel=0.05)


def test_areas_are_true_metres_in_a_geographic_crs() -> None:
    square = shapely.box(500000, 5000000, 501000, 5001000)  # 1 km2 in UTM 33N
    geographic = gpd.GeoSeries([square], crs=32633).to_crs(4326).values
    area, perimeter = true_area_perimeter(np.asarray(geographic), gpd.GeoSeries(crs=4326).crs)
    assert area[0] == pytest.approx(1e6, rel=0.005) and perimeter[0] == pytest.approx(
        4000, rel=0.005
    )
    area, perimeter = true_area_perimeter(np.asarray([square]), gpd.GeoSeries(crs=32633).crs)
    assert area[0] == 1e6 and perimeter[0] == 4000


@pytest.mark.parametrize("hole_ccw", [True, False])
def test_holes_count_in_geographic_areas_and_perimeters(hole_ccw: bool) -> None:
    """A 1 km square with a 200 m hole: 0.96 km2 and 4.8 km of edge, whichever way the hole
    runs (pyproj alone adds a hole running like the shell and measures the shell only)."""
    hole = shapely.box(500400, 5000400, 500600, 5000600).exterior.coords
    holed = shapely.Polygon(
        shapely.box(500000, 5000000, 501000, 5001000).exterior.coords,
        [hole if hole_ccw else list(hole)[::-1]],
    )
    for polygon, crs in ((holed, 32633), (gpd.GeoSeries([holed], crs=32633).to_crs(4326)[0], 4326)):
        area, perimeter = true_area_perimeter(np.asarray([polygon]), gpd.GeoSeries(crs=crs).crs)
        assert area[0] == pytest.approx(0.96e6, rel=0.005)
        assert perimeter[0] == pytest.approx(4800, rel=0.005)


def test_bad_input_is_one_clear_error(scene: OracleScene, tmp_path: Path) -> None:
    out = tmp_path / "fields.gpkg"
    with pytest.raises(InputFileError, match=r"has 4 bands; the model was trained on 1"):
        predict_scene(scene.image, OracleFieldModel(), out, show_progress=False)
    with pytest.raises(ConfigError, match="overlap must be at least 2"):
        predict_scene(scene.ids, OracleFieldModel(), out, overlap=0, show_progress=False)
    with pytest.raises(InputFileError, match="does not overlap the scene") as caught:
        predict_scene(scene.ids, OracleFieldModel(), out, bbox=(0, 0, 10, 10), show_progress=False)
    assert "in EPSG:32633; the bbox looks like longitude/latitude" in str(caught.value)
    with rasterio.open(scene.ids) as src:
        left, bottom, right, top = src.bounds
    far = (left + 1e5, bottom, right + 1e5, top)  # metres, but off to the east
    with pytest.raises(
        InputFileError, match=rf"spans {left:.0f} {bottom:.0f} {right:.0f}"
    ) as caught:
        predict_scene(scene.ids, OracleFieldModel(), out, bbox=far, show_progress=False)
    assert "longitude" not in str(caught.value)
    mislabelled = gpd.GeoDataFrame(geometry=[shapely.box(*far)], crs=32634)  # drawn in 32633
    mislabelled.to_file(tmp_path / "farm.gpkg")
    with pytest.raises(InputFileError, match=r"--extent .*farm\.gpkg does not overlap the scene .*"
                       rf"spans {left:.0f} {bottom:.0f} .* in EPSG:32633; the extent spans "
                       r".* check that its file declares the CRS"):  # fmt: skip
        predict_scene(scene.ids, OracleFieldModel(), out, extent=tmp_path / "farm.gpkg",
                      show_progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="cannot tell the vector format"):
        predict_scene(scene.ids, OracleFieldModel(), tmp_path / "fields.txt", show_progress=False)
    assert not out.exists()
    result = run("predict", scene.ids, "-o", out, "-m", tmp_path / "nowhere.pt")
    assert_user_error(result, "checkpoint not found")


def test_cli_help_lists_every_option() -> None:
    result = run("predict", "--help")
    assert result.exit_code == 0
    for option in ("--output", "--model", "--chip-size", "--overlap", "--batch-size",
                   "--score-threshold", "--min-area-m2", "--simplify-m", "--extent", "--bbox",
                   "--device", "--seams", "--write-rasters",
                   "--overwrite", "--debug-layers"):  # fmt: skip
        assert option in result.output


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rectangles=st.lists(
        st.tuples(st.integers(0, 44), st.integers(0, 44), st.integers(1, 20), st.integers(1, 20)),
        min_size=1,
        max_size=25,
    ),
    chip=st.integers(16, 32),
    overlap=st.integers(2, 12),
)
def test_exact_oracle_partition_survives_any_grid(
    rectangles: list[tuple[int, int, int, int]], chip: int, overlap: int
) -> None:
    size = 48
    truth = np.zeros((size, size), np.int32)
    for k, (r, c, h, w) in enumerate(rectangles, start=1):
        truth[r : r + h, c : c + w] = k
    # fields are the 4-connected pieces of each id (as rasterio traces them)
    pieces = np.zeros_like(truth)
    count = 0
    for value in np.unique(truth[truth > 0]):
        mask = truth == value
        for geometry, _ in features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4):
            count += 1
            pieces[features.rasterize([geometry], out_shape=truth.shape) > 0] = count
    oracle = OracleFieldModel()
    stitcher = SceneStitcher(size, size, overlap=min(overlap, chip - 1))
    tracer = FieldTracer(Affine(10, 0, 0, 0, -10, 0), CRS.from_epsg(32633), categories=["field"],
                         model="oracle")  # fmt: skip
    traced = []
    starts = chip_starts(size, chip, chip - min(overlap, chip - 1))
    result = np.zeros_like(truth)
    offset = 0
    for i, row in enumerate(starts):
        for col in starts:
            window = pieces[row : row + chip, col : col + chip].astype(np.float32)
            (prediction,) = oracle.predict([torch.from_numpy(window[None])])
            chip_result = resolve_chip(prediction, np.ones(window.shape, bool), min_pixels=1)
            stitcher.add_chip(row, col, chip_result, np.ones(window.shape, bool))
        below = starts[i + 1] if i + 1 < len(starts) else size + 1
        batch = stitcher.close_rows(below)
        if batch is not None:
            band = result[batch.row_offset : batch.row_offset + batch.labels.shape[0]]
            assert not (band[batch.labels > 0] > 0).any()
            band[batch.labels > 0] = batch.labels[batch.labels > 0] + offset
            offset += len(batch)
            traced.append(tracer.trace(batch))
    traced.append(tracer.finish())
    # the same partition as the truth pieces, up to renumbering
    assert np.array_equal(result > 0, pieces > 0)
    pairs = set(zip(result[pieces > 0].tolist(), pieces[pieces > 0].tolist(), strict=True))
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == count
    # traced batch by batch, with fields held back for later neighbours: a noded coverage
    polygons = pd.concat(traced).geometry.values
    assert len(polygons) == count and shapely.coverage_is_valid(polygons)


class _CacheWatchingOracle(OracleFieldModel):
    """The oracle, noting GDAL's block cache cap while predict reads the scene."""

    def __init__(self) -> None:
        super().__init__()
        self.caps: set[object] = set()

    def predict(self, images):  # type: ignore[no-untyped-def]
        self.caps.add(rasterio.env.getenv().get("GDAL_CACHEMAX") if rasterio.env.hasenv() else None)
        return super().predict(images)


def test_predict_reads_the_scene_under_a_bounded_block_cache(
    scene: OracleScene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GDAL would otherwise keep every block of a whole tile read once (5 % of the memory)."""
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    model = _CacheWatchingOracle()
    predict_scene(scene.ids, model, tmp_path / "f.gpkg", chip_size=128, overlap=32,
                  show_progress=False)  # fmt: skip
    assert model.caps == {STRIP_CACHE_BOUNDS[0]}  # a 320 px scene needs less than the floor


def test_a_scene_without_data_is_one_clear_error(scene: OracleScene, tmp_path: Path) -> None:
    with rasterio.open(scene.ids) as src:
        profile = {**src.profile, "nodata": -1}
        shape = (src.height, src.width)
    empty = OracleScene(tmp_path)
    empty.ids = tmp_path / "ids_empty.tif"
    with rasterio.open(empty.ids, "w", **profile) as dst:
        dst.write(np.full((1, *shape), -1, np.int32))
    out = tmp_path / "fields.gpkg"
    with pytest.raises(InputFileError, match="holds no data in the area to predict"):
        _predict(empty, out, chip_size=64, overlap=16, model=OracleFieldModel(nodata=-1))
    assert not out.exists()
    # an extent over data predicts as before
    assert len(_predict(scene, tmp_path / "some.gpkg", chip_size=64, overlap=16)) > 100


def test_debug_layers_need_a_geopackage(scene: OracleScene, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--debug-layers .* fields\.fgb holds one layer"):
        _predict(scene, tmp_path / "fields.fgb", debug_layers=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extension", [".fgb", ".geojson"])
def test_single_layer_outputs_name_their_layer_after_the_file(
    scene: OracleScene, tmp_path: Path, extension: str
) -> None:
    import pyogrio

    out = tmp_path / f"my_fields{extension}"
    _predict(scene, out, chip_size=128, overlap=32)
    assert [str(name) for name, _ in pyogrio.list_layers(out)] == ["my_fields"]


def test_a_stride_of_a_few_pixels_is_warned_about(
    scene: OracleScene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with rasterio.open(scene.ids) as src:
        left, top = src.bounds.left, src.bounds.top
    box = (left, top - 500, left + 500, top)  # 50 x 50 px: few chips even with a short stride
    _predict(scene, tmp_path / "dense.gpkg", chip_size=32, overlap=28, bbox=box)
    assert "leaves a stride of 4 px between 32 px chips" in caplog.text
    caplog.clear()
    _predict(scene, tmp_path / "usual.gpkg", chip_size=32, overlap=8, bbox=box)
    assert "stride" not in caplog.text


def _scene_and_model(
    tmp_path: Path, values: np.ndarray
) -> tuple[rasterio.DatasetReader, object, object]:
    """A 1-band scene of ``values`` and a stand-in model trained on values 300-2200."""
    from types import SimpleNamespace

    from fieldseg.raster_io import raster_info

    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "height": values.shape[0], "width": values.shape[1],
               "count": 1, "dtype": values.dtype.name, "crs": "EPSG:32633",
               "transform": rasterio.Affine(10, 0, 500000, 0, -10, 5000000)}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(values[None])
    model = SimpleNamespace(
        normaliser=SimpleNamespace(low=torch.tensor([300.0]), high=torch.tensor([2200.0])),
        band_names=["red"],
    )
    src = rasterio.open(path)
    return src, raster_info(src), model


@pytest.mark.parametrize(
    ("values", "warned"),
    [
        (np.linspace(250, 2400, 64 * 64, dtype=np.float32), False),  # as trained
        (np.linspace(0.02, 0.25, 64 * 64, dtype=np.float32), True),  # reflectance, not DN
        (np.linspace(25000, 60000, 64 * 64, dtype=np.float32), True),  # far above
        (np.full(64 * 64, 900, dtype=np.float32), False),  # flat but in range: no scale to judge
    ],
    ids=["as-trained", "reflectance", "far-above", "flat"],
)
def test_a_scene_scaled_unlike_the_training_data_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, values: np.ndarray, warned: bool
) -> None:
    from rasterio.windows import Window

    from fieldseg.inference import _warn_if_statistics_differ

    src, info, model = _scene_and_model(tmp_path, values.reshape(64, 64))
    with src:
        _warn_if_statistics_differ(src, info, model, Window(0, 0, 64, 64))  # type: ignore[arg-type]
    assert ("check the bands and their scaling" in caplog.text) == warned


def test_a_small_area_is_not_judged_by_its_spread(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2 x 2 px bbox inside one field has almost no spread: no sign of another scaling. Its
    median is still judged."""
    from rasterio.windows import Window

    from fieldseg.inference import _warn_if_statistics_differ

    for values, warned in ((900, False), (25000, True)):
        folder = tmp_path / str(values)
        folder.mkdir()
        data = np.full((64, 64), values, dtype=np.float32)
        data[:2, :2] += np.array([[0, 3], [5, 2]], dtype=np.float32)
        src, info, model = _scene_and_model(folder, data)
        caplog.clear()
        with src:
            _warn_if_statistics_differ(src, info, model, Window(0, 0, 2, 2))  # type: ignore[arg-type]
        assert ("check the bands and their scaling" in caplog.text) == warned, values


@pytest.mark.parametrize(
    ("scene_bands", "model_bands", "refused"),
    [
        (("red", "nir"), ("red", "nir"), False),
        (("band_1", "band_2"), ("red", "nir"), False),  # an unnamed scene
        (("red", "nir"), ("band_1", "band_2"), False),  # a model trained on an unnamed scene
        (("nir", "red"), ("red", "nir"), True),
        (("red", "swir"), ("red", "nir"), True),
    ],
)
def test_band_names_must_agree_where_both_sides_name_them(
    scene_bands: tuple[str, ...],
    model_bands: tuple[str, ...],
    refused: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    from fieldseg.inference import _check_bands

    info = SimpleNamespace(path=Path("scene.tif"), count=2, band_names=scene_bands)
    model = SimpleNamespace(band_names=model_bands)
    if refused:
        with pytest.raises(InputFileError, match=r"scene\.tif's bands are not the model's: band "):
            _check_bands(info, model)  # type: ignore[arg-type]
    else:
        _check_bands(info, model)  # type: ignore[arg-type]
    _check_bands(info, model, ignore_names=True)  # type: ignore[arg-type]
    assert ("matched by position" in caplog.text) == refused


def test_another_years_band_names_name_the_first_differences_and_the_way_out() -> None:
    from types import SimpleNamespace

    from fieldseg.inference import _check_bands

    names = [f"2021{month}_{band}" for month in ("06", "07") for band in ("blue", "red", "nir")]
    info = SimpleNamespace(path=Path("y2022.vrt"), count=6,
                           band_names=[n.replace("2021", "2022") for n in names])  # fmt: skip
    with pytest.raises(InputFileError) as error:
        _check_bands(info, SimpleNamespace(band_names=names))  # type: ignore[arg-type]
    assert str(error.value).startswith(
        "y2022.vrt's bands are not the model's: band 1 is '202206_blue', the model's "
        "'202106_blue'; band 2 is '202206_red', the model's '202106_red'; band 3 is "
        "'202206_nir', the model's '202106_nir'; 3 more. If they are the same bands under other "
        "names (another year's dates, say), pass --ignore-band-names"
    )


@pytest.mark.parametrize(
    ("pixel_m", "trained_m", "warned"),
    [
        (10.0, 10.0, False),
        (11.0, 10.0, False),
        (60.0, 10.0, True),
        (5.0, 10.0, True),
        (60.0, None, False),  # an older checkpoint: nothing to compare with
    ],
)
def test_pixels_of_another_size_than_the_trained_ones_are_warned_about(
    caplog: pytest.LogCaptureFixture, pixel_m: float, trained_m: float | None, warned: bool
) -> None:
    from types import SimpleNamespace

    from fieldseg.inference import _warn_if_pixel_size_differs

    model = SimpleNamespace(spec=SimpleNamespace(pixel_size_m=trained_m))
    _warn_if_pixel_size_differs(model, pixel_m)  # type: ignore[arg-type]
    assert ("resample the scene to 10 m first" in caplog.text) == warned


@pytest.mark.parametrize(
    ("chip", "trained", "height", "width", "warned"),
    [
        (512, 128, 256, 256, True),  # one chip, 75 % padding
        (512, 128, 400, 512, False),
        (128, 128, 40, 40, False),  # the training chips: a small scene is padded as in tile
        (256, 128, 100, 600, True),
    ],
)
def test_chips_mostly_beyond_the_area_are_warned_about(
    caplog: pytest.LogCaptureFixture,
    chip: int,
    trained: int,
    height: int,
    width: int,
    warned: bool,
) -> None:
    from fieldseg.inference import _warn_if_mostly_padding

    _warn_if_mostly_padding(chip, trained, height, width)
    assert ("leave --chip-size at its default" in caplog.text) == warned


@pytest.mark.parametrize(
    ("scene", "trained", "warned"),
    [
        ("uint8", "uint16", True),  # a display picture for a reflectance model
        ("uint16", "uint8", True),
        ("int16", "uint16", False),  # the same width: the statistics check judges the values
        ("float32", "uint16", False),
        ("uint8", None, False),  # an older checkpoint: nothing to compare with
    ],
)
def test_scenes_of_another_bit_depth_than_the_trained_ones_are_warned_about(
    caplog: pytest.LogCaptureFixture, scene: str, trained: str | None, warned: bool
) -> None:
    from types import SimpleNamespace

    from fieldseg.inference import _warn_if_bit_depth_differs

    model = SimpleNamespace(spec=SimpleNamespace(dtype=trained))
    _warn_if_bit_depth_differs(model, SimpleNamespace(dtype=scene))  # type: ignore[arg-type]
    assert (f"the scene stores {scene} values" in caplog.text) == warned
    assert ("stretched for display" in caplog.text) == (warned and scene == "uint8")


def test_a_pixel_is_measured_on_the_ground_in_any_crs() -> None:
    at_equator = Affine(1e-4, 0, 10.0, 0, -1e-4, 0.0005)  # about 11.1 m
    assert pixel_side_m(CRS.from_epsg(4326), at_equator, 0, 0) == pytest.approx(11.1, rel=0.01)
    utm = Affine(10, 0, 500_000, 0, -10, 5_300_000)  # on the central meridian: scale 0.9996
    assert pixel_side_m(CRS.from_epsg(32633), utm) == pytest.approx(10.004, abs=1e-3)
    # Web Mercator's 10 m at 48 degrees north cover 6.7 m of ground
    mercator = Affine(10, 0, 1_000_000, 0, -10, 6_100_000)
    assert pixel_side_m(CRS.from_epsg(3857), mercator) == pytest.approx(6.70, abs=0.01)
