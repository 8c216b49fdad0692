"""The dense route: overlapping chip maps blended, fields extracted on the blend as it streams."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from affine import Affine
from conftest import OracleScene, overlapping_pairs, rectangle_tiling
from rasterio import features
from rasterio.crs import CRS

from fieldseg.dense_stitching import DenseBlender, edge_weights
from fieldseg.errors import ConfigError
from fieldseg.inference import predict_scene
from fieldseg.instance_extraction import ExtractionParams, LabelMatch, extract_fields, label_f1
from fieldseg.object_matching import match_objects
from fieldseg.oracle import DenseOracleFieldModel, OracleFieldModel
from fieldseg.raster_io import write_geotiff
from fieldseg.vector_io import read_vector


def _predict(ids: Path, out: Path, model: object, **kwargs: object) -> gpd.GeoDataFrame:
    options = {"chip_size": 96, "overlap": 32, "show_progress": False, "min_area_m2": 0.0}
    options.update(kwargs)
    predict_scene(ids, model, out, **options)  # type: ignore[arg-type]
    return read_vector(out)


def test_edge_weights_fall_towards_the_chip_edge_and_never_vanish() -> None:
    weights = edge_weights(10, 4)
    assert weights.tolist() == pytest.approx([0.25, 0.5, 0.75, 1, 1, 1, 1, 0.75, 0.5, 0.25])
    assert (edge_weights(8, 100) > 0).all()


def _whole_scene_f1(ids_path: Path, model: DenseOracleFieldModel) -> LabelMatch:
    """The oracle's maps of the whole scene as one chip, extracted at once: no seams at all."""
    with rasterio.open(ids_path) as src:
        ids = src.read(1)
    maps = model.dense_maps([torch.from_numpy(ids[None].astype(np.float32))])[0]
    fields = extract_fields(
        maps["extent"].numpy(), maps["boundary"].numpy(), None, model.extraction_params
    )
    kept = np.r_[False, fields.scores >= 0.5]  # predict_scene's default score threshold
    return label_f1(np.where(kept[fields.labels], fields.labels, 0), ids)


@pytest.mark.parametrize(("chip", "overlap"), [(48, 12), (64, 30), (96, 32)])
def test_blended_seams_cost_nothing_with_exact_maps(
    scene: OracleScene, tmp_path: Path, chip: int, overlap: int
) -> None:
    """Streaming blended chips gives the fields of one extraction over the whole scene."""
    truth = gpd.read_file(scene.truth)
    fields = _predict(
        scene.ids, tmp_path / "f.gpkg", DenseOracleFieldModel(), chip_size=chip, overlap=overlap
    )
    matches = match_objects(fields.geometry.values, truth.geometry.values)
    whole = _whole_scene_f1(scene.ids, DenseOracleFieldModel())
    slack = 0.01 * len(truth)  # polygons are traced per batch; pixel and polygon rules differ
    assert abs(matches.tp - whole.tp) <= slack and abs(len(fields) - whole.n_predicted) <= slack
    assert len(matches.merged_truth) <= whole.n_merged_truth + slack
    # what is left is the representation's limit: fields too thin for an interior (strips of
    # 1-2 px side by side are all boundary) come out together
    assert matches.f1 >= 0.96, matches.metrics()
    assert overlapping_pairs(fields) == 0 and fields.geometry.is_valid.all()
    assert shapely.coverage_is_valid(fields.geometry.values)  # noded across batches too
    assert fields["seam_merged"].any() and (fields["n_chips"] >= 2).any()
    assert fields["model"].unique().tolist() == ["dense_oracle"]


def test_blended_seams_cost_at_most_a_point_of_f1_with_noisy_maps(
    scene: OracleScene, tmp_path: Path
) -> None:
    truth = gpd.read_file(scene.truth)
    model = DenseOracleFieldModel(noisy=True, seed=1)
    fields = _predict(scene.ids, tmp_path / "f.gpkg", model, chip_size=128, overlap=32)
    matches = match_objects(fields.geometry.values, truth.geometry.values)
    # the chips draw other noise than one whole-scene map would, and F1 varies by a point or
    # two between draws (0.888-0.906 over eight): compare with the mean of four draws
    whole = [_whole_scene_f1(scene.ids, DenseOracleFieldModel(noisy=True, seed=s)).f1
             for s in range(1, 5)]  # fmt: skip
    assert matches.f1 >= np.mean(whole) - 0.01, (matches.metrics(), whole)
    assert matches.f1 >= 0.88  # measured 0.89: small fields under blur and noise
    assert overlapping_pairs(fields) == 0


@pytest.mark.parametrize(("seed", "chip", "overlap"), [(101, 96, 32), (102, 64, 20)])
def test_noisy_maps_of_small_rectangles_through_blended_seams_meet_the_dense_target(
    tmp_path: Path, seed: int, chip: int, overlap: int
) -> None:
    """The issue's dense noisy oracle target, F1 >= 0.95 and merged <= 1 %, through predict:
    a dense tiling of small rectangles (sides 4-20 px, about 750 fields touching on every
    side, no gaps) under the oracle's blur (sigma 1 px) and noise, cut into chips of 64-96 px.

    The irregular synthetic scene above stays near 0.89: its misses are mostly fields under
    4 px across, where the 1 px band on each side leaves at most 2 px of blurred interior.
    Even its exact maps (no blur, no noise) give F1 0.969 with 1.4 % of the fields merged: 12
    of its 442 fields are 1-2 px across, all band, so the issue's target can only hold where
    the three-class representation can draw every field; here it does (sides >= 4 px)."""
    truth = rectangle_tiling(np.random.default_rng(seed), (320, 320), low=4)
    transform = Affine(10, 0, 500_000, 0, -10, 5_800_000)
    path = tmp_path / "ids.tif"
    write_geotiff(path, truth[None], crs=CRS.from_epsg(32633), transform=transform,
                  band_names=["field_id"])  # fmt: skip
    model = DenseOracleFieldModel(noisy=True, seed=seed)
    fields = _predict(path, tmp_path / "f.gpkg", model, chip_size=chip, overlap=overlap)
    polygons = [shapely.geometry.shape(g) for g, _ in features.shapes(truth, transform=transform)]
    matches = match_objects(fields.geometry.values, np.array(polygons))
    assert matches.n_truth > 700
    assert matches.f1 >= 0.95, matches.metrics()
    assert matches.merged_rate <= 0.01, matches.metrics()
    assert overlapping_pairs(fields) == 0 and fields.geometry.is_valid.all()
    assert (fields["n_chips"] >= 2).sum() > 100  # many fields lie where chips were blended


def test_one_polygon_for_a_field_spanning_four_chips(tmp_path: Path) -> None:
    """A 60 x 60 px field in the middle of a 100 px scene cut into 4 chips of 64 (overlap 28)."""
    ids = np.zeros((1, 100, 100), np.int32)
    ids[0, 20:80, 20:80] = 1
    ids[0, 20:80, 80:90] = 2  # a narrow neighbour touching it
    transform = Affine(10, 0, 500_000, 0, -10, 5_800_000)
    path = tmp_path / "ids.tif"
    write_geotiff(path, ids, crs=CRS.from_epsg(32633), transform=transform,
                  band_names=["field_id"])  # fmt: skip
    for model in (DenseOracleFieldModel(), DenseOracleFieldModel(noisy=True, seed=0)):
        fields = _predict(path, tmp_path / f"f{model.noisy}.gpkg", model, chip_size=64,
                          overlap=28)  # fmt: skip
        big = fields[fields.geometry.area > 2500 * 100]
        assert len(big) == 1
        assert big["n_chips"].iloc[0] == 4 and bool(big["seam_merged"].iloc[0])
        expected = shapely.box(*(transform * (20, 80)), *(transform * (80, 20)))
        iou = (
            big.geometry.iloc[0].intersection(expected).area
            / big.geometry.iloc[0].union(expected).area
        )
        assert iou > 0.95
        assert len(fields) == 2


def test_fields_taller_than_the_carry_limit_are_cut_not_lost() -> None:
    """Streaming keeps at most max_carry_rows rows of unfinished fields waiting."""
    height, width = 64, 16
    blender = DenseBlender(height, width, chip_size=16, overlap=4,
                           params=ExtractionParams(), chip_rows=range(0, 60, 12),
                           chip_cols=[0], max_carry_rows=20)  # fmt: skip
    extent = np.zeros((16, 16), np.float32)
    extent[:, 2:14] = 1.0  # a field running the whole height
    boundary = np.zeros_like(extent)
    boundary[:, 2] = boundary[:, 13] = 1.0
    valid = np.ones((16, 16), bool)
    batches = []
    for row in range(0, 60, 12):
        blender.add_chip(row, 0, extent, boundary, valid)
        batch = blender.close_rows(row + 12) if row + 12 < 60 else blender.finish()
        if batch is not None:
            batches.append(batch)
    pixels = sum(int((b.labels > 0).sum()) for b in batches)
    assert pixels == height * 12  # every pixel handed over exactly once
    assert len(batches) >= 2  # cut, as the limit says


def test_blend_is_refused_for_instance_models(scene: OracleScene, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="per-pixel"):
        _predict(scene.ids, tmp_path / "f.gpkg", OracleFieldModel(), seams="blend")


def test_dense_models_also_run_through_the_instance_stitcher(
    scene: OracleScene, tmp_path: Path
) -> None:
    truth = gpd.read_file(scene.truth)
    fields = _predict(scene.ids, tmp_path / "f.gpkg", DenseOracleFieldModel(), seams="instances")
    matches = match_objects(fields.geometry.values, truth.geometry.values)
    assert matches.f1 >= 0.96
    assert overlapping_pairs(fields) == 0
