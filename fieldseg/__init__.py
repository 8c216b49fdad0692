"""fieldseg: find every agricultural field in 10 m satellite imagery as its own polygon.

The public library API mirrors the command line: every ``fieldseg`` command is a function,
reachable from here (``fieldseg.tile_scenes(...)``) or from its module
(``fieldseg.tiling.tile_scenes``). Names are resolved on first use (PEP 562), so
``import fieldseg`` and ``fieldseg --help`` stay instant: rasterio, geopandas and torch are
imported by the submodules only when a function from them is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module defining it.
_EXPORTS: dict[str, str] = {
    "synth": "fieldseg.synthetic",
    "stack_bands": "fieldseg.stacking",
    "tile_scenes": "fieldseg.tiling",
    "train": "fieldseg.training",
    "predict_scene": "fieldseg.inference",
    "evaluate_files": "fieldseg.evaluation",
    "evaluate_fields": "fieldseg.evaluation",
    "ChipDataset": "fieldseg.chip_dataset",
    "load_checkpoint": "fieldseg.checkpoint",
    "FieldsegError": "fieldseg.errors",
}

__all__ = [
    "ChipDataset",
    "FieldsegError",
    "__version__",
    "evaluate_fields",
    "evaluate_files",
    "load_checkpoint",
    "predict_scene",
    "stack_bands",
    "synth",
    "tile_scenes",
    "train",
]

if TYPE_CHECKING:
    from fieldseg.checkpoint import load_checkpoint
    from fieldseg.chip_dataset import ChipDataset
    from fieldseg.errors import FieldsegError
    from fieldseg.evaluation import evaluate_fields, evaluate_files
    from fieldseg.inference import predict_scene
    from fieldseg.stacking import stack_bands
    from fieldseg.synthetic import synth
    from fieldseg.tiling import tile_scenes
    from fieldseg.training import train


def __getattr__(name: str) -> Any:
    """Import a public function, or a submodule (``fieldseg.tiling``), on first use."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
