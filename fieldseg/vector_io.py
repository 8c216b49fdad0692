"""Vector input and output: any OGR-readable file in, GeoPackage/GeoParquet/FlatGeobuf/GeoJSON out.

Reads go through :func:`read_vector` so that missing files, corrupt files and files without a CRS
are reported the same way everywhere; writes are atomic (see :mod:`fieldseg.atomic_output`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
from pyproj import CRS as ProjCRS

from fieldseg.atomic_output import atomic_file
from fieldseg.errors import ConfigError, CRSError, InputFileError, first_line

logger = logging.getLogger(__name__)

#: Output formats by file extension, with the OGR driver used to write them.
VECTOR_DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
}


#: How QGIS names one layer of a file, accepted wherever a vector file is read:
#: ``errors.gpkg|layername=truth`` (further ``|option=...`` parts are ignored).
LAYER_SUFFIX = "|layername="


def split_layer(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """The file and the layer named by a QGIS-style ``FILE|layername=NAME`` (None: not named)."""
    text = os.fspath(path)
    if LAYER_SUFFIX not in text:
        return Path(text), None
    file, _, rest = text.partition(LAYER_SUFFIX)
    return Path(file), rest.split("|")[0]


def read_vector(
    path: str | os.PathLike[str], *, layer: str | None = None, require_crs: bool = True
) -> gpd.GeoDataFrame:
    """Read a vector file (GPKG, GeoJSON, shapefile, GeoParquet, ...) into a GeoDataFrame.

    Args:
        path: the file; ``FILE|layername=NAME`` (as QGIS writes it) reads the layer NAME.
        layer: the layer to read (default: the one named in ``path``, else the file's only
            feature layer, or ``fields``, or the first; see :func:`_feature_layer`).
        require_crs: refuse a file without a CRS.

    Raises:
        InputFileError: missing or unreadable file, no such layer, or no geometry column.
        CRSError: the file declares no CRS (and ``require_crs``).
    """
    path, named = split_layer(path)
    layer = layer or named
    if not path.exists():
        raise InputFileError(f"vector file not found: {path}")
    if layer is not None and path.suffix.lower() not in (".parquet", ".geoparquet"):
        _check_layer(path, layer)
    try:
        if path.suffix.lower() in (".parquet", ".geoparquet"):
            frame = gpd.read_parquet(path)
        else:
            frame = gpd.read_file(path, layer=layer or _feature_layer(path), engine="pyogrio")
    except Exception as exc:  # pyogrio, pyarrow and fiona raise many unrelated types
        raise InputFileError(f"cannot read vector file {path}: {first_line(exc)}") from exc
    if not isinstance(frame, gpd.GeoDataFrame) or frame.geometry is None:
        raise InputFileError(f"vector file {path} has no geometry column")
    if require_crs and frame.crs is None:
        raise CRSError(f"vector file {path} has no CRS; {_crs_hint(frame)}")
    return frame


def could_be_lon_lat(bounds: Sequence[float]) -> bool:
    """Whether ``(xmin, ymin, xmax, ymax)`` lie within longitude and latitude's ranges."""
    values = np.asarray(bounds, dtype=float)
    return bool(
        np.isfinite(values).all()
        and (np.abs(values[[0, 2]]) <= 180).all()
        and (np.abs(values[[1, 3]]) <= 90).all()
    )


def _crs_hint(frame: gpd.GeoDataFrame) -> str:
    """How to give a file without a CRS the right one, judged by its coordinates."""
    if could_be_lon_lat(frame.total_bounds):
        return (
            "its coordinates look like longitude and latitude: assign EPSG:4326 "
            "(ogr2ogr -a_srs EPSG:4326 OUT IN)"
        )
    return (
        "its coordinates look projected: assign the CRS they were drawn in, often the "
        "scene's (ogr2ogr -a_srs EPSG:<code> OUT IN; gdalinfo SCENE names the scene's)"
    )


def layer_names(path: str | os.PathLike[str]) -> list[str]:
    """The names of a vector file's layers (tables without geometry too)."""
    import pyogrio

    return [str(name) for name, _ in pyogrio.list_layers(path)]


def _check_layer(path: Path, layer: str) -> None:
    """Refuse a layer the file does not hold, naming those it does."""
    try:
        names = layer_names(path)
    except Exception as exc:  # not a vector file: read_file says why
        raise InputFileError(f"cannot read vector file {path}: {first_line(exc)}") from exc
    if layer not in names:
        raise InputFileError(f"{path} has no layer {layer!r}; its layers: {', '.join(names)}")


def _feature_layer(path: Path) -> str | None:
    """The layer to read from a file with several: its only feature layer, else ``fields``.

    A fieldseg GeoPackage also holds the ``layer_styles`` table (and ``--debug-layers`` adds
    ``chips`` and ``seams``); the fields are what a user means. Other files with several
    feature layers give their first, with a warning naming the others (the first may not be
    the one meant).
    """
    import pyogrio

    layers = pyogrio.list_layers(path)
    features = [str(name) for name, geometry in layers if geometry is not None]
    if len(layers) <= 1 or not features:
        return None
    if len(features) > 1 and "fields" in features:
        return "fields"
    if len(features) > 1:
        logger.warning(
            "%s holds the layers %s and none is called 'fields': reading %s (name another "
            "as FILE|layername=NAME)",
            path, ", ".join(features), features[0],
        )  # fmt: skip
    return features[0]


def read_area_of_interest(path: str | os.PathLike[str], crs: ProjCRS | str | object) -> object:
    """Read an AOI file as one (multi)polygon in ``crs``: the union of its valid geometries."""
    frame = read_vector(path)
    frame = frame[~frame.geometry.is_empty & frame.geometry.notna()]
    if frame.empty:
        raise InputFileError(f"area of interest {path} holds no geometry")
    geometry = frame.to_crs(crs).geometry.make_valid().union_all()
    if geometry.is_empty or geometry.area == 0:
        raise InputFileError(f"area of interest {path} has no area")
    return geometry


def check_vector_format(path: str | os.PathLike[str]) -> str:
    """Return the lower-case suffix of a writable vector path, or raise ConfigError."""
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_DRIVERS and suffix != ".parquet":
        known = ", ".join([*VECTOR_DRIVERS, ".parquet"])
        raise ConfigError(f"cannot tell the vector format of {path}; use one of {known}")
    return suffix


def write_vector(
    frame: gpd.GeoDataFrame,
    path: str | os.PathLike[str],
    *,
    layer: str = "fields",
    overwrite: bool = False,
) -> Path:
    """Write ``frame`` atomically, choosing the format from the extension.

    ``.gpkg`` (with a spatial index), ``.parquet`` (GeoParquet), ``.fgb`` or ``.geojson``;
    shapefiles are not written since they are several files that cannot be replaced at once.
    """
    path = Path(path)
    suffix = check_vector_format(path)
    with atomic_file(path, overwrite=overwrite) as tmp:
        if suffix == ".parquet":
            frame.to_parquet(tmp)
        elif suffix == ".gpkg":
            frame.to_file(tmp, driver="GPKG", layer=layer, engine="pyogrio", SPATIAL_INDEX="YES")
        else:
            frame.to_file(tmp, driver=VECTOR_DRIVERS[suffix], engine="pyogrio")
    return path
