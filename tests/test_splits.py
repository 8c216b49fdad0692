"""Spatial-block splits: fractions, determinism, no pixel shared between splits, split column."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import shapely
from conftest import (
    CHIP,
    FIELD_IDS,
    FIELDS,
    OVERLAP,
    SPLIT_NAMES,
    Dataset,
    Image,
    SceneFixture,
    check_against_truth,
    expected_pieces,
    px_box,
    read_dataset,
    valid_mask,
    write_labels,
    write_scene,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldseg.coco_format import decode_mask
from fieldseg.errors import ConfigError, InputFileError
from fieldseg.splits import (
    KEEP_PRIORITY,
    assign_blocks,
    block_keys,
    drop_cross_split_overlaps,
    parse_fractions,
)
from fieldseg.tiling import TileSummary, tile_scenes


# --------------------------------------------------------------------------------------------
# parse_fractions
# --------------------------------------------------------------------------------------------
def test_parse_fractions() -> None:
    assert parse_fractions("0.8,0.1,0.1") == {"train": 0.8, "val": 0.1, "test": 0.1}
    assert parse_fractions(" 0.7 , 0.3 , 0 ") == {"train": 0.7, "val": 0.3, "test": 0.0}
    assert parse_fractions([1, 0, 0]) == {"train": 1.0, "val": 0.0, "test": 0.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.8,0.2", "three non-negative numbers"),
        ("a,b,c", "three numbers like 0.8,0.1,0.1"),
        ("1.2,-0.1,-0.1", "three non-negative numbers"),
        ("0,0,0", "three non-negative numbers"),
        ("0.5,0.2,0.2", "must add up to 1, got 0.9"),
    ],
)
def test_parse_fractions_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_fractions(text)


# --------------------------------------------------------------------------------------------
# assign_blocks
# --------------------------------------------------------------------------------------------
FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}


def test_assign_blocks_keeps_blocks_whole_and_tracks_fractions() -> None:
    blocks = [(0, i // 7, i % 3) for i in range(700)]  # 300 distinct blocks of 2 or 3 chips
    splits = assign_blocks(blocks, FRACTIONS, seed=5)
    by_block: dict[tuple[int, int, int], set[str]] = {}
    for block, split in zip(blocks, splits, strict=True):
        by_block.setdefault(block, set()).add(split)
    assert all(len(s) == 1 for s in by_block.values())
    counts = Counter(splits)
    for name, wanted in FRACTIONS.items():
        assert abs(counts[name] / len(blocks) - wanted) <= 3 / len(blocks)  # within one block


def test_assign_blocks_is_deterministic_and_seeded() -> None:
    blocks = list(range(200))
    first = assign_blocks(blocks, FRACTIONS, seed=1)
    assert list(first) == list(assign_blocks(blocks, FRACTIONS, seed=1))
    assert list(first) != list(assign_blocks(blocks, FRACTIONS, seed=2))


def test_assign_blocks_never_uses_a_zero_fraction() -> None:
    splits = assign_blocks(list(range(50)), {"train": 0.7, "val": 0.3, "test": 0.0}, seed=0)
    assert set(splits) == {"train", "val"}
    assert Counter(splits) == {"train": 35, "val": 15}


# --------------------------------------------------------------------------------------------
# drop_cross_split_overlaps
# --------------------------------------------------------------------------------------------
def _boxes(*boxes: tuple[int, int, int, int]) -> np.ndarray:
    return shapely.box(*np.array(boxes, dtype=float).T)


def test_overlapping_chips_of_two_splits_drop_the_lower_priority() -> None:
    boxes = _boxes((0, 0, 10, 10), (5, 0, 15, 10))
    for low, high in (("train", "val"), ("train", "test"), ("val", "test")):
        keep = drop_cross_split_overlaps(boxes, np.array([low, high], dtype=object))
        assert keep.tolist() == [False, True]
        keep = drop_cross_split_overlaps(boxes, np.array([high, low], dtype=object))
        assert keep.tolist() == [True, False]


def test_touching_chips_are_kept_and_the_same_ground_is_not() -> None:
    splits = np.array(["train", "test"], dtype=object)
    touching = _boxes((0, 0, 10, 10), (10, 0, 20, 10))
    assert drop_cross_split_overlaps(touching, splits).all()
    same_place = _boxes((0, 0, 10, 10), (0, 0, 10, 10))  # e.g. two dates of one place
    assert drop_cross_split_overlaps(same_place, splits).tolist() == [False, True]


def test_overlaps_up_to_min_overlap_area_do_not_count() -> None:
    splits = np.array(["train", "test"], dtype=object)
    sliver = _boxes((0, 0, 10, 10), (9.6, 0, 20, 10))  # 4 units of overlap
    assert drop_cross_split_overlaps(sliver, splits, min_overlap_area=5).all()
    assert not drop_cross_split_overlaps(sliver, splits, min_overlap_area=3).all()


def test_no_chip_is_dropped_for_a_chip_that_was_itself_dropped() -> None:
    # test <-> val overlap (val goes); val <-> train overlap, but val is gone: train stays
    boxes = _boxes((0, 0, 10, 10), (8, 0, 18, 10), (16, 0, 26, 10))
    splits = np.array(["test", "val", "train"], dtype=object)
    assert drop_cross_split_overlaps(boxes, splits).tolist() == [True, False, True]


def test_block_keys_group_centres_by_map_position() -> None:
    centres = np.array([[5.0, 5.0], [95.0, 5.0], [105.0, -5.0], [5.0, 5.0]])
    assert block_keys(centres, 100.0) == [(0, 0), (0, 0), (1, -1), (0, 0)]


def test_keep_priority_favours_evaluation_splits() -> None:
    assert KEEP_PRIORITY["test"] < KEEP_PRIORITY["val"] < KEEP_PRIORITY["train"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 60),
            st.integers(0, 60),
            st.integers(1, 25),
            st.integers(1, 25),
            st.sampled_from(SPLIT_NAMES),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_drop_cross_split_overlaps_properties(
    chips: list[tuple[int, int, int, int, str]],
) -> None:
    boxes = np.array([(c, r, c + w, r + h) for c, r, w, h, _ in chips], dtype=np.int64)
    splits = np.array([s for *_, s in chips], dtype=object)
    keep = drop_cross_split_overlaps(shapely.box(*boxes.T.astype(float)), splits)

    def overlap(i: int, j: int) -> bool:
        a, b = boxes[i], boxes[j]
        return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])

    n = len(chips)
    for i in range(n):
        for j in range(n):
            if keep[i] and keep[j] and splits[i] != splits[j]:
                assert not overlap(i, j)
        if not keep[i]:  # dropped only for a kept chip of a higher-priority split
            assert any(
                keep[j] and overlap(i, j) and KEEP_PRIORITY[splits[j]] < KEEP_PRIORITY[splits[i]]
                for j in range(n)
            )


# --------------------------------------------------------------------------------------------
# a larger scene, many chips
# --------------------------------------------------------------------------------------------
BIG_SIZE, BIG_CHIP, BIG_OVERLAP = 2048, 64, 16
#: Stated tolerance on realised split fractions (absolute): blocks of 256 px hold ~28 chips each
#: (1849 chips in ~64 blocks), and chips dropped at split borders come mostly from train.
FRACTION_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def big_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, TileSummary]:
    root = tmp_path_factory.mktemp("big")
    data = np.random.default_rng(0).integers(100, 4000, size=(1, BIG_SIZE, BIG_SIZE))
    scene = write_scene(root / "big.tif", data.astype(np.uint16), band_names=["b1"])
    labels = write_labels(
        root / "f.gpkg", [px_box(100, 100, 300, 300), px_box(1500, 1500, 1600, 1700)]
    )
    summary = tile_scenes(
        [scene], labels, root / "out", chip_size=BIG_CHIP, overlap=BIG_OVERLAP, seed=11
    )
    return read_dataset(root / "out"), summary


def _box(image: Image) -> tuple[int, int, int, int]:
    c, r = image.col_off, image.row_off
    return c, r, c + image.shape[1], r + image.shape[0]


@pytest.mark.slow
def test_big_scene_splits(big_dataset: tuple[Dataset, TileSummary]) -> None:
    ds, summary = big_dataset
    starts = len(range(0, BIG_SIZE - BIG_CHIP, BIG_CHIP - BIG_OVERLAP)) + 1
    assert summary.candidate_chips == starts**2 == 1849
    assert summary.chips_written == len(ds.images) == 1849 - summary.dropped_split_overlap
    assert summary.dropped_split_overlap > 0  # block borders do cut overlapping chips

    # image and annotation ids are unique across the three COCO files
    image_ids = [im.entry["id"] for im in ds.images]
    ann_ids = [a["id"] for im in ds.images for a in im.annotations]
    assert len(set(image_ids)) == len(image_ids) and len(set(ann_ids)) == len(ann_ids)

    # no chip in two splits, and the files on disk are exactly the chips listed
    names = [im.entry["file_name"] for im in ds.images]
    assert len(names) == len(set(names))
    on_disk = {str(p.relative_to(ds.root)) for p in ds.root.rglob("*.tif")}
    assert on_disk == set(names)

    # no two chips of different splits share a pixel
    boxes = np.array([_box(im) for im in ds.images])
    split_of = np.array([SPLIT_NAMES.index(im.split) for im in ds.images])
    overlaps = (
        (boxes[:, None, 0] < boxes[None, :, 2])
        & (boxes[None, :, 0] < boxes[:, None, 2])
        & (boxes[:, None, 1] < boxes[None, :, 3])
        & (boxes[None, :, 1] < boxes[:, None, 3])
    )
    assert not (overlaps & (split_of[:, None] != split_of[None, :])).any()

    # realised fractions within the stated tolerance, reported consistently
    requested = {"train": 0.8, "val": 0.1, "test": 0.1}
    for name in SPLIT_NAMES:
        count = len(ds.split_images(name))
        assert summary.chips_by_split[name] == count
        assert summary.fractions[name] == pytest.approx(count / len(ds.images))
        assert ds.description["splits"][name]["fraction"] == pytest.approx(count / len(ds.images))
        assert abs(summary.fractions[name] - requested[name]) <= FRACTION_TOLERANCE, name
    assert summary.chips_by_split["val"] >= 5 and summary.chips_by_split["test"] >= 5
    # default block: four chips (256 px) give 8 x 8 = 64 blocks >= 5 / 0.1
    assert ds.description["split_method"]["block_size"] == 4 * BIG_CHIP
    assert f"{summary.dropped_split_overlap} dropped" in "\n".join(summary.lines())


# --------------------------------------------------------------------------------------------
# determinism and block size on the small fixture
# --------------------------------------------------------------------------------------------
def _split_map(root: Path) -> dict[str, str]:
    return {im.entry["file_name"]: im.split for im in read_dataset(root).images}


def test_splits_are_deterministic_for_a_seed(tmp_path: Path, basic_scene: SceneFixture) -> None:
    kwargs = {"chip_size": 64, "overlap": 0, "block_size": 64, "split": "0.5,0.25,0.25"}
    maps = []
    for name, seed in (("a", 4), ("b", 4), ("c", 5), ("d", 6), ("e", 7)):
        tile_scenes([basic_scene.scene], basic_scene.labels, tmp_path / name, seed=seed, **kwargs)
        maps.append(_split_map(tmp_path / name))
    assert maps[0] == maps[1]
    assert len(set(maps[0].values())) > 1
    assert any(m != maps[0] for m in maps[2:])
    first = (tmp_path / "a" / "train.json").read_text()
    second = (tmp_path / "b" / "train.json").read_text()
    cut = first.index('"licenses"')  # the info block carries the creation time
    assert first[cut:] == second[cut:]
    assert (tmp_path / "a" / "dataset.json").read_text() == (
        tmp_path / "b" / "dataset.json"
    ).read_text()


def test_too_few_chips_for_val_and_test_warns(
    tmp_path: Path, basic_scene: SceneFixture, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fieldseg"):
        summary = tile_scenes(
            [basic_scene.scene],
            basic_scene.labels,
            tmp_path / "o",
            chip_size=CHIP,
            overlap=OVERLAP,
            block_size=512,  # one block for the whole scene: it all goes to train
        )
    assert summary.chips_by_split == {"train": 9, "val": 0, "test": 0}
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        m.startswith("the val split got no chips (asked for 10%): too few split blocks")
        for m in messages
    )
    assert any(
        m.startswith("the test split got no chips (asked for 10%): too few split blocks")
        for m in messages
    )
    assert all(r.name.startswith("fieldseg") for r in caplog.records)


def test_small_val_split_warns_noisy(
    tmp_path: Path, basic_scene: SceneFixture, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="fieldseg"):
        summary = tile_scenes(
            [basic_scene.scene],
            basic_scene.labels,
            tmp_path / "o",
            chip_size=64,
            overlap=0,
            block_size=64,
            split="0.9,0.1,0",
            seed=1,
        )
    got = summary.chips_by_split["val"]
    assert 0 < got < 5
    messages = [r.getMessage() for r in caplog.records]
    assert f"the val split has only {got} chips: figures will be noisy" in messages
    assert not any("test split" in m for m in messages)  # 0 asked, 0 got: nothing to say


def test_train_split_without_chips_is_an_error(tmp_path: Path, basic_scene: SceneFixture) -> None:
    with pytest.raises(InputFileError, match="the train split holds no valid pixel"):
        tile_scenes(
            [basic_scene.scene],
            basic_scene.labels,
            tmp_path / "o",
            chip_size=CHIP,
            overlap=OVERLAP,
            split="0,1,0",
        )
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------------------------
# --split-column
# --------------------------------------------------------------------------------------------
FOLDS = {
    "rect_a": "train",
    "rect_b": "val",
    "holed": "test",
    "multi": "train",
    "pentagon": "test",
    "scene_edge": "val",
    "long": "train",
    "bottom_edge": "val",
    "small": "train",
    "sliver": "val",
    "diamond": "test",
}


def test_split_column_is_honoured(tmp_path: Path, basic_scene: SceneFixture) -> None:
    """Chip 64 without overlap: 25 chips, only the shifted last row/column overlap others."""
    labels = write_labels(
        tmp_path / "folds.gpkg", list(FIELDS.values()), columns={"fold": list(FOLDS.values())}
    )
    summary = tile_scenes(
        [basic_scene.scene],
        labels,
        tmp_path / "out",
        chip_size=64,
        overlap=0,
        split_column="fold",
    )
    ds = read_dataset(tmp_path / "out")
    method = ds.description["split_method"]
    assert method["method"] == "column" and method["column"] == "fold"
    assert method["block_size"] is None and method["requested"] is None
    split_of = {FIELD_IDS[n]: s for n, s in FOLDS.items()}

    # each chip's split: the split holding most of its (annotatable) field pixels
    for image in ds.images:
        data, _ = ds.chip(image)
        expected = expected_pieces(image, basic_scene.truth, valid_mask(data, None, image))
        area = Counter()
        for fid, piece in expected.items():
            if not piece.sliver:
                area[split_of[fid]] += int(piece.mask.sum())
        best = max(area, key=lambda s: (area[s], -SPLIT_NAMES.index(s))) if area else "train"
        assert image.split == best, image.entry["file_name"]
        # only fields of the chip's split are annotated; the others are ignored, pixel-exact
        assert all(split_of[a["field_id"]] == image.split for a in image.annotations)
        other = np.zeros(image.shape, dtype=bool)
        for fid, piece in expected.items():
            if piece.sliver or split_of[fid] != image.split:
                other |= piece.mask
        assert np.array_equal(image.ignore(), other), image.entry["file_name"]
        for ann in image.annotations:
            assert np.array_equal(decode_mask(ann["segmentation"]), expected[ann["field_id"]].mask)
    # no two overlapping chips in different splits
    images = ds.images
    for i, a in enumerate(images):
        for b in images[i + 1 :]:
            if a.split != b.split:
                ba, bb = _box(a), _box(b)
                assert not (ba[0] < bb[2] and bb[0] < ba[2] and ba[1] < bb[3] and bb[1] < ba[3])
    assert summary.dropped_split_overlap == 25 - len(images)
    assert {im.split for im in images} == set(SPLIT_NAMES)


def test_split_column_with_all_fields_in_train_warns_once_per_empty_split(
    tmp_path: Path, basic_scene: SceneFixture, caplog: pytest.LogCaptureFixture
) -> None:
    labels = write_labels(
        tmp_path / "folds.gpkg", list(FIELDS.values()), columns={"fold": ["train"] * len(FIELDS)}
    )
    with caplog.at_level(logging.WARNING, logger="fieldseg"):
        tile_scenes(
            [basic_scene.scene],
            labels,
            tmp_path / "out",
            chip_size=CHIP,
            overlap=OVERLAP,
            split_column="fold",
        )
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("the val split got no chips") == 1
    assert messages.count("the test split got no chips") == 1
    ds = read_dataset(tmp_path / "out")
    check_against_truth(ds, basic_scene.truth)


def test_scenes_covering_the_same_ground_share_no_pixels_across_splits(
    tmp_path: Path, scene_data: np.ndarray
) -> None:
    """Two dates of one place given as two scenes: a chip of one date and the chip of the other
    date over the same ground must not sit in different splits (that leaks the test set)."""
    june = write_scene(tmp_path / "june.tif", scene_data)
    july = write_scene(tmp_path / "july.tif", scene_data)
    labels = write_labels(tmp_path / "f.gpkg", list(FIELDS.values()))
    tile_scenes(
        [june, july], labels, tmp_path / "out", chip_size=64, overlap=0, block_size=64,
        split="0.6,0.2,0.2", seed=0,
    )  # fmt: skip
    ds = read_dataset(tmp_path / "out")
    assert {im.entry["scene_id"] for im in ds.images} == {"june", "july"}
    footprints = []
    for image in ds.images:
        t = image.transform
        x0, y1 = t.c, t.f
        x1, y0 = x0 + t.a * image.shape[1], y1 + t.e * image.shape[0]
        footprints.append((image.split, x0, y0, x1, y1, image.entry["file_name"]))
    leaks = [
        (a[5], a[0], b[5], b[0])
        for i, a in enumerate(footprints)
        for b in footprints[i + 1 :]
        if a[0] != b[0] and a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]
    ]
    assert leaks == [], f"{len(leaks)} pairs of chips over the same ground in different splits"


@pytest.mark.parametrize(
    ("option", "kwargs"), [("--split", {"split": "0.5,0.5,0"}), ("--block-size", {"block_size": 5})]
)
def test_split_options_with_a_split_column_are_refused(
    tmp_path: Path, basic_scene: SceneFixture, option: str, kwargs: dict[str, object]
) -> None:
    """--split and --block-size would go unused: refused (--block-size before its own check)."""
    labels = write_labels(
        tmp_path / "folds.gpkg", list(FIELDS.values()), columns={"fold": list(FOLDS.values())}
    )
    with pytest.raises(ConfigError) as raised:
        tile_scenes(
            [basic_scene.scene], labels, tmp_path / "out", chip_size=64, overlap=0,
            split_column="fold", **kwargs,
        )  # fmt: skip
    assert str(raised.value) == (
        f"{option} and --split-column are exclusive: the split column gives each chip its "
        f"split, so {option} would not be used"
    )
    assert not (tmp_path / "out").exists()


def test_split_left_out_is_the_documented_default(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    tile_scenes(
        [basic_scene.scene], basic_scene.labels, tmp_path / "out", chip_size=CHIP, overlap=OVERLAP
    )
    method = read_dataset(tmp_path / "out").description["split_method"]
    assert method["method"] == "blocks"
    assert method["requested"] == {"train": 0.8, "val": 0.1, "test": 0.1}


def test_a_split_column_of_other_values_names_a_few(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    """A wrong column (an area, say) has a value per field: five are named, not all."""
    areas = [f"{1000.5 + i}" for i in range(len(FIELDS))]
    labels = write_labels(tmp_path / "a.gpkg", list(FIELDS.values()), columns={"area": areas})
    with pytest.raises(InputFileError) as caught:
        tile_scenes([basic_scene.scene], labels, tmp_path / "out", chip_size=64, overlap=0,
                    split_column="area")  # fmt: skip
    message = str(caught.value)
    assert message == (
        "--split-column 'area' has values '1000.5', '1001.5', '1002.5', '1003.5', '1004.5' and "
        f"{len(FIELDS) - 5} more; expected train, val or test"
    )
