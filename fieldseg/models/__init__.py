"""Model families behind one interface (:class:`fieldseg.models.base.FieldModel`).

Adding a family is one module with its config class and model class, registered here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from fieldseg.dataset_description import DatasetDescription
from fieldseg.errors import ConfigError
from fieldseg.models.base import ChipPrediction, FieldModel
from fieldseg.models.maskrcnn import MaskRCNNConfig, MaskRCNNFieldModel

#: family name -> (config class, model class)
FAMILIES: dict[str, tuple[type[BaseModel], type[FieldModel]]] = {
    "maskrcnn": (MaskRCNNConfig, MaskRCNNFieldModel),
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
        raise ConfigError(f"{where}: {error['msg']}") from exc


def build_model(
    config: BaseModel, description: DatasetDescription, *, pretrained: str = "none"
) -> FieldModel:
    """Build the family's model for a dataset's bands, statistics and categories."""
    model_class = FAMILIES[config.family][1]  # type: ignore[attr-defined]
    return model_class(
        config,  # type: ignore[arg-type]
        description.bands,
        description.normalisation,
        description.nodata,
        chip_size=description.chip_size,
        num_classes=len(description.categories),
        pretrained=pretrained,  # type: ignore[arg-type]
    )


__all__ = ["FAMILIES", "ChipPrediction", "FieldModel", "build_model", "model_config"]
