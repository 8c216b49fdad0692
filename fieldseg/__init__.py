"""fieldseg: find every agricultural field in 10 m satellite imagery as its own polygon.

The public library API mirrors the command line: every ``fieldseg`` command is a function here.
Heavy modules (rasterio, geopandas, torch) are imported by the submodules, not by this package,
so ``import fieldseg`` and ``fieldseg --help`` stay instant.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
