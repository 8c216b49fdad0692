"""The torch dataset over a tiled split returns exactly what the COCO files and chips hold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CHIP, OVERLAP, Dataset, SceneFixture, read_dataset, valid_mask
from torch.utils.data import DataLoader

from fieldseg.augmentation import AugmentationConfig, ChipAugmentation
from fieldseg.chip_dataset import ChipDataset, collate_chips
from fieldseg.coco_format import decode_mask
from fieldseg.errors import InputFileError
from fieldseg.tiling import tile_scenes


def test_items_match_the_chips_and_annotations(basic_dataset: Dataset) -> None:
    ds = ChipDataset(basic_dataset.root, "train")
    assert len(ds) == 9 and ds.n_instances == sum(
        len(im.annotations) for im in basic_dataset.images
    )
    by_id = {im.entry["id"]: im for im in basic_dataset.images}
    for index in range(len(ds)):
        image, target = ds[index]
        reference = by_id[target["image_id"]]
        data, _ = basic_dataset.chip(reference)
        assert image.dtype == torch.float32 and image.shape == (4, CHIP, CHIP)
        assert torch.equal(image, torch.from_numpy(data.astype(np.float32)))
        n = len(reference.annotations)
        assert target["masks"].shape == (n, CHIP, CHIP) and target["masks"].dtype == torch.uint8
        for k, annotation in enumerate(reference.annotations):
            mask = decode_mask(annotation["segmentation"])
            assert np.array_equal(target["masks"][k].numpy().astype(bool), mask)
            x, y, w, h = annotation["bbox"]
            assert target["boxes"][k].tolist() == [x, y, x + w, y + h]
            assert target["labels"][k] == annotation["category_id"]
            assert target["field_ids"][k] == annotation["field_id"]
            assert bool(target["truncated"][k]) is annotation["truncated"]
        assert np.array_equal(target["ignore"].numpy(), reference.ignore())
        assert target["valid"].all()


def test_nodata_and_sparse_ignore_come_through(tmp_path: Path, nodata_scene: SceneFixture) -> None:
    out = tmp_path / "ds"
    tile_scenes([nodata_scene.scene], nodata_scene.labels, out, chip_size=CHIP, overlap=OVERLAP,
                split="1,0,0", sparse=True, max_nodata=1.0)  # fmt: skip
    reference = read_dataset(out)
    ds = ChipDataset(out, "train")
    for index in range(len(ds)):
        _, target = ds[index]
        (image,) = [im for im in reference.images if im.entry["id"] == target["image_id"]]
        data, _ = reference.chip(image)
        assert np.array_equal(target["valid"].numpy(), valid_mask(data, 0, image))
        assert np.array_equal(target["ignore"].numpy(), image.ignore())
        assert not (target["ignore"] & ~target["valid"]).any()


def test_augmented_items_are_aligned_and_reproducible(basic_dataset: Dataset) -> None:
    augmentation = ChipAugmentation(AugmentationConfig(), basic_dataset.description["bands"])
    ds = ChipDataset(basic_dataset.root, "train", augmentation=augmentation, seed=5)
    plain = ChipDataset(basic_dataset.root, "train")
    changed = 0
    for index in range(len(ds)):
        image, target = ds[index]
        again, target_again = ds[index]
        assert torch.equal(image, again) and torch.equal(target["masks"], target_again["masks"])
        _, original = plain[index]
        # geometry only permutes pixels: each mask keeps its area, boxes follow the masks
        assert (
            target["masks"].sum(dim=(1, 2)).tolist() == original["masks"].sum(dim=(1, 2)).tolist()
        )
        for mask, box in zip(target["masks"], target["boxes"], strict=True):
            rows = torch.nonzero(mask.any(dim=1)).flatten()
            cols = torch.nonzero(mask.any(dim=0)).flatten()
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]
        changed += int(not torch.equal(target["masks"], original["masks"]))
    assert changed > 0
    ds.set_epoch(1)
    assert any(not torch.equal(ds[i][0], plain[i][0]) for i in range(len(ds)))


def test_loader_batches_lists(basic_dataset: Dataset) -> None:
    loader = DataLoader(ChipDataset(basic_dataset.root), batch_size=4, collate_fn=collate_chips)
    images, targets = next(iter(loader))
    assert len(images) == len(targets) == 4 and images[0].shape == (4, CHIP, CHIP)


def test_bad_datasets_are_clear_errors(tmp_path: Path, basic_dataset: Dataset) -> None:
    with pytest.raises(InputFileError, match="not a fieldseg dataset"):
        ChipDataset(tmp_path)
    with pytest.raises(InputFileError, match=r"the val split of .* holds no chips"):
        ChipDataset(basic_dataset.root, "val")
    with pytest.raises(InputFileError, match="unknown split"):
        ChipDataset(basic_dataset.root, "training")
    broken = tmp_path / "broken"
    shutil.copytree(basic_dataset.root, broken)
    (broken / "train.json").write_text("{not json")
    with pytest.raises(InputFileError, match="cannot read the train split"):
        ChipDataset(broken)
    description = json.loads((broken / "dataset.json").read_text())
    description["format_version"] = 99
    (broken / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(InputFileError, match="upgrade fieldseg"):
        ChipDataset(broken)
    del description["format_version"], description["scenes"][0]["crs"]
    (broken / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(InputFileError, match=r"dataset\.json is malformed: scenes\.0\.crs: Field"):
        ChipDataset(broken)
    (broken / "dataset.json").write_text("[]")
    with pytest.raises(InputFileError, match="is not a fieldseg dataset description"):
        ChipDataset(broken)


def test_a_coco_file_of_another_shape_is_one_clear_error(
    tmp_path: Path, basic_dataset: Dataset
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(basic_dataset.root, broken)
    good = json.loads((basic_dataset.root / "train.json").read_text())
    no_field_id = {**good, "annotations": [{k: v for k, v in a.items() if k != "field_id"}
                                           for a in good["annotations"]]}  # fmt: skip
    stray = {**good, "annotations": [{**good["annotations"][0], "image_id": 999_999}]}
    cases = [([], "list indices"), ({"images": 3}, "no 'categories'"),
             (no_field_id, "(no 'field_id' in an annotation)"),
             (stray, "(no image 999999 of an annotation)")]  # fmt: skip
    for document, reason in cases:
        (broken / "train.json").write_text(json.dumps(document))
        with pytest.raises(InputFileError) as caught:
            ChipDataset(broken)
        message = str(caught.value)
        assert message.startswith(f"{broken / 'train.json'} is not a COCO file as fieldseg tile")
        assert reason in message, message
