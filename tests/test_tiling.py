"""``tile_scenes``: chips, georeferenced COCO, label modes, nodata, statistics, output safety."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from conftest import (
    BAND_NAMES,
    CHIP,
    CHIP_COLS,
    CHIP_ROWS,
    CRS_UTM,
    FIELD_IDS,
    FIELDS,
    NODATA_BAND2_PIXELS,
    NODATA_STRIP_COLS,
    OVERLAP,
    SCENE_HEIGHT,
    SCENE_TRANSFORM,
    SCENE_WIDTH,
    SPLIT_NAMES,
    UNDRAWN_FIELD,
    Dataset,
    Image,
    SceneFixture,
    add_nodata,
    check_against_truth,
    components,
    paint_scene,
    px_box,
    rasterize_truth,
    read_dataset,
    total_pixels,
    valid_mask,
    write_labels,
    write_scene,
)
from pycocotools.coco import COCO
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

import fieldseg.chip_writer
from fieldseg.atomic_output import OutputPathError
from fieldseg.coco_format import decode_mask
from fieldseg.dataset_description import DatasetDescription
from fieldseg.errors import ConfigError, InputFileError, OutputExistsError
from fieldseg.raster_io import write_geotiff
from fieldseg.tiling import TileSummary, tile_scenes

ALL_IDS = set(FIELD_IDS.values())


def _tile(scene: SceneFixture, out: Path, **kwargs: object) -> tuple[Dataset, TileSummary]:
    """Tile with the fixture's chip grid and, unless told otherwise, every chip in train."""
    kwargs.setdefault("chip_size", CHIP)
    kwargs.setdefault("overlap", OVERLAP)
    kwargs.setdefault("split", "1,0,0")
    summary = tile_scenes([scene.scene], scene.labels, out, **kwargs)  # type: ignore[arg-type]
    return read_dataset(out), summary


# --------------------------------------------------------------------------------------------
# COCO content against the truth
# --------------------------------------------------------------------------------------------
def test_every_field_appears_under_its_field_id(basic_dataset: Dataset) -> None:
    assert basic_dataset.field_ids() == ALL_IDS


def test_masks_equal_rasterised_truth_pixel_for_pixel(
    basic_dataset: Dataset, basic_scene: SceneFixture
) -> None:
    counts = check_against_truth(basic_dataset, basic_scene.truth)
    assert counts["chips"] == 9
    # 27 annotated pieces, 2 slivers of the "sliver" field in chip column 0
    assert counts["pieces"] == 27
    assert counts["slivers"] == 2


def test_complete_mode_ignores_only_slivers(basic_dataset: Dataset) -> None:
    sliver = FIELDS["sliver"]
    for image in basic_dataset.images:
        ignore = image.ignore()
        if image.col_off == 0 and image.row_off in (96, 132):
            expected = rasterize_truth(sliver, image.transform, image.shape)
            assert expected.sum() == 8  # one pixel column, 8 rows
            assert np.array_equal(ignore, expected)
        else:
            assert image.entry["ignore_mask"] is None
            assert not ignore.any()


def _image(ds: Dataset, row: int, col: int) -> Image:
    (image,) = [im for im in ds.images if (im.row_off, im.col_off) == (row, col)]
    return image


def test_truncated_flags_of_known_pieces(basic_dataset: Dataset) -> None:
    flags: dict[str, set[bool]] = {name: set() for name in FIELDS}
    name_of = {v: k for k, v in FIELD_IDS.items()}
    for image in basic_dataset.images:
        for ann in image.annotations:
            flags[name_of[ann["field_id"]]].add(ann["truncated"])
    # cut by the scene edge or longer than a chip: truncated wherever they appear
    assert flags["scene_edge"] == {True}
    assert flags["bottom_edge"] == {True}
    assert flags["long"] == {True}
    # whole in some chip, cut by the edge of another
    assert flags["holed"] == {False, True}
    assert flags["diamond"] == {False, True}
    assert flags["pentagon"] == {False, True}
    # never cut
    assert flags["rect_a"] == flags["rect_b"] == flags["small"] == flags["multi"] == {False}


def test_hole_and_multipart_are_exact(basic_dataset: Dataset) -> None:
    holed = _image(basic_dataset, 0, 96).by_field()[FIELD_IDS["holed"]]
    mask = decode_mask(holed["segmentation"])
    # chip (0, 96): scene col = 96 + chip col
    assert mask.sum() == holed["area"] == 50 * 50 - 20 * 20
    assert not mask[35:55, 165 - 96 : 185 - 96].any()  # the hole
    assert mask[20:35, 150 - 96 : 200 - 96].all()
    assert holed["truncated"] is False
    assert holed["bbox"] == [150.0 - 96, 20.0, 50.0, 50.0]
    (part,) = components(mask)
    assert len(part.interiors) == 1  # one polygon with one hole

    multi = _image(basic_dataset, 96, 0).by_field()[FIELD_IDS["multi"]]
    mask = decode_mask(multi["segmentation"])
    parts = components(mask)
    assert len(parts) == 2 and all(p.area == 15 * 15 for p in parts)
    assert multi["area"] == 2 * 15 * 15
    assert multi["truncated"] is False
    assert multi["bbox"] == [20.0, 150.0 - 96, 45.0, 35.0]


def test_touching_fields_stay_separate(basic_dataset: Dataset) -> None:
    by_field = _image(basic_dataset, 0, 0).by_field()
    a = decode_mask(by_field[FIELD_IDS["rect_a"]]["segmentation"])
    b = decode_mask(by_field[FIELD_IDS["rect_b"]]["segmentation"])
    assert a.sum() == b.sum() == 900
    assert not (a & b).any()
    assert a[10:40, 39].all() and b[10:40, 40].all()  # no gap between them


def test_annotations_load_with_pycocotools(basic_dataset: Dataset) -> None:
    for split in SPLIT_NAMES:
        coco = COCO(str(basic_dataset.root / f"{split}.json"))
        assert len(coco.getImgIds()) == len(basic_dataset.split_images(split))
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert np.array_equal(
                coco.annToMask(ann).astype(bool), decode_mask(ann["segmentation"])
            )
            assert ann["segmentation"]["size"] == [CHIP, CHIP]
            assert isinstance(ann["segmentation"]["counts"], str)  # compressed RLE


def test_image_entries_are_georeferenced(basic_dataset: Dataset) -> None:
    image_ids, ann_ids = [], []
    for image in basic_dataset.images:
        entry = image.entry
        image_ids.append(entry["id"])
        ann_ids.extend(a["id"] for a in image.annotations)
        assert (entry["width"], entry["height"]) == (CHIP, CHIP)
        assert entry["scene_id"] == "scene"
        assert entry["window"] == {
            "col_off": image.col_off,
            "row_off": image.row_off,
            "width": CHIP,
            "height": CHIP,
        }
        assert entry["crs"]["epsg"] == 32633
        assert CRS.from_wkt(entry["crs"]["wkt"]) == CRS.from_epsg(32633)
        expected = SCENE_TRANSFORM @ Affine.translation(image.col_off, image.row_off)
        assert entry["transform"] == list(expected[:6])
        assert entry["nodata_fraction"] == 0
        _, meta = basic_dataset.chip(image)
        assert meta["transform"] == expected
        assert (basic_dataset.root / entry["file_name"]).is_file()
        for ann in image.annotations:
            assert ann["category_id"] == 1
    assert len(set(image_ids)) == len(image_ids)
    assert len(set(ann_ids)) == len(ann_ids)
    for split in SPLIT_NAMES:
        categories = basic_dataset.coco[split]["categories"]
        assert [(c["id"], c["name"]) for c in categories] == [(1, "field")]


# --------------------------------------------------------------------------------------------
# chip placement and chip files
# --------------------------------------------------------------------------------------------
def test_chips_are_full_size_and_edge_chips_shift_inward(
    basic_dataset: Dataset, scene_data: np.ndarray
) -> None:
    offsets = sorted((im.row_off, im.col_off) for im in basic_dataset.images)
    assert offsets == sorted((r, c) for r in CHIP_ROWS for c in CHIP_COLS)
    assert max(c for _, c in offsets) + CHIP == SCENE_WIDTH  # last column ends at the edge
    assert max(r for r, _ in offsets) + CHIP == SCENE_HEIGHT
    for image in basic_dataset.images:
        data, meta = basic_dataset.chip(image)
        assert meta["shape"] == (4, CHIP, CHIP)
        assert meta["dtype"] == "uint16"
        assert meta["descriptions"] == BAND_NAMES
        assert meta["crs"] == CRS.from_string(CRS_UTM)
        assert meta["nodata"] is None
        r, c = image.row_off, image.col_off
        assert np.array_equal(data, scene_data[:, r : r + CHIP, c : c + CHIP])
    files = sorted(p.relative_to(basic_dataset.root) for p in basic_dataset.root.rglob("*.tif"))
    assert files == sorted(Path(im.entry["file_name"]) for im in basic_dataset.images)


def test_scene_smaller_than_a_chip_gives_one_padded_chip(tmp_path: Path) -> None:
    width, height = 100, 90
    field = px_box(10, 10, 50, 40)
    data = paint_scene(width, height, [field])
    data[:, 0, 0] = 7  # make sure 0 only appears as padding
    scene = write_scene(tmp_path / "small.tif", data, nodata=0)
    labels = write_labels(tmp_path / "f.gpkg", [field, px_box(90, 80, 130, 120)])
    summary = tile_scenes(
        [scene], labels, tmp_path / "out", chip_size=CHIP, overlap=OVERLAP, split="1,0,0"
    )
    ds = read_dataset(tmp_path / "out")
    assert summary.candidate_chips == 1
    (image,) = ds.images
    assert (image.row_off, image.col_off) == (0, 0)
    assert image.entry["window"] == {"col_off": 0, "row_off": 0, "width": 100, "height": 90}
    assert image.entry["nodata_fraction"] == pytest.approx(1 - 9000 / CHIP**2, abs=1e-6)
    chip, meta = ds.chip(image)
    assert meta["shape"] == (4, CHIP, CHIP)
    assert meta["nodata"] == 0
    assert np.array_equal(chip[:, :height, :width], data)
    assert (chip[:, height:, :] == 0).all() and (chip[:, :, width:] == 0).all()
    by_field = image.by_field()
    assert by_field[1]["area"] == 40 * 30 and by_field[1]["truncated"] is False
    # field 2 reaches beyond the scene: only its 10 x 10 px inside the scene are annotated
    assert by_field[2]["area"] == 100 and by_field[2]["truncated"] is True
    assert not decode_mask(by_field[2]["segmentation"])[height:, :].any()


def test_dataset_description(basic_dataset: Dataset, basic_scene: SceneFixture) -> None:
    description = DatasetDescription.load(basic_dataset.root)
    assert description.bands == list(BAND_NAMES)
    assert description.dtype == "uint16"
    assert description.nodata is None
    assert (description.chip_size, description.overlap) == (CHIP, OVERLAP)
    assert description.label_mode == "complete"
    assert [(c.id, c.name) for c in description.categories] == [(1, "field")]
    for split in SPLIT_NAMES:
        record = description.splits[split]
        assert record.annotations == f"{split}.json"
        assert record.chips == len(basic_dataset.split_images(split))
        assert record.instances == len(basic_dataset.coco[split]["annotations"])
    assert sum(r.fraction for r in description.splits.values()) == pytest.approx(1)
    assert description.split_method.method == "blocks"
    assert description.split_method.requested == {"train": 1.0, "val": 0.0, "test": 0.0}
    # default block: 4 chips (512), halved but not below two strides (192) while there are
    # fewer than 5 / 1.0 blocks; this scene never has 5, so it ends at two strides
    assert description.split_method.block_size == 2 * (CHIP - OVERLAP)
    assert description.sliver_rule.min_pixels == 10
    assert description.sliver_rule.min_share == pytest.approx(0.02)
    (scene,) = description.scenes
    assert scene.scene_id == "scene"
    assert Path(scene.path) == basic_scene.scene.resolve()
    assert (scene.width, scene.height) == (SCENE_WIDTH, SCENE_HEIGHT)
    assert scene.crs.epsg == 32633
    assert scene.transform == list(SCENE_TRANSFORM[:6])
    assert [s.name for s in description.normalisation] == list(BAND_NAMES)


def test_summary_counts(tmp_path: Path, basic_scene: SceneFixture) -> None:
    _, summary = _tile(basic_scene, tmp_path / "out")
    assert summary.candidate_chips == 9
    assert summary.chips_written == 9
    assert summary.skipped_nodata == 0
    assert summary.slivers_dropped == 2
    assert summary.fields_in_dataset == 11
    assert sum(summary.instances_by_split.values()) == 27
    text = "\n".join(summary.lines())
    assert "chips written: 9 of 9 candidates" in text
    assert "11 fields kept of 11 read" in text


def test_sliver_rule_can_be_relaxed(tmp_path: Path, basic_scene: SceneFixture) -> None:
    ds, summary = _tile(basic_scene, tmp_path / "out", min_piece_pixels=0, min_piece_share=0)
    assert summary.slivers_dropped == 0
    slivers = [
        im.by_field()[FIELD_IDS["sliver"]]
        for im in ds.images
        if im.col_off == 0 and im.row_off in (96, 132)
    ]
    assert [(a["area"], a["truncated"]) for a in slivers] == [(8, True), (8, True)]
    assert all(im.entry["ignore_mask"] is None for im in ds.images)


def test_multi_band_and_float_rasters(tmp_path: Path) -> None:
    """Any band count and dtype: a 7-band float32 scene keeps its dtype and NaN nodata."""
    field = px_box(20, 20, 60, 60)
    data = paint_scene(140, 130, [field], bands=7).astype(np.float32) / 10
    data[:, 90:, :] = np.nan
    scene = write_scene(tmp_path / "f.tif", data, nodata=float("nan"), band_names=None)
    labels = write_labels(tmp_path / "f.gpkg", [field])
    summary = tile_scenes([scene], labels, tmp_path / "out", chip_size=64, overlap=0, split="1,0,0")
    ds = read_dataset(tmp_path / "out")
    description = ds.description
    assert description["dtype"] == "float32"
    assert description["bands"] == [f"band_{i}" for i in range(1, 8)]
    for image in ds.images:
        _, meta = ds.chip(image)
        assert meta["shape"] == (7, 64, 64) and meta["dtype"] == "float32"
        assert np.isnan(meta["nodata"])
    check_against_truth(ds, {1: field}, nodata=float("nan"))
    # chip rows start at 0, 64, 66 (the last shifted inward); rows >= 90 are NaN, so the
    # chips of rows 64 and 66 are 59 % and 62 % nodata and skipped
    assert {im.row_off for im in ds.images} == {0}
    assert {im.col_off for im in ds.images} == {0, 64, 76}
    assert summary.skipped_nodata == 6


# --------------------------------------------------------------------------------------------
# nodata
# --------------------------------------------------------------------------------------------
def test_nodata_pixels_are_not_in_masks_and_full_chips_skipped(
    tmp_path: Path, nodata_scene: SceneFixture
) -> None:
    ds, summary = _tile(nodata_scene, tmp_path / "out")
    # chip (0, 172) is 100 x 90 / 128 x 128 = 55 % nodata > 50 %
    assert summary.skipped_nodata == 1
    assert (0, 172) not in {(im.row_off, im.col_off) for im in ds.images}
    assert len(ds.images) == 8
    check_against_truth(ds, nodata_scene.truth, nodata=0)
    rect_a = _image(ds, 0, 0).by_field()[FIELD_IDS["rect_a"]]
    mask = decode_mask(rect_a["segmentation"])
    # rect_a spans cols 10..39: cols < 20 are nodata, and 3 pixels are nodata in band 2 only
    assert not mask[:, :NODATA_STRIP_COLS].any()
    for r, c in NODATA_BAND2_PIXELS:
        assert not mask[r, c]
    assert rect_a["area"] == 30 * 20 - len(NODATA_BAND2_PIXELS)
    assert rect_a["truncated"] is True  # nodata hides part of it
    for image in ds.images:
        data, meta = ds.chip(image)
        assert meta["nodata"] == 0
        invalid = ~valid_mask(data, 0, image)
        assert image.entry["nodata_fraction"] == pytest.approx(invalid.mean(), abs=1e-6)
    assert ds.description["nodata"] == 0


def test_max_nodata_threshold(tmp_path: Path, nodata_scene: SceneFixture) -> None:
    _, everything = _tile(nodata_scene, tmp_path / "all", max_nodata=1.0)
    assert everything.skipped_nodata == 0 and everything.chips_written == 9
    # with max_nodata 0, every chip holding any nodata pixel goes: column 0 (the strip), the
    # block's chips (0, 96) and (0, 172); chips (0,0) holds band-2 nodata too
    ds, strict = _tile(nodata_scene, tmp_path / "none", max_nodata=0.0)
    kept = {(im.row_off, im.col_off) for im in ds.images}
    assert kept == {(96, 96), (96, 172), (132, 96), (132, 172)}
    assert strict.skipped_nodata == 5


def test_nodata_option_used_when_the_file_declares_none(
    tmp_path: Path, nodata_scene: SceneFixture, scene_data: np.ndarray
) -> None:
    scene = write_scene(tmp_path / "no_declared.tif", add_nodata(scene_data), nodata=None)
    with rasterio.open(scene) as src:
        assert src.nodata is None
    fixture = SceneFixture(scene, nodata_scene.labels, nodata_scene.truth, tmp_path)
    ds, summary = _tile(fixture, tmp_path / "out", nodata=0)
    reference, _ = _tile(nodata_scene, tmp_path / "ref")
    assert summary.skipped_nodata == 1
    assert ds.description["nodata"] == 0
    assert ds.description["scenes"][0]["nodata"] == 0
    check_against_truth(ds, fixture.truth, nodata=0)
    for split in SPLIT_NAMES:
        ours = [(a["field_id"], a["segmentation"]) for a in ds.coco[split]["annotations"]]
        theirs = [(a["field_id"], a["segmentation"]) for a in reference.coco[split]["annotations"]]
        assert ours == theirs
    for image in ds.images:
        assert ds.chip(image)[1]["nodata"] == 0
    # without --nodata the zeros are ordinary values: nothing is skipped
    _, plain = _tile(fixture, tmp_path / "plain")
    assert plain.skipped_nodata == 0


def test_nodata_option_does_not_override_the_file(
    tmp_path: Path, nodata_scene: SceneFixture, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fieldseg"):
        ds, _ = _tile(nodata_scene, tmp_path / "out", nodata=5)
    assert ds.description["nodata"] == 0
    assert any("declares nodata 0" in r.getMessage() for r in caplog.records)


def test_normalisation_statistics_use_valid_train_pixels_only(
    tmp_path: Path, nodata_scene: SceneFixture
) -> None:
    ds, summary = _tile(
        nodata_scene, tmp_path / "out", split="0.5,0.25,0.25", block_size=128, seed=3
    )
    assert summary.chips_by_split["train"] > 0
    assert summary.chips_by_split["val"] + summary.chips_by_split["test"] > 0
    pixels = {}
    for split in SPLIT_NAMES:
        chunks = []
        for image in ds.split_images(split):
            data, _ = ds.chip(image)
            chunks.append(data[:, valid_mask(data, 0, image)].astype(np.float64))
        pixels[split] = np.concatenate(chunks, axis=1) if chunks else np.empty((4, 0))
    train = pixels["train"]
    everything = np.concatenate(list(pixels.values()), axis=1)
    stats = ds.description["normalisation"]
    assert [s["name"] for s in stats] == list(BAND_NAMES)
    for band, record in enumerate(stats):
        values = train[band]
        assert record["n_pixels"] == values.size
        assert record["mean"] == pytest.approx(values.mean(), rel=1e-6)
        assert record["std"] == pytest.approx(values.std(), rel=1e-6)
        # percentiles come from a sample: check their rank in the train pixels
        assert np.percentile(values, 0.5) <= record["p2"] <= np.percentile(values, 5)
        assert np.percentile(values, 95) <= record["p98"] <= np.percentile(values, 99.5)
        assert record["mean"] != pytest.approx(everything[band].mean(), rel=1e-4)
    assert train.min() > 0  # nodata never enters the statistics


# --------------------------------------------------------------------------------------------
# label modes
# --------------------------------------------------------------------------------------------
SPARSE_DRAWN = ("rect_a", "holed", "pentagon", "sliver")


@pytest.fixture
def sparse_labels(tmp_path: Path) -> tuple[Path, dict[int, BaseGeometry]]:
    path = write_labels(tmp_path / "drawn.geojson", [FIELDS[n] for n in SPARSE_DRAWN])
    return path, {i: FIELDS[n] for i, n in enumerate(SPARSE_DRAWN, start=1)}


def test_sparse_chips_only_where_drawn_fields_are(
    tmp_path: Path, basic_scene: SceneFixture, sparse_labels: tuple[Path, dict[int, BaseGeometry]]
) -> None:
    labels, truth = sparse_labels
    summary = tile_scenes(
        [basic_scene.scene],
        labels,
        tmp_path / "out",
        chip_size=CHIP,
        overlap=OVERLAP,
        sparse=True,
        split="1,0,0",
    )
    ds = read_dataset(tmp_path / "out")
    assert ds.description["label_mode"] == "sparse"
    kept = {(im.row_off, im.col_off) for im in ds.images}
    # chips touched by a drawn field; (96, 0) and (132, 0) hold only a sliver of "sliver"
    assert kept == {(0, 0), (0, 96), (0, 172), (96, 96), (96, 172), (132, 96), (132, 172)}
    assert summary.skipped_no_drawn_field == 2
    assert summary.chips_written == 7
    counts = check_against_truth(ds, truth, sparse=True)
    assert counts["pieces"] == sum(len(im.annotations) for im in ds.images)
    assert ds.field_ids() == {1, 2, 3, 4}


def test_sparse_never_marks_an_undrawn_field_as_background(
    tmp_path: Path, basic_scene: SceneFixture, sparse_labels: tuple[Path, dict[int, BaseGeometry]]
) -> None:
    labels, _ = sparse_labels
    tile_scenes(
        [basic_scene.scene],
        labels,
        tmp_path / "out",
        chip_size=CHIP,
        overlap=OVERLAP,
        sparse=True,
        split="1,0,0",
    )
    ds = read_dataset(tmp_path / "out")
    undrawn = [g for n, g in FIELDS.items() if n not in SPARSE_DRAWN] + [UNDRAWN_FIELD]
    seen = 0
    for image in ds.images:
        ignore = image.ignore()
        for geometry in undrawn:
            pixels = rasterize_truth(geometry, image.transform, image.shape)
            assert ignore[pixels].all(), f"{image.entry['file_name']}: undrawn field not ignored"
            seen += int(pixels.sum())
        annotated = np.zeros(image.shape, dtype=bool)
        for ann in image.annotations:
            annotated |= decode_mask(ann["segmentation"])
        assert np.array_equal(ignore | annotated, np.ones(image.shape, dtype=bool))
        assert image.entry["ignore_mask"] is not None
    assert seen > 5000  # the undrawn fields really lie in the chips
    # the undrawn field painted in the raster (never in any label file) is inside chip (96, 96)
    image = _image(ds, 96, 96)
    assert rasterize_truth(UNDRAWN_FIELD, image.transform, image.shape).sum() == 900


def test_label_extent_keeps_only_chips_fully_inside(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    aoi = write_labels(tmp_path / "aoi.gpkg", [px_box(0, 0, 230, 230)])
    ds, summary = _tile(basic_scene, tmp_path / "out", label_extent=aoi)
    kept = {(im.row_off, im.col_off) for im in ds.images}
    assert kept == {(0, 0), (0, 96), (96, 0), (96, 96)}
    assert summary.skipped_outside_extent == 5
    assert ds.description["label_mode"] == "label_extent"
    check_against_truth(ds, basic_scene.truth)


def test_label_extent_in_another_crs(tmp_path: Path, basic_scene: SceneFixture) -> None:
    # 1 px inside the chip edges, so that reprojection cannot make a chip fall out
    aoi = write_labels(tmp_path / "aoi.geojson", [px_box(-1, -1, 225, 225)], to_crs="EPSG:4326")
    ds, summary = _tile(basic_scene, tmp_path / "out", label_extent=aoi)
    assert {(im.row_off, im.col_off) for im in ds.images} == {(0, 0), (0, 96), (96, 0), (96, 96)}
    assert summary.skipped_outside_extent == 5


def test_label_extent_with_sparse_is_refused(tmp_path: Path, basic_scene: SceneFixture) -> None:
    with pytest.raises(ConfigError, match="--label-extent and --sparse"):
        _tile(basic_scene, tmp_path / "out", label_extent=basic_scene.labels, sparse=True)
    assert not (tmp_path / "out").exists()


def test_labels_covering_part_of_the_scene_warn_in_the_default_mode(
    tmp_path: Path, basic_scene: SceneFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """Labels of the east half only: in the default mode the west half would be background."""
    east = [px_box(160, 10, 220, 100), px_box(230, 120, 290, 250)]  # box: 130 x 240 px of 300 x 260
    labels = write_labels(tmp_path / "east.gpkg", east)
    expected = (  # the chips of column 0 (x < 128 px) lie wholly west of the labels
        "3 of the 9 chips of scene scene.tif lie wholly beyond the labels' extent and are "
        "written as pure background; if fields there are unlabelled, give --label-extent "
        "(or --sparse)"
    )
    with caplog.at_level(logging.WARNING, logger="fieldseg"):
        complete = tile_scenes(
            [basic_scene.scene], labels, tmp_path / "a", chip_size=CHIP, overlap=OVERLAP,
            split="1,0,0",
        )  # fmt: skip
    assert complete.warnings == [expected]
    assert [r.getMessage() for r in caplog.records].count(expected) == 1
    sparse = tile_scenes(
        [basic_scene.scene], labels, tmp_path / "b", chip_size=CHIP, overlap=OVERLAP,
        split="1,0,0", sparse=True,
    )  # fmt: skip
    assert sparse.warnings == []
    _, whole = _tile(basic_scene, tmp_path / "c")  # the fixture's labels span the scene
    assert not any("labels' extent" in w for w in whole.warnings)


def test_chips_skipped_for_nodata_do_not_count_as_beyond_the_labels(
    tmp_path: Path, scene_data: np.ndarray
) -> None:
    """A scene whose west third is nodata, labelled everywhere there is data: no warning."""
    data = scene_data.copy()
    data[:, :, :110] = 0
    scene = write_scene(tmp_path / "edge.tif", data, nodata=0)
    east = [px_box(160, 10, 220, 100), px_box(230, 120, 290, 250)]
    labels = write_labels(tmp_path / "east.gpkg", east)
    summary = tile_scenes([scene], labels, tmp_path / "ds", chip_size=CHIP, overlap=OVERLAP,
                          split="1,0,0")  # fmt: skip
    assert summary.skipped_nodata == 3
    assert not any("labels' extent" in w for w in summary.warnings), summary.warnings


def test_drawn_fields_left_in_no_chip_are_named(
    tmp_path: Path, scene_data: np.ndarray, sparse_labels: tuple[Path, dict[int, BaseGeometry]]
) -> None:
    """A drawn field under the nodata of the west third: its chips are skipped, and with
    sparse labels the summary says which field is lost and how to keep such fields."""
    data = scene_data.copy()
    data[:, :, :110] = 0
    scene = write_scene(tmp_path / "edge.tif", data, nodata=0)
    labels, _ = sparse_labels  # rect_a (field 1) lies at columns 10-40
    summary = tile_scenes([scene], labels, tmp_path / "ds", chip_size=CHIP, overlap=OVERLAP,
                          split="1,0,0", sparse=True)  # fmt: skip
    (warning,) = [w for w in summary.warnings if "in no chip" in w]
    assert warning.startswith("1 of 4 labelled fields are in no chip (field_id 1): ")
    assert "3 chips skipped for too much nodata" in warning and "--split 1,0,0" in warning
    assert summary.fields_in_dataset == 3


# --------------------------------------------------------------------------------------------
# several scenes
# --------------------------------------------------------------------------------------------
def test_two_scenes_get_distinct_ids(
    tmp_path: Path, basic_scene: SceneFixture, scene_data: np.ndarray
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_scene(tmp_path / "a" / "scene.tif", scene_data)
    shifted = SCENE_TRANSFORM @ Affine.translation(0, SCENE_HEIGHT)  # directly south
    second = write_scene(tmp_path / "b" / "scene.tif", scene_data, transform=shifted)
    labels = write_labels(
        tmp_path / "f.gpkg",
        [FIELDS["rect_a"], px_box(10, SCENE_HEIGHT + 10, 40, SCENE_HEIGHT + 40)],
    )
    tile_scenes(
        [first, second], labels, tmp_path / "out", chip_size=CHIP, overlap=OVERLAP, split="1,0,0"
    )
    ds = read_dataset(tmp_path / "out")
    assert {im.entry["scene_id"] for im in ds.images} == {"scene", "scene_2"}
    assert [s["scene_id"] for s in ds.description["scenes"]] == ["scene", "scene_2"]
    for image in ds.images:
        if image.entry["scene_id"] == "scene_2":
            assert image.entry["file_name"].startswith("chips/scene_2/")
            expected = shifted @ Affine.translation(image.col_off, image.row_off)
            assert image.transform == expected
    second_truth = {2: px_box(10, SCENE_HEIGHT + 10, 40, SCENE_HEIGHT + 40)}
    check_against_truth(
        ds,
        second_truth,
        scene_transform=shifted,
        images=[im for im in ds.images if im.entry["scene_id"] == "scene_2"],
    )
    assert ds.field_ids() == {1, 2}


def test_a_scene_without_labels_is_said_to_become_background(
    tmp_path: Path, basic_scene: SceneFixture, scene_data: np.ndarray
) -> None:
    """Two scenes, labels on the first only (the second elsewhere, say a wrong CRS)."""
    far = SCENE_TRANSFORM @ Affine.translation(0, 10 * SCENE_HEIGHT)
    second = write_scene(tmp_path / "far.tif", scene_data, transform=far)
    summary = tile_scenes([basic_scene.scene, second], basic_scene.labels, tmp_path / "out",
                          chip_size=CHIP, overlap=OVERLAP, split="1,0,0")  # fmt: skip
    assert "no label falls on scene far.tif: its chips (up to 9) are written as pure " in (
        "\n".join(summary.warnings)
    )


def test_scenes_with_different_bands_are_refused(
    tmp_path: Path, basic_scene: SceneFixture, scene_data: np.ndarray
) -> None:
    three = write_scene(tmp_path / "three.tif", scene_data[:3], band_names=BAND_NAMES[:3])
    with pytest.raises(InputFileError, match=r"three\.tif has 3 bands but scene\.tif has 4"):
        tile_scenes([basic_scene.scene, three], basic_scene.labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# output safety
# --------------------------------------------------------------------------------------------
def test_non_empty_output_refused_and_overwrite_replaces(
    tmp_path: Path, basic_scene: SceneFixture, listing: Callable[[Path], list[str]]
) -> None:
    out = tmp_path / "out"
    _tile(basic_scene, out)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not empty; pass --overwrite"):
        _tile(basic_scene, out)
    assert "keep.txt" in listing(out)
    ds, _ = _tile(basic_scene, out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert listing(out) == ["chips", "dataset.json", "test.json", "train.json", "val.json"]
    assert len(ds.images) == 9
    assert listing(tmp_path) == ["out"]


def test_overwrite_refuses_a_folder_that_is_not_a_dataset(
    tmp_path: Path, basic_scene: SceneFixture, listing: Callable[[Path], list[str]]
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"holds no dataset\.json"):
        _tile(basic_scene, out, overwrite=True)
    assert listing(out) == ["keep.txt"]


def test_dataset_folder_is_readable_by_others(tmp_path: Path, basic_scene: SceneFixture) -> None:
    import os
    import stat

    umask = os.umask(0o022)
    try:
        _tile(basic_scene, tmp_path / "out")
    finally:
        os.umask(umask)
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == 0o755


def test_empty_output_directory_is_accepted(tmp_path: Path, basic_scene: SceneFixture) -> None:
    (tmp_path / "out").mkdir()
    ds, _ = _tile(basic_scene, tmp_path / "out")
    assert len(ds.images) == 9


def test_existing_file_as_output_is_refused_even_with_overwrite(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    (tmp_path / "out").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="is a file; the output is a folder"):
            _tile(basic_scene, tmp_path / "out", overwrite=overwrite)
    assert (tmp_path / "out").read_text() == "precious"


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("error", [_Boom, KeyboardInterrupt])
def test_failure_midway_leaves_nothing_behind(
    tmp_path: Path,
    basic_scene: SceneFixture,
    monkeypatch: pytest.MonkeyPatch,
    listing: Callable[[Path], list[str]],
    error: type[BaseException],
) -> None:
    parent = tmp_path / "parent"
    parent.mkdir()
    real = fieldseg.chip_writer.write_geotiff
    calls: list[Path] = []

    def failing(path: Path, *args: object, **kwargs: object) -> None:
        if len(calls) == 4:
            raise error("stop")
        calls.append(Path(path))
        real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fieldseg.chip_writer, "write_geotiff", failing)
    with pytest.raises(error):
        _tile(basic_scene, parent / "out")
    assert len(calls) == 4
    assert not any(p.exists() for p in calls)
    assert listing(parent) == []


def test_failure_during_overwrite_keeps_the_old_dataset(
    tmp_path: Path,
    basic_scene: SceneFixture,
    monkeypatch: pytest.MonkeyPatch,
    listing: Callable[[Path], list[str]],
) -> None:
    out = tmp_path / "out"
    _tile(basic_scene, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def failing(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fieldseg.chip_writer, "write_geotiff", failing)
    with pytest.raises(KeyboardInterrupt):
        _tile(basic_scene, out, overwrite=True)
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert listing(tmp_path) == ["out"]


# --------------------------------------------------------------------------------------------
# bad input: one FieldsegError with a clear message, and no output
# --------------------------------------------------------------------------------------------
def test_missing_scene(tmp_path: Path, basic_scene: SceneFixture) -> None:
    with pytest.raises(InputFileError, match=r"raster not found: .*nope\.tif"):
        tile_scenes([tmp_path / "nope.tif"], basic_scene.labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_labels(tmp_path: Path, basic_scene: SceneFixture) -> None:
    with pytest.raises(InputFileError, match=r"vector file not found: .*nope\.gpkg"):
        tile_scenes([basic_scene.scene], tmp_path / "nope.gpkg", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_raster(tmp_path: Path, basic_scene: SceneFixture) -> None:
    bad = tmp_path / "garbage.tif"
    bad.write_bytes(b"II*\x00" + bytes(range(256)) * 8)
    with pytest.raises(InputFileError, match=r"cannot read raster .*garbage\.tif"):
        tile_scenes([bad], basic_scene.labels, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputFileError, match=r"cannot read raster .*garbage\.tif"):
        tile_scenes(str(bad), basic_scene.labels, tmp_path / "out")  # one path, not in a list


def test_truncated_raster(tmp_path: Path, basic_scene: SceneFixture) -> None:
    """A GeoTIFF cut short: the header opens but pixels are missing."""
    data = basic_scene.scene.read_bytes()
    bad = tmp_path / "cut.tif"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputFileError, match=r"cut\.tif"):
        tile_scenes([bad], basic_scene.labels, tmp_path / "out", chip_size=CHIP, overlap=OVERLAP)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.tif"]


def test_raster_without_crs(
    tmp_path: Path, basic_scene: SceneFixture, scene_data: np.ndarray
) -> None:
    scene = write_scene(tmp_path / "nocrs.tif", scene_data, crs=None)
    from fieldseg.errors import CRSError

    with pytest.raises(CRSError, match=r"raster .*nocrs\.tif has no CRS"):
        tile_scenes([scene], basic_scene.labels, tmp_path / "out")


def test_labels_without_crs(tmp_path: Path, basic_scene: SceneFixture) -> None:
    from fieldseg.errors import CRSError

    labels = write_labels(tmp_path / "nocrs.shp", [FIELDS["rect_a"]], crs=None)
    with pytest.raises(CRSError, match=r"vector file .*nocrs\.shp has no CRS"):
        tile_scenes([basic_scene.scene], labels, tmp_path / "out")


def test_labels_that_do_not_overlap_the_raster(tmp_path: Path, basic_scene: SceneFixture) -> None:
    far = write_labels(tmp_path / "far.gpkg", [px_box(1000, 1000, 1030, 1030)])
    with pytest.raises(InputFileError, match="labels do not overlap the raster"):
        tile_scenes([basic_scene.scene], far, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("chip", "overlap"), [(128, 128), (64, 100)])
def test_overlap_not_below_chip_size(
    tmp_path: Path, basic_scene: SceneFixture, chip: int, overlap: int
) -> None:
    with pytest.raises(ConfigError, match=rf"overlap \({overlap}\) must be smaller"):
        tile_scenes(
            [basic_scene.scene], basic_scene.labels, tmp_path / "o", chip_size=chip, overlap=overlap
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"class_column": "crop"}, "--class-column 'crop' is not a column"),
        ({"split_column": "fold"}, "--split-column 'fold' is not a column"),
        ({"split": "0.8,0.1"}, "--split expects three"),
        ({"split": "0.7,0.1,0.1"}, "must add up to 1"),
        ({"max_nodata": 1.5}, "--max-nodata is a share between 0 and 1"),
        ({"compress": "jpeg2000"}, "compression must be one of"),
        ({"chip_size": 8, "overlap": 0}, "chip size must be at least 16"),
        ({"block_size": 10}, r"--block-size \(10\) must be at least the stride \(96\)"),
    ],
)
def test_bad_options(
    tmp_path: Path, basic_scene: SceneFixture, kwargs: dict[str, object], message: str
) -> None:
    kwargs.setdefault("chip_size", CHIP)
    kwargs.setdefault("overlap", OVERLAP)
    with pytest.raises(ConfigError, match=message):
        tile_scenes([basic_scene.scene], basic_scene.labels, tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()


def test_unknown_column_message_lists_the_columns(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    with pytest.raises(ConfigError) as info:
        tile_scenes([basic_scene.scene], basic_scene.labels, tmp_path / "o", class_column="crop")
    assert "'crop'" in str(info.value)
    assert "name" in str(info.value)  # the file's real column is offered


def test_total_pixels_helper_counts_beyond_the_scene() -> None:
    """Sanity check of the oracle used above: pixels beyond the scene edge count."""
    assert total_pixels(FIELDS["scene_edge"]) == 50 * 40
    assert total_pixels(FIELDS["holed"]) == 2100


def test_chip_larger_than_the_scene_is_refused(tmp_path: Path) -> None:
    """A 160 x 160 px scene's one 256 px chip is 61 % padding: it could never be written. An
    error when no scene can give a chip; a warning when another scene does."""
    field = px_box(10, 10, 50, 40)
    scene = write_scene(tmp_path / "s2.tif", paint_scene(160, 160, [field]))
    labels = write_labels(tmp_path / "f.gpkg", [field])
    with pytest.raises(ConfigError) as raised:
        tile_scenes([scene], labels, tmp_path / "out", chip_size=256, overlap=64)
    assert str(raised.value) == (
        "--chip-size 256 is larger than s2.tif (160 x 160 px): a chip there would be more than "
        "50% padding; use a --chip-size of at most 160"
    )
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"at most 160 and a smaller --overlap$"):
        tile_scenes([scene], labels, tmp_path / "out", chip_size=256, overlap=160)
    # with a scene that is large enough beside it, the small one is named in a warning
    big = write_scene(tmp_path / "big.tif", paint_scene(SCENE_WIDTH, SCENE_HEIGHT, [field]))
    summary = tile_scenes([big, scene], labels, tmp_path / "out", chip_size=256, overlap=64,
                          split="1,0,0")  # fmt: skip
    assert summary.warnings[0] == (
        "--chip-size 256 is larger than s2.tif (160 x 160 px): a chip there would be more than "
        "50% padding, so it gives no chip"
    )
    assert summary.chips_written >= 1


def test_the_same_scene_twice_is_refused(tmp_path: Path, basic_scene: SceneFixture) -> None:
    scene = basic_scene.scene
    again = scene.parent / "sub" / ".." / scene.name  # another spelling of the same file
    with pytest.raises(ConfigError) as raised:
        tile_scenes([scene, again], basic_scene.labels, tmp_path / "out", chip_size=CHIP)
    assert str(raised.value) == f"scene {again} is given more than once: give each scene once"
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# the sliver rule (docs/formats.md, "Pieces and slivers")
# --------------------------------------------------------------------------------------------
def _two_chip_scene(tmp_path: Path, fields: list[BaseGeometry]) -> Path:
    """A 128 x 64 scene: with chip 64 and no overlap, chips at columns 0 and 64."""
    data = paint_scene(128, 64, fields)
    return write_scene(tmp_path / "two.tif", data)


def test_sliver_rule_thresholds(tmp_path: Path) -> None:
    fields = {
        # left piece 4 x 2 = 8 px (< 10 px): sliver; right piece 12 px (60 %): kept
        "few_pixels": px_box(60, 10, 70, 12),
        # left piece 1 x 20 = 20 px but 20 / 1200 = 1.7 % (< 2 %): sliver
        "small_share": px_box(63, 20, 123, 40),
        # left piece exactly 10 px and exactly 2 % of 500 px: kept (the rule is "fewer than")
        "at_threshold": px_box(63, 45, 113, 55),
        # 2 px, whole: whole fields are always kept, however small
        "tiny_whole": px_box(10, 50, 12, 51),
    }
    scene = _two_chip_scene(tmp_path, list(fields.values()))
    labels = write_labels(tmp_path / "f.gpkg", list(fields.values()))
    summary = tile_scenes([scene], labels, tmp_path / "out", chip_size=64, overlap=0, split="1,0,0")
    ds = read_dataset(tmp_path / "out")
    left, right = sorted(ds.images, key=lambda im: im.col_off)
    got_left = {fid: (a["area"], a["truncated"]) for fid, a in left.by_field().items()}
    got_right = {fid: (a["area"], a["truncated"]) for fid, a in right.by_field().items()}
    assert got_left == {3: (10, True), 4: (2, False)}
    assert got_right == {1: (12, True), 2: (1180, True), 3: (490, True)}
    assert summary.slivers_dropped == 2
    sliver_pixels = rasterize_truth(fields["few_pixels"], left.transform, left.shape) | (
        rasterize_truth(fields["small_share"], left.transform, left.shape)
    )
    assert sliver_pixels.sum() == 8 + 20
    assert np.array_equal(left.ignore(), sliver_pixels)
    assert right.entry["ignore_mask"] is None
    check_against_truth(ds, dict(enumerate(fields.values(), start=1)))


def test_sliver_share_counts_the_whole_field_beyond_the_scene(tmp_path: Path) -> None:
    """The share is of the field's pixels on the scene grid *beyond the scene edge too*.

    The field runs 1,880 px east of a 128 px scene; its 32 px inside are 0.4 % of it: a sliver.
    """
    long_field = px_box(120, 5, 2000, 9)
    other = px_box(10, 30, 40, 60)
    scene = _two_chip_scene(tmp_path, [long_field, other])
    labels = write_labels(tmp_path / "f.gpkg", [long_field, other])
    summary = tile_scenes([scene], labels, tmp_path / "out", chip_size=64, overlap=0, split="1,0,0")
    ds = read_dataset(tmp_path / "out")
    right = next(im for im in ds.images if im.col_off == 64)
    inside = rasterize_truth(long_field, right.transform, right.shape)
    assert inside.sum() == 32 and total_pixels(long_field) == 1880 * 4
    assert 1 not in right.by_field()
    assert right.ignore()[inside].all()
    assert summary.slivers_dropped == 1
    check_against_truth(ds, {1: long_field, 2: other})


def test_max_nodata_is_inclusive(tmp_path: Path) -> None:
    """A chip with exactly --max-nodata nodata is kept; above it, it is skipped."""
    field = px_box(80, 20, 120, 60)
    data = paint_scene(CHIP, CHIP, [field])
    data[:, :, : CHIP // 2] = 0  # exactly half the chip is nodata
    scene = write_scene(tmp_path / "half.tif", data, nodata=0)
    labels = write_labels(tmp_path / "f.gpkg", [field])
    summary = tile_scenes(
        [scene], labels, tmp_path / "a", chip_size=CHIP, overlap=0, max_nodata=0.5
    )
    assert summary.chips_written == 1 and summary.skipped_nodata == 0
    (image,) = read_dataset(tmp_path / "a").images
    assert image.entry["nodata_fraction"] == 0.5
    with pytest.raises(
        InputFileError,
        match=r"no chip was written: all 1 candidate chips have more than 49% nodata",
    ):
        tile_scenes([scene], labels, tmp_path / "b", chip_size=CHIP, overlap=0, max_nodata=0.49)
    assert not (tmp_path / "b").exists()


def test_label_extent_holding_no_whole_chip(tmp_path: Path, basic_scene: SceneFixture) -> None:
    aoi = write_labels(tmp_path / "aoi.gpkg", [px_box(0, 0, 100, 100)])
    with pytest.raises(InputFileError, match="no chip lies fully inside the label extent"):
        _tile(basic_scene, tmp_path / "out", label_extent=aoi)
    assert not (tmp_path / "out").exists()


def test_percentiles_are_not_biased_towards_chips_with_few_valid_pixels(tmp_path: Path) -> None:
    """p2/p98 estimate the percentiles of the pooled valid train pixels.

    Left chip: 16,384 valid pixels around 1,000-1,099. Right chip: 100 valid pixels of 5,000 and
    nodata elsewhere. 5,000 is 0.6 % of the valid pixels, so the 98th percentile lies in the
    1,000s, whatever the sampling.
    """
    data = np.zeros((1, CHIP, 2 * CHIP), dtype=np.uint16)
    data[0, :, :CHIP] = 1000 + np.random.default_rng(1).integers(0, 100, size=(CHIP, CHIP))
    data[0, 10:20, CHIP + 10 : CHIP + 20] = 5000
    scene = write_scene(tmp_path / "s.tif", data, nodata=0, band_names=["b"])
    labels = write_labels(tmp_path / "f.gpkg", [px_box(10, 10, 50, 50)])
    tile_scenes(
        [scene], labels, tmp_path / "out", chip_size=CHIP, overlap=0, max_nodata=1.0,
        split="1,0,0",
    )  # fmt: skip
    ds = read_dataset(tmp_path / "out")
    assert len(ds.images) == 2
    values = np.concatenate([data[0, :, :CHIP].ravel(), np.full(100, 5000)]).astype(np.float64)
    (record,) = ds.description["normalisation"]
    assert record["n_pixels"] == values.size
    assert record["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert np.percentile(values, 97) <= record["p98"] <= np.percentile(values, 99)
    assert np.percentile(values, 1) <= record["p2"] <= np.percentile(values, 3)


def test_failed_run_creates_no_directories(tmp_path: Path, basic_scene: SceneFixture) -> None:
    """Nothing is left behind on failure, not even the output's missing parent folders."""
    with pytest.raises(InputFileError):
        tile_scenes(
            [basic_scene.scene], tmp_path / "missing.gpkg", tmp_path / "new" / "deeper" / "ds"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# worker processes
# --------------------------------------------------------------------------------------------
def test_worker_processes_write_the_same_dataset(tmp_path: Path, basic_scene: SceneFixture) -> None:
    """Cutting chips in two worker processes gives byte-identical chips and the same COCO."""
    _tile(basic_scene, tmp_path / "one", split="0.6,0.2,0.2", block_size=96, workers=1)
    _tile(basic_scene, tmp_path / "two", split="0.6,0.2,0.2", block_size=96, workers=2)
    for name in ("train.json", "val.json", "test.json"):
        one = json.loads((tmp_path / "one" / name).read_text())
        two = json.loads((tmp_path / "two" / name).read_text())
        assert one["images"] == two["images"] and one["annotations"] == two["annotations"]
    assert (tmp_path / "one" / "dataset.json").read_text() == (
        tmp_path / "two" / "dataset.json"
    ).read_text()
    chips_one = sorted((tmp_path / "one" / "chips").rglob("*.tif"))
    chips_two = sorted((tmp_path / "two" / "chips").rglob("*.tif"))
    assert [p.name for p in chips_one] == [p.name for p in chips_two] and chips_one
    for a, b in zip(chips_one, chips_two, strict=True):
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "two").glob(".labels-*"))


def test_labels_across_the_antimeridian_are_found(tmp_path: Path) -> None:
    """A UTM 60S scene over 180° with labels in EPSG:4326 on both sides of the antimeridian."""
    x0, y0 = 818_000.0, 8_119_000.0  # about 17°S, 179.99°E to 179.99°W
    transform = Affine(10, 0, x0, 0, -10, y0)
    data = np.full((4, 260, 300), 500, dtype=np.uint16)
    scene = tmp_path / "fiji.tif"
    write_geotiff(scene, data, transform=transform, crs=CRS.from_epsg(32760))
    west = shapely.box(x0 + 200, y0 - 1200, x0 + 1200, y0 - 200)  # east of 180: lon > 0
    east = shapely.box(x0 + 1800, y0 - 1200, x0 + 2800, y0 - 200)  # west of 180: lon < 0
    fields = list(gpd.GeoSeries([west, east], crs=32760).segmentize(100).to_crs(4326).to_numpy())
    assert fields[0].bounds[0] > 0 > fields[1].bounds[2]
    labels = tmp_path / "fields.gpkg"
    gpd.GeoDataFrame(geometry=fields, crs=4326).to_file(labels)
    summary = tile_scenes([scene], labels, tmp_path / "out", chip_size=128, overlap=32,
                          split="1,0,0")  # fmt: skip
    assert summary.fields_in_dataset == 2


def test_a_chip_that_cannot_be_written_is_one_clear_error(
    tmp_path: Path, basic_scene: SceneFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fieldseg.chip_writer, "write_geotiff", disk_full)
    with pytest.raises(OutputPathError, match=r"cannot write chip .*No space left on device"):
        _tile(basic_scene, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_interrupt_ends_the_tiling_workers_at_once() -> None:
    """Ctrl-C in the main process stops busy workers instead of waiting for them (a worker
    left running could also write chips after the temporary dataset was removed)."""
    import time

    from fieldseg.tiling import _executor

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), _executor(2) as pool:
        assert pool is not None
        busy = [pool.submit(time.sleep, 60) for _ in range(2)]
        time.sleep(1.0)  # both workers are asleep in their batch
        raise KeyboardInterrupt
    assert time.monotonic() - started < 30
    assert all(f.done() for f in busy)
