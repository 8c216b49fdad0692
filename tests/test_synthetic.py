"""fieldseg.synthetic and ``fieldseg synth``: scenes with known truth that are hard in real ways."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from rasterio import features
from shapely.geometry import box

from fieldseg.errors import ConfigError, OutputExistsError
from fieldseg.synthetic import (
    BAND_ORDER,
    CROP_NAMES,
    MIN_FIELD_PIXELS,
    NEIGHBOUR_DISTANCE_M,
    SceneDifficulty,
    SyntheticScene,
    band_names_for,
    synth,
    synthesize_scene,
    write_synthetic_scene,
)

SIZE = 384  # small enough for speed, large enough for hundreds of fields
_cache: dict[tuple[object, ...], SyntheticScene] = {}


def scene(size: int = SIZE, seed: int = 3, **kwargs: object) -> SyntheticScene:
    """A cached scene: tests must not modify it."""
    key = (size, seed, *sorted(kwargs.items()))
    if key not in _cache:
        _cache[key] = synthesize_scene(size, seed=seed, **kwargs)  # type: ignore[arg-type]
    return _cache[key]


def burn_ids(s: SyntheticScene) -> np.ndarray:
    """The truth rasterised independently: field_id where a pixel centre falls in a field."""
    shapes = zip(s.fields.geometry, s.fields.field_id.tolist(), strict=True)
    return features.rasterize(
        shapes, out_shape=s.data.shape[1:], transform=s.transform, all_touched=False, dtype="int32"
    )


def field_means(s: SyntheticScene, ids: np.ndarray) -> np.ndarray:
    """(bands, n_fields + 1) mean value of each band over each field's pixels (column 0: none)."""
    n = len(s.fields)
    counts = np.bincount(ids.ravel(), minlength=n + 1).astype(float)
    sums = [np.bincount(ids.ravel(), weights=b.ravel(), minlength=n + 1) for b in s.data]
    return np.stack(sums) / np.maximum(counts, 1.0)


def scene_bounds(s: SyntheticScene) -> shapely.Polygon:
    height, width = s.data.shape[1:]
    (left, top), (right, bottom) = s.transform @ (0, 0), s.transform @ (width, height)
    return box(left, bottom, right, top)


# --------------------------------------------------------------------------------------------
# the library: array, georeferencing, determinism
# --------------------------------------------------------------------------------------------
def test_scene_array_and_georeferencing() -> None:
    s = scene()
    assert s.data.dtype == np.uint16
    assert s.data.shape == (8, SIZE, SIZE)
    assert s.band_names == (
        "red_d1",
        "green_d1",
        "blue_d1",
        "nir_d1",
        "red_d2",
        "green_d2",
        "blue_d2",
        "nir_d2",
    )
    assert s.crs.to_epsg() == 32633
    assert (s.transform.a, s.transform.b, s.transform.d, s.transform.e) == (10.0, 0, 0, -10.0)
    # a plausible UTM 33N origin on the 10 m grid
    assert 300_000 < s.transform.c < 700_000 and 4_500_000 < s.transform.f < 6_500_000
    assert s.transform.c % 10 == 0 and s.transform.f % 10 == 0
    assert s.nodata is None
    # reflectance-like values, never 0 when there is no nodata border
    assert s.data.min() >= 1
    assert 200 < np.median(s.data) < 5000
    assert np.percentile(s.data, 99.9) < 10_000
    # vegetation: NIR above red over most of the scene on the summer date
    assert np.median(s.data[7].astype(int) - s.data[4]) > 500


def test_same_seed_same_scene_and_other_seed_other_scene() -> None:
    a = synthesize_scene(192, seed=11)
    b = synthesize_scene(192, seed=11)
    c = synthesize_scene(192, seed=12)
    assert a.data.tobytes() == b.data.tobytes()
    assert a.transform == b.transform
    assert a.fields.drop(columns="geometry").equals(b.fields.drop(columns="geometry"))
    assert (
        shapely.to_wkb(a.fields.geometry.values).tolist()
        == shapely.to_wkb(b.fields.geometry.values).tolist()
    )
    assert a.difficulty == b.difficulty
    assert a.data.shape == c.data.shape
    assert not np.array_equal(a.data, c.data)
    assert (
        len(a.fields) != len(c.fields) or not a.fields.geometry.geom_equals(c.fields.geometry).all()
    )


def test_band_names_prefix_and_extra_bands() -> None:
    assert band_names_for(1, 1) == ("red_d1",)
    names = band_names_for(12, 2)
    assert names[:10] == tuple(f"{n}_d1" for n in BAND_ORDER)
    assert names[10:14] == ("b11_d1", "b12_d1", "red_d2", "green_d2")
    s = synthesize_scene(96, seed=1, bands=12, dates=3)
    assert s.data.shape == (36, 96, 96)
    assert s.band_names == band_names_for(12, 3)
    one = synthesize_scene(96, seed=1, bands=1, dates=1)
    assert one.data.shape == (1, 96, 96)
    assert one.band_names == ("red_d1",)


def test_non_square_scene() -> None:
    s = synthesize_scene(160, seed=4, height=96)
    assert s.data.shape == (8, 96, 160)
    assert shapely.within(s.fields.geometry.values, scene_bounds(s).buffer(1e-6)).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 10}, "at least 64"),
        ({"size": 128, "height": 20}, "at least 64"),
        ({"size": 128, "bands": 0}, "bands must be at least 1"),
        ({"size": 128, "dates": 0}, "dates must be at least 1"),
        ({"size": 128, "pixel_size": 0.0}, "pixel size"),
        ({"size": 128, "crs": "EPSG:4326"}, "projected CRS"),
        ({"size": 128, "crs": "not a crs"}, "unknown CRS"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    size = kwargs.pop("size")
    with pytest.raises(ConfigError, match=message):
        synthesize_scene(size, **kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# the truth polygons
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [3, 8])
def test_truth_polygons_valid_disjoint_inside_and_learnable(seed: int) -> None:
    s = scene(seed=seed)
    frame = s.fields
    geoms = frame.geometry.values
    assert frame.crs == s.crs
    assert list(frame.columns[:5]) == ["field_id", "crop", "crop_id", "area_m2", "n_pixels"]
    assert frame.field_id.tolist() == list(range(1, len(frame) + 1))
    assert set(frame.crop) <= set(CROP_NAMES)
    assert (frame.crop == [CROP_NAMES[i - 1] for i in frame.crop_id]).all()
    assert len(frame) > 150
    assert shapely.is_valid(geoms).all()
    assert (shapely.get_type_id(geoms) == shapely.GeometryType.POLYGON).all()
    np.testing.assert_allclose(frame.area_m2, shapely.area(geoms))
    assert shapely.within(geoms, scene_bounds(s).buffer(1e-6)).all()
    # no two fields overlap (shared edges only; floating-point noise is far below 1 mm²)
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]]))
    assert overlap.max(initial=0.0) < 1e-3
    # each field covers >= 10 pixel centres, as stated in n_pixels
    counts = np.bincount(burn_ids(s).ravel(), minlength=len(frame) + 1)[1:]
    assert counts.min() >= MIN_FIELD_PIXELS
    assert counts.tolist() == frame.n_pixels.tolist()


def test_field_sizes_spread_from_a_tenth_of_a_hectare_to_tens_of_hectares() -> None:
    hectares = scene(size=512, seed=1).fields.area_m2.to_numpy() / 10_000
    assert hectares.min() < 0.2
    assert hectares.max() > 15
    # roughly log-normal: a wide, not too skewed spread of log sizes
    logs = np.log(hectares)
    assert 0.6 < logs.std() < 1.5
    assert abs(np.median(logs) - logs.mean()) < 0.5


# --------------------------------------------------------------------------------------------
# the figures that make it hard
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 7])
def test_difficulty_figures_in_range(seed: int) -> None:
    figures = scene(size=512, seed=seed).difficulty
    assert figures.n_fields > 500
    assert 0.3 <= figures.share_under_1ha <= 0.7
    assert 0.3 <= figures.share_touching_no_gap <= 0.8
    assert 0.3 <= figures.share_rotated_or_irregular <= 0.98  # some regular grids remain
    assert figures.n_neighbour_pairs > figures.n_fields
    text = figures.summary()
    assert "under 1 ha" in text and "no gap" in text and "irregular" in text
    assert len(text.splitlines()) >= 4


def test_difficulty_figures_match_the_polygons() -> None:
    """Recompute the figures from the polygons alone (vector definitions) and compare."""
    s = scene(size=512, seed=2)
    geoms = s.fields.geometry.values
    area = shapely.area(geoms)
    figures = s.difficulty
    assert figures.n_fields == len(geoms)
    assert figures.share_under_1ha == pytest.approx((area < 10_000).mean())
    axis_rectangles = area / shapely.area(shapely.envelope(geoms)) > 0.99
    assert figures.share_rotated_or_irregular == pytest.approx(1 - axis_rectangles.mean())
    left, right = shapely.STRtree(geoms).query(
        geoms, predicate="dwithin", distance=NEIGHBOUR_DISTANCE_M
    )
    keep = left < right
    a, b = geoms[left[keep]], geoms[right[keep]]
    contact = shapely.distance(a, b) < 0.01
    shared = shapely.length(shapely.intersection(shapely.boundary(a), shapely.buffer(b, 0.01)))
    edge = contact & (shared >= 10.0)  # a shared edge at least a pixel long
    neighbours = ~(contact & ~edge)  # pairs meeting only at a corner are not neighbours
    assert figures.share_touching_no_gap == pytest.approx(edge.sum() / neighbours.sum(), abs=0.03)
    assert figures.n_neighbour_pairs == pytest.approx(neighbours.sum(), rel=0.05)


def test_touching_neighbours_are_distinct_even_with_the_same_crop() -> None:
    s = scene(size=512, seed=7)
    ids = burn_ids(s)
    means = field_means(s, ids)
    # fields with 4-adjacent pixels: the pairs an instance model could merge
    pairs = set()
    for x, y in ((ids[:, :-1], ids[:, 1:]), (ids[:-1], ids[1:])):
        touch = (x != y) & (x > 0) & (y > 0)
        low, high = np.minimum(x, y)[touch].tolist(), np.maximum(x, y)[touch].tolist()
        pairs |= set(zip(low, high, strict=True))
    first, second = np.array(sorted(pairs)).T
    crop = np.concatenate([[0], s.fields.crop_id.to_numpy()])
    same = crop[first] == crop[second]
    assert 0.15 < same.mean() < 0.6  # the hard case is common, but not the rule
    relative = np.abs(means[:, first] - means[:, second]) / means[:, first]
    assert (relative.max(axis=0) > 0.01).all()  # yet every pair differs somewhat


def test_non_field_land_cover_is_not_labelled() -> None:
    s = scene(size=512, seed=1)
    ids = burn_ids(s)
    unlabelled = (ids == 0).mean()
    assert 0.1 < unlabelled < 0.5  # roads, hedges, forest, water, villages
    # water (very dark NIR on every date) exists and lies outside the fields
    dark = (s.data[3] < 600) & (s.data[7] < 600)
    assert dark.sum() > 50
    assert (ids[dark] == 0).mean() > 0.95


def test_phenology_changes_fields_between_dates() -> None:
    s = scene(size=512, seed=7)
    means = field_means(s, burn_ids(s))[:, 1:]
    red, nir = means[[0, 4]], means[[3, 7]]
    ndvi = (nir - red) / (nir + red)  # (dates, fields)
    assert np.median(np.abs(ndvi[1] - ndvi[0])) > 0.1
    # maize: bare in May, green in late August
    maize = (s.fields.crop == "maize").to_numpy()
    assert maize.sum() > 5
    assert (ndvi[1, maize] > ndvi[0, maize] + 0.3).mean() > 0.9
    # winter wheat: green in May, harvested by late August
    wheat = (s.fields.crop == "winter_wheat").to_numpy()
    assert wheat.sum() > 5
    assert (ndvi[0, wheat] > ndvi[1, wheat] + 0.3).mean() > 0.9


def test_within_field_texture() -> None:
    s = scene(size=512, seed=7)
    ids = burn_ids(s)
    big = s.fields.field_id[s.fields.n_pixels > 400].to_numpy()
    assert big.size > 5
    for field_id in big[:10]:
        values = s.data[3][ids == field_id].astype(float)
        assert values.std() / values.mean() > 0.01


# --------------------------------------------------------------------------------------------
# nodata border and clouds
# --------------------------------------------------------------------------------------------
def test_nodata_border_blanks_one_edge_but_keeps_the_truth() -> None:
    plain = scene(seed=5)
    bordered = scene(seed=5, nodata_border=True)
    assert bordered.nodata == 0
    blank = (bordered.data == 0).all(axis=0)
    assert ((bordered.data == 0).any(axis=0) == blank).all()  # every band, or none
    assert 0.03 < blank.mean() < 0.3
    edges = [blank[0].mean(), blank[-1].mean(), blank[:, 0].mean(), blank[:, -1].mean()]
    assert max(edges) == 1.0  # a strip along one whole edge
    # irregular: the blank width varies along the edge
    axis = 1 if blank[:, 0].all() or blank[:, -1].all() else 0
    widths = blank.sum(axis=axis)
    assert widths.max() - widths.min() >= 3
    # the truth describes the ground: fields in the blank strip stay
    assert (
        shapely.to_wkb(plain.fields.geometry.values).tolist()
        == shapely.to_wkb(bordered.fields.geometry.values).tolist()
    )
    np.testing.assert_array_equal(plain.data[:, ~blank], bordered.data[:, ~blank])


def test_clouds_are_bright_soft_and_differ_per_date() -> None:
    clear = scene(seed=5)
    cloudy = scene(seed=5, clouds=True)
    assert (
        shapely.to_wkb(clear.fields.geometry.values).tolist()
        == shapely.to_wkb(cloudy.fields.geometry.values).tolist()
    )
    assert not np.array_equal(clear.data, cloudy.data)
    bright = []
    for d in (0, 1):
        blue_clear = clear.data[4 * d + 2].astype(int)
        blue_cloudy = cloudy.data[4 * d + 2].astype(int)
        lifted = blue_cloudy - blue_clear > 1500
        assert 0.005 < lifted.mean() < 0.6
        # soft: between cloud and clear ground there are pixels partly lifted
        assert ((blue_cloudy - blue_clear > 300) & ~lifted).sum() > 0.2 * lifted.sum()
        bright.append(lifted)
    overlap = (bright[0] & bright[1]).sum() / (bright[0] | bright[1]).sum()
    assert overlap < 0.5


# --------------------------------------------------------------------------------------------
# writing files
# --------------------------------------------------------------------------------------------
def test_written_files_read_back(tmp_path: Path) -> None:
    s = scene(seed=5, nodata_border=True)
    raster, vector = tmp_path / "scene.tif", tmp_path / "truth.gpkg"
    write_synthetic_scene(s, raster, vector)
    with rasterio.open(raster) as src:
        assert src.count == 8 and (src.height, src.width) == (SIZE, SIZE)
        assert set(src.dtypes) == {"uint16"}
        assert src.descriptions == s.band_names
        assert src.crs == s.crs and src.crs.to_epsg() == 32633
        assert src.transform == s.transform
        assert src.nodata == 0
        assert src.profile["tiled"] and src.compression is not None
        np.testing.assert_array_equal(src.read(), s.data)
    truth = gpd.read_file(vector, layer="fields")
    assert truth.crs == s.crs
    assert truth.field_id.tolist() == s.fields.field_id.tolist()
    assert truth.crop.tolist() == s.fields.crop.tolist()
    assert shapely.equals_exact(truth.geometry.values, s.fields.geometry.values, 0.0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "truth.gpkg"]


def test_write_refuses_existing_outputs_before_writing_either(tmp_path: Path) -> None:
    s = synthesize_scene(96, seed=1)
    raster, vector = tmp_path / "scene.tif", tmp_path / "truth.gpkg"
    vector.write_text("keep me")
    with pytest.raises(OutputExistsError, match=r"truth\.gpkg"):
        write_synthetic_scene(s, raster, vector)
    assert not raster.exists() and vector.read_text() == "keep me"
    vector.unlink()
    raster.write_text("keep me too")
    with pytest.raises(OutputExistsError, match=r"scene\.tif"):
        write_synthetic_scene(s, raster, vector)
    assert not vector.exists() and raster.read_text() == "keep me too"
    write_synthetic_scene(s, raster, vector, overwrite=True)
    with rasterio.open(raster) as src:
        assert src.count == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.tif", "truth.gpkg"]


@pytest.mark.parametrize(
    ("raster", "vector", "message"),
    [
        ("scene.png", "truth.gpkg", "GeoTIFF"),
        ("scene.tif", "truth.shp", "vector format"),
        ("scene.tif", "scene.tif", "vector format"),
    ],
)
def test_write_rejects_unknown_formats(
    tmp_path: Path, raster: str, vector: str, message: str
) -> None:
    s = synthesize_scene(64, seed=1)
    with pytest.raises(ConfigError, match=message):
        write_synthetic_scene(s, tmp_path / raster, tmp_path / vector)
    assert list(tmp_path.iterdir()) == []


def test_synth_library_function_writes_and_returns_the_figures(tmp_path: Path) -> None:
    raster, vector = tmp_path / "a.tif", tmp_path / "a.gpkg"
    figures = synth(raster, vector, size=128, seed=9, bands=2, dates=1)
    assert isinstance(figures, SceneDifficulty)
    assert figures == synthesize_scene(128, seed=9, bands=2, dates=1).difficulty
    with rasterio.open(raster) as src:
        assert src.descriptions == ("red_d1", "green_d1")
    assert len(gpd.read_file(vector)) == figures.n_fields
    with pytest.raises(OutputExistsError):
        synth(raster, tmp_path / "b.gpkg", size=128, seed=9)
    assert not (tmp_path / "b.gpkg").exists()


# --------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------
def test_cli_writes_both_files_and_prints_the_figures(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fieldseg.cli import main

    raster, vector = tmp_path / "scene.tif", tmp_path / "truth.gpkg"
    args = ["synth", "-o", str(raster), "--fields", str(vector), "--size", "128", "--seed", "4"]
    result = CliRunner().invoke(main, [*args, "--clouds", "--nodata-border", "--dates", "3"])
    assert result.exit_code == 0, result.output
    assert "fields under 1 ha" in result.stdout and "no gap" in result.stdout
    with rasterio.open(raster) as src:
        assert src.count == 12 and src.nodata == 0
        assert src.descriptions[-1] == "nir_d3"
    expected = synthesize_scene(128, seed=4, dates=3, clouds=True, nodata_border=True)
    assert gpd.read_file(vector, layer="fields").field_id.tolist() == (
        expected.fields.field_id.tolist()
    )

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1
    lines = again.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "exists" in lines[0]
    assert "--overwrite" in lines[0]

    replaced = CliRunner().invoke(main, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    with rasterio.open(raster) as src:
        assert src.count == 8 and src.nodata is None


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--size", "10"], "at least 64"),
        (["--bands", "0"], "bands must be at least 1"),
        (["--dates", "0"], "dates must be at least 1"),
        (["--size", "300000"], "needs about"),  # terabytes: refused before any allocation
    ],
)
def test_cli_bad_options_exit_1_with_one_clear_line(
    tmp_path: Path, option: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from fieldseg.cli import main

    args = ["synth", "-o", str(tmp_path / "s.tif"), "--fields", str(tmp_path / "t.gpkg")]
    result = CliRunner().invoke(main, [*args, *option])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_help_does_not_import_the_generator() -> None:
    code = (
        "import sys; from fieldseg.cli import main; "
        "assert 'fieldseg.synthetic' not in sys.modules, 'synthetic imported at start-up'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------------------
# full size
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_full_size_scene_figures() -> None:
    s = synthesize_scene(2048, seed=7, clouds=True, nodata_border=True)
    assert s.data.shape == (8, 2048, 2048)
    figures = s.difficulty
    assert figures.n_fields > 10_000
    assert 0.3 <= figures.share_under_1ha <= 0.7
    assert 0.3 <= figures.share_touching_no_gap <= 0.8
    assert figures.share_rotated_or_irregular >= 0.3
    assert s.fields.area_m2.max() > 30 * 10_000


def test_a_scene_larger_than_memory_is_refused_with_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldseg.synthetic import memory_needed

    assert memory_needed(2048, 2048, 4, 2) == pytest.approx(833e6, rel=0.05)  # measured
    real = os.sysconf
    eight_gb = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 8 * 1024**3 // 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: eight_gb.get(name) or real(name))
    with pytest.raises(ConfigError, match=r"needs about 17\.3 GB .* this machine has 8\.6 GB"):
        synthesize_scene(10980, bands=4, dates=2)
    synthesize_scene(96, seed=1)  # small scenes go on
