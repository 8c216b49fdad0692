"""``fieldseg stack``: many single-band files -> one multi-band scene as a GDAL VRT.

Real imagery often comes as one file per band and date. A VRT references those files without
copying pixels, opens in QGIS, and is read by every other fieldseg command like a GeoTIFF.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from fieldseg.atomic_output import atomic_file
from fieldseg.errors import ConfigError, CRSError, InputFileError
from fieldseg.raster_io import RasterInfo, open_raster, raster_info, same_nodata

logger = logging.getLogger(__name__)

#: numpy dtype name -> GDAL data type name used in VRT XML.
GDAL_TYPE_NAMES: dict[str, str] = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "uint64": "UInt64",
    "int64": "Int64",
    "float32": "Float32",
    "float64": "Float64",
}


def band_names_from_files(
    paths: Sequence[Path],
    counts: Sequence[int],
    descriptions: Sequence[Sequence[str] | None] | None = None,
) -> list[str]:
    """Name bands after their files, dropping the prefix all file names share.

    ``s2_l3a_20210615_blue.tif, s2_l3a_20210715_blue.tif`` become ``20210615_blue,
    20210715_blue`` (cut only at ``_``, ``-`` or ``.`` so that words stay whole). A multi-band
    file whose bands all carry distinct descriptions (``descriptions``, per file, or None)
    keeps them: alone as they are, among other files after its file's name
    (``2021_red``); without them its bands add ``_bN``. Names that would clash or vanish keep
    the whole file name.
    """
    stems = [p.stem for p in paths]
    prefix = os.path.commonprefix(stems) if len(stems) > 1 else ""  # noqa: RUF071
    cut = max(prefix.rfind(sep) for sep in "_-.") + 1 if prefix else 0
    shortened = [stem[cut:] for stem in stems]
    if len(set(shortened)) != len(shortened) or not all(shortened):
        shortened = stems
    described = list(descriptions) if descriptions is not None else [None] * len(paths)
    names: list[str] = []
    for stem, count, own in zip(shortened, counts, described, strict=True):
        if count == 1:
            names.append(stem)
        elif own is not None and len(own) == count and all(own) and len(set(own)) == count:
            names.extend(own if len(paths) == 1 else [f"{stem}_{name}" for name in own])
        else:
            names.extend(f"{stem}_b{i}" for i in range(1, count + 1))
    return names


def stack_bands(
    files: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    band_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a VRT that stacks the bands of ``files``, in the order given, into one scene.

    Every file must share CRS, transform (pixel grid), size, data type and nodata value with the
    first one. Band descriptions in the VRT carry ``band_names`` (default: from the file names).
    Source paths are stored relative to the VRT when the files are near it (see docs/formats.md).

    Args:
        files: raster files, usually single-band; every band of each file is used.
        output: the ``.vrt`` path to write.
        band_names: one name per output band; default derived from the file names.
        overwrite: replace an existing output.

    Returns:
        The path written.

    Raises:
        InputFileError: a file is missing, unreadable, or does not match the first one.
        CRSError: a file has no CRS, or a different one.
        ConfigError: wrong number of band names, duplicate names, or not a ``.vrt`` output.
    """
    output = Path(output)
    if output.suffix.lower() != ".vrt":
        raise ConfigError(f"stack writes a GDAL VRT; name the output *.vrt, not {output.name}")
    if not files:
        raise ConfigError("stack needs at least one band file")
    if isinstance(files, (str, os.PathLike)):
        files = [files]  # one path, not a sequence of its characters
    paths = [Path(f) for f in files]
    seen: dict[str, int] = {}
    for position, path in enumerate(paths, 1):
        first = seen.setdefault(os.path.abspath(path), position)
        if first != position:
            raise ConfigError(f"{path} is given twice (files {first} and {position})")

    infos: list[RasterInfo] = []
    blocks: dict[Path, tuple[int, int]] = {}
    described: list[tuple[str, ...] | None] = []  # a file's band descriptions, if all have one
    for path in paths:
        with open_raster(path) as src:
            infos.append(raster_info(src))
            blocks[infos[-1].path] = src.block_shapes[0]
            own = tuple(d or "" for d in src.descriptions)
            described.append(own if all(own) else None)
    reference = infos[0]
    for info in infos[1:]:
        _check_same_grid(reference, info)

    counts = [info.count for info in infos]
    total = sum(counts)
    names = list(band_names) if band_names else band_names_from_files(paths, counts, described)
    if len(names) != total:
        raise ConfigError(f"{len(names)} band names given for {total} bands ({len(paths)} files)")
    if len(set(names)) != len(names):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"band names must be unique; repeated: {', '.join(duplicates)}")

    sources = [(info.path, band) for info in infos for band in range(1, info.count + 1)]
    with atomic_file(output, overwrite=overwrite) as tmp:
        root = _vrt_tree(reference, blocks, sources, names, vrt_dir=_absolute(output.parent))
        ET.indent(root)
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=False)
        _verify(tmp, total)
    logger.debug("stacked %d bands from %d files into %s: %s", total, len(paths), output, names)
    return output


def _check_same_grid(ref: RasterInfo, other: RasterInfo) -> None:
    """Raise naming ``other`` when it does not share the pixel grid and encoding of ``ref``."""
    where = f"{other.path.name} does not match {ref.path.name}"
    if ref.crs != other.crs:
        raise CRSError(f"{where}: CRS {other.crs} vs {ref.crs}")
    if (ref.width, ref.height) != (other.width, other.height):
        raise InputFileError(
            f"{where}: size {other.width}x{other.height} vs {ref.width}x{ref.height}"
        )
    if not np.allclose(ref.transform[:6], other.transform[:6], rtol=0, atol=1e-6):
        raise InputFileError(
            f"{where}: pixel grid {tuple(other.transform[:6])} vs {tuple(ref.transform[:6])}"
        )
    if ref.dtype != other.dtype:
        raise InputFileError(f"{where}: data type {other.dtype} vs {ref.dtype}")
    if not same_nodata(ref.nodata, other.nodata):
        raise InputFileError(f"{where}: nodata {other.nodata} vs {ref.nodata}")


def _vrt_tree(
    reference: RasterInfo,
    blocks: dict[Path, tuple[int, int]],
    sources: Sequence[tuple[Path, int]],
    names: Sequence[str],
    *,
    vrt_dir: Path,
) -> ET.Element:
    """Build the VRT XML: one VRTRasterBand with a SimpleSource per output band."""
    root = ET.Element(
        "VRTDataset", rasterXSize=str(reference.width), rasterYSize=str(reference.height)
    )
    srs = ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2")
    srs.text = reference.crs.to_wkt()
    a, b, c, d, e, f = reference.transform[:6]
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in (c, a, b, f, d, e))
    gdal_type = GDAL_TYPE_NAMES.get(reference.dtype)
    if gdal_type is None:
        raise InputFileError(f"data type {reference.dtype} cannot be stacked into a VRT")
    for index, ((path, source_band), name) in enumerate(zip(sources, names, strict=True), 1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(index))
        ET.SubElement(band, "Description").text = name
        if reference.nodata is not None:
            ET.SubElement(band, "NoDataValue").text = repr(float(reference.nodata))
        simple = ET.SubElement(band, "SimpleSource")
        filename, relative = _source_filename(path, vrt_dir)
        ET.SubElement(simple, "SourceFilename", relativeToVRT=relative).text = filename
        ET.SubElement(simple, "SourceBand").text = str(source_band)
        rows, cols = blocks[path]
        ET.SubElement(
            simple,
            "SourceProperties",
            RasterXSize=str(reference.width),
            RasterYSize=str(reference.height),
            DataType=gdal_type,
            BlockXSize=str(cols),
            BlockYSize=str(rows),
        )
        rect = {
            "xOff": "0",
            "yOff": "0",
            "xSize": str(reference.width),
            "ySize": str(reference.height),
        }
        ET.SubElement(simple, "SrcRect", **rect)
        ET.SubElement(simple, "DstRect", **rect)
    return root


def _source_filename(path: Path, vrt_dir: Path) -> tuple[str, str]:
    """Source path for the VRT: relative when near the VRT (at most one ``..``), else absolute.

    Files in, below or beside the VRT's folder can then move together with it.
    """
    absolute = _absolute(path)
    try:
        relative = os.path.relpath(absolute, vrt_dir)
    except ValueError:  # another drive on Windows
        return str(absolute), "0"
    if Path(relative).parts[:2] == ("..", ".."):
        return str(absolute), "0"
    return relative, "1"


def _absolute(path: Path) -> Path:
    """``path`` made absolute without following symbolic links (the path the user gave).

    A VRT stores the paths given: a symlinked data folder then moves with the VRT, and a link
    named for another date stays named so.
    """
    return Path(os.path.abspath(path))


def _verify(vrt: Path, expected_bands: int) -> None:
    """Open the written VRT once: GDAL must read it and see every band."""
    with rasterio.open(vrt) as src:
        if src.count != expected_bands:
            raise InputFileError(
                f"GDAL sees {src.count} bands in the VRT, expected {expected_bands}"
            )
        src.read(1, window=((0, 1), (0, 1)))
