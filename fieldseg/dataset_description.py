"""The dataset description (``dataset.json``): what ``tile`` wrote and what ``train`` relies on.

The schema is documented in docs/formats.md; bump :data:`FORMAT_VERSION` on any change that an
older reader would misread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from fieldseg.band_statistics import BandStatistics
from fieldseg.errors import InputFileError

FORMAT_NAME = "fieldseg-dataset"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "dataset.json"
NODATA_RULE = "a pixel is nodata when any band equals the nodata value (or is NaN)"
RASTERISATION_RULE = "pixel centres (rasterio all_touched=False)"
LabelMode = Literal["complete", "label_extent", "sparse"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CRSRecord(_Strict):
    """A CRS as WKT, plus the EPSG code when there is one."""

    wkt: str
    epsg: int | None


class SceneRecord(_Strict):
    """One input scene of the dataset."""

    scene_id: str
    path: str
    width: int
    height: int
    crs: CRSRecord
    transform: list[float]
    nodata: float | None


class SplitRecord(_Strict):
    """One split: its COCO file and what it holds."""

    annotations: str
    chips: int
    instances: int
    fraction: float


class Category(_Strict):
    """A COCO category."""

    id: int
    name: str


class SliverRule(_Strict):
    """A clipped piece of a field is dropped (and ignored) below either threshold."""

    min_pixels: int
    min_share: float


class SplitMethod(_Strict):
    """How chips were split: by spatial blocks (with seed) or from a label column."""

    method: Literal["blocks", "column"]
    requested: dict[str, float] | None = None
    block_size: int | None = None
    column: str | None = None
    seed: int


class DatasetDescription(_Strict):
    """Contents of ``dataset.json`` (see docs/formats.md)."""

    format: Literal["fieldseg-dataset"] = FORMAT_NAME
    format_version: int = FORMAT_VERSION
    fieldseg_version: str
    bands: list[str]
    dtype: str
    nodata: float | None
    nodata_rule: str = NODATA_RULE
    rasterisation: str = RASTERISATION_RULE
    chip_size: int
    overlap: int
    label_mode: LabelMode
    categories: list[Category]
    splits: dict[str, SplitRecord]
    split_method: SplitMethod
    normalisation: list[BandStatistics]
    sliver_rule: SliverRule
    scenes: list[SceneRecord]

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write as indented JSON."""
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, dataset_dir: str | os.PathLike[str]) -> DatasetDescription:
        """Read ``dataset.json`` from a dataset directory, with a clear error when unusable."""
        path = Path(dataset_dir) / DESCRIPTION_FILE
        if not path.exists():
            raise InputFileError(f"{dataset_dir} is not a fieldseg dataset: no {DESCRIPTION_FILE}")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputFileError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
            raise InputFileError(f"{path} is not a fieldseg dataset description")
        if raw.get("format_version", 0) > FORMAT_VERSION:
            raise InputFileError(
                f"{path} has format version {raw['format_version']}; this fieldseg reads up to "
                f"{FORMAT_VERSION}: upgrade fieldseg"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"]) or "the whole file"
            raise InputFileError(f"{path} is malformed: {where}: {error['msg']}") from exc
