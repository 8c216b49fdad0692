"""Field labels: reading, repair, overlaps, classes, split column, reprojection (library + tile)."""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from conftest import (
    CHIP,
    CRS_UTM,
    FIELD_IDS,
    FIELDS,
    OVERLAP,
    SCENE_TRANSFORM,
    Dataset,
    SceneFixture,
    check_against_truth,
    px_box,
    px_polygon,
    rasterize_truth,
    read_dataset,
    total_pixels,
    write_labels,
)
from shapely.geometry.base import BaseGeometry

from fieldseg.coco_format import decode_mask
from fieldseg.errors import ConfigError, CRSError, InputFileError
from fieldseg.labels import load_field_labels, resolve_overlaps
from fieldseg.tiling import TileSummary, tile_scenes

#: self-intersecting ("bow-tie"); vertices off the pixel grid so no pixel centre lies on an edge
BOWTIE = px_polygon([(80.3, 20.2), (120.1, 60.4), (119.8, 20.3), (80.2, 59.7)])


def _tile(scene: Path, labels: Path, out: Path, **kwargs: object) -> TileSummary:
    """Tile on the fixture grid with every chip in train (no chip lost at a split border)."""
    kwargs.setdefault("chip_size", CHIP)
    kwargs.setdefault("overlap", OVERLAP)
    kwargs.setdefault("split", "1,0,0")
    return tile_scenes([scene], labels, out, **kwargs)  # type: ignore[arg-type]


def _frame(geometries: list[BaseGeometry]) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"field_id": np.arange(1, len(geometries) + 1)}, geometry=geometries, crs=CRS_UTM
    )


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".shp"])
def test_reads_ogr_formats_with_row_numbers_as_field_ids(tmp_path: Path, suffix: str) -> None:
    path = write_labels(tmp_path / f"fields{suffix}", list(FIELDS.values()))
    labels = load_field_labels(path)
    assert labels.fields["field_id"].tolist() == list(range(1, len(FIELDS) + 1))
    assert labels.categories == ["field"]
    assert set(labels.fields["category"]) == {"field"}
    for field_id, geometry in zip(labels.fields["field_id"], labels.fields.geometry, strict=True):
        original = list(FIELDS.values())[field_id - 1]
        assert geometry.equals(original), f"field {field_id} changed"
    assert labels.n_read == len(FIELDS)
    assert (labels.n_repaired, labels.n_dropped_empty, labels.n_overlapping_pairs) == (0, 0, 0)


def test_reads_geoparquet(tmp_path: Path) -> None:
    """Spec section 5: labels may be GeoParquet (needs pyarrow, which fieldseg must install)."""
    frame = gpd.GeoDataFrame(geometry=list(FIELDS.values()), crs=CRS_UTM)
    path = tmp_path / "fields.parquet"
    frame.to_parquet(path)
    labels = load_field_labels(path)
    assert labels.fields["field_id"].tolist() == list(range(1, len(FIELDS) + 1))


def test_missing_and_corrupt_label_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"vector file not found: .*absent\.gpkg"):
        load_field_labels(tmp_path / "absent.gpkg")
    bad = tmp_path / "bad.gpkg"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputFileError, match=r"cannot read vector file .*bad\.gpkg"):
        load_field_labels(bad)


def test_labels_without_crs(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "nocrs.shp", [FIELDS["rect_a"]], crs=None)
    with pytest.raises(CRSError, match=r"nocrs\.shp has no CRS; its coordinates look projected"):
        load_field_labels(path)
    lon_lat = write_labels(tmp_path / "lonlat.shp", [shapely.box(13.1, 48.2, 13.11, 48.21)],
                           crs=None)  # fmt: skip
    with pytest.raises(CRSError, match=r"look like longitude and latitude: assign EPSG:4326"):
        load_field_labels(lon_lat)


def test_no_polygon_left(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "points.geojson", [shapely.Point(500_100, 5_799_900), None])
    with pytest.raises(InputFileError, match=r"holds no polygon with an area \(2 features read\)"):
        load_field_labels(path)


# --------------------------------------------------------------------------------------------
# repair and dropping
# --------------------------------------------------------------------------------------------
def test_invalid_repaired_empty_dropped_ids_kept(tmp_path: Path) -> None:
    geometries = [
        None,
        FIELDS["rect_a"],
        shapely.Point(500_100, 5_799_900),
        FIELDS["rect_b"],
        shapely.Polygon(),
        BOWTIE,
        shapely.LineString([(500_000, 5_799_000), (500_100, 5_799_100)]),
    ]
    path = write_labels(tmp_path / "messy.geojson", geometries)
    labels = load_field_labels(path)
    assert labels.n_read == 7
    assert labels.n_repaired == 1
    assert labels.n_dropped_empty == 4  # None, point, empty polygon, line
    assert labels.fields["field_id"].tolist() == [2, 4, 6]
    repaired = labels.fields.geometry.iloc[2]
    assert repaired.is_valid
    assert repaired.geom_type == "MultiPolygon" and len(repaired.geoms) == 2
    assert repaired.area == pytest.approx(shapely.make_valid(BOWTIE).area)
    assert repaired.area > 0.9 * 2 * 0.5 * 40 * 20 * 100  # two ~400 px2 triangles, in m2
    assert "1 invalid geometries repaired, 4 empty or non-polygon dropped" in labels.summary()


def test_repaired_bowtie_is_tiled_as_its_valid_shape(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    path = write_labels(tmp_path / "bowtie.gpkg", [FIELDS["rect_a"], BOWTIE])
    summary = _tile(basic_scene.scene, path, tmp_path / "out")
    assert summary.labels is not None and summary.labels.n_repaired == 1
    assert "1 invalid geometries repaired" in "\n".join(summary.lines())
    ds = read_dataset(tmp_path / "out")
    check_against_truth(ds, {1: FIELDS["rect_a"], 2: shapely.make_valid(BOWTIE)})
    pieces = [im.by_field()[2] for im in ds.images if 2 in im.by_field()]
    assert any(not p["truncated"] for p in pieces)
    whole = next(p for p in pieces if not p["truncated"])
    assert whole["area"] == total_pixels(shapely.make_valid(BOWTIE)) > 700


# --------------------------------------------------------------------------------------------
# overlaps
# --------------------------------------------------------------------------------------------
BIG = px_box(10, 10, 60, 60)  # 2500 px
SMALL = px_box(40, 40, 70, 70)  # 900 px, overlaps BIG on 20 x 20 px


def test_resolve_overlaps_gives_the_overlap_to_the_smaller_field() -> None:
    frame = _frame([BIG, SMALL, px_box(60, 0, 90, 30)])  # the third only touches BIG
    assert resolve_overlaps(frame) == 1
    big, small, third = frame.geometry
    assert small.equals(SMALL)
    assert big.area == pytest.approx((2500 - 400) * 100)
    assert big.intersection(small).area == pytest.approx(0)
    assert third.equals(px_box(60, 0, 90, 30))


def test_resolve_overlaps_ignores_touching_fields() -> None:
    frame = _frame([FIELDS["rect_a"], FIELDS["rect_b"]])
    assert resolve_overlaps(frame) == 0
    assert frame.geometry.iloc[0].equals(FIELDS["rect_a"])


def test_resolve_overlaps_equal_areas_later_row_loses() -> None:
    first, second = px_box(0, 0, 20, 20), px_box(10, 0, 30, 20)
    frame = _frame([first, second])
    assert resolve_overlaps(frame) == 1
    assert frame.geometry.iloc[0].equals(first)
    assert frame.geometry.iloc[1].area == pytest.approx(10 * 20 * 100)


def test_field_inside_another_cuts_a_hole() -> None:
    frame = _frame([BIG, px_box(25, 25, 35, 35)])
    assert resolve_overlaps(frame) == 1
    assert len(frame.geometry.iloc[0].interiors) == 1


def test_overlap_goes_to_the_smaller_field_in_the_chips(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    path = write_labels(tmp_path / "overlap.gpkg", [BIG, SMALL])
    summary = _tile(basic_scene.scene, path, tmp_path / "out")
    assert summary.labels is not None and summary.labels.n_overlapping_pairs == 1
    assert "1 overlapping pairs" in "\n".join(summary.lines())
    ds = read_dataset(tmp_path / "out")
    (image,) = [im for im in ds.images if (im.row_off, im.col_off) == (0, 0)]
    by_field = image.by_field()
    big = decode_mask(by_field[1]["segmentation"])
    small = decode_mask(by_field[2]["segmentation"])
    assert small.sum() == 900 and small[40:70, 40:70].all()
    assert big.sum() == 2500 - 400
    assert not big[40:60, 40:60].any()
    assert big[10:40, 10:60].all() and big[40:60, 10:40].all()
    check_against_truth(ds, {1: BIG.difference(SMALL), 2: SMALL})


#: A partition of the scene: a strip along the top, two fields below it whose shared corner
#: lies on the strip's bottom edge (no vertex of the strip there). In EPSG:4326 that corner
#: bends off the strip's straight edge: slivers that vanish again in the scene's UTM CRS.
T_JUNCTION = [px_box(10, 10, 290, 40), px_box(10, 40, 150, 250), px_box(150, 40, 290, 250)]


def test_reprojection_slivers_are_not_overlaps(tmp_path: Path) -> None:
    path = write_labels(tmp_path / "t.gpkg", T_JUNCTION, to_crs="EPSG:4326")
    assert load_field_labels(path).n_overlapping_pairs == 2  # slivers in the file's CRS
    labels = load_field_labels(path, overlap_crs=CRS_UTM)
    assert labels.n_overlapping_pairs == 0
    for original, kept in zip(T_JUNCTION, labels.fields.to_crs(CRS_UTM).geometry, strict=True):
        assert kept.area == pytest.approx(original.area)  # nothing was cut
    real = write_labels(tmp_path / "real.gpkg", [BIG, SMALL], to_crs="EPSG:4326")
    assert load_field_labels(real, overlap_crs=CRS_UTM).n_overlapping_pairs == 1


def test_tile_ignores_reprojection_slivers(tmp_path: Path, basic_scene: SceneFixture) -> None:
    path = write_labels(tmp_path / "t.gpkg", T_JUNCTION, to_crs="EPSG:3857")
    summary = _tile(basic_scene.scene, path, tmp_path / "out")
    assert summary.labels is not None and summary.labels.n_overlapping_pairs == 0
    assert "0 overlapping pairs" in "\n".join(summary.lines())


# --------------------------------------------------------------------------------------------
# columns
# --------------------------------------------------------------------------------------------
def test_class_column_becomes_categories(tmp_path: Path, basic_scene: SceneFixture) -> None:
    crops = ["wheat", "maize", "wheat", "grass", "maize", "wheat", "grass", None, "maize", "x", "y"]
    path = write_labels(tmp_path / "crops.gpkg", list(FIELDS.values()), columns={"crop": crops})
    summary = _tile(basic_scene.scene, path, tmp_path / "out", class_column="crop")
    ds = read_dataset(tmp_path / "out")
    names = ["grass", "maize", "wheat", "x", "y"]
    for split in ("train", "val", "test"):
        categories = ds.coco[split]["categories"]
        assert [(c["id"], c["name"]) for c in categories] == list(enumerate(names, start=1))
    assert [c["name"] for c in ds.description["categories"]] == names
    category_of = {i: c for i, c in enumerate(crops, start=1)}
    seen = set()
    for image in ds.images:
        for ann in image.annotations:
            assert names[ann["category_id"] - 1] == category_of[ann["field_id"]]
            seen.add(ann["field_id"])
    bottom_edge = FIELD_IDS["bottom_edge"]  # its crop is missing: dropped
    assert seen == set(range(1, 12)) - {bottom_edge}
    assert summary.labels is not None and len(summary.labels.fields) == 10


def test_unknown_class_column(tmp_path: Path) -> None:
    path = write_labels(
        tmp_path / "f.gpkg", [FIELDS["rect_a"]], columns={"crop_type": ["wheat"], "year": [2021]}
    )
    with pytest.raises(ConfigError) as info:
        load_field_labels(path, class_column="crop")
    message = str(info.value)
    assert "--class-column 'crop' is not a column of" in message
    assert "crop_type" in message and "year" in message


def test_split_column_values_and_aliases(tmp_path: Path) -> None:
    values = ["Train", " validation ", "TEST", "training", "val", "testing"]
    geometries = [px_box(10 * i, 0, 10 * i + 5, 5) for i in range(len(values))]
    path = write_labels(tmp_path / "s.gpkg", geometries, columns={"fold": values})
    labels = load_field_labels(path, split_column="fold")
    assert labels.fields["split"].tolist() == ["train", "val", "test", "train", "val", "test"]


def test_split_column_bad_values(tmp_path: Path) -> None:
    path = write_labels(
        tmp_path / "s.gpkg",
        [px_box(0, 0, 5, 5), px_box(10, 0, 15, 5)],
        columns={"fold": ["a", "b"]},
    )
    with pytest.raises(InputFileError, match=r"'fold' has values 'a', 'b'; expected"):
        load_field_labels(path, split_column="fold")


def test_split_column_stays_with_its_row_when_rows_are_dropped(tmp_path: Path) -> None:
    """field_id N must carry the split of row N even when earlier rows are dropped."""
    geometries = [None, px_box(0, 0, 10, 10), shapely.Polygon(), px_box(20, 0, 30, 10)]
    path = write_labels(
        tmp_path / "s.geojson", geometries, columns={"fold": ["train", "val", "train", "test"]}
    )
    labels = load_field_labels(path, split_column="fold")
    assert labels.fields["field_id"].tolist() == [2, 4]
    assert labels.fields["split"].tolist() == ["val", "test"]


def test_split_column_stays_with_its_row_when_classes_are_missing(tmp_path: Path) -> None:
    geometries = [px_box(0, 0, 10, 10), px_box(20, 0, 30, 10), px_box(40, 0, 50, 10)]
    path = write_labels(
        tmp_path / "s.gpkg",
        geometries,
        columns={"crop": [None, "wheat", "maize"], "fold": ["train", "val", "test"]},
    )
    labels = load_field_labels(path, class_column="crop", split_column="fold")
    assert labels.fields["field_id"].tolist() == [2, 3]
    assert labels.fields["category"].tolist() == ["wheat", "maize"]
    assert labels.fields["split"].tolist() == ["val", "test"]


def test_split_column_without_values_says_how_many(tmp_path: Path) -> None:
    geometries = [px_box(0, 0, 10, 10), px_box(20, 0, 30, 10), px_box(40, 0, 50, 10)]
    path = write_labels(tmp_path / "s.gpkg", geometries, columns={"fold": ["train", None, None]})
    with pytest.raises(InputFileError) as raised:
        load_field_labels(path, split_column="fold")
    assert str(raised.value) == (
        "--split-column 'fold' has no value for 2 of 3 fields; give each field train, val or test"
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            [1250.5, 980.25, 4100.0],
            "--class-column 'c' holds 3 distinct values over 3 fields (non-integer numbers): "
            "each becomes a class; is it a class column?",
        ),
        (
            list(range(1, 26)),
            "--class-column 'c' holds 25 distinct values over 25 fields: each becomes a class; "
            "is it a class column?",
        ),
        (["wheat", "maize"] * 13, None),
        ([1.0, 2.0, 1.0], None),  # integer codes read as floats
    ],
    ids=["fractional", "one per field", "names", "integral floats"],
)
def test_class_column_that_looks_continuous_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, values: list[object], message: str | None
) -> None:
    geometries = [px_box(10 * i, 0, 10 * i + 5, 5) for i in range(len(values))]
    path = write_labels(tmp_path / "c.gpkg", geometries, columns={"c": values})
    with caplog.at_level(logging.WARNING, logger="fieldseg"):
        labels = load_field_labels(path, class_column="c")
    assert len(labels.categories) == len(set(values))  # still one class per value
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ([message] if message else [])


# --------------------------------------------------------------------------------------------
# reprojection
# --------------------------------------------------------------------------------------------
def test_fixture_has_no_pixel_centre_near_an_edge() -> None:
    """Precondition of the reprojection test: every pixel centre is >= 1 mm from every edge."""
    cols, rows = np.meshgrid(np.arange(-5, 340) + 0.5, np.arange(-5, 290) + 0.5)
    xs, ys = SCENE_TRANSFORM @ (cols.ravel(), rows.ravel())
    points = shapely.points(xs, ys)
    for name, geometry in FIELDS.items():
        assert shapely.distance(points, geometry.boundary).min() > 1e-3, name


@pytest.mark.parametrize("suffix", [".geojson", ".gpkg"])
def test_labels_in_wgs84_match_labels_in_utm(
    tmp_path: Path, basic_scene: SceneFixture, basic_dataset: Dataset, suffix: str
) -> None:
    """Labels in EPSG:4326 give the same masks as the same polygons in the raster's UTM CRS.

    fieldseg reprojects vertices (no densification), so the UTM -> 4326 -> UTM round trip moves
    a vertex by float error only (checked below: < 1 micrometre), and every straight edge lies
    where it was to that precision. No pixel centre of the fixture lies within 1 mm of an edge
    (test above), so no pixel may change: the tolerance is zero pixels.
    """
    path = write_labels(tmp_path / f"wgs84{suffix}", list(FIELDS.values()), to_crs="EPSG:4326")
    back = gpd.read_file(path).to_crs(CRS_UTM)
    for original, returned in zip(FIELDS.values(), back.geometry, strict=True):
        shift = np.abs(shapely.get_coordinates(original) - shapely.get_coordinates(returned))
        assert shift.max() < 1e-6
    _tile(basic_scene.scene, path, tmp_path / "out")
    ds = read_dataset(tmp_path / "out")
    assert ds.field_ids() == set(FIELD_IDS.values())
    check_against_truth(ds, basic_scene.truth)
    reference = basic_dataset
    for split in ("train", "val", "test"):
        ours = [
            (a["image_id"], a["field_id"], a["segmentation"]) for a in ds.coco[split]["annotations"]
        ]
        theirs = [
            (a["image_id"], a["field_id"], a["segmentation"])
            for a in reference.coco[split]["annotations"]
        ]
        assert ours == theirs


def test_labels_in_another_utm_zone(tmp_path: Path, basic_scene: SceneFixture) -> None:
    """Labels in EPSG:32632 (the neighbouring zone) land on the same pixels of a 32633 raster."""
    path = write_labels(
        tmp_path / "zone32.gpkg", [FIELDS["rect_a"], FIELDS["holed"]], to_crs="EPSG:32632"
    )
    _tile(basic_scene.scene, path, tmp_path / "out")
    ds = read_dataset(tmp_path / "out")
    check_against_truth(ds, {1: FIELDS["rect_a"], 2: FIELDS["holed"]})
    (image,) = [im for im in ds.images if (im.row_off, im.col_off) == (0, 96)]
    holed = decode_mask(image.by_field()[2]["segmentation"])
    assert np.array_equal(holed, rasterize_truth(FIELDS["holed"], image.transform, image.shape))


def test_thin_overlap_holding_pixel_centres_goes_to_the_smaller_field(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    """Two fields overlap on a strip only 0.04 px wide, but the strip holds 50 pixel centres.

    The overlap is 0.08 % of the smaller field, yet it decides 50 pixels: they belong to the
    smaller field (A), and the pair is an overlapping pair.
    """
    a = px_box(10, 10, 59.52, 60)  # 49.52 x 50 px
    b = px_box(59.48, 10, 110, 60)  # 50.52 x 50 px
    strip = a.intersection(b)
    assert strip.area / a.area < 1e-3
    path = write_labels(tmp_path / "thin.gpkg", [a, b])
    summary = _tile(basic_scene.scene, path, tmp_path / "out")
    ds = read_dataset(tmp_path / "out")
    (image,) = [im for im in ds.images if (im.row_off, im.col_off) == (0, 0)]
    mask_a = decode_mask(image.by_field()[1]["segmentation"])
    mask_b = decode_mask(image.by_field()[2]["segmentation"])
    assert mask_a[10:60, 59].all(), "the disputed column of pixel centres went to the larger field"
    assert not mask_b[:, 59].any()
    assert (mask_a.sum(), mask_b.sum()) == (2500, 2500)
    assert summary.labels is not None and summary.labels.n_overlapping_pairs == 1
