"""`fieldseg predict` with a trained checkpoint: on synthetic data and on a real FTW scene.

The real scene (``../shared/data/real/ftw-austria-8band.tif``: 8 bands uint16, red, green, blue
and NIR for two dates, no band names) is predicted with a checkpoint trained briefly on 8-band
synthetic data whose bands carry the same names. The model is barely trained: the test checks
that the whole path works on real data (bands, CRS, bounds, output, QGIS style), not accuracy.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import shapely
from conftest import CPU_CONFIG, FAST_TRAINING, assert_user_error, make_tiny_dataset, run

from fieldseg.training import train

CONFIG = CPU_CONFIG
FAST = [*FAST_TRAINING, "model.detections_per_chip=50", "training.epochs=1"]
AUSTRIA = (
    Path(__file__).resolve().parents[1].parent
    / "shared"
    / "data"
    / "real"
    / ("ftw-austria-8band.tif")
)


@pytest.fixture(scope="module")
def eight_band_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eight")
    train(make_tiny_dataset(root, dates=2), CONFIG, root / "run", overrides=FAST)
    return root


@pytest.mark.slow
def test_predict_with_a_checkpoint_on_its_own_kind_of_scene(eight_band_run: Path) -> None:
    out = eight_band_run / "predicted.gpkg"
    result = run("predict", eight_band_run / "scene.tif", "-m", eight_band_run / "run", "-o", out,
                 "--score-threshold", "0.05", "--chip-size", "96")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "fields over" in result.output
    fields = gpd.read_file(out, layer="fields")
    assert fields["model"].str.fullmatch(r"maskrcnn:[0-9a-f]{12}").all()
    assert fields.geometry.is_valid.all()
    geometries = fields.geometry.values
    a, b = shapely.STRtree(geometries).query(geometries, predicate="overlaps")
    assert not (a < b).any()
    again = run("predict", eight_band_run / "scene.tif", "-m", eight_band_run / "run", "-o", out)
    assert_user_error(again, "--overwrite")
    four = eight_band_run / "four.tif"
    with rasterio.open(eight_band_run / "scene.tif") as src:
        profile = src.profile
        profile.update(count=4)
        with rasterio.open(four, "w", **profile) as dst:
            dst.write(src.read([1, 2, 3, 4]))
    result = run("predict", four, "-m", eight_band_run / "run", "-o", eight_band_run / "x.gpkg")
    assert_user_error(result, "has 4 bands; the model was trained on 8")


@pytest.mark.slow
def test_a_model_object_predicts_as_its_checkpoint(eight_band_run: Path) -> None:
    """Same chips (the checkpoint's, not a default), same classes, same ``model`` tag."""
    from fieldseg.checkpoint import load_checkpoint
    from fieldseg.inference import predict_scene

    scene, run_dir = eight_band_run / "scene.tif", eight_band_run / "run"
    options = {"score_threshold": 0.05, "show_progress": False}
    by_path = predict_scene(scene, run_dir, eight_band_run / "a.gpkg", **options)
    model = load_checkpoint(run_dir).build_model()
    by_object = predict_scene(scene, model, eight_band_run / "b.gpkg", **options)
    assert by_path.chip_size == by_object.chip_size == load_checkpoint(run_dir).spec.chip_size
    assert by_path.model == by_object.model and by_path.model.startswith("maskrcnn:")
    assert (by_path.overlap, by_path.seams) == (by_object.overlap, by_object.seams)
    a = gpd.read_file(eight_band_run / "a.gpkg", layer="fields")
    b = gpd.read_file(eight_band_run / "b.gpkg", layer="fields")
    assert len(a) == len(b) and a.geometry.geom_equals(b.geometry).all()
    assert (a["model"] == b["model"]).all()


@pytest.mark.slow
@pytest.mark.real_data
@pytest.mark.skipif(not AUSTRIA.exists(), reason=f"real data not found at {AUSTRIA}")
def test_predict_a_real_ftw_scene(eight_band_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "austria.gpkg"
    result = run("predict", AUSTRIA, "-m", eight_band_run / "run" / "best.pt", "-o", out,
                 "--score-threshold", "0.05", "--chip-size", "192", "--debug-layers")  # fmt: skip
    assert result.exit_code == 0, result.output
    fields = gpd.read_file(out, layer="fields")
    with rasterio.open(AUSTRIA) as src:
        bounds, crs = shapely.box(*src.bounds), src.crs
    assert fields.crs == crs
    assert len(fields) > 0 and fields.geometry.within(bounds).all()
    assert fields.geometry.is_valid.all()
    chips = gpd.read_file(out, layer="chips")
    assert shapely.union_all(chips.geometry.values).covers(bounds)
    with sqlite3.connect(out) as db:
        styled = {name for (name,) in db.execute("SELECT f_table_name FROM layer_styles")}
    assert styled == {"fields", "chips", "seams"}
