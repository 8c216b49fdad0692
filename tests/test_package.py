"""The top-level package: the commands' functions by name, without importing heavy modules."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fieldseg


def test_import_fieldseg_loads_no_heavy_module() -> None:
    code = (
        "import sys, fieldseg; "
        "print(sorted(m for m in ('torch', 'rasterio', 'geopandas') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)  # fmt: skip
    assert result.stdout.strip() == "[]"


def test_every_public_name_is_the_modules_own() -> None:
    from fieldseg import evaluation, inference, tiling

    assert set(fieldseg.__all__) == {"__version__", *fieldseg._EXPORTS}
    for name, module in fieldseg._EXPORTS.items():
        assert getattr(fieldseg, name) is getattr(sys.modules[module], name)
    assert fieldseg.tile_scenes is tiling.tile_scenes
    assert fieldseg.predict_scene is inference.predict_scene
    assert fieldseg.evaluate_files is evaluation.evaluate_files
    assert fieldseg.tiling is tiling  # submodules too, after a bare `import fieldseg`


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'tile'"):
        _ = fieldseg.tile
