"""``stack_bands``: single-band files -> one multi-band GDAL VRT."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import CRS_UTM, px_box, read_dataset, write_labels, write_scene

from fieldseg.errors import ConfigError, CRSError, InputFileError, OutputExistsError
from fieldseg.stacking import band_names_from_files, stack_bands
from fieldseg.tiling import tile_scenes

WIDTH, HEIGHT = 64, 48
TRANSFORM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_800_000.0)
NODATA = -9999
COLOURS = ("blue", "green", "red")


def _band(index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    data = rng.integers(0, 5000, size=(1, HEIGHT, WIDTH)).astype(np.int16)
    data[0, 0, index] = NODATA
    return data


def _write(path: Path, data: np.ndarray, **kwargs: object) -> Path:
    kwargs.setdefault("transform", TRANSFORM)
    kwargs.setdefault("nodata", NODATA)
    kwargs.setdefault("band_names", None)
    return write_scene(path, data, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def bands(tmp_path: Path) -> dict[str, Path]:
    """tile_a_blue.tif, tile_a_green.tif, tile_a_red.tif in tmp_path/data/bands."""
    folder = tmp_path / "data" / "bands"
    folder.mkdir(parents=True)
    return {c: _write(folder / f"tile_a_{c}.tif", _band(i)) for i, c in enumerate(COLOURS)}


def _read(path: Path) -> tuple[np.ndarray, dict[str, object]]:
    with rasterio.open(path) as src:
        return src.read(), {
            "descriptions": src.descriptions,
            "crs": src.crs,
            "transform": src.transform,
            "nodata": src.nodata,
            "dtypes": src.dtypes,
            "driver": src.driver,
            "files": src.files,
        }


# --------------------------------------------------------------------------------------------
# the VRT
# --------------------------------------------------------------------------------------------
def test_bands_in_the_given_order_with_default_names(
    tmp_path: Path, bands: dict[str, Path], listing: Callable[[Path], list[str]]
) -> None:
    order = ["red", "blue", "green"]
    out = tmp_path / "data" / "scene.vrt"
    written = stack_bands([bands[c] for c in order], out)
    assert written == out
    data, meta = _read(out)
    assert meta["driver"] == "VRT"
    assert meta["descriptions"] == tuple(order)  # common prefix "tile_a_" dropped
    assert meta["crs"] == rasterio.crs.CRS.from_string(CRS_UTM)
    assert meta["transform"] == TRANSFORM
    assert meta["nodata"] == NODATA
    assert meta["dtypes"] == ("int16",) * 3
    for index, colour in enumerate(order):
        assert np.array_equal(data[index], _band(COLOURS.index(colour))[0])
    assert listing(tmp_path / "data") == ["bands", "scene.vrt"]  # no temporary file left
    assert out.stat().st_size < 20_000  # pixels are referenced, not copied


def test_explicit_band_names(tmp_path: Path, bands: dict[str, Path]) -> None:
    out = tmp_path / "scene.vrt"
    stack_bands(list(bands.values()), out, band_names=["B02", "B03", "B04"])
    assert _read(out)[1]["descriptions"] == ("B02", "B03", "B04")


def test_sources_are_relative_and_the_folder_can_move(
    tmp_path: Path, bands: dict[str, Path]
) -> None:
    out = tmp_path / "data" / "vrt" / "scene.vrt"
    out.parent.mkdir()
    stack_bands(list(bands.values()), out)
    root = ET.parse(out).getroot()
    sources = root.findall(".//SourceFilename")
    assert [s.get("relativeToVRT") for s in sources] == ["1", "1", "1"]
    assert [s.text for s in sources] == [f"../bands/tile_a_{c}.tif" for c in COLOURS]
    before, _ = _read(out)
    shutil.move(tmp_path / "data", tmp_path / "moved")
    after, meta = _read(tmp_path / "moved" / "vrt" / "scene.vrt")
    assert np.array_equal(before, after)
    assert meta["descriptions"] == COLOURS


def test_multi_band_files_add_band_suffixes(tmp_path: Path, bands: dict[str, Path]) -> None:
    two = np.concatenate([_band(7), _band(8)])
    pair = _write(tmp_path / "data" / "bands" / "tile_a_pair.tif", two)
    out = tmp_path / "scene.vrt"
    stack_bands([bands["blue"], pair], out)
    data, meta = _read(out)
    assert meta["descriptions"] == ("blue", "pair_b1", "pair_b2")
    assert np.array_equal(data[1:], two)


def test_band_names_from_files_rules() -> None:
    same_date = [Path(f"s2_l3a_20210615_{c}.tif") for c in ("blue", "red")]
    assert band_names_from_files(same_date, [1, 1]) == ["blue", "red"]
    two_dates = [Path("s2_l3a_20210615_blue.tif"), Path("s2_l3a_20210715_blue.tif")]
    assert band_names_from_files(two_dates, [1, 1]) == ["20210615_blue", "20210715_blue"]
    # cut only at a separator, so words stay whole
    assert band_names_from_files([Path("red.tif"), Path("reddish.tif")], [1, 1]) == [
        "red",
        "reddish",
    ]
    assert band_names_from_files([Path("a_x.tif"), Path("b_x.tif")], [1, 1]) == ["a_x", "b_x"]
    assert band_names_from_files([Path("only_one.tif")], [2]) == ["only_one_b1", "only_one_b2"]
    # a multi-band file keeps its own distinct band descriptions
    assert band_names_from_files([Path("s.tif")], [2], [("red", "nir")]) == ["red", "nir"]
    dates = [Path("s2_2021.tif"), Path("s2_2022.tif")]
    assert band_names_from_files(dates, [2, 2], [("red", "nir"), ("red", "nir")]) == [
        "2021_red", "2021_nir", "2022_red", "2022_nir"]  # fmt: skip
    assert band_names_from_files([Path("s.tif")], [2], [("red", "red")]) == ["s_b1", "s_b2"]
    assert band_names_from_files([Path("s.tif")], [2], [None]) == ["s_b1", "s_b2"]


def test_a_described_multi_band_scene_stacks_with_its_band_names(tmp_path: Path) -> None:
    """Stacking one scene gives a VRT that predicts like the scene: the same band names."""
    scene = tmp_path / "scene.tif"
    _write(scene, np.ones((3, 8, 8), np.int16), band_names=["red_d1", "green_d1", "nir_d1"])
    stack_bands(str(scene), tmp_path / "scene.vrt")  # one path given alone, not in a list
    _, meta = _read(tmp_path / "scene.vrt")
    assert meta["descriptions"] == ("red_d1", "green_d1", "nir_d1")
    # a band without its own description: the file's bands are numbered instead
    _write(tmp_path / "half.tif", np.ones((3, 8, 8), np.int16), band_names=["red", "", "nir"])
    stack_bands([tmp_path / "half.tif"], tmp_path / "half.vrt")
    assert _read(tmp_path / "half.vrt")[1]["descriptions"] == ("half_b1", "half_b2", "half_b3")


def test_stacked_vrt_tiles_like_a_geotiff(tmp_path: Path, bands: dict[str, Path]) -> None:
    out = tmp_path / "scene.vrt"
    stack_bands(list(bands.values()), out)
    labels = write_labels(tmp_path / "f.gpkg", [px_box(5, 5, 25, 20)])
    tile_scenes(
        [out], labels, tmp_path / "ds", chip_size=32, overlap=0, max_nodata=1.0, split="1,0,0"
    )
    ds = read_dataset(tmp_path / "ds")
    assert ds.description["bands"] == list(COLOURS)
    assert ds.description["nodata"] == NODATA
    assert ds.description["dtype"] == "int16"
    image = next(im for im in ds.images if (im.row_off, im.col_off) == (0, 0))
    chip, meta = ds.chip(image)
    assert meta["descriptions"] == COLOURS
    expected = np.concatenate([_band(i) for i in range(3)])[:, :32, :32]
    assert np.array_equal(chip, expected)
    (ann,) = image.annotations
    # 20 x 15 px; the nodata pixels (row 0, cols 0..2) lie outside the field
    assert ann["area"] == 20 * 15


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------
def test_symlinked_files_are_stored_as_given(tmp_path: Path, bands: dict[str, Path]) -> None:
    """Links named for another year point at this year's files: the VRT keeps the links."""
    linked = tmp_path / "data" / "y2022"
    linked.mkdir()
    for colour, path in bands.items():
        (linked / f"tile_b_{colour}.tif").symlink_to(path)
    out = tmp_path / "data" / "scene.vrt"
    stack_bands([linked / f"tile_b_{c}.tif" for c in COLOURS], out)
    sources = ET.parse(out).getroot().findall(".//SourceFilename")
    assert [s.text for s in sources] == [f"y2022/tile_b_{c}.tif" for c in COLOURS]
    assert _read(out)[1]["descriptions"] == COLOURS


def test_a_file_given_twice_is_named(tmp_path: Path, bands: dict[str, Path]) -> None:
    files = [bands["blue"], bands["green"], tmp_path / "data" / "bands" / ".." / "bands" /
             "tile_a_blue.tif"]  # fmt: skip
    with pytest.raises(ConfigError, match=r"tile_a_blue\.tif is given twice \(files 1 and 3\)"):
        stack_bands(files, tmp_path / "s.vrt")


def test_band_name_count_mismatch(tmp_path: Path, bands: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"2 band names given for 3 bands \(3 files\)"):
        stack_bands(list(bands.values()), tmp_path / "s.vrt", band_names=["a", "b"])
    assert not (tmp_path / "s.vrt").exists()


def test_duplicate_band_names(tmp_path: Path, bands: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="band names must be unique; repeated: a"):
        stack_bands(list(bands.values()), tmp_path / "s.vrt", band_names=["a", "b", "a"])


@pytest.mark.parametrize("name", ["scene.tif", "scene", "scene.vrt.xml"])
def test_output_must_be_a_vrt(tmp_path: Path, bands: dict[str, Path], name: str) -> None:
    with pytest.raises(ConfigError, match=rf"name the output \*\.vrt, not {name}"):
        stack_bands(list(bands.values()), tmp_path / name)
    assert not (tmp_path / name).exists()


def test_existing_output_refused_then_overwritten(
    tmp_path: Path, bands: dict[str, Path], listing: Callable[[Path], list[str]]
) -> None:
    out = tmp_path / "scene.vrt"
    out.write_text("old")
    with pytest.raises(OutputExistsError, match=r"scene\.vrt exists; pass --overwrite"):
        stack_bands(list(bands.values()), out)
    assert out.read_text() == "old"
    stack_bands(list(bands.values()), out, overwrite=True)
    assert _read(out)[1]["descriptions"] == COLOURS
    assert listing(tmp_path) == ["data", "scene.vrt"]


def test_missing_file(tmp_path: Path, bands: dict[str, Path]) -> None:
    missing = tmp_path / "data" / "bands" / "tile_a_nir.tif"
    with pytest.raises(InputFileError, match=r"raster not found: .*tile_a_nir\.tif"):
        stack_bands([bands["blue"], missing], tmp_path / "s.vrt")


def test_corrupt_file(tmp_path: Path, bands: dict[str, Path]) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff at all" * 50)
    with pytest.raises(InputFileError, match=r"cannot read raster .*bad\.tif"):
        stack_bands([bands["blue"], bad], tmp_path / "s.vrt")


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one band file"):
        stack_bands([], tmp_path / "s.vrt")


def _odd(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / "data" / "bands" / f"odd_{kind}.tif"
    band = _band(5)
    if kind == "crs":
        return _write(path, band, crs="EPSG:32632")
    if kind == "no_crs":
        return _write(path, band, crs=None)
    if kind == "size":
        return _write(path, np.zeros((1, HEIGHT, WIDTH + 1), dtype=np.int16))
    if kind == "transform":
        return _write(path, band, transform=TRANSFORM @ Affine.translation(1, 0))
    if kind == "pixel_size":
        return _write(path, band, transform=Affine(20.0, 0, 500_000.0, 0, -20.0, 5_800_000.0))
    if kind == "dtype":
        return _write(path, band.astype(np.int32))
    if kind == "nodata":
        return _write(path, band, nodata=0)
    if kind == "no_nodata":
        return _write(path, band, nodata=None)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "error", "detail"),
    [
        ("crs", CRSError, "CRS"),
        ("no_crs", CRSError, "has no CRS"),
        ("size", InputFileError, "size 65x48 vs 64x48"),
        ("transform", InputFileError, "pixel grid"),
        ("pixel_size", InputFileError, "pixel grid"),
        ("dtype", InputFileError, "data type int32 vs int16"),
        ("nodata", InputFileError, "nodata 0.0 vs -9999.0"),
        ("no_nodata", InputFileError, "nodata None vs -9999.0"),
    ],
)
@pytest.mark.parametrize("position", [1, 3])
def test_a_file_that_does_not_match_is_named(
    tmp_path: Path,
    bands: dict[str, Path],
    listing: Callable[[Path], list[str]],
    kind: str,
    error: type[Exception],
    detail: str,
    position: int,
) -> None:
    odd = _odd(tmp_path, kind)
    files = list(bands.values())
    files.insert(position, odd)
    with pytest.raises(error) as info:
        stack_bands(files, tmp_path / "s.vrt")
    message = str(info.value)
    assert odd.name in message
    assert detail in message
    assert listing(tmp_path) == ["data"]


def test_far_away_sources_are_absolute(tmp_path: Path, bands: dict[str, Path]) -> None:
    """docs/formats.md: relative only in, below or beside the VRT's folder (one '..')."""
    out = tmp_path / "elsewhere" / "deeper" / "scene.vrt"
    out.parent.mkdir(parents=True)
    stack_bands(list(bands.values()), out)
    sources = ET.parse(out).getroot().findall(".//SourceFilename")
    assert [s.get("relativeToVRT") for s in sources] == ["0", "0", "0"]
    assert [Path(s.text or "") for s in sources] == [p.resolve() for p in bands.values()]
    assert _read(out)[1]["descriptions"] == COLOURS
    # and a VRT in the files' own folder refers to them by name
    beside = tmp_path / "data" / "bands" / "scene.vrt"
    stack_bands(list(bands.values()), beside)
    names = [s.text for s in ET.parse(beside).getroot().findall(".//SourceFilename")]
    assert names == [f"tile_a_{c}.tif" for c in COLOURS]


def test_float_files_with_nan_nodata(tmp_path: Path) -> None:
    base = np.random.default_rng(3).random((1, HEIGHT, WIDTH)).astype(np.float32)
    base[0, 5, 5] = np.nan
    files = [_write(tmp_path / f"f_{i}.tif", base + i, nodata=float("nan")) for i in range(2)]
    stack_bands(files, tmp_path / "s.vrt")
    data, meta = _read(tmp_path / "s.vrt")
    assert meta["dtypes"] == ("float32", "float32")
    assert np.isnan(meta["nodata"])  # type: ignore[arg-type]
    assert np.array_equal(data, np.concatenate([base, base + 1]), equal_nan=True)


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failure_while_writing_leaves_nothing(
    tmp_path: Path,
    bands: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    listing: Callable[[Path], list[str]],
    error: type[BaseException],
) -> None:
    import fieldseg.stacking

    def failing(*args: object, **kwargs: object) -> None:
        raise error("stop")

    monkeypatch.setattr(fieldseg.stacking, "_verify", failing)
    with pytest.raises(error):
        stack_bands(list(bands.values()), tmp_path / "s.vrt")
    assert listing(tmp_path) == ["data"]
    (tmp_path / "s.vrt").write_text("old")
    with pytest.raises(error):
        stack_bands(list(bands.values()), tmp_path / "s.vrt", overwrite=True)
    assert (tmp_path / "s.vrt").read_text() == "old"
    assert listing(tmp_path) == ["data", "s.vrt"]
