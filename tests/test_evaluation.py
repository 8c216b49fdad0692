"""fieldseg.evaluation and `fieldseg evaluate`: hand-made cases whose answers are known."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from conftest import assert_user_error, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from shapely.affinity import translate
from shapely.geometry import box

import fieldseg.evaluation
from fieldseg.cli import main
from fieldseg.errors import ConfigError, InputFileError
from fieldseg.evaluation import EvaluationSettings, evaluate_fields, evaluate_files
from fieldseg.evaluation_report import format_table, write_error_layers

CRS = "EPSG:32633"
X0, Y0 = 500_000.0, 5_000_000.0
FAST = EvaluationSettings(mask_ap=False, pixel_metrics=False)


def square(
    col: float, row: float, side: float = 100.0, height: float | None = None
) -> shapely.Polygon:
    """A field at (col, row) metres from the origin, ``side`` wide (100 m: one hectare)."""
    return box(X0 + col, Y0 + row, X0 + col + side, Y0 + row + (height or side))


def frame(
    geometries: list[shapely.Geometry], crs: str = CRS, **columns: object
) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(dict(columns), geometry=geometries, crs=crs)


def grid_fields(n: int = 3, side: float = 100.0) -> list[shapely.Polygon]:
    """n x n touching fields."""
    return [square(i * side, j * side, side) for i in range(n) for j in range(n)]


def test_identical_sets_give_every_figure_one() -> None:
    fields = [*grid_fields(3), square(400, 0, 300)]  # nine 1 ha fields and one 9 ha field
    truth = frame(fields)
    predicted = frame(fields, score=np.linspace(0.6, 0.9, len(fields)))
    result = evaluate_fields(predicted, truth).report
    obj = result["object"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (10, 0, 0)
    assert obj["precision"] == obj["recall"] == obj["f1"] == obj["mean_f1"] == 1.0
    assert obj["n_split_truth"] == obj["n_merged_truth"] == 0
    pixel = result["pixel"]
    for key in ("pixel_iou", "pixel_precision", "pixel_recall", "boundary_precision"):
        assert pixel[key] == pytest.approx(1.0), key
    assert pixel["boundary_f1"] == pytest.approx(1.0)
    assert result["mask_ap"]["ap"] == pytest.approx(1.0)
    assert result["by_size"]["1-5 ha"]["n_truth"] == 9
    assert result["by_size"][">5 ha"]["n_truth"] == 1
    assert result["by_size"]["<1 ha"]["recall"] is None  # no field of that size


def test_a_grid_coarser_than_the_fields_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    fields = frame(grid_fields(3))  # 1 ha each: 100 pixels of 10 m
    evaluate_fields(fields, fields, settings=EvaluationSettings(mask_ap=False))
    assert "cannot tell its fields apart" not in caplog.text
    coarse = EvaluationSettings(mask_ap=False, pixel_size_m=60.0)  # 2.8 pixels a field
    evaluate_fields(fields, fields, settings=coarse)
    assert "median field is 10000 m2, 2.8 grid pixels of 60 m" in caplog.text


def test_one_prediction_over_two_adjacent_truth_squares_is_one_merge() -> None:
    truth = frame([square(0, 0), square(100, 0), square(400, 400)])
    predicted = frame([square(0, 0, 200, 100), square(400, 400)])
    evaluation = evaluate_fields(predicted, truth, settings=FAST)
    obj = evaluation.report["object"]
    assert obj["n_merged_predictions"] == 1
    assert obj["n_merged_truth"] == 2
    assert obj["merged_rate"] == pytest.approx(2 / 3)
    assert (obj["tp"], obj["fp"], obj["fn"]) == (1, 1, 2)  # IoU of the blob with each is 0.5
    assert list(evaluation.truth["error"]) == ["merged", "merged", "tp"]
    assert list(evaluation.predicted["error"]) == ["merged", "tp"]


def test_a_truth_field_cut_in_two_is_one_split() -> None:
    truth = frame([square(0, 0, 200), square(400, 0)])
    predicted = frame([square(0, 0, 100, 200), square(100, 0, 100, 200), square(400, 0)])
    evaluation = evaluate_fields(predicted, truth, settings=FAST)
    obj = evaluation.report["object"]
    assert obj["n_split_truth"] == 1
    assert obj["split_rate"] == pytest.approx(0.5)
    assert obj["n_merged_truth"] == 0
    assert list(evaluation.truth["error"]) == ["split", "tp"]
    assert list(evaluation.predicted["error"]) == ["split", "split", "tp"]


def test_iou_of_exactly_one_half_does_not_match() -> None:
    truth = frame([square(0, 0, 100)])
    predicted = frame([square(0, 0, 100, 50)])  # half of it: IoU 0.5 exactly
    evaluation = evaluate_fields(predicted, truth, settings=FAST)
    obj = evaluation.report["object"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (0, 1, 1)
    assert evaluation.truth["iou"].iloc[0] == pytest.approx(0.5)
    assert evaluation.truth["matched_id"].isna().all()


def test_matched_ids_and_iou_refer_to_the_other_set() -> None:
    truth = frame([square(0, 0), square(200, 0)], field_id=np.array([11, 12]))
    predicted = frame([square(200, 10, 100, 90)], field_id=np.array([7]))
    evaluation = evaluate_fields(predicted, truth, settings=FAST)
    assert list(evaluation.truth["matched_id"].astype("float").fillna(-1)) == [-1, 7]
    assert evaluation.predicted["matched_id"].iloc[0] == 12
    assert evaluation.predicted["iou"].iloc[0] == pytest.approx(0.9)


def test_figures_by_size_bin_the_truth_by_its_size_and_predictions_by_theirs() -> None:
    small = [square(0, 0, 50), square(100, 0, 50)]  # 0.25 ha each
    medium = [square(0, 200, 200)]  # 4 ha
    large = [square(400, 0, 300)]  # 9 ha
    truth = frame(small + medium + large)
    # the first small field is found, the second missed; a false 2 ha prediction elsewhere
    predicted = frame([small[0], *medium, *large, square(1000, 1000, 150, 133.4)])
    by_size = evaluate_fields(predicted, truth, settings=FAST).report["by_size"]
    assert by_size["<1 ha"] == pytest.approx(
        {
            "n_truth": 2, "n_predicted": 1, "tp": 1, "fn": 1, "fp": 0, "precision": 1.0,
            "recall": 0.5, "f1": 2 / 3, "n_split_truth": 0, "split_rate": 0.0,
            "n_merged_truth": 0, "merged_rate": 0.0,
        }
    )  # fmt: skip
    assert by_size["1-5 ha"]["n_predicted"] == 2
    assert by_size["1-5 ha"]["fp"] == 1
    assert by_size["1-5 ha"]["precision"] == pytest.approx(0.5)
    assert by_size[">5 ha"]["f1"] == 1.0


def test_by_size_counts_a_field_both_split_and_merged_as_object_does() -> None:
    """A 1 ha field in two pieces, the larger also holding a small neighbour: split and merged
    (its error label shows one of the two; the figures count both)."""
    a, b = square(0, 0), square(100, 0, 20)
    predicted = frame([square(0, 0, 40, 100), box(X0 + 40, Y0, X0 + 120, Y0 + 100)])
    report = evaluate_fields(predicted, frame([a, b]), settings=FAST).report
    obj, by_size = report["object"], report["by_size"]
    assert (obj["n_split_truth"], obj["n_merged_truth"]) == (1, 2)
    assert (by_size["1-5 ha"]["n_split_truth"], by_size["1-5 ha"]["n_merged_truth"]) == (1, 1)
    assert (by_size["<1 ha"]["n_split_truth"], by_size["<1 ha"]["n_merged_truth"]) == (0, 1)


def test_label_extent_counts_only_fields_mostly_inside() -> None:
    truth = frame([square(0, 0), square(1000, 0)])
    predicted = frame([square(0, 0), square(2000, 0)])  # the second would be a false positive
    extent = square(-50, -50, 300)
    evaluation = evaluate_fields(predicted, truth, label_extent=extent, settings=FAST)
    report = evaluation.report
    assert report["label_mode"] == "label_extent"
    assert report["counts"] == {"n_truth": 1, "n_predicted": 1}
    assert report["object"]["f1"] == 1.0


def test_sparse_mode_ignores_predictions_away_from_the_drawn_fields() -> None:
    drawn = frame([square(0, 0), square(500, 0)])
    predicted = frame(
        [
            square(0, 0),  # right
            square(500, 0, 100, 40),  # overlaps the second drawn field: counted, a miss
            square(2000, 2000),  # an undrawn field, perhaps right: not counted
            square(100, 0, 100),  # touches the first drawn field along an edge only
        ]
    )
    report = evaluate_fields(predicted, drawn, sparse=True).report
    assert report["label_mode"] == "sparse"
    assert report["counts"] == {"n_truth": 2, "n_predicted": 2}
    obj = report["object"]
    assert (obj["tp"], obj["fp"], obj["fn"]) == (1, 1, 1)
    # pixels count only inside the drawn fields and the counted predictions
    assert report["pixel"]["pixel_recall"] == pytest.approx(1.4 / 2)
    assert report["pixel"]["pixel_precision"] == pytest.approx(1.0)


def test_both_label_modes_at_once_are_refused() -> None:
    fields = frame([square(0, 0)])
    with pytest.raises(ConfigError, match="exclude"):
        evaluate_fields(fields, fields, label_extent=square(0, 0), sparse=True)


def test_empty_predictions_score_zero_and_the_headline_says_why() -> None:
    evaluation = evaluate_fields(frame([]), frame([square(0, 0)]), settings=FAST)
    obj = evaluation.report["object"]
    assert (obj["precision"], obj["recall"], obj["f1"], obj["fn"]) == (0.0, 0.0, 0.0, 1)
    table = evaluation.table()
    assert "precision 0.000 (no predictions)   recall 0.000" in table
    assert evaluation.report["by_size"]["1-5 ha"]["precision"] is None  # printed n/a
    some = evaluate_fields(frame([square(0, 0)]), frame([square(0, 0)]), settings=FAST)
    assert "(no predictions)" not in format_table(some.report)


@pytest.mark.parametrize(
    "geometries",
    [
        [],
        [shapely.Point(X0, Y0), shapely.Point(X0 + 50, Y0 + 50)],
        [shapely.Polygon(), None],
        [shapely.LineString([(X0, Y0), (X0 + 100, Y0)])],
    ],
    ids=["no features", "points", "empty geometries", "a line"],
)
def test_truth_without_field_polygons_is_refused(geometries: list[shapely.Geometry]) -> None:
    predicted = frame([square(0, 0)])
    with pytest.raises(InputFileError, match="the truth holds no field polygon with an area"):
        evaluate_fields(predicted, frame(geometries), settings=FAST)
    with pytest.raises(InputFileError, match="no field polygon"):
        evaluate_fields(predicted, frame(geometries), sparse=True, settings=FAST)


def test_truth_files_without_field_polygons_are_refused(tmp_path: Path) -> None:
    predicted_path, _ = _write_pair(tmp_path)
    empty, points = tmp_path / "empty.gpkg", tmp_path / "points.gpkg"
    frame([]).to_file(empty)
    frame([shapely.Point(X0, Y0)]).to_file(points)
    with pytest.raises(InputFileError, match=r"empty\.gpkg holds no features"):
        evaluate_files(predicted_path, empty, settings=FAST)
    with pytest.raises(InputFileError, match="no field polygon with an area"):
        evaluate_files(predicted_path, points, settings=FAST)
    for crs in ("EPSG:32633", "EPSG:4326"):  # only empty polygons: no centre for a UTM zone
        hollow = tmp_path / f"hollow_{crs[5:]}.gpkg"
        frame([shapely.Polygon()], crs=crs).to_file(hollow)
        assert_user_error(run("evaluate", predicted_path, hollow), "no field polygon")
    assert_user_error(run("evaluate", predicted_path, empty), "holds no features")
    assert_user_error(run("evaluate", predicted_path, points), "no field polygon")
    # empty predictions are allowed: a model may find nothing
    result = run("evaluate", empty, tmp_path / "truth.gpkg", "--no-mask-ap")
    assert result.exit_code == 0, result.output
    assert "0 predicted vs 9 truth fields" in result.output


def test_predictions_without_field_polygons_are_refused(tmp_path: Path) -> None:
    """Points only (the wrong file, say) would score F1 0 as if the model found nothing."""
    points = frame([shapely.Point(X0 + 50, Y0 + 50), shapely.Point(X0 + 150, Y0 + 50)])
    expected = (
        "the predictions hold no field polygon with an area: their 2 feature(s) are points, "
        "lines or empty geometries; nothing to score"
    )
    with pytest.raises(InputFileError) as raised:
        evaluate_fields(points, frame(grid_fields(3)), settings=FAST)
    assert str(raised.value) == expected
    _, truth_path = _write_pair(tmp_path)
    points.to_file(tmp_path / "points.gpkg")
    assert_user_error(run("evaluate", tmp_path / "points.gpkg", truth_path), expected)


def test_label_extent_without_truth_fields_is_refused(tmp_path: Path) -> None:
    truth = frame(grid_fields(3))
    predicted = frame(grid_fields(3))
    far = square(50_000, 50_000)  # outside both sets
    with pytest.raises(InputFileError, match="overlaps no truth field") as raised:
        evaluate_fields(predicted, truth, label_extent=far, settings=FAST)
    assert "x 550000 to 550100, y 5050000 to 5050100" in str(raised.value)  # the AOI
    assert "x 500000 to 500300, y 5000000 to 5000300" in str(raised.value)  # the truth
    sliver = square(280, 0, 100)  # a fifth of three fields: none mostly inside
    with pytest.raises(InputFileError, match="holds no field, truth or predicted"):
        evaluate_fields(predicted, truth, label_extent=sliver, settings=FAST)
    predicted_path, truth_path = _write_pair(tmp_path)
    aoi = tmp_path / "aoi.gpkg"
    frame([far]).to_file(aoi)
    assert_user_error(
        run("evaluate", predicted_path, truth_path, "--label-extent", aoi),
        "label extent",
        "overlaps no truth field",
    )


def test_a_label_extent_without_fields_scores_its_predictions_as_false(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An AOI known to hold no field (a forest, a town) counts what is predicted there."""
    truth = frame(grid_fields(3))
    predicted = frame([*grid_fields(3), square(400, 0, 100)])  # one field beside the truth
    report = evaluate_fields(
        predicted, truth, label_extent=square(400, 0, 100), settings=FAST
    ).report
    assert report["counts"] == {"n_truth": 0, "n_predicted": 1}
    assert report["object"]["precision"] == 0.0 and report["object"]["fp"] == 1
    assert "its 1 predicted fields are all false positives" in caplog.text


def test_disjoint_extents_are_refused_before_any_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_grid(*args: object, **kwargs: object) -> None:
        raise AssertionError("a grid was built for disjoint sets")

    monkeypatch.setattr(fieldseg.evaluation.EvaluationGrid, "covering", no_grid)
    truth = frame(grid_fields(3))
    shifted = frame([translate(g, 300_000, 0) for g in grid_fields(3)])
    for predicted, reference in ((shifted, truth), (truth, shifted)):
        with pytest.raises(InputFileError, match="do not overlap in EPSG:32633") as raised:
            evaluate_fields(predicted, reference)
        assert "CRS" in str(raised.value)
    message = str(raised.value)
    assert "predicted fields (x 500000 to 500300, y 5000000 to 5000300)" in message
    assert "truth fields (x 800000 to 800300, y 5000000 to 5000300)" in message
    touching = frame([translate(g, 300, 0) for g in grid_fields(3)])
    with pytest.raises(InputFileError, match="do not overlap"):
        evaluate_fields(touching, truth, settings=FAST)


def test_partly_overlapping_sets_are_evaluated() -> None:
    truth = frame(grid_fields(3))
    predicted = frame([translate(g, 200, 0) for g in grid_fields(3)])
    report = evaluate_fields(predicted, truth, settings=EvaluationSettings(mask_ap=False)).report
    assert report["counts"] == {"n_truth": 9, "n_predicted": 9}
    assert (report["object"]["tp"], report["object"]["fp"]) == (3, 6)
    assert report["pixel"]["pixel_iou"] == pytest.approx(3 / 15)


def test_disjoint_files_are_refused_on_the_command_line(tmp_path: Path) -> None:
    predicted_path, truth_path = _write_pair(tmp_path)
    moved = tmp_path / "moved.gpkg"
    truth = gpd.read_file(truth_path)
    truth.set_geometry(truth.geometry.translate(100_000, 0)).to_file(moved)
    assert_user_error(
        run("evaluate", predicted_path, moved), "do not overlap", "x 600000 to 600300", "CRS"
    )


def test_predictions_in_another_crs_are_reprojected(tmp_path: Path) -> None:
    truth = frame(grid_fields(2))
    truth_path = tmp_path / "truth.gpkg"
    truth.to_file(truth_path)
    predicted_path = tmp_path / "pred.geojson"
    truth.to_crs("EPSG:4326").to_file(predicted_path)
    evaluation = evaluate_files(predicted_path, truth_path, settings=FAST)
    assert evaluation.report["inputs"]["reprojected"] == ["predicted"]
    assert evaluation.report["object"]["f1"] == 1.0


def test_geographic_truth_is_evaluated_in_its_utm_zone(tmp_path: Path) -> None:
    truth = frame(grid_fields(2)).to_crs("EPSG:4326")
    path = tmp_path / "truth.gpkg"
    truth.to_file(path)
    evaluation = evaluate_files(path, path, settings=EvaluationSettings(mask_ap=False))
    assert evaluation.report["inputs"]["crs"] == "EPSG:32633"
    assert evaluation.truth["area_ha"].to_numpy() == pytest.approx(1.0, rel=1e-3)
    assert evaluation.report["pixel"]["pixel_iou"] == pytest.approx(1.0)


def test_truth_in_feet_is_evaluated_in_metres(tmp_path: Path) -> None:
    """A projected CRS in US survey feet: areas in hectares and the grid in metres still."""
    truth = frame(grid_fields(2)).to_crs("EPSG:2927")  # Washington South, US feet
    path = tmp_path / "truth.gpkg"
    truth.to_file(path)
    evaluation = evaluate_files(path, path, settings=EvaluationSettings(mask_ap=False))
    assert evaluation.report["inputs"]["reprojected"] == ["truth", "predicted"]
    assert evaluation.truth["area_ha"].to_numpy() == pytest.approx(1.0, rel=1e-2)
    assert evaluation.report["pixel"]["pixel_iou"] == pytest.approx(1.0, abs=0.02)
    with pytest.raises(ConfigError, match="in metres"):
        evaluate_fields(truth, truth)


def test_web_mercator_truth_is_evaluated_in_its_utm_zone(tmp_path: Path) -> None:
    """Metres, but areas 2.3 times too large at 45 N: the UTM zone measures true hectares."""
    truth = frame(grid_fields(2)).to_crs("EPSG:3857")
    path = tmp_path / "truth.gpkg"
    truth.to_file(path)
    evaluation = evaluate_files(path, path, settings=FAST)
    assert evaluation.report["inputs"]["crs"] == "EPSG:32633"
    assert evaluation.truth["area_ha"].to_numpy() == pytest.approx(1.0, rel=1e-3)


def test_error_layers_are_styled_geopackage_layers(tmp_path: Path) -> None:
    truth = frame([square(0, 0), square(100, 0), square(400, 0)])
    predicted = frame([square(0, 0, 200, 100), square(900, 0)], score=np.array([0.9, 0.8]))
    evaluation = evaluate_fields(predicted, truth, settings=FAST)
    path = evaluation.write_errors(tmp_path / "errors.gpkg")  # write_error_layers, as a method
    layers = gpd.list_layers(path)
    assert sorted(layers["name"]) == ["layer_styles", "predicted", "truth"]
    back = gpd.read_file(path, layer="truth")
    assert list(back["error"]) == ["merged", "merged", "fn"]
    assert back.crs == CRS
    with sqlite3.connect(path) as con:
        styled = {row[0] for row in con.execute("SELECT f_table_name FROM layer_styles")}
        qml = con.execute("SELECT styleQML FROM layer_styles").fetchone()[0]
    assert styled == {"truth", "predicted"}
    assert 'type="categorizedSymbol"' in qml and 'attr="error"' in qml
    with pytest.raises(ConfigError, match=r"name it \*\.gpkg"):
        write_error_layers(evaluation, tmp_path / "errors.shp")
    with pytest.raises(ConfigError, match=r"name it \*\.png"):
        evaluation.plot(tmp_path / "map.jpg")
    with pytest.raises(ConfigError, match=r"\*\.json or .* \*\.txt, not report\.csv"):
        evaluation.write_report(tmp_path / "report.csv")
    assert not (tmp_path / "report.csv").exists()
    report = json.loads(evaluation.write_report(tmp_path / "report.json").read_text())
    assert report == json.loads(json.dumps(evaluation.report))
    from fieldseg.evaluation_report import OUTLINED_PREDICTIONS

    predicted_kinds = set(evaluation.predicted["error"]) | {"tp", "fp", "split", "merged"}
    assert set(OUTLINED_PREDICTIONS) == predicted_kinds - {"tp"}  # every wrong one is drawn
    with Image.open(evaluation.plot(tmp_path / "map.png")) as image:
        assert image.format == "PNG"


def _write_pair(tmp_path: Path) -> tuple[Path, Path]:
    truth = frame(grid_fields(3))
    predicted = frame([*grid_fields(3)[:7], square(0, 600, 100, 60)], score=np.linspace(0.5, 1, 8))
    truth_path, predicted_path = tmp_path / "truth.gpkg", tmp_path / "pred.gpkg"
    truth.to_file(truth_path)
    predicted.to_file(predicted_path)
    return predicted_path, truth_path


def test_cli_prints_the_table_and_writes_report_map_and_layers(tmp_path: Path) -> None:
    predicted_path, truth_path = _write_pair(tmp_path)
    out = tmp_path / "out"
    args = [
        "evaluate", str(predicted_path), str(truth_path), "-o", str(out / "report.json"),
        "--plot", str(out / "errors.png"), "--errors", str(out / "errors.gpkg"),
    ]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "precision 0.875   recall 0.778" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["object"]["tp"] == 7
    assert report["object"]["fp"] == 1 and report["object"]["fn"] == 2
    assert report["mask_ap"]["ap"] < 1.0
    with Image.open(out / "errors.png") as image:
        assert image.format == "PNG" and image.width > 500
    assert len(gpd.read_file(out / "errors.gpkg", layer="predicted")) == 8
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    assert "exists" in again.output and "--overwrite" in again.output
    assert "Traceback" not in again.output
    text = CliRunner().invoke(main, [*args[:3], "--no-mask-ap", "-o", str(out / "report.txt")])
    assert text.exit_code == 0, text.output
    written = (out / "report.txt").read_text()
    assert "precision 0.875   recall 0.778" in written and not written.startswith("{")
    assert written.strip() in text.output  # the file holds what was printed


def test_cli_user_errors_are_one_line(tmp_path: Path) -> None:
    predicted_path, truth_path = _write_pair(tmp_path)
    runner = CliRunner()
    missing = runner.invoke(main, ["evaluate", str(tmp_path / "nope.gpkg"), str(truth_path)])
    assert missing.exit_code == 1 and "not found" in missing.output
    no_crs = tmp_path / "nocrs.geojson"
    no_crs.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {}, '
        '"geometry": {"type": "Polygon", "coordinates": '
        "[[[500000, 5000000], [500100, 5000000], [500100, 5000100], [500000, 5000000]]]}}]}"
    )
    projected = runner.invoke(main, ["evaluate", str(no_crs), str(truth_path)])
    assert projected.exit_code == 1 and "look projected" in projected.output
    both = runner.invoke(
        main,
        [
            "evaluate",
            str(predicted_path),
            str(truth_path),
            "--sparse",
            "--label-extent",
            str(truth_path),
        ],
    )
    assert both.exit_code == 1 and "exclude each other" in both.output
    wrong = runner.invoke(
        main,
        ["evaluate", str(predicted_path), str(truth_path), "--errors", str(tmp_path / "e.shp")],
    )
    assert wrong.exit_code == 1 and "GeoPackage" in wrong.output
    csv = runner.invoke(
        main, ["evaluate", str(predicted_path), str(truth_path), "-o", str(tmp_path / "r.csv")]
    )
    assert csv.exit_code == 1 and "*.json" in csv.output and "*.txt" in csv.output
    assert not (tmp_path / "r.csv").exists()
    for result in (missing, projected, both, wrong, csv):
        assert "Traceback" not in result.output


def test_evaluate_help_is_instant_and_lists_the_modes() -> None:
    result = CliRunner().invoke(main, ["evaluate", "--help"])
    assert result.exit_code == 0
    for option in ("--label-extent", "--sparse", "--plot", "--errors", "--pixel-size"):
        assert option in result.output


@st.composite
def _field_sets(draw: st.DrawFn) -> tuple[list[shapely.Polygon], list[shapely.Polygon]]:
    """Two sets of random small rectangles on a 10 m grid, each set without overlaps."""

    def rects(n: int) -> list[shapely.Polygon]:
        out: list[shapely.Polygon] = []
        for _ in range(n):
            col, row = draw(st.integers(0, 30)), draw(st.integers(0, 30))
            w, h = draw(st.integers(1, 8)), draw(st.integers(1, 8))
            candidate = square(col * 10, row * 10, w * 10, h * 10)
            if not any(candidate.intersection(other).area > 0 for other in out):
                out.append(candidate)
        return out

    return rects(draw(st.integers(1, 6))), rects(draw(st.integers(1, 6)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_field_sets())
def test_swapping_the_sets_swaps_precision_and_recall(
    sets: tuple[list[shapely.Polygon], list[shapely.Polygon]],
) -> None:
    a, b = sets
    ax0, ay0, ax1, ay1 = shapely.total_bounds(a)
    bx0, by0, bx1, by1 = shapely.total_bounds(b)
    if ax0 >= bx1 or bx0 >= ax1 or ay0 >= by1 or by0 >= ay1:  # nothing to match: refused
        for predicted, truth in ((a, b), (b, a)):
            with pytest.raises(InputFileError, match="do not overlap"):
                evaluate_fields(frame(predicted), frame(truth), settings=FAST)
        return
    forward = evaluate_fields(frame(a), frame(b), settings=FAST).report["object"]
    backward = evaluate_fields(frame(b), frame(a), settings=FAST).report["object"]
    assert forward["precision"] == backward["recall"]
    assert forward["recall"] == backward["precision"]
    assert forward["f1"] == backward["f1"]
    assert forward["tp"] + forward["fn"] == len(b)
    # the mean of equal F1s may differ from them in the last bit
    assert 0.0 <= forward["mean_f1"] <= forward["f1"] + 1e-12 <= 1.0 + 1e-12


def test_invalid_geometries_are_repaired_and_non_polygons_left_out() -> None:
    bowtie = shapely.Polygon(
        [(X0, Y0), (X0 + 100, Y0 + 100), (X0 + 100, Y0), (X0, Y0 + 100), (X0, Y0)]
    )
    truth = frame([bowtie, square(200, 0)])
    predicted = frame(
        [
            bowtie,
            square(200, 0),
            shapely.Point(X0, Y0),
            None,
            shapely.LineString([(X0, Y0), (X0 + 5, Y0)]),
        ]
    )
    report = evaluate_fields(predicted, truth, settings=FAST).report
    assert report["inputs"]["n_predicted_read"] == 5
    assert report["inputs"]["n_without_area"] == {"truth": 0, "predicted": 3}
    assert report["object"]["f1"] == 1.0


@pytest.mark.parametrize("option", ["-o", "--plot", "--errors"])
def test_cli_checks_every_output_path_before_evaluating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    def no_evaluation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the evaluation started before the outputs were checked")

    monkeypatch.setattr(fieldseg.evaluation, "evaluate_files", no_evaluation)
    predicted_path, truth_path = _write_pair(tmp_path)
    name = {"-o": "report.json", "--plot": "map.png", "--errors": "errors.gpkg"}[option]
    folder = tmp_path / name  # a directory named like the file
    (folder / "inside").mkdir(parents=True)
    for extra in ([], ["--overwrite"]):
        result = run("evaluate", predicted_path, truth_path, option, folder, *extra)
        assert_user_error(result, str(folder))
    assert_user_error(
        run("evaluate", predicted_path, truth_path, option, folder, "--overwrite"),
        "is a directory, expected a file",
    )
    through_file = predicted_path / name  # a folder that is a file
    assert_user_error(
        run("evaluate", predicted_path, truth_path, option, through_file), "is a file"
    )
    if Path("/proc").is_dir():  # a folder that takes no files, even for root
        assert_user_error(
            run("evaluate", predicted_path, truth_path, option, Path("/proc") / name),
            "cannot write /proc/",
        )
    assert (folder / "inside").is_dir() and predicted_path.is_file()


def test_cli_output_in_a_new_folder_is_still_written(tmp_path: Path) -> None:
    predicted_path, truth_path = _write_pair(tmp_path)
    report = tmp_path / "new" / "deeper" / "report.json"
    result = run("evaluate", predicted_path, truth_path, "--no-mask-ap", "-o", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["object"]["tp"] == 7
    assert [p.name for p in tmp_path.rglob(".fieldseg-probe*")] == []


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"iou_threshold": 1.0}, "IoU threshold"),
        ({"pixel_size_m": 0.0}, "pixel size must be positive"),
        ({"boundary_tolerance_m": -1.0}, "boundary tolerance must be 0 or more"),
        ({"boundary_tolerance_m": 1e9}, r"at most 100 pixels \(1000 m at 10 m\), got 1e\+09 m"),
        ({"boundary_tolerance_m": 31.0, "pixel_size_m": 0.3}, r"\(30 m at 0\.3 m\)"),
        ({"ap_tile_px": 8}, "AP tiles"),
    ],
)
def test_unusable_settings_are_config_errors(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EvaluationSettings(**settings)  # type: ignore[arg-type]


def test_the_tolerance_limit_is_in_whole_pixels_and_only_for_pixel_metrics() -> None:
    assert EvaluationSettings(boundary_tolerance_m=1004.0).boundary_tolerance_px == 100
    assert EvaluationSettings(pixel_size_m=0.3).boundary_tolerance_px == 33  # 10 m default
    assert EvaluationSettings(boundary_tolerance_m=1e9, pixel_metrics=False)  # never used


def test_overlapping_truth_is_resolved_as_tile_resolves_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A field drawn twice could never be found twice: the copy is left out, also when drawn
    a little off; a field drawn over part of a larger one keeps that part (the larger is
    matched by what is left); neighbours overlapping by centimetres stay as drawn."""
    big, small = square(0, 0, 300), square(0, 0, 100)
    copies = [square(400, 0), translate(square(400, 0), 0.3, 0.3)]
    neighbours = [square(0, 400), square(99.95, 400)]  # 5 cm over each other
    truth = frame([*copies, big, small, *neighbours])
    predicted = frame([square(400, 0), small, big.difference(small), *neighbours])
    with caplog.at_level("WARNING", logger="fieldseg"):
        report = evaluate_fields(predicted, truth, settings=FAST).report
    assert report["inputs"]["n_truth_overlapping_pairs"] == 2
    assert report["inputs"]["n_truth_left_out"] == 1
    assert report["counts"]["n_truth"] == 5
    assert report["object"]["f1"] == 1.0
    assert "2 overlapping pairs" in caplog.text and "1 field(s) left with less" in caplog.text
