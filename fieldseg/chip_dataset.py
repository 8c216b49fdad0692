"""The chips of one split of a fieldseg dataset, with their instance targets, as a torch Dataset.

Reads what ``fieldseg tile`` writes (see docs/formats.md): chip GeoTIFFs and the split's COCO
file. Pixels come back raw (as float32): models normalise inside their wrapper with the
dataset's band statistics, so training and prediction see the same input. Targets follow
torchvision's detection convention, plus the masks a field model needs: ``ignore`` (label
unknown), ``valid`` (not nodata, not padding) and each instance's ``field_id`` and ``truncated``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fieldseg.augmentation import AugmentedChip, ChipAugmentation
from fieldseg.coco_format import decode_mask
from fieldseg.dataset_description import DatasetDescription
from fieldseg.errors import InputFileError, first_line
from fieldseg.labels import SPLITS
from fieldseg.raster_io import chip_valid_mask, open_raster

Target = dict[str, Any]


class EmptySplitError(InputFileError):
    """The split holds no chips (callers may treat an empty val split as optional)."""


#: What every image and annotation of a split's COCO file holds (docs/formats.md).
IMAGE_KEYS = ("id", "file_name", "window", "height", "width")
ANNOTATION_KEYS = ("image_id", "category_id", "segmentation", "field_id", "truncated")


def _require(entry: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    """Raise KeyError naming the first of ``keys`` that ``entry`` lacks."""
    for key in keys:
        if key not in entry:
            raise KeyError(f"{key!r} in {what}")


class ChipDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Chips of one split with instance masks, boxes, labels and ignore/valid masks.

    Args:
        dataset_dir: a folder written by ``fieldseg tile``.
        split: ``train``, ``val`` or ``test``.
        augmentation: applied to every item; its randomness depends only on ``seed``, the
            epoch (:meth:`set_epoch`) and the item, so results do not depend on loader workers.
        seed: seed of the augmentation.

    Raises:
        InputFileError: not a fieldseg dataset, a missing or unreadable split file, or a split
            without chips.
    """

    def __init__(
        self,
        dataset_dir: str | os.PathLike[str],
        split: str = "train",
        *,
        augmentation: ChipAugmentation | None = None,
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise InputFileError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        self.root = Path(dataset_dir)
        self.description = DatasetDescription.load(self.root)
        self.split = split
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        path = self.root / self.description.splits[split].annotations
        try:
            coco = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"cannot read the {split} split of {self.root}: {exc}") from exc
        self.coco_document: dict[str, Any] = coco
        try:
            self.images: list[dict[str, Any]] = coco["images"]
            if not self.images:
                raise EmptySplitError(f"the {split} split of {self.root} holds no chips")
            self.categories = {c["id"]: c["name"] for c in coco["categories"]}
            self._annotations: dict[int, list[dict[str, Any]]] = {}
            for image in self.images:
                _require(image, IMAGE_KEYS, "an image")
                self._annotations[image["id"]] = []
            for annotation in coco["annotations"]:
                _require(annotation, ANNOTATION_KEYS, "an annotation")
                if annotation["image_id"] not in self._annotations:
                    raise KeyError(f"image {annotation['image_id']!r} of an annotation")
                self._annotations[annotation["image_id"]].append(annotation)
        except (KeyError, TypeError, AttributeError) as exc:
            key = exc.args[0] if isinstance(exc, KeyError) and exc.args else None
            described = isinstance(key, str) and " " in key  # _require's or ours: as it is
            reason = first_line(exc) if key is None else f"no {key if described else repr(key)}"
            raise InputFileError(
                f"{path} is not a COCO file as fieldseg tile writes it ({reason}); tile the "
                "scenes again"
            ) from exc

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for a new epoch (the same ones for the same epoch)."""
        self.epoch = epoch

    @property
    def n_instances(self) -> int:
        """Annotated instances in the split."""
        return sum(len(a) for a in self._annotations.values())

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image_entry = self.images[index]
        chip = self.read_chip(index)
        if self.augmentation is not None:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            chip = self.augmentation(chip, rng)
        annotations = self._annotations[image_entry["id"]]
        target: Target = {
            "boxes": torch.from_numpy(_boxes(chip.masks)),
            "labels": torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64),
            "masks": torch.from_numpy(chip.masks.astype(np.uint8)),
            "ignore": torch.from_numpy(chip.ignore),
            "valid": torch.from_numpy(chip.valid),
            "field_ids": torch.tensor([a["field_id"] for a in annotations], dtype=torch.int64),
            "truncated": torch.tensor([a["truncated"] for a in annotations], dtype=torch.bool),
            "image_id": int(image_entry["id"]),
        }
        return torch.from_numpy(chip.image), target

    def read_chip(self, index: int) -> AugmentedChip:
        """The chip's raw pixels and its masks, before augmentation."""
        entry = self.images[index]
        with open_raster(self.root / entry["file_name"]) as src:
            data = src.read()
        if data.shape[0] != len(self.description.bands):
            raise InputFileError(
                f"{entry['file_name']} has {data.shape[0]} bands; the dataset has "
                f"{len(self.description.bands)}"
            )
        window = entry["window"]
        valid = chip_valid_mask(data, self.description.nodata, window["height"], window["width"])
        shape = (entry["height"], entry["width"])
        annotations = self._annotations[entry["id"]]
        masks = (
            np.stack([decode_mask(a["segmentation"]) for a in annotations])
            if annotations
            else np.zeros((0, *shape), dtype=bool)
        )
        ignore = (
            decode_mask(entry["ignore_mask"])
            if entry.get("ignore_mask")
            else np.zeros(shape, dtype=bool)
        )
        return AugmentedChip(image=data.astype(np.float32), masks=masks, ignore=ignore, valid=valid)


def collate_chips(
    batch: list[tuple[torch.Tensor, Target]],
) -> tuple[list[torch.Tensor], list[Target]]:
    """Batch chips as lists (instance counts differ), as torchvision detection models take them."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def _boxes(masks: np.ndarray) -> np.ndarray:
    """``x0, y0, x1, y1`` boxes (pixel edges, so a one-pixel mask is 1 x 1) of each mask."""
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for i, mask in enumerate(masks):
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        boxes[i] = (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1)
    return boxes
