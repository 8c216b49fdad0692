"""Bad inputs and outputs: each is a clear FieldsegError, one CLI line, and nothing left behind.

Every refusal is checked twice: the library raises the right :class:`FieldsegError` subclass
with a message naming the problem, and the CLI exits 1 with exactly one ``Error:`` line, no
traceback, no output and no temporary ``.*tmp*`` entry beside where the output would have gone.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import Result
from conftest import (
    BAND_NAMES,
    CHIP,
    CPU_CONFIG,
    CRS_UTM,
    FIELDS,
    OVERLAP,
    SceneFixture,
    assert_user_error,
    px_box,
    read_dataset,
    run,
    stderr_of,
    to_world,
    write_labels,
    write_scene,
)

from fieldseg.atomic_output import OutputPathError
from fieldseg.errors import ConfigError, CRSError, FieldsegError, InputFileError
from fieldseg.labels import load_field_labels
from fieldseg.run_config import load_run_config
from fieldseg.splits import parse_fractions
from fieldseg.stacking import stack_bands
from fieldseg.synthetic import synth
from fieldseg.tiling import tile_scenes

TILE = ["--chip-size", str(CHIP), "--overlap", str(OVERLAP), "--split", "1,0,0"]
Listing = Callable[[Path], list[str]]


def temp_entries(folder: Path) -> list[str]:
    """Hidden temporary entries (``.name.XXXX.tmp``, ``.name.XXXX.old``) left in ``folder``."""
    return sorted(
        p.name
        for p in folder.iterdir()
        if fnmatch.fnmatch(p.name, ".*tmp*") or fnmatch.fnmatch(p.name, ".*.old")
    )


def tree(folder: Path) -> list[str]:
    """Every path under ``folder``, relative to it (for 'nothing deleted' checks)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def assert_nothing_left(folder: Path, before: list[str], listing: Listing) -> None:
    after = listing(folder)
    assert after == before, f"left behind in {folder}: {sorted(set(after) - set(before))}"
    assert temp_entries(folder) == []


@pytest.fixture
def band_files(tmp_path: Path, scene_data: np.ndarray) -> list[Path]:
    """The fixture scene as one single-band GeoTIFF per band, in ``tmp_path/bands``."""
    folder = tmp_path / "bands"
    folder.mkdir()
    return [
        write_scene(folder / f"t_{name}.tif", scene_data[i : i + 1], band_names=None)
        for i, name in enumerate(BAND_NAMES)
    ]


# --------------------------------------------------------------------------------------------
# 1. label files without a feature
# --------------------------------------------------------------------------------------------
def _empty_gpkg(path: Path) -> Path:
    """A GeoPackage with a Polygon layer, a name column and a CRS, but zero features."""
    frame = gpd.GeoDataFrame({"name": gpd.pd.Series([], dtype=str)}, geometry=[], crs=CRS_UTM)
    frame.to_file(path, engine="pyogrio", geometry_type="Polygon")
    info = pyogrio.read_info(path)
    assert info["features"] == 0 and info["geometry_type"] == "Polygon"
    assert list(info["fields"]) == ["name"] and info["crs"] == CRS_UTM
    return path


def _empty_geojson(path: Path) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    return path


@pytest.mark.parametrize(
    ("name", "make"), [("empty.gpkg", _empty_gpkg), ("empty.geojson", _empty_geojson)]
)
def test_label_file_without_features(
    tmp_path: Path,
    basic_scene: SceneFixture,
    listing: Listing,
    name: str,
    make: Callable[[Path], Path],
) -> None:
    labels = make(tmp_path / name)
    with pytest.raises(InputFileError, match=f"{re.escape(name)} holds no features"):
        load_field_labels(labels)
    with pytest.raises(InputFileError, match="holds no features"):
        tile_scenes([basic_scene.scene], labels, tmp_path / "out", chip_size=CHIP, overlap=OVERLAP)

    before = listing(tmp_path)
    result = run("tile", basic_scene.scene, "--labels", labels, "-o", tmp_path / "out", *TILE)
    assert_user_error(result, name, "holds no features")
    assert_nothing_left(tmp_path, before, listing)


# --------------------------------------------------------------------------------------------
# 2. a GeoJSON without CRS whose coordinates are metres
# --------------------------------------------------------------------------------------------
def test_crs_less_geojson_in_metres(
    tmp_path: Path, basic_scene: SceneFixture, listing: Listing
) -> None:
    labels = tmp_path / "metres.geojson"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pyogrio: "'crs' was not provided"
        write_labels(labels, [FIELDS["rect_a"], FIELDS["holed"]], crs=None)
    assert "crs" not in json.loads(labels.read_text())  # GDAL will read it as EPSG:4326
    assert pyogrio.read_info(labels)["crs"] == "EPSG:4326"

    with pytest.raises(CRSError, match="look projected") as caught:
        load_field_labels(labels)
    assert "metres.geojson" in str(caught.value)
    with pytest.raises(CRSError, match="look projected"):
        tile_scenes([basic_scene.scene], labels, tmp_path / "out", chip_size=CHIP, overlap=OVERLAP)

    before = listing(tmp_path)
    result = run("tile", basic_scene.scene, "--labels", labels, "-o", tmp_path / "out", *TILE)
    assert_user_error(result, "metres.geojson", "look projected")
    assert_nothing_left(tmp_path, before, listing)


# --------------------------------------------------------------------------------------------
# 3. nested geometry collections
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".gpkg", ".geojson"])
def test_nested_geometry_collection_is_one_valid_field(tmp_path: Path, suffix: str) -> None:
    nested_polygon = px_box(10, 10, 40, 40)
    overlapping = px_box(30, 30, 60, 60)  # overlaps nested_polygon over 10 x 10 px
    point = shapely.Point(to_world([(80.5, 80.5)])[0])
    collection = shapely.GeometryCollection(
        [shapely.GeometryCollection([nested_polygon]), point, overlapping]
    )
    labels = write_labels(tmp_path / f"nested{suffix}", [collection])

    loaded = load_field_labels(labels)
    assert loaded.n_read == 1 and len(loaded.fields) == 1
    assert loaded.fields["field_id"].tolist() == [1]
    geometry = loaded.fields.geometry.iloc[0]
    assert geometry.geom_type in ("Polygon", "MultiPolygon")
    assert geometry.is_valid
    union = shapely.union(nested_polygon, overlapping)
    assert geometry.area == pytest.approx(union.area, rel=1e-9)
    assert geometry.area == pytest.approx((30 * 30 * 2 - 10 * 10) * 10.0**2, rel=1e-9)
    assert shapely.symmetric_difference(geometry, union).area == pytest.approx(0, abs=1e-6)


# --------------------------------------------------------------------------------------------
# 4. --nodata values a uint16 pixel cannot hold
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), ("-1", -1.0), ("70000", 70000.0), ("nan", math.nan)],
)
def test_nodata_option_outside_uint16(
    tmp_path: Path, basic_scene: SceneFixture, listing: Listing, text: str, value: float
) -> None:
    with rasterio.open(basic_scene.scene) as src:
        assert src.nodata is None and src.dtypes[0] == "uint16"
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="cannot be a uint16 pixel value"):
        tile_scenes(
            [basic_scene.scene], basic_scene.labels, out, chip_size=CHIP, overlap=OVERLAP,
            split="1,0,0", nodata=value,
        )  # fmt: skip

    before = listing(tmp_path)
    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, *TILE,
        "--nodata", text,
    )  # fmt: skip
    assert_user_error(result, "--nodata", "cannot be a uint16 pixel value")
    assert_nothing_left(tmp_path, before, listing)


def test_nodata_option_zero_is_accepted(tmp_path: Path, basic_scene: SceneFixture) -> None:
    out = tmp_path / "ds"
    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, *TILE,
        "--nodata", "0",
    )  # fmt: skip
    assert result.exit_code == 0, (stderr_of(result), result.exception)
    ds = read_dataset(out)
    assert ds.description["nodata"] == 0
    assert len(ds.images) == 9
    for image in ds.images:
        with rasterio.open(out / image.entry["file_name"]) as chip:
            assert chip.nodata == 0


# --------------------------------------------------------------------------------------------
# 5. a VRT whose source file is gone
# --------------------------------------------------------------------------------------------
def test_vrt_with_a_deleted_source(
    tmp_path: Path, basic_scene: SceneFixture, band_files: list[Path], listing: Listing
) -> None:
    vrt = stack_bands(band_files, tmp_path / "scene.vrt")
    band_files[2].unlink()  # t_red.tif
    out = tmp_path / "out"
    with pytest.raises(InputFileError, match=re.escape("t_red.tif")) as caught:
        tile_scenes([vrt], basic_scene.labels, out, chip_size=CHIP, overlap=OVERLAP, split="1,0,0")
    assert "does not exist" in str(caught.value)

    before = listing(tmp_path)
    result = run("tile", vrt, "--labels", basic_scene.labels, "-o", out, *TILE)
    assert_user_error(result, "t_red.tif", "does not exist")
    assert_nothing_left(tmp_path, before, listing)


# --------------------------------------------------------------------------------------------
# 6. NaN split fractions
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["nan,0.5,0.5", "0.5,0.5,nan"])
def test_nan_split_fraction(
    tmp_path: Path, basic_scene: SceneFixture, listing: Listing, split: str
) -> None:
    with pytest.raises(ConfigError, match="--split"):
        parse_fractions(split)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="--split"):
        tile_scenes([basic_scene.scene], basic_scene.labels, out, split=split)

    before = listing(tmp_path)
    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, "--split", split
    )
    assert_user_error(result, "--split", split)
    assert_nothing_left(tmp_path, before, listing)


# --------------------------------------------------------------------------------------------
# 7. an output below a plain file
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "output"),
    [
        ("tile", "plainfile/sub"),
        ("tile", "plainfile/sub/deeper"),
        ("stack", "plainfile/x.vrt"),
        ("synth", "plainfile/s.tif"),
        ("synth-fields", "plainfile/truth.gpkg"),
    ],
)
def test_output_below_a_plain_file(
    tmp_path: Path,
    basic_scene: SceneFixture,
    band_files: list[Path],
    listing: Listing,
    command: str,
    output: str,
) -> None:
    plain = tmp_path / "plainfile"
    plain.write_text("not a folder")
    target = tmp_path / output

    def library() -> None:
        if command == "tile":
            tile_scenes(
                [basic_scene.scene], basic_scene.labels, target, chip_size=CHIP, overlap=OVERLAP,
                split="1,0,0",
            )  # fmt: skip
        elif command == "stack":
            stack_bands(band_files, target)
        elif command == "synth":
            synth(target, tmp_path / "truth.gpkg", size=64, seed=1)
        else:
            synth(tmp_path / "s.tif", target, size=64, seed=1)

    def cli() -> Result:
        if command == "tile":
            return run(
                "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", target, *TILE
            )
        if command == "stack":
            return run("stack", *band_files, "-o", target)
        if command == "synth":
            return run("synth", "-o", target, "--fields", tmp_path / "truth.gpkg", "--size", "64")
        return run("synth", "-o", tmp_path / "s.tif", "--fields", target, "--size", "64")

    before = listing(tmp_path)
    with pytest.raises(FieldsegError) as caught:
        library()
    assert isinstance(caught.value, OutputPathError), repr(caught.value)
    assert "plainfile" in str(caught.value)
    assert_nothing_left(tmp_path, before, listing)

    line = assert_user_error(cli(), "plainfile")
    assert "NotADirectoryError" not in line and "Errno" not in line
    assert_nothing_left(tmp_path, before, listing)
    assert plain.read_text() == "not a folder"


# --------------------------------------------------------------------------------------------
# 8. -o . inside a dataset
# --------------------------------------------------------------------------------------------
def test_output_dot_in_a_dataset_is_refused(
    tmp_path: Path,
    basic_scene: SceneFixture,
    listing: Listing,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ds = tmp_path / "ds"
    tile_scenes(
        [basic_scene.scene], basic_scene.labels, ds, chip_size=CHIP, overlap=OVERLAP, split="1,0,0"
    )
    assert (ds / "dataset.json").is_file()
    contents, around = tree(ds), listing(tmp_path)
    monkeypatch.chdir(ds)

    with pytest.raises(OutputPathError, match="current folder"):
        tile_scenes(
            [basic_scene.scene], basic_scene.labels, ".", chip_size=CHIP, overlap=OVERLAP,
            split="1,0,0", overwrite=True,
        )  # fmt: skip
    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", ".", *TILE, "--overwrite"
    )
    assert_user_error(result, "current folder")
    assert tree(ds) == contents
    assert_nothing_left(tmp_path, around, listing)


# --------------------------------------------------------------------------------------------
# 9. --overwrite: a previous dataset is replaced, a folder holding the labels is not
# --------------------------------------------------------------------------------------------
def test_overwrite_replaces_a_previous_dataset(
    tmp_path: Path, basic_scene: SceneFixture, listing: Listing
) -> None:
    ds = tmp_path / "ds"
    tile_scenes(
        [basic_scene.scene], basic_scene.labels, ds, chip_size=CHIP, overlap=OVERLAP, split="1,0,0"
    )
    (ds / "stale.txt").write_text("from an earlier run")
    before = listing(tmp_path)

    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", ds, *TILE, "--seed", "5",
        "--overwrite",
    )  # fmt: skip
    assert result.exit_code == 0, (stderr_of(result), result.exception)
    assert not (ds / "stale.txt").exists()
    replaced = read_dataset(ds)
    assert replaced.description["split_method"]["seed"] == 5
    assert len(replaced.images) == 9
    assert all((ds / im.entry["file_name"]).is_file() for im in replaced.images)
    assert_nothing_left(tmp_path, before, listing)


@pytest.mark.parametrize("where", ["fields.gpkg", "inputs/fields.gpkg"])
def test_overwrite_refuses_a_dataset_holding_the_labels(
    tmp_path: Path, basic_scene: SceneFixture, listing: Listing, where: str
) -> None:
    ds = tmp_path / "ds"
    tile_scenes(
        [basic_scene.scene], basic_scene.labels, ds, chip_size=CHIP, overlap=OVERLAP, split="1,0,0"
    )
    labels = ds / where
    labels.parent.mkdir(exist_ok=True)
    shutil.copy(basic_scene.labels, labels)
    contents, around = tree(ds), listing(tmp_path)

    with pytest.raises(OutputPathError, match="would replace the input"):
        tile_scenes(
            [basic_scene.scene], labels, ds, chip_size=CHIP, overlap=OVERLAP, split="1,0,0",
            overwrite=True,
        )  # fmt: skip
    result = run("tile", basic_scene.scene, "--labels", labels, "-o", ds, *TILE, "--overwrite")
    assert_user_error(result, "would replace the input", "fields.gpkg")
    assert labels.is_file()
    assert load_field_labels(labels).n_read == len(FIELDS)
    assert tree(ds) == contents
    assert_nothing_left(tmp_path, around, listing)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chip_size": 64.5}, "chip size must be a whole number of pixels, got 64.5"),
        ({"workers": 0}, "--workers must be at least 1"),
        ({"seed": -1}, "--seed must be >= 0, got -1"),
        ({"min_piece_share": 2}, "min_piece_share is a share between 0 and 1"),
        ({"min_piece_pixels": -1}, "min_piece_pixels must be >= 0"),
    ],
)
def test_library_arguments_out_of_range_are_config_errors(
    tmp_path: Path, basic_scene: SceneFixture, options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"chip_size": CHIP, "overlap": OVERLAP, **options}
    with pytest.raises(ConfigError, match=re.escape(message)):
        tile_scenes([basic_scene.scene], basic_scene.labels, tmp_path / "ds", **arguments)  # type: ignore[arg-type]
    assert not (tmp_path / "ds").exists()


def test_negative_seeds_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="seed must be >= 0, got -1"):
        synth(tmp_path / "s.tif", tmp_path / "f.gpkg", size=64, seed=-1)
    result = run("synth", "-o", tmp_path / "s.tif", "--fields", tmp_path / "f.gpkg", "--seed", "-1")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "-1 is not in the range x>=0" in result.output
    assert not list(tmp_path.iterdir())
    with pytest.raises(ConfigError, match=r"training\.seed"):
        load_run_config(CPU_CONFIG, ["training.seed=-1"])
