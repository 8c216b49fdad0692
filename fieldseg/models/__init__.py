"""Model families behind one interface (:class:`fieldseg.models.base.FieldModel`).

Adding a family is one module with its config class and model class, registered here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from fieldseg.band_statistics import BandStatistics
from fieldseg.dataset_description import DatasetDescription
from fieldseg.errors import ConfigError
from fieldseg.models.base import PRETRAINED_CHOICES, ChipPrediction, FieldModel
from fieldseg.models.maskrcnn import MaskRCNNConfig, MaskRCNNFieldModel
from fieldseg.models.unet_boundary import UNetBoundaryConfig, UNetBoundaryFieldModel
from fieldseg.models.yolact import YolactConfig, YolactFieldModel

#: family name -> (config class, model class)
FAMILIES: dict[str, tuple[type[BaseModel], type[FieldModel]]] = {
    "maskrcnn": (MaskRCNNConfig, MaskRCNNFieldModel),
    "unet_boundary": (UNetBoundaryConfig, UNetBoundaryFieldModel),
    "yolact": (YolactConfig, YolactFieldModel),
}


def model_config(section: dict[str, Any]) -> BaseModel:
    """Validate the ``model:`` section of a run config for its family."""
    family = section.get("family")
    if family not in FAMILIES:
        raise ConfigError(f"model.family must be one of {', '.join(FAMILIES)}; got {family!r}")
    try:
        return FAMILIES[family][0].model_validate(section)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in ("model", *error["loc"]))
        known = ", ".join(FAMILIES[family][0].model_fields)
        hint = (
            f" (the {family} family's settings: {known})"
            if error["type"] == "extra_forbidden"
            else ""
        )
        raise ConfigError(f"config: {where}: {error['msg']}{hint}") from exc


@dataclass(frozen=True)
class ModelSpec:
    """What a model is built for: the dataset's bands, statistics, nodata, chips and classes.

    It comes from the dataset description when training and from the checkpoint afterwards.
    """

    bands: tuple[str, ...]
    statistics: tuple[BandStatistics, ...]
    nodata: float | None
    chip_size: int
    categories: tuple[str, ...]
    #: The ground size of the training pixels in metres (None: not recorded, older checkpoints).
    pixel_size_m: float | None = None
    #: The numpy data type of the training scenes, e.g. ``uint16`` (None: older checkpoints).
    dtype: str | None = None

    @classmethod
    def from_description(cls, description: DatasetDescription) -> ModelSpec:
        """The spec of a tiled dataset (its pixel size: the median over its scenes)."""
        from affine import Affine
        from pyproj import CRS

        from fieldseg.field_polygons import pixel_side_m

        sides = [
            pixel_side_m(
                CRS.from_wkt(scene.crs.wkt),
                Affine(*scene.transform[:6]),
                scene.width // 2,
                scene.height // 2,
            )
            for scene in description.scenes
        ]
        return cls(
            bands=tuple(description.bands),
            statistics=tuple(description.normalisation),
            nodata=description.nodata,
            chip_size=description.chip_size,
            categories=tuple(c.name for c in sorted(description.categories, key=lambda c: c.id)),
            pixel_size_m=round(float(np.median(sides)), 6) if sides else None,
            dtype=description.dtype,
        )


def build_model(config: BaseModel, spec: ModelSpec, *, pretrained: str = "none") -> FieldModel:
    """Build the family's model for ``spec`` (see :class:`ModelSpec`).

    Raises:
        ConfigError: ``pretrained`` is not one of :data:`~fieldseg.models.base.PRETRAINED_CHOICES`.
    """
    if pretrained not in PRETRAINED_CHOICES:
        raise ConfigError(
            f"pretrained must be one of {', '.join(PRETRAINED_CHOICES)}; got {pretrained!r}"
        )
    model_class = FAMILIES[config.family][1]  # type: ignore[attr-defined]
    model = model_class(
        config,  # type: ignore[arg-type]
        spec.bands,
        spec.statistics,
        spec.nodata,
        chip_size=spec.chip_size,
        num_classes=len(spec.categories),
        pretrained=pretrained,  # type: ignore[arg-type]
    )
    model.spec = spec
    return model


__all__ = ["FAMILIES", "ChipPrediction", "FieldModel", "ModelSpec", "build_model", "model_config"]
