"""Shared fixtures: tiny labelled scenes built in code, and an oracle for the tiled COCO.

Geometry is written in *pixel* coordinates of the fixture scene (``col``, ``row``) and converted
to EPSG:32633 metres with :data:`SCENE_TRANSFORM`. Rectangle edges sit on pixel boundaries, so no
pixel centre ever lies on them; irregular vertices are off-grid (see ``test_labels`` for the
check that no pixel centre lies within a millimetre of any edge).

The fixture scene (300 x 260 px, 4 bands uint16, 10 m) tiled with ``chip_size=128, overlap=32``
gives chip columns starting at 0, 96, 172 and chip rows starting at 0, 96, 132 (9 chips).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from click.testing import CliRunner, Result
from rasterio import features
from shapely.geometry.base import BaseGeometry

from fieldseg.cli import main
from fieldseg.coco_format import decode_mask
from fieldseg.raster_io import write_geotiff

CRS_UTM = "EPSG:32633"
PIXEL = 10.0
ORIGIN_X, ORIGIN_Y = 500_000.0, 5_800_000.0
SCENE_TRANSFORM = Affine(PIXEL, 0.0, ORIGIN_X, 0.0, -PIXEL, ORIGIN_Y)
SCENE_WIDTH, SCENE_HEIGHT = 300, 260
BAND_NAMES = ("blue", "green", "red", "nir")
CHIP, OVERLAP = 128, 32
CHIP_COLS = (0, 96, 172)
CHIP_ROWS = (0, 96, 132)
SPLIT_NAMES = ("train", "val", "test")
#: The light CPU run config, and overrides that make its training steps cheap for tests.
CPU_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "maskrcnn_r18_cpu.yaml"
FAST_TRAINING = ("training.batch_size=4", "model.rpn_post_nms_top_n_train=300",
                 "model.box_batch_size_per_image=128", "model.rpn_pre_nms_top_n_test=300",
                 "model.rpn_post_nms_top_n_test=200")  # fmt: skip
#: tile_scenes' default sliver rule
MIN_PIECE_PIXELS, MIN_PIECE_SHARE = 10, 0.02


# --------------------------------------------------------------------------------------------
# geometry in pixel coordinates
# --------------------------------------------------------------------------------------------
def to_world(coords: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Pixel (col, row) -> EPSG:32633 (x, y) on the fixture grid."""
    return [SCENE_TRANSFORM @ (c, r) for c, r in coords]


def px_polygon(
    shell: Sequence[tuple[float, float]], holes: Sequence[Sequence[tuple[float, float]]] = ()
) -> shapely.Polygon:
    return shapely.Polygon(to_world(shell), [to_world(h) for h in holes])


def px_box(c0: float, r0: float, c1: float, r1: float) -> shapely.Polygon:
    return px_polygon([(c0, r0), (c1, r0), (c1, r1), (c0, r1)])


#: The fixture fields, by name, in the order they are written to the labels file: the field_id
#: of a field is its 1-based position in this dict.
FIELDS: dict[str, BaseGeometry] = {
    "rect_a": px_box(10, 10, 40, 40),
    "rect_b": px_box(40, 10, 70, 40),  # shares an edge with rect_a, no gap
    "holed": px_polygon(
        [(150, 20), (200, 20), (200, 70), (150, 70)], [[(165, 35), (185, 35), (185, 55), (165, 55)]]
    ),
    "multi": shapely.MultiPolygon([px_box(20, 150, 35, 165), px_box(50, 170, 65, 185)]),
    "pentagon": px_polygon(
        [(235.3, 181.7), (268.2, 195.1), (262.9, 228.4), (240.6, 231.2), (228.1, 210.3)]
    ),
    "scene_edge": px_box(280, 100, 330, 140),  # crosses the right scene edge (col 300)
    "long": px_box(60, 235, 250, 255),  # longer than a chip: every piece is cut
    "bottom_edge": px_box(5, 245, 45, 275),  # crosses the bottom scene edge (row 260)
    "small": px_box(100, 60, 106, 66),  # 36 px, sits in the overlap of two chip columns
    "sliver": px_box(127, 150, 187, 158),  # chip column 0 (cols < 128) holds 8 px: a sliver
    "diamond": px_polygon([(200.4, 97.3), (224.7, 122.2), (199.6, 146.9), (175.2, 121.8)]),
}
FIELD_IDS: dict[str, int] = {name: i for i, name in enumerate(FIELDS, start=1)}
#: A field painted into the raster but never in any label file.
UNDRAWN_FIELD = px_box(110, 180, 140, 210)


def field_value(field_id: int, band: int) -> int:
    return 2000 + 37 * field_id + 100 * band


def paint_scene(
    width: int,
    height: int,
    geometries: Sequence[BaseGeometry],
    *,
    bands: int = 4,
    transform: Affine = SCENE_TRANSFORM,
    seed: int = 0,
) -> np.ndarray:
    """A uint16 (bands, height, width) array: noisy background, each geometry a flat field."""
    rng = np.random.default_rng(seed)
    data = np.empty((bands, height, width), dtype=np.uint16)
    noise = rng.integers(0, 50, size=(height, width), dtype=np.uint16)
    ids = np.zeros((height, width), dtype=np.int32)
    shapes = [(g, i) for i, g in enumerate(geometries, start=1) if not g.is_empty]
    if shapes:
        ids = features.rasterize(shapes, out_shape=(height, width), transform=transform)
    for b in range(bands):
        data[b] = 800 + 50 * b + noise
        for i in np.unique(ids[ids > 0]):
            data[b][ids == i] = field_value(int(i), b)
    return data


def write_labels(
    path: Path,
    geometries: Sequence[BaseGeometry | None],
    *,
    crs: str | None = CRS_UTM,
    columns: dict[str, Sequence[Any]] | None = None,
    to_crs: str | None = None,
) -> Path:
    """Write polygons (in ``crs``) to any OGR format chosen by suffix, optionally reprojected."""
    frame = gpd.GeoDataFrame(dict(columns or {}), geometry=list(geometries), crs=crs)
    if to_crs is not None:
        frame = frame.to_crs(to_crs)
    frame.to_file(path, engine="pyogrio")
    return path


# --------------------------------------------------------------------------------------------
# reading a dataset back
# --------------------------------------------------------------------------------------------
@dataclass
class Image:
    """One COCO image entry with its annotations, as read back from a split file."""

    split: str
    entry: dict[str, Any]
    annotations: list[dict[str, Any]]

    @property
    def transform(self) -> Affine:
        return Affine(*self.entry["transform"])

    @property
    def shape(self) -> tuple[int, int]:
        return self.entry["height"], self.entry["width"]

    @property
    def col_off(self) -> int:
        return int(self.entry["window"]["col_off"])

    @property
    def row_off(self) -> int:
        return int(self.entry["window"]["row_off"])

    def ignore(self) -> np.ndarray:
        rle = self.entry["ignore_mask"]
        return np.zeros(self.shape, dtype=bool) if rle is None else decode_mask(rle)

    def by_field(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for ann in self.annotations:
            assert ann["field_id"] not in out, "a field has two annotations in one chip"
            out[ann["field_id"]] = ann
        return out


@dataclass
class Dataset:
    """A tiled dataset directory, read back."""

    root: Path
    description: dict[str, Any]
    coco: dict[str, dict[str, Any]]
    images: list[Image] = field(default_factory=list)

    def split_images(self, split: str) -> list[Image]:
        return [im for im in self.images if im.split == split]

    def chip(self, image: Image) -> tuple[np.ndarray, dict[str, Any]]:
        with rasterio.open(self.root / image.entry["file_name"]) as src:
            return src.read(), {
                "crs": src.crs,
                "transform": src.transform,
                "nodata": src.nodata,
                "dtype": src.dtypes[0],
                "descriptions": src.descriptions,
                "shape": (src.count, src.height, src.width),
            }

    def field_ids(self) -> set[int]:
        return {a["field_id"] for im in self.images for a in im.annotations}


def read_dataset(root: Path) -> Dataset:
    description = json.loads((root / "dataset.json").read_text())
    coco = {s: json.loads((root / f"{s}.json").read_text()) for s in SPLIT_NAMES}
    ds = Dataset(root=root, description=description, coco=coco)
    for split, doc in coco.items():
        per_image: dict[int, list[dict[str, Any]]] = {im["id"]: [] for im in doc["images"]}
        for ann in doc["annotations"]:
            per_image[ann["image_id"]].append(ann)
        ds.images.extend(Image(split, im, per_image[im["id"]]) for im in doc["images"])
    return ds


# --------------------------------------------------------------------------------------------
# the oracle: what each chip's annotations must be
# --------------------------------------------------------------------------------------------
def rasterize_truth(
    geometry: BaseGeometry, transform: Affine, shape: tuple[int, int]
) -> np.ndarray:
    """Pixels whose centres fall in ``geometry`` (rasterio default, all_touched=False)."""
    if geometry.is_empty:
        return np.zeros(shape, dtype=bool)
    return features.rasterize(
        [(geometry, 1)], out_shape=shape, transform=transform, all_touched=False, dtype="uint8"
    ).astype(bool)


def total_pixels(geometry: BaseGeometry, scene_transform: Affine = SCENE_TRANSFORM) -> int:
    """Pixels of the (unbounded) scene grid the geometry covers, beyond the scene edge too."""
    inverse = ~scene_transform
    xs, ys = shapely.get_coordinates(geometry).T
    cols, rows = inverse @ (xs, ys)
    c0, r0 = int(np.floor(cols.min())) - 2, int(np.floor(rows.min())) - 2
    c1, r1 = int(np.ceil(cols.max())) + 2, int(np.ceil(rows.max())) + 2
    local = scene_transform @ Affine.translation(c0, r0)
    return int(rasterize_truth(geometry, local, (r1 - r0, c1 - c0)).sum())


@dataclass
class ExpectedPiece:
    mask: np.ndarray
    truncated: bool
    sliver: bool


def valid_mask(data: np.ndarray, nodata: float | None, image: Image) -> np.ndarray:
    """Valid pixels of a chip read back: no band is nodata (or NaN), inside the scene window."""
    valid = np.ones(data.shape[1:], dtype=bool)
    if np.issubdtype(data.dtype, np.floating):
        valid &= ~np.isnan(data).any(axis=0)
    if nodata is not None and not np.isnan(nodata):
        valid &= ~(data == np.asarray(nodata).astype(data.dtype)).any(axis=0)
    win = image.entry["window"]
    valid[int(win["height"]) :, :] = False
    valid[:, int(win["width"]) :] = False
    return valid


def expected_pieces(
    image: Image,
    truth: dict[int, BaseGeometry],
    valid: np.ndarray,
    *,
    scene_transform: Affine = SCENE_TRANSFORM,
) -> dict[int, ExpectedPiece]:
    """field_id -> the piece the chip must hold (empty pieces left out)."""
    out: dict[int, ExpectedPiece] = {}
    for field_id, geometry in truth.items():
        mask = rasterize_truth(geometry, image.transform, image.shape) & valid
        pixels = int(mask.sum())
        if pixels == 0:
            continue
        total = total_pixels(geometry, scene_transform)
        truncated = pixels < total
        sliver = truncated and (pixels < MIN_PIECE_PIXELS or pixels < MIN_PIECE_SHARE * total)
        out[field_id] = ExpectedPiece(mask, truncated, sliver)
    return out


def components(mask: np.ndarray) -> list[shapely.Polygon]:
    """The 4-connected parts of a boolean mask as polygons in pixel coordinates (with holes)."""
    return [
        shapely.geometry.shape(geom)
        for geom, value in features.shapes(mask.astype(np.uint8), mask=mask)
        if value == 1
    ]


def bbox_of(mask: np.ndarray) -> list[float]:
    rows, cols = np.nonzero(mask)
    return [
        float(cols.min()),
        float(rows.min()),
        float(cols.max() - cols.min() + 1),
        float(rows.max() - rows.min() + 1),
    ]


# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------
@dataclass
class SceneFixture:
    """A scene file and the label file describing it."""

    scene: Path
    labels: Path
    truth: dict[int, BaseGeometry]  # field_id -> geometry in the scene CRS
    directory: Path


def write_scene(
    path: Path,
    data: np.ndarray,
    *,
    transform: Affine = SCENE_TRANSFORM,
    crs: str | None = CRS_UTM,
    nodata: float | None = None,
    band_names: Sequence[str] | None = BAND_NAMES,
) -> Path:
    write_geotiff(
        path,
        data,
        transform=transform,
        crs=rasterio.crs.CRS.from_user_input(crs) if crs else None,
        nodata=nodata,
        band_names=band_names,
    )
    return path


@pytest.fixture(scope="session")
def scene_data() -> np.ndarray:
    """Pixels of the fixture scene: every field (and the undrawn one) painted in."""
    return paint_scene(SCENE_WIDTH, SCENE_HEIGHT, [*FIELDS.values(), UNDRAWN_FIELD])


@pytest.fixture(scope="session")
def basic_scene(tmp_path_factory: pytest.TempPathFactory, scene_data: np.ndarray) -> SceneFixture:
    """The 300 x 260 fixture scene (no nodata) with complete labels in a GeoPackage."""
    root = tmp_path_factory.mktemp("basic")
    scene = write_scene(root / "scene.tif", scene_data)
    labels = write_labels(
        root / "fields.gpkg", list(FIELDS.values()), columns={"name": list(FIELDS)}
    )
    truth = {FIELD_IDS[n]: g for n, g in FIELDS.items()}
    return SceneFixture(scene, labels, truth, root)


@pytest.fixture(scope="session")
def basic_dataset(tmp_path_factory: pytest.TempPathFactory, basic_scene: SceneFixture) -> Dataset:
    """The basic scene tiled once (chip 128, overlap 32, all chips in train). Do not modify.

    Everything goes to train (``split="1,0,0"``) so that no chip is dropped at a split border and
    all 9 chips can be checked; the splits have their own tests.
    """
    from fieldseg.tiling import tile_scenes

    out = tmp_path_factory.mktemp("basic_out") / "dataset"
    tile_scenes(
        [basic_scene.scene], basic_scene.labels, out, chip_size=CHIP, overlap=OVERLAP, split="1,0,0"
    )
    return read_dataset(out)


#: Nodata layout of :func:`nodata_scene` (nodata value 0): a 20-px strip on the left, a block
#: covering 55 % of chip (row 0, col 172), and band-2-only nodata pixels inside rect_a.
NODATA_STRIP_COLS = 20
NODATA_BLOCK = (200, 0, 300, 90)  # c0, r0, c1, r1
NODATA_BAND2_PIXELS = ((15, 30), (16, 30), (17, 31))  # (row, col), inside rect_a


def add_nodata(data: np.ndarray, value: int = 0) -> np.ndarray:
    out = data.copy()
    out[:, :, :NODATA_STRIP_COLS] = value
    c0, r0, c1, r1 = NODATA_BLOCK
    out[:, r0:r1, c0:c1] = value
    for r, c in NODATA_BAND2_PIXELS:
        out[2, r, c] = value
    return out


@pytest.fixture(scope="session")
def nodata_scene(tmp_path_factory: pytest.TempPathFactory, scene_data: np.ndarray) -> SceneFixture:
    """The fixture scene with nodata 0 declared in the file (see :func:`add_nodata`)."""
    root = tmp_path_factory.mktemp("nodata")
    scene = write_scene(root / "scene_nodata.tif", add_nodata(scene_data), nodata=0)
    labels = write_labels(root / "fields.gpkg", list(FIELDS.values()))
    truth = {FIELD_IDS[n]: g for n, g in FIELDS.items()}
    return SceneFixture(scene, labels, truth, root)


@pytest.fixture(autouse=True)
def _restore_fieldseg_logger() -> Iterator[None]:
    """The CLI reconfigures the 'fieldseg' logger (propagate=False); undo it after each test."""
    logger = logging.getLogger("fieldseg")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture
def listing() -> Callable[[Path], list[str]]:
    """Sorted names in a directory (hidden ones too): for 'nothing left behind' checks."""

    def _list(directory: Path) -> list[str]:
        return sorted(p.name for p in directory.iterdir())

    return _list


def check_against_truth(
    ds: Dataset,
    truth: dict[int, BaseGeometry],
    *,
    nodata: float | None = None,
    scene_transform: Affine = SCENE_TRANSFORM,
    sparse: bool = False,
    images: Sequence[Image] | None = None,
) -> dict[str, int]:
    """Assert every chip's annotations equal the rasterised truth, pixel for pixel.

    For every chip and every truth field with pixels in it: a non-sliver piece must be annotated
    under its field_id with exactly the truth mask (minus nodata), the right ``truncated`` flag,
    ``area`` and ``bbox``; a sliver must be absent and its pixels ignored. Nothing else may be
    annotated. In sparse mode the ignore mask must be exactly the complement of the annotations
    among the valid pixels (nodata is told apart by the nodata rule, not listed in it).
    Returns counters for the caller's own checks.
    """
    counts = {"pieces": 0, "truncated": 0, "slivers": 0, "chips": 0}
    for image in images if images is not None else ds.images:
        data, _ = ds.chip(image)
        valid = valid_mask(data, nodata, image)
        expected = expected_pieces(image, truth, valid, scene_transform=scene_transform)
        got = image.by_field()
        wanted = {fid for fid, piece in expected.items() if not piece.sliver}
        name = image.entry["file_name"]
        assert set(got) == wanted, f"{name}: annotated {sorted(got)}, expected {sorted(wanted)}"
        ignore = image.ignore()
        union = np.zeros(image.shape, dtype=bool)
        for fid, piece in expected.items():
            if piece.sliver:
                assert ignore[piece.mask].all(), f"{name}: sliver of field {fid} not ignored"
                counts["slivers"] += 1
                continue
            ann = got[fid]
            mask = decode_mask(ann["segmentation"])
            assert mask.shape == image.shape
            assert np.array_equal(mask, piece.mask), (
                f"{name}: field {fid} mask differs in {int((mask != piece.mask).sum())} px"
            )
            assert ann["truncated"] is piece.truncated, f"{name}: field {fid} truncated flag"
            assert ann["area"] == int(piece.mask.sum())
            assert ann["bbox"] == bbox_of(piece.mask)
            assert ann["iscrowd"] == 0
            assert not (mask & ignore).any(), f"{name}: field {fid} overlaps the ignore mask"
            assert not (mask & union).any(), f"{name}: two annotations share pixels"
            union |= mask
            counts["pieces"] += 1
            counts["truncated"] += int(piece.truncated)
        if sparse:  # every valid pixel that is no drawn field is ignored; nodata is not listed
            assert np.array_equal(ignore, ~union & valid), (
                f"{name}: ignore mask is not the complement of the annotations among valid pixels"
            )
        counts["chips"] += 1
    return counts


# --------------------------------------------------------------------------------------------
# running the command line
# --------------------------------------------------------------------------------------------
def make_tiny_dataset(root: Path, *, dates: int = 1) -> Path:
    """A 192 px synthetic scene (4 bands per date) tiled into 64 px chips: ``root/dataset``."""
    from fieldseg.synthetic import synth
    from fieldseg.tiling import tile_scenes

    synth(root / "scene.tif", root / "fields.gpkg", size=192, seed=3, bands=4, dates=dates)
    tile_scenes([root / "scene.tif"], root / "fields.gpkg", root / "dataset", chip_size=64,
                overlap=0, split="0.7,0.3,0", block_size=64, seed=1)  # fmt: skip
    return root / "dataset"


def run(*args: str | Path) -> Result:
    """Invoke ``fieldseg ARGS`` in-process."""
    return CliRunner().invoke(main, [str(a) for a in args])


def stdout_of(result: Result) -> str:
    return getattr(result, "stdout", result.output)


def stderr_of(result: Result) -> str:
    try:
        return result.stderr
    except ValueError:  # click < 8.2 without separate stderr
        return result.output


def assert_user_error(result: Result, *fragments: str) -> str:
    """Exit 1, exactly one 'Error: ...' line on stderr holding ``fragments``, no traceback."""
    err = stderr_of(result)
    assert result.exit_code == 1, (result.exit_code, result.output, err, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err and "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


# --------------------------------------------------------------------------------------------
# an oracle scene for the predict tests: a synthetic scene and its truth id raster


class OracleScene:
    """A synthetic scene, its truth polygons and the truth id raster the oracles read."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.image = root / "scene.tif"
        self.truth = root / "truth.gpkg"
        self.ids = root / "ids.tif"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> OracleScene:
    """A 320 px synthetic scene (seed 3) with its truth id raster, once per test module."""
    from fieldseg.oracle import write_truth_raster
    from fieldseg.synthetic import synth

    s = OracleScene(tmp_path_factory.mktemp("oracle_scene"))
    synth(s.image, s.truth, size=320, seed=3, bands=4, dates=1)
    write_truth_raster(s.truth, s.image, s.ids)
    return s


def overlapping_pairs(frame: gpd.GeoDataFrame) -> int:
    """Pairs of output polygons that overlap (share area, not just an edge)."""
    geometries = frame.geometry.values
    a, b = shapely.STRtree(geometries).query(geometries, predicate="overlaps")
    return int((a < b).sum())


def two_chip_dataset(root: Path, boxes: Sequence[tuple[int, int, int, int]]) -> Path:
    """A 4-band 64 x 128 px scene of box fields (c0, r0, c1, r1), tiled into two 64 px chips.

    Each field is brighter than the noisy background, by one of four levels; every chip goes to
    train. Used by the overfit tests of the model families.
    """
    from fieldseg.tiling import tile_scenes

    transform = Affine(10, 0, 500_000, 0, -10, 5_800_000)
    rng = np.random.default_rng(0)
    data = rng.normal(800, 40, (4, 64, 128))
    polygons = []
    for k, (c0, r0, c1, r1) in enumerate(boxes):
        data[:, r0:r1, c0:c1] += 600 + 150 * (k % 4)
        polygons.append(shapely.box(*(transform * (c0, r1)), *(transform * (c1, r0))))
    write_geotiff(root / "scene.tif", data.clip(0).astype("uint16"), transform=transform,
                  crs=rasterio.crs.CRS.from_epsg(32633),
                  band_names=["red", "green", "blue", "nir"])  # fmt: skip
    gpd.GeoDataFrame(geometry=polygons, crs=32633).to_file(root / "fields.gpkg")
    tile_scenes([root / "scene.tif"], root / "fields.gpkg", root / "ds",
                chip_size=64, overlap=0, split="1,0,0")  # fmt: skip
    return root / "ds"


def fit_two_chips(
    root: Path,
    boxes: Sequence[tuple[int, int, int, int]],
    config: Path,
    *,
    steps: int,
    lr: float,
    model_overrides: dict[str, Any] | None = None,
) -> tuple[Any, Any, list[Any], list[dict[str, Any]]]:
    """The config's model fitted with Adam to both chips of ``two_chip_dataset(root, boxes)``.

    ``model_overrides`` replace keys of the config's ``model:`` section. Returns the model,
    the chips (a ChipDataset), and the batch it was fitted on. Used by the overfit tests of
    the model families.
    """
    import torch

    from fieldseg.chip_dataset import ChipDataset, collate_chips
    from fieldseg.dataset_description import DatasetDescription
    from fieldseg.models import ModelSpec, build_model, model_config
    from fieldseg.run_config import load_run_config

    chips = ChipDataset(two_chip_dataset(root, boxes), "train")
    torch.manual_seed(0)
    spec = ModelSpec.from_description(DatasetDescription.load(root / "ds"))
    section = {**load_run_config(config).model, **(model_overrides or {})}
    model = build_model(model_config(section), spec)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    images, targets = collate_chips([chips[0], chips[1]])
    for _ in range(steps):
        loss = sum(model.training_step(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, chips, images, targets


@pytest.fixture
def offline_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and no cached weights: every download of pretrained weights fails."""
    import urllib.error

    import torch
    import torchvision.models._api as weights_api

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", "/nonexistent-torch-home")


def rectangle_tiling(
    rng: np.random.Generator, shape: tuple[int, int] = (256, 256), low: int = 3, high: int = 20
) -> np.ndarray:
    """A dense random partition into rectangles with sides in [low, high] px (no gaps)."""
    truth = np.zeros(shape, dtype=np.int32)
    stack = [(0, 0, *shape)]
    n = 0
    while stack:
        r, c, h, w = stack.pop()
        if h > high and (h >= w or w <= high):
            cut = int(rng.integers(low, h - low + 1))
            stack += [(r, c, cut, w), (r + cut, c, h - cut, w)]
        elif w > high:
            cut = int(rng.integers(low, w - low + 1))
            stack += [(r, c, h, cut), (r, c + cut, h, w - cut)]
        else:
            n += 1
            truth[r : r + h, c : c + w] = n
    return truth
