"""Procedural agricultural scenes with known truth, for tests, the demo and benchmarks.

A scene is built the way farmland is: roads split the land into blocks; some blocks are forest
or villages; the rest are divided into fields: parallel strips, recursive splits at various
angles, or irregular (Voronoi) parcels. Some neighbours are separated by a 1-2 pixel road,
track or hedge, many share an edge with no gap at all (the case where instance models merge
fields). Lakes, woodlots and a river cut irregular holes. Each field gets a crop whose
phenology sets its colour on each date, plus its own brightness, texture and noise; a mild blur
mixes pixels at field edges.

The truth polygons describe the ground, not the image: a field lying in the nodata border or
under a cloud stays in the truth, as a surveyed parcel would (a model's targets should mask
nodata, not the truth file). Every truth polygon covers at least :data:`MIN_FIELD_PIXELS`
pixel centres (smaller pieces are merged into a neighbour they share an edge with, or left
unlabelled), so that each one can be learned. Truth polygons are valid, single polygons and do
not overlap; neighbours without a gap share their edge vertex for vertex.

A seed gives byte-identical pixels and identical polygons on a given installation: the
landscape, its paint and the image-wide noise come from three independent streams of one
:class:`numpy.random.SeedSequence`, so drawing the noise in a background thread and painting
bands in parallel does not change the result.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from shapely.geometry import MultiPoint, Polygon, box
from shapely.geometry.base import BaseGeometry

from fieldseg.atomic_output import atomic_file, check_output_path
from fieldseg.errors import ConfigError
from fieldseg.raster_io import write_geotiff
from fieldseg.rasterization import geojson_shapes, rasterize_shapes
from fieldseg.vector_io import check_vector_format, write_vector

logger = logging.getLogger("fieldseg")

#: Smallest scene side accepted, in pixels.
MIN_SIZE = 64
#: The generator's peak memory: a base, plus per pixel a fixed part and a part per band and date
#: (:func:`memory_needed`).
SYNTH_BASE_BYTES, SYNTH_PIXEL_BYTES, SYNTH_BAND_BYTES = 200e6, 70.0, 9.0
#: A truth polygon must cover at least this many pixel centres to be kept.
MIN_FIELD_PIXELS = 10
#: Median field size (m²) that blocks are divided towards; sizes spread log-normally around it.
MEDIAN_FIELD_M2 = 34_000.0
#: Fields closer than this (metres) form a neighbouring pair in :class:`SceneDifficulty`.
NEIGHBOUR_DISTANCE_M = 25.0
#: Band names per date, in order; bands beyond this list are named ``b11``, ``b12``, ...
BAND_ORDER = (
    "red",
    "green",
    "blue",
    "nir",
    "swir1",
    "swir2",
    "rededge1",
    "rededge2",
    "rededge3",
    "nir_narrow",
)

# Reflectance (0-1) of the pure materials, in BAND_ORDER.
_SOIL = np.array([0.20, 0.16, 0.12, 0.27, 0.34, 0.30, 0.22, 0.24, 0.26, 0.28])
_VEGETATION = np.array([0.03, 0.08, 0.03, 0.44, 0.20, 0.10, 0.10, 0.30, 0.40, 0.45])
_STRAW = np.array([0.22, 0.19, 0.13, 0.30, 0.38, 0.30, 0.25, 0.27, 0.29, 0.31])
_FLOWER = np.array([0.12, 0.16, 0.04, 0.40, 0.22, 0.12, 0.20, 0.32, 0.38, 0.40])
_SHADOW = np.array([0.02, 0.03, 0.02, 0.10, 0.05, 0.03, 0.04, 0.08, 0.09, 0.10])
_WATER = np.array([0.03, 0.05, 0.06, 0.02, 0.01, 0.005, 0.03, 0.025, 0.02, 0.02])
_BUILT = np.array([0.16, 0.15, 0.14, 0.21, 0.26, 0.23, 0.18, 0.20, 0.21, 0.21])
_ASPHALT = np.array([0.11, 0.11, 0.10, 0.15, 0.19, 0.18, 0.13, 0.14, 0.15, 0.15])
_CLOUD = np.array([0.62, 0.63, 0.66, 0.64, 0.48, 0.38, 0.63, 0.64, 0.64, 0.64])

# Land covers that are not fields (never labelled); values are the unit classes used in rendering.
_GRASS, _ROAD, _TRACK, _HEDGE, _FOREST, _WATER_CLASS, _BUILT_CLASS = range(7)


@dataclass(frozen=True)
class _Crop:
    """Phenology of one crop: fractions of green cover, straw and flowers by day of year."""

    name: str
    frequency: float
    green: tuple[tuple[float, float], ...]
    straw: tuple[tuple[float, float], ...] = ((0.0, 0.0), (365.0, 0.0))
    flower: tuple[tuple[float, float], ...] = ((0.0, 0.0), (365.0, 0.0))
    shift_days: float = 7.0  # spread of sowing/harvest dates between farms


_CROPS: tuple[_Crop, ...] = (
    _Crop(
        "winter_wheat",
        0.24,
        ((0, 0.3), (90, 0.4), (130, 0.9), (165, 0.9), (190, 0.2), (200, 0), (290, 0), (365, 0.3)),
        ((0, 0), (160, 0), (185, 0.75), (200, 0.8), (215, 0.5), (240, 0.2), (260, 0), (365, 0)),
    ),
    _Crop(
        "winter_barley",
        0.09,
        ((0, 0.3), (80, 0.45), (120, 0.9), (150, 0.85), (175, 0.2), (185, 0), (280, 0), (365, 0.3)),
        ((0, 0), (145, 0), (170, 0.75), (185, 0.8), (205, 0.4), (230, 0), (365, 0)),
    ),
    _Crop(
        "rapeseed",
        0.10,
        ((0, 0.45), (80, 0.5), (105, 0.7), (150, 0.85), (175, 0.5), (190, 0.1), (200, 0), (365, 0)),
        ((0, 0), (160, 0), (180, 0.5), (195, 0.7), (210, 0.3), (230, 0), (365, 0)),
        ((0, 0), (105, 0), (120, 0.6), (135, 0.55), (150, 0), (365, 0)),
    ),
    _Crop(
        "maize",
        0.14,
        ((0, 0), (140, 0), (165, 0.15), (200, 0.8), (240, 0.9), (260, 0.6), (275, 0), (365, 0)),
        ((0, 0), (230, 0), (255, 0.3), (270, 0.5), (285, 0.3), (300, 0), (365, 0)),
    ),
    _Crop(
        "sugar_beet",
        0.07,
        ((0, 0), (120, 0), (150, 0.15), (185, 0.85), (260, 0.95), (280, 0.9), (290, 0), (365, 0)),
    ),
    _Crop(
        "potato",
        0.05,
        ((0, 0), (135, 0), (160, 0.3), (185, 0.9), (210, 0.85), (230, 0.4), (245, 0), (365, 0)),
        ((0, 0), (205, 0), (225, 0.4), (245, 0.2), (255, 0), (365, 0)),
    ),
    _Crop(
        "sunflower",
        0.05,
        ((0, 0), (120, 0), (150, 0.2), (185, 0.8), (215, 0.8), (240, 0.3), (255, 0), (365, 0)),
        ((0, 0), (215, 0), (240, 0.5), (255, 0.3), (270, 0), (365, 0)),
        ((0, 0), (185, 0), (200, 0.45), (215, 0.35), (225, 0), (365, 0)),
    ),
    _Crop(
        "grassland",
        0.16,
        (
            (0, 0.55),
            (90, 0.6),
            (120, 0.9),
            (150, 0.95),
            (155, 0.4),
            (180, 0.85),
            (205, 0.9),
            (210, 0.45),
            (240, 0.8),
            (365, 0.6),
        ),
        shift_days=12.0,
    ),
    _Crop(
        "spring_barley",
        0.06,
        ((0, 0), (95, 0), (120, 0.3), (150, 0.9), (175, 0.85), (195, 0.2), (205, 0), (365, 0)),
        ((0, 0), (170, 0), (190, 0.75), (205, 0.6), (225, 0.2), (240, 0), (365, 0)),
    ),
    _Crop("fallow", 0.04, ((0, 0.15), (150, 0.35), (250, 0.3), (365, 0.15))),
)

#: Crop names in code order: ``crop_id`` ``i`` is ``CROP_NAMES[i - 1]``.
CROP_NAMES: tuple[str, ...] = tuple(crop.name for crop in _CROPS)


@dataclass(frozen=True)
class SceneDifficulty:
    """The figures that make a scene hard for field delineation.

    Attributes:
        n_fields: number of truth polygons.
        share_under_1ha: share of fields smaller than one hectare.
        share_touching_no_gap: among neighbouring pairs (fields within
            :data:`NEIGHBOUR_DISTANCE_M` of each other; pairs that meet only at a corner are
            not counted), the share that share an edge at least one pixel long with no gap.
        share_rotated_or_irregular: share of fields that are not axis-aligned rectangles.
        median_area_ha: median field area in hectares.
        n_neighbour_pairs: number of neighbouring pairs behind ``share_touching_no_gap``.
    """

    n_fields: int
    share_under_1ha: float
    share_touching_no_gap: float
    share_rotated_or_irregular: float
    median_area_ha: float = math.nan
    n_neighbour_pairs: int = 0

    def summary(self) -> str:
        """A few human-readable lines, one figure each."""
        return "\n".join(
            [
                f"fields:                          {self.n_fields}",
                f"median field area:               {self.median_area_ha:.2f} ha",
                f"fields under 1 ha:               {self.share_under_1ha:.1%}",
                f"neighbours touching with no gap: {self.share_touching_no_gap:.1%}"
                f" of {self.n_neighbour_pairs} pairs",
                f"rotated or irregular fields:     {self.share_rotated_or_irregular:.1%}",
            ]
        )


@dataclass
class SyntheticScene:
    """A generated scene: pixels, truth polygons and how it is georeferenced.

    Attributes:
        data: (bands, height, width) uint16 reflectance x 10000, dates one after another.
        fields: truth polygons (``field_id`` from 1, ``crop``, ``crop_id``, ``area_m2``,
            ``n_pixels``, geometry) in ``crs``.
        transform: pixel to CRS transform (north up, square pixels).
        crs: the scene's projected CRS.
        band_names: ``red_d1, green_d1, ...``, one per band of ``data``.
        nodata: 0 when the scene has a nodata border, else None.
        difficulty: the figures that make the scene hard.
    """

    data: np.ndarray
    fields: gpd.GeoDataFrame
    transform: Affine
    crs: CRS
    band_names: tuple[str, ...]
    nodata: int | None
    difficulty: SceneDifficulty


def band_names_for(bands: int, dates: int) -> tuple[str, ...]:
    """Band descriptions of a scene: ``red_d1, green_d1, blue_d1, nir_d1, red_d2, ...``."""
    per_date = [BAND_ORDER[i] if i < len(BAND_ORDER) else f"b{i + 1}" for i in range(bands)]
    return tuple(f"{name}_d{d}" for d in range(1, dates + 1) for name in per_date)


def synthesize_scene(
    size: int = 2048,
    *,
    seed: int = 7,
    bands: int = 4,
    dates: int = 2,
    clouds: bool = False,
    nodata_border: bool = False,
    pixel_size: float = 10.0,
    crs: str = "EPSG:32633",
    height: int | None = None,
) -> SyntheticScene:
    """Generate a labelled agricultural scene of ``size`` columns by ``height`` rows.

    Args:
        size: scene width in pixels (and height, unless ``height`` is given); at least 64.
        seed: random seed; the same seed gives the same scene.
        bands: bands per date: red, green, blue, nir, swir1, swir2, ... (a prefix).
        dates: acquisition dates, spread over the growing season (April to August).
        clouds: add soft bright clouds, with shadows, that differ per date.
        nodata_border: set an irregular strip along one edge to 0 in every band, like the
            edge of a Sentinel-2 swath; the truth keeps the fields there.
        pixel_size: pixel side in CRS units (metres).
        crs: a projected CRS; the origin is placed inside its area of use.
        height: scene height in pixels (default ``size``).

    Raises:
        ConfigError: an argument is out of range or the CRS is not projected.
    """
    width = int(size)
    rows = width if height is None else int(height)
    _validate(width, rows, bands, dates, pixel_size)
    scene_crs = _projected_crs(crs)
    started = time.perf_counter()
    shape = (rows, width)
    # independent streams: the landscape, its paint, and the image-wide noise (drawn in a
    # background thread while the landscape is built; results do not depend on timing)
    land_seed, paint_seed, noise_seed = np.random.SeedSequence(seed).spawn(3)
    rng = np.random.default_rng(land_seed)
    with ThreadPoolExecutor(max_workers=1) as background:
        noise_job = background.submit(
            _draw_noise,
            np.random.default_rng(noise_seed),
            shape,
            bands=bands,
            dates=dates,
            clouds=clouds,
            nodata_border=nodata_border,
            pixel_size=pixel_size,
        )
        width_m, height_m = width * pixel_size, rows * pixel_size
        x0, y0 = _plausible_origin(scene_crs, rng, width_m, height_m, pixel_size)
        transform = Affine(pixel_size, 0.0, x0, 0.0, -pixel_size, y0)

        layout = _Landscape(rng, width_m, height_m).build()
        to_world = _local_to_world(x0, y0)
        holes = shapely.union(layout.woods, layout.water)
        field_geoms = _cut_out(_rings_to_polygons(layout.fields), holes)
        field_geoms = _polygon_parts(to_world(field_geoms))
        covers = np.concatenate(
            [_rings_to_polygons(layout.covers), np.array([layout.woods, layout.water])]
        )
        cover_classes = np.array([*layout.cover_classes, _FOREST, _WATER_CLASS], dtype=np.int32)
        covers = to_world(covers)
        present = ~shapely.is_empty(covers)
        covers, cover_classes = covers[present], cover_classes[present]
        field_geoms, ids = _enforce_min_pixels(field_geoms, transform, shape, pixel_size)
        difficulty, touching = _difficulty(field_geoms, ids, pixel_size)
        geometry_s = time.perf_counter() - started

        n_fields = len(field_geoms)
        n_pixels = np.bincount(ids.ravel(), minlength=n_fields + 1)[1:]
        paint_rng = np.random.default_rng(paint_seed)
        crop_ids, gain, shift = _assign_crops(paint_rng, n_fields, touching)
        cover_values = np.arange(n_fields + 1, n_fields + 1 + len(covers))
        units = rasterize_shapes(
            geojson_shapes(covers), cover_values, transform=transform, shape=shape
        )
        np.copyto(units, ids, where=ids > 0)
        del ids
        noise = noise_job.result()
    data = _render(
        paint_rng,
        units,
        noise,
        field_geoms=field_geoms,
        crop_ids=crop_ids,
        gain=gain,
        shift=shift,
        other_classes=cover_classes,
        doys=_acquisition_days(dates),
    )
    nodata: int | None = None
    if noise.nodata is not None:
        data[:, noise.nodata] = 0
        nodata = 0

    frame = gpd.GeoDataFrame(
        {
            "field_id": np.arange(1, n_fields + 1, dtype=np.int64),
            "crop": [CROP_NAMES[c - 1] for c in crop_ids],
            "crop_id": crop_ids.astype(np.int64),
            "area_m2": shapely.area(field_geoms),
            "n_pixels": n_pixels.astype(np.int64),
        },
        geometry=list(field_geoms),
        crs=scene_crs,
    )
    logger.debug(
        "synthetic scene %dx%d: geometry %.2f s, total %.2f s",
        width,
        rows,
        geometry_s,
        time.perf_counter() - started,
    )
    return SyntheticScene(
        data=data,
        fields=frame,
        transform=transform,
        crs=scene_crs,
        band_names=band_names_for(bands, dates),
        nodata=nodata,
        difficulty=difficulty,
    )


def write_synthetic_scene(
    scene: SyntheticScene,
    raster_path: str | os.PathLike[str],
    fields_path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> None:
    """Write the scene as a tiled, compressed GeoTIFF and its truth as a vector file.

    Both outputs are checked before either is written, and each is written atomically; the
    GeoTIFF is renamed into place only after the fields file is written.

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false.
        ConfigError: the raster path is not a .tif, or the vector format is unknown.
    """
    _check_outputs(raster_path, fields_path, overwrite=overwrite)
    # GDAL compresses the tiles on every core; the file is the same byte for byte
    with (
        atomic_file(raster_path, overwrite=overwrite) as tmp,
        rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"),
    ):
        write_geotiff(
            tmp,
            scene.data,
            transform=scene.transform,
            crs=scene.crs,
            nodata=scene.nodata,
            band_names=scene.band_names,
        )
        write_vector(scene.fields, fields_path, layer="fields", overwrite=overwrite)


def _check_outputs(
    raster_path: str | os.PathLike[str], fields_path: str | os.PathLike[str], *, overwrite: bool
) -> None:
    """Refuse unknown formats and existing outputs (unless ``overwrite``) before any writing."""
    raster_path, fields_path = Path(raster_path), Path(fields_path)
    if raster_path.suffix.lower() not in (".tif", ".tiff"):
        raise ConfigError(f"the scene is written as a GeoTIFF; use a .tif path, not {raster_path}")
    check_vector_format(fields_path)
    check_output_path(raster_path, overwrite=overwrite)
    check_output_path(fields_path, overwrite=overwrite)


def synth(
    raster_path: str | os.PathLike[str],
    fields_path: str | os.PathLike[str],
    *,
    size: int = 2048,
    seed: int = 7,
    bands: int = 4,
    dates: int = 2,
    clouds: bool = False,
    nodata_border: bool = False,
    overwrite: bool = False,
) -> SceneDifficulty:
    """Generate a scene and write it and its truth; the library side of ``fieldseg synth``.

    Args:
        raster_path: the scene, a tiled and compressed GeoTIFF (``.tif``).
        fields_path: its truth polygons, any format of :mod:`fieldseg.vector_io` (layer
            ``fields``).
        size: side of the square scene in pixels (10 m each); at least 64.
        seed: random seed; the same seed gives the same scene and fields.
        bands: bands per date (red, green, blue, nir, swir1, swir2, ...: a prefix).
        dates: acquisition dates, spread over the growing season.
        clouds: add soft clouds with shadows that differ per date.
        nodata_border: set an irregular strip along one edge to nodata, like a swath edge.
        overwrite: replace existing outputs.

    Returns:
        The figures that make the scene hard (:class:`SceneDifficulty`).

    Raises:
        OutputExistsError: an output exists and ``overwrite`` is false (checked before any
            work is done).
        ConfigError: an argument is out of range, or the scene would not fit in memory.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise ConfigError(f"size must be a whole number of pixels, got {size!r}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    _check_outputs(raster_path, fields_path, overwrite=overwrite)  # before spending time
    scene = synthesize_scene(
        size, seed=seed, bands=bands, dates=dates, clouds=clouds, nodata_border=nodata_border
    )
    write_synthetic_scene(scene, raster_path, fields_path, overwrite=overwrite)
    return scene.difficulty


# --------------------------------------------------------------------------------------------
# arguments and georeferencing


def _validate(width: int, height: int, bands: int, dates: int, pixel_size: float) -> None:
    if width < MIN_SIZE or height < MIN_SIZE:
        raise ConfigError(f"scene size must be at least {MIN_SIZE} pixels, got {width} x {height}")
    if bands < 1:
        raise ConfigError(f"bands must be at least 1, got {bands}")
    if dates < 1:
        raise ConfigError(f"dates must be at least 1, got {dates}")
    if not pixel_size > 0:
        raise ConfigError(f"pixel size must be positive, got {pixel_size}")
    _check_memory(width, height, bands, dates)


def memory_needed(width: int, height: int, bands: int, dates: int) -> int:
    """Bytes the generator holds at its peak: it paints the whole scene in memory.

    Fitted to peak RSS measured at 1024 and 2048 px with 4 to 16 bands in all (within 5 %; it
    gives 17.3 GB for a 10980 px scene of 4 bands x 2 dates, which took 17.4 GB).
    """
    pixels = width * height
    return int(SYNTH_BASE_BYTES + pixels * (SYNTH_PIXEL_BYTES + SYNTH_BAND_BYTES * bands * dates))


def _check_memory(width: int, height: int, bands: int, dates: int) -> None:
    """Refuse a scene the machine cannot hold rather than swap or be killed half-way."""
    need = memory_needed(width, height, bands, dates)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX: no figure to compare with
        return
    if need > 0.8 * total:
        raise ConfigError(
            f"a {width} x {height} px scene of {bands} bands x {dates} dates needs about "
            f"{need / 1e9:.1f} GB while it is generated (the whole scene is painted in memory); "
            f"this machine has {total / 1e9:.1f} GB: ask for a smaller --size or fewer bands"
        )
    if need > 4e9:
        logger.info("generating the scene takes about %.1f GB of memory", need / 1e9)


def _projected_crs(value: str) -> CRS:
    try:
        crs = CRS.from_user_input(value)
    except Exception as exc:  # rasterio raises CRSError, but be safe with odd inputs
        raise ConfigError(f"unknown CRS {value!r}") from exc
    if not crs.is_projected:
        raise ConfigError(f"synthetic scenes need a projected CRS in metres, not {value}")
    return crs


def _plausible_origin(
    crs: CRS, rng: np.random.Generator, width_m: float, height_m: float, pixel: float
) -> tuple[float, float]:
    """Top-left corner of the scene, on the pixel grid, somewhere farmland could be.

    UTM zones put the scene on the central meridian at 50°N (33°S in the south, where the
    zone is southern); other CRSs near the middle of their area of use, kept to 35-58 degrees
    of latitude.
    """
    epsg = crs.to_epsg()
    proj = ProjCRS.from_epsg(epsg) if epsg else ProjCRS.from_wkt(crs.to_wkt())
    lon, lat = 15.0, 50.0
    area = proj.area_of_use
    if area is not None:
        lon = (area.west + area.east) / 2
        lat = (area.south + area.north) / 2
    if "UTM zone" in proj.name:
        lat = -33.0 if proj.name.rstrip().endswith("S") else 50.0
    else:
        lat = math.copysign(min(max(abs(lat), 35.0), 58.0), lat if lat else 1.0)
    x, y = Transformer.from_crs("EPSG:4326", proj, always_xy=True).transform(lon, lat)
    if not (np.isfinite(x) and np.isfinite(y)):
        x, y = 500_000.0, 5_000_000.0
    jitter = 20_000.0
    x += rng.uniform(-jitter, jitter) - width_m / 2
    y += rng.uniform(-jitter, jitter) + height_m / 2
    return float(round(x / pixel) * pixel), float(round(y / pixel) * pixel)


def _local_to_world(x0: float, y0: float) -> Callable[[np.ndarray], np.ndarray]:
    """Map local metres (x east, y down from the top-left corner) to CRS coordinates.

    Coordinates are not rounded: vertices shared by neighbours stay identical, and rounding
    would shift T-junctions off the edges they lie on, making neighbours overlap.
    """

    def move(xy: np.ndarray) -> np.ndarray:
        return np.column_stack([x0 + xy[:, 0], y0 - xy[:, 1]])

    def apply(geoms: np.ndarray) -> np.ndarray:
        if len(geoms) == 0:
            return geoms
        moved = shapely.transform(geoms, move)
        invalid = ~shapely.is_valid(moved)
        if invalid.any():
            moved[invalid] = shapely.make_valid(moved[invalid])
        return moved

    return apply


def _acquisition_days(dates: int) -> np.ndarray:
    """Days of year of the acquisitions: one in late June, or spread from May to August."""
    if dates == 1:
        return np.array([175.0])
    return np.linspace(125.0, 235.0, dates)


# --------------------------------------------------------------------------------------------
# geometry: blocks, fields and other land cover, in local metres (x east, y down)
#
# Blocks and fields are convex polygons held as lists of (x, y) tuples and cut by half-planes
# in plain Python: thousands of cuts cost far less than as shapely calls. Both sides of a cut
# without gap compute the same intersection points, so they share the cut edge vertex for
# vertex. Lakes, woodlots and the river are cut out of the fields afterwards, with shapely.

_Ring = list[tuple[float, float]]


def _unit(angle: float) -> tuple[float, float]:
    """(cos, sin) of ``angle``, exact for multiples of 90 degrees so grids stay axis-aligned."""
    quarter = angle / (math.pi / 2)
    if abs(quarter - round(quarter)) < 1e-9:
        return ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[round(quarter) % 4]
    return math.cos(angle), math.sin(angle)


def _clip(ring: _Ring, nx: float, ny: float, offset: float, keep_low: bool) -> _Ring:
    """The part of a convex ring where ``n . p <= offset`` (or ``>=`` when not ``keep_low``)."""
    if keep_low:
        dist = [x * nx + y * ny - offset for x, y in ring]
    else:
        dist = [offset - (x * nx + y * ny) for x, y in ring]
    out: _Ring = []
    k = len(ring)
    for i in range(k):
        p, d = ring[i], dist[i]
        j = i + 1 if i + 1 < k else 0
        e = dist[j]
        if d <= 0.0:
            out.append(p)
        if (d <= 0.0) != (e <= 0.0):
            q = ring[j]
            t = d / (d - e)
            point = (p[0] + t * (q[0] - p[0]), p[1] + t * (q[1] - p[1]))
            if point != p:
                out.append(point)
    if len(out) > 1 and out[-1] == out[0]:
        out.pop()
    return out


def _area(ring: _Ring) -> float:
    """Area of a simple ring (shoelace)."""
    total = 0.0
    px, py = ring[-1]
    for x, y in ring:
        total += px * y - x * py
        px, py = x, y
    return abs(total) / 2.0


def _area_and_thickness(ring: _Ring) -> tuple[float, float]:
    """Area, and rough width (2 x area / perimeter: the width of a long strip)."""
    total = perimeter = 0.0
    px, py = ring[-1]
    for x, y in ring:
        total += px * y - x * py
        perimeter += math.hypot(x - px, y - py)
        px, py = x, y
    area = abs(total) / 2.0
    return area, 2.0 * area / max(perimeter, 1e-9)


def _thickness(ring: _Ring) -> float:
    """Rough width of a polygon: 2 x area / perimeter (the width of a long strip)."""
    return _area_and_thickness(ring)[1]


def _extent(ring: _Ring, nx: float, ny: float) -> tuple[float, float]:
    """Range of ``n . p`` over the ring's vertices."""
    values = [x * nx + y * ny for x, y in ring]
    return min(values), max(values)


def _long_axis(ring: _Ring) -> float:
    """Direction (radians) of the long side of a convex ring's minimum-area bounding box."""
    best_area, best_angle = math.inf, 0.0
    k = len(ring)
    for i in range(k):
        (x0, y0), (x1, y1) = ring[i], ring[(i + 1) % k]
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0.0:
            continue
        ux, uy = (x1 - x0) / length, (y1 - y0) / length
        t_lo, t_hi = _extent(ring, ux, uy)
        s_lo, s_hi = _extent(ring, -uy, ux)
        area = (t_hi - t_lo) * (s_hi - s_lo)
        if area < best_area - 1e-9:
            best_area = area
            angle = math.atan2(uy, ux)
            best_angle = angle if t_hi - t_lo >= s_hi - s_lo else angle + math.pi / 2
    best_angle %= math.pi
    quarter = best_angle / (math.pi / 2)
    if abs(quarter - round(quarter)) < 1e-7:
        best_angle = (round(quarter) % 2) * math.pi / 2
    return best_angle


@dataclass
class _Cut:
    """The two sides of a straight cut through a convex ring; ``gap`` gives the strip between."""

    low: _Ring
    high: _Ring
    ring: _Ring
    normal: tuple[float, float]
    offset: float
    half_gap: float

    @property
    def gap(self) -> _Ring:
        """The strip removed between the two sides (empty without a gap)."""
        if self.half_gap <= 0:
            return []
        nx, ny = self.normal
        upper = _clip(self.ring, nx, ny, self.offset - self.half_gap, False)
        return _clip(upper, nx, ny, self.offset + self.half_gap, True) if upper else []


def _cut(ring: _Ring, angle: float, offset: float, gap: float) -> _Cut:
    """Cut along the line at ``angle`` whose normal coordinate is ``offset``.

    A ``gap`` > 0 removes a strip that wide centred on the line (a road, track or hedge);
    without a gap both sides share the cut edge exactly.
    """
    ux, uy = _unit(angle)
    nx, ny = -uy, ux
    half = gap / 2.0
    low = _clip(ring, nx, ny, offset - half, True)
    high = _clip(ring, nx, ny, offset + half, False)
    return _Cut(low, high, ring, (nx, ny), offset, half)


def _normal_extent(ring: _Ring, angle: float) -> tuple[float, float]:
    """Range of the ring along the normal of a line at ``angle``."""
    ux, uy = _unit(angle)
    return _extent(ring, -uy, ux)


def _rings_to_polygons(rings: list[_Ring]) -> np.ndarray:
    """Convex rings to shapely polygons in one vectorised call."""
    if not rings:
        return np.array([], dtype=object)
    closed = [[*ring, ring[0]] for ring in rings]
    counts = np.array([len(ring) for ring in closed])
    ring_offsets = np.concatenate([[0], np.cumsum(counts)])
    coords = np.array([p for ring in closed for p in ring], dtype=np.float64)
    return shapely.from_ragged_array(
        shapely.GeometryType.POLYGON,
        coords,
        (ring_offsets, np.arange(len(rings) + 1)),
    )


def _polygon_parts(geoms: np.ndarray) -> np.ndarray:
    """Polygons of ``geoms`` with some area (multi-part geometries are exploded)."""
    if len(geoms) == 0:
        return geoms
    parts = shapely.get_parts(geoms)
    parts = parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]
    return parts[shapely.area(parts) > 0]


def _blob(rng: np.random.Generator, cx: float, cy: float, radius: float) -> Polygon:
    """A smooth irregular closed shape (lake, woodlot): a circle with random harmonics."""
    theta = np.linspace(0.0, 2 * math.pi, 64, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += rng.normal(0.0, 0.16 / k) * np.cos(k * theta + rng.uniform(0, 2 * math.pi))
    r = radius * np.clip(r, 0.4, None)
    ring = np.column_stack([cx + r * np.cos(theta), cy + r * np.sin(theta)])
    return shapely.make_valid(Polygon(ring))


@dataclass
class _Layout:
    """A landscape in local metres: fields, unlabelled land cover and what cuts holes."""

    fields: list[_Ring] = field(default_factory=list)
    covers: list[_Ring] = field(default_factory=list)  # roads, hedges, forest and village blocks
    cover_classes: list[int] = field(default_factory=list)
    woods: BaseGeometry = field(default_factory=Polygon)
    water: BaseGeometry = field(default_factory=Polygon)

    def add_cover(self, ring: _Ring, cls: int) -> None:
        if len(ring) >= 3 and _area(ring) > 0:
            self.covers.append(ring)
            self.cover_classes.append(cls)


class _Landscape:
    """Draws a landscape: blocks between roads, land cover, then fields block by block.

    Sizes are physical (metres, hectares); the pixel rule is applied later, on the grid.
    """

    min_field_m2 = 1_200.0  # 0.12 ha, a little above 10 pixels at 10 m
    min_thickness_m = 20.0
    road_jitter = 0.35  # share of road cuts off the block's axes

    def __init__(self, rng: np.random.Generator, width_m: float, height_m: float) -> None:
        self.rng = rng
        self.width_m = width_m
        self.height_m = height_m
        self.layout = _Layout()

    def build(self) -> _Layout:
        w, h = self.width_m, self.height_m
        blocks = self._blocks([(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)])
        for block in blocks:
            frame = _long_axis(block)
            kind = self.rng.random() if len(blocks) >= 3 else 1.0  # tiny scenes: all farmland
            if kind < 0.09:
                self.layout.add_cover(block, _FOREST)
            elif kind < 0.13 and _area(block) < 600_000:
                self.layout.add_cover(block, _BUILT_CLASS)
            else:
                self._fields(block, frame)
        self._obstacles()
        return self.layout

    # -- blocks between roads -----------------------------------------------------------------

    def _blocks(self, scene: _Ring) -> list[_Ring]:
        """Split the scene recursively along roads (wide near the top of the tree).

        Each cut runs across the block's long axis, mostly exactly (a regular grid stays
        axis-aligned), sometimes at a jittered angle.
        """
        rng = self.rng
        blocks: list[_Ring] = []
        stack: list[tuple[_Ring, int, float]] = [(scene, 0, self._block_area())]
        while stack:
            ring, depth, stop_area = stack.pop()
            if _area(ring) <= stop_area or _thickness(ring) < 120.0:
                blocks.append(ring)
                continue
            angle = _long_axis(ring) + math.pi / 2
            if rng.random() < self.road_jitter:
                angle += rng.normal(0.0, math.radians(15))
            if depth < 2:
                gap, cls = rng.uniform(18.0, 28.0), _ROAD
            elif depth < 4 or rng.random() < 0.55:
                gap, cls = rng.uniform(10.5, 20.0), (_ROAD if rng.random() < 0.5 else _TRACK)
            else:
                gap, cls = 0.0, _GRASS  # a property line, no road
            lo, hi = _normal_extent(ring, angle)
            cut = _cut(ring, angle, lo + rng.uniform(0.3, 0.7) * (hi - lo), gap)
            if len(cut.low) < 3 or len(cut.high) < 3:
                blocks.append(ring)
                continue
            self.layout.add_cover(cut.gap, cls)
            stack.append((cut.low, depth + 1, self._block_area()))
            stack.append((cut.high, depth + 1, self._block_area()))
        return blocks

    def _block_area(self) -> float:
        return float(np.clip(self.rng.lognormal(math.log(45e4), 0.7), 8e4, 400e4))

    @staticmethod
    def _across_longer(ring: _Ring, frame: float) -> float:
        """Angle of a cut across the longer of the ring's two extents in ``frame``."""
        ux, uy = _unit(frame)
        t_lo, t_hi = _extent(ring, ux, uy)
        s_lo, s_hi = _extent(ring, -uy, ux)
        return frame + math.pi / 2 if t_hi - t_lo >= s_hi - s_lo else frame

    # -- water and woodland that cut irregular holes -------------------------------------------

    def _obstacles(self) -> None:
        rng = self.rng
        scene = box(0.0, 0.0, self.width_m, self.height_m)
        area_km2 = scene.area / 1e6
        water: list[BaseGeometry] = []
        if rng.random() < 0.7:
            water.append(self._river())
        for _ in range(rng.poisson(area_km2 * 0.08)):
            water.append(self._random_blob(rng.uniform(60.0, 260.0)))
        woods = [
            self._random_blob(rng.uniform(50.0, 220.0)) for _ in range(rng.poisson(area_km2 * 0.35))
        ]
        water_union = shapely.union_all(water) if water else Polygon()
        wood_union = shapely.union_all(woods).difference(water_union) if woods else Polygon()
        self.layout.water = shapely.intersection(water_union, scene)
        self.layout.woods = shapely.intersection(wood_union, scene)

    def _random_blob(self, radius: float) -> Polygon:
        rng = self.rng
        return _blob(rng, rng.uniform(0, self.width_m), rng.uniform(0, self.height_m), radius)

    def _river(self) -> BaseGeometry:
        """A meandering river across the scene, 15-50 m wide."""
        rng = self.rng
        w, h = self.width_m, self.height_m
        steps = 60
        start = np.array([0.0, rng.uniform(0.1, 0.9) * h])
        end = np.array([w, rng.uniform(0.1, 0.9) * h])
        if rng.random() < 0.5:
            start = np.array([rng.uniform(0.1, 0.9) * w, 0.0])
            end = np.array([rng.uniform(0.1, 0.9) * w, h])
        t = np.linspace(0.0, 1.0, steps)[:, None]
        line = start + t * (end - start)
        normal = np.array([-(end - start)[1], (end - start)[0]]) / np.hypot(*(end - start))
        wander = np.zeros(steps)
        for k in (1, 2, 3, 5):
            wander += rng.normal(0.0, 0.07 / k) * np.sin(math.pi * k * t[:, 0] + rng.uniform(0, 6))
        line = line + wander[:, None] * max(w, h) * normal
        line[0], line[-1] = start, end
        return shapely.buffer(shapely.LineString(line), rng.uniform(7.5, 25.0))

    # -- fields inside a block --------------------------------------------------------------------

    def _fields(self, block: _Ring, frame: float) -> None:
        rng = self.rng
        median_m2 = float(np.clip(rng.lognormal(math.log(MEDIAN_FIELD_M2), 1.0), 1_500.0, 5e5))
        p_gap = rng.uniform(0.0, 0.55)
        gap_class = (_HEDGE, _TRACK, _GRASS)[rng.choice(3, p=[0.4, 0.4, 0.2])]
        regular = rng.random() < 0.5
        if _area(block) < 1.4 * median_m2:
            self.layout.fields.append(block)
            return
        pattern = rng.random()
        if pattern < 0.35:
            self._strips(block, frame, median_m2, p_gap, gap_class, regular)
        elif pattern < 0.8:
            self._splits(block, frame, median_m2, p_gap, gap_class, regular)
        else:
            self._voronoi(block, median_m2, p_gap, gap_class)

    def _ok(self, ring: _Ring) -> bool:
        if len(ring) < 3:
            return False
        area, thickness = _area_and_thickness(ring)
        return area >= self.min_field_m2 and thickness >= self.min_thickness_m

    def _gap(self, p_gap: float) -> float:
        return self.rng.uniform(10.5, 20.0) if self.rng.random() < p_gap else 0.0

    def _jitter(self, angle: float, regular: bool) -> float:
        if regular and self.rng.random() < 0.85:
            return angle
        return angle + self.rng.normal(0.0, math.radians(8))

    def _splits(
        self,
        block: _Ring,
        frame: float,
        median_m2: float,
        p_gap: float,
        gap_class: int,
        regular: bool,
    ) -> None:
        """Recursive straight cuts across the longer side, at jittered angles."""
        rng = self.rng
        stack = [block]
        while stack:
            ring = stack.pop()
            if _area(ring) <= median_m2 * rng.lognormal(0.0, 0.45):
                self.layout.fields.append(ring)
                continue
            angle = self._jitter(self._across_longer(ring, frame), regular)
            lo, hi = _normal_extent(ring, angle)
            for _ in range(3):
                cut = _cut(ring, angle, lo + rng.uniform(0.25, 0.75) * (hi - lo), self._gap(p_gap))
                if self._ok(cut.low) and self._ok(cut.high):
                    self.layout.add_cover(cut.gap, gap_class)
                    stack.extend([cut.low, cut.high])
                    break
            else:
                self.layout.fields.append(ring)

    def _strips(
        self,
        block: _Ring,
        frame: float,
        median_m2: float,
        p_gap: float,
        gap_class: int,
        regular: bool,
    ) -> None:
        """Parallel strips of random width, each cut across where it gets too long."""
        rng = self.rng
        aspect = rng.uniform(4.0, 14.0)
        width = max(25.0, math.sqrt(median_m2 / aspect))
        along = self._across_longer(block, frame) + math.pi / 2  # strips along the long side
        if rng.random() < 0.35:
            along += math.pi / 2
        angle = self._jitter(along, regular)
        lo, hi = _normal_extent(block, angle)
        strips: list[_Ring] = []
        rest = block
        position = lo
        while True:
            position += max(22.0, rng.lognormal(math.log(width), 0.3))
            if position > hi - 22.0:
                break
            cut = _cut(rest, angle, position, self._gap(p_gap * 0.7))
            if len(cut.low) < 3:
                continue
            if not (self._ok(cut.low) and self._ok(cut.high)):
                if len(cut.high) < 3:
                    break
                continue
            self.layout.add_cover(cut.gap, gap_class)
            strips.append(cut.low)
            rest = cut.high
        strips.append(rest)
        across = self._jitter(angle + math.pi / 2, regular)
        max_length = median_m2 / width * rng.uniform(0.8, 1.6)
        for strip in strips:
            self._cut_across(strip, across, max_length, p_gap, gap_class)

    def _cut_across(
        self, strip: _Ring, angle: float, max_length: float, p_gap: float, gap_class: int
    ) -> None:
        rng = self.rng
        lo, hi = _normal_extent(strip, angle)
        tail = strip
        position = lo
        while hi - position > 1.5 * max_length:
            position += max_length * rng.uniform(0.6, 1.4)
            if position > hi - 0.4 * max_length:
                break
            cut = _cut(tail, angle, position, self._gap(p_gap))
            if self._ok(cut.low) and self._ok(cut.high):
                self.layout.add_cover(cut.gap, gap_class)
                self.layout.fields.append(cut.low)
                tail = cut.high
        self.layout.fields.append(tail)

    def _voronoi(self, block: _Ring, median_m2: float, p_gap: float, gap_class: int) -> None:
        """Irregular parcels: Voronoi cells of jittered grid points, with or without hedges."""
        rng = self.rng
        spacing = math.sqrt(median_m2)
        ux, uy = _unit(_long_axis(block))
        xy = np.array(block)
        t = xy @ np.array([ux, uy])
        s = xy @ np.array([-uy, ux])
        tt, ss = np.meshgrid(
            np.arange(t.min() + spacing / 2, t.max(), spacing),
            np.arange(s.min() + spacing / 2, s.max(), spacing),
        )
        tt = tt.ravel() + rng.uniform(-0.4, 0.4, tt.size) * spacing
        ss = ss.ravel() + rng.uniform(-0.4, 0.4, ss.size) * spacing
        px, py = tt * ux - ss * uy, tt * uy + ss * ux
        poly = Polygon(block)
        inside = shapely.contains_xy(poly, px, py)
        if inside.sum() < 2:
            self.layout.fields.append(block)
            return
        points = MultiPoint(np.column_stack([px[inside], py[inside]]))
        cells = shapely.get_parts(shapely.voronoi_polygons(points, extend_to=poly))
        cells = _polygon_parts(shapely.intersection(cells, poly))
        if rng.random() < p_gap * 1.3:
            self.layout.add_cover(block, gap_class)
            half = rng.uniform(5.25, 10.0)
            cells = _polygon_parts(shapely.buffer(cells, -half, join_style="mitre"))
        for cell in cells:
            self.layout.fields.append(list(map(tuple, shapely.get_coordinates(cell)[:-1])))


# --------------------------------------------------------------------------------------------
# truth on the pixel grid and the difficulty figures


def _cut_out(fields: np.ndarray, holes: BaseGeometry) -> np.ndarray:
    """Remove lakes, woods and rivers from the fields; pieces left apart become fields.

    Each field is differenced only with the parts of ``holes`` it meets, which is much faster
    than with the whole union.
    """
    if holes.is_empty or len(fields) == 0:
        return fields
    parts = shapely.get_parts(holes)
    part_index, field_index = shapely.STRtree(fields).query(parts, predicate="intersects")
    if field_index.size == 0:
        return fields
    order = np.argsort(field_index, kind="stable")
    part_index, field_index = part_index[order], field_index[order]
    hit, starts = np.unique(field_index, return_index=True)
    local = np.array(
        [
            shapely.multipolygons(parts[group]) if len(group) > 1 else parts[group[0]]
            for group in np.split(part_index, starts[1:])
        ]
    )
    keep = np.ones(len(fields), dtype=bool)
    keep[hit] = False
    pieces = _polygon_parts(shapely.difference(fields[hit], local))
    return np.concatenate([fields[keep], pieces])


def _merge(target: BaseGeometry, piece: BaseGeometry) -> Polygon | None:
    """Union of a field and a piece sharing an edge, or None if that is not one polygon.

    The union is exact (no snapping, which would move vertices shared with other neighbours);
    pinholes left by floating-point noise along the shared edge are filled.
    """
    union = shapely.union(target, piece)
    if not isinstance(union, Polygon):
        return None
    if union.interiors:
        holes = [ring for ring in union.interiors if Polygon(ring).area > 1.0]
        union = Polygon(union.exterior, holes)
    return union if union.is_valid else None


def _enforce_min_pixels(
    geoms: np.ndarray, transform: Affine, shape: tuple[int, int], pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Merge fields covering too few pixel centres into an edge-sharing neighbour, else drop.

    Thin slivers (thinner than 1.5 pixels) are treated the same way.

    Returns:
        The fields kept, and their id image (1-based positions in the returned array).
    """
    geoms = geoms[~shapely.is_empty(geoms) & (shapely.area(geoms) > 0)]
    shapes = geojson_shapes(geoms)
    tol = 1e-2
    for _ in range(4):
        ids = rasterize_shapes(
            shapes, np.arange(1, len(geoms) + 1), transform=transform, shape=shape
        )
        counts = np.bincount(ids.ravel(), minlength=len(geoms) + 1)[1:]
        thin = 2 * shapely.area(geoms) / shapely.length(geoms) < 1.5 * pixel_size
        small = np.flatnonzero((counts < MIN_FIELD_PIXELS) | thin)
        if small.size == 0:
            return geoms, ids
        small_set = set(small.tolist())
        merged: list[BaseGeometry | None] = list(geoms)
        changed: set[int] = set()
        tree = shapely.STRtree(geoms)
        for i in small.tolist():
            piece = merged[i]
            merged[i] = None
            best, best_len = -1, pixel_size
            for j in tree.query(piece, predicate="dwithin", distance=tol).tolist():
                if j in small_set or merged[j] is None:
                    continue
                shared = shapely.length(
                    shapely.intersection(piece.boundary, shapely.buffer(merged[j], tol))
                )
                if shared > best_len:
                    best, best_len = j, shared
            if best >= 0:
                union = _merge(merged[best], piece)
                if union is not None:
                    merged[best] = union
                    changed.add(best)
        kept = [k for k, g in enumerate(merged) if g is not None]
        fresh = sorted(changed)
        fresh_shapes = dict(
            zip(fresh, geojson_shapes(np.array([merged[k] for k in fresh])), strict=True)
        )
        shapes = [fresh_shapes.get(k, shapes[k]) for k in kept]
        geoms = np.array([merged[k] for k in kept], dtype=object)
    ids = rasterize_shapes(shapes, np.arange(1, len(geoms) + 1), transform=transform, shape=shape)
    counts = np.bincount(ids.ravel(), minlength=len(geoms) + 1)[1:]
    keep = counts >= MIN_FIELD_PIXELS
    if keep.all():
        return geoms, ids
    geoms = geoms[keep]
    shapes = [sh for sh, k in zip(shapes, keep, strict=True) if k]
    return geoms, rasterize_shapes(
        shapes, np.arange(1, len(geoms) + 1), transform=transform, shape=shape
    )


def _pixel_adjacency(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a < b, 0-based) of fields with 4-adjacent pixels, and how many such pixel pairs."""
    n = int(ids.max())
    codes = []
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        lo = np.minimum(a[differ], b[differ]).astype(np.int64) - 1
        hi = np.maximum(a[differ], b[differ]).astype(np.int64) - 1
        codes.append(lo * (n + 1) + hi)
    pairs, counts = np.unique(np.concatenate(codes), return_counts=True)
    return np.column_stack([pairs // (n + 1), pairs % (n + 1)]), counts


def _difficulty(
    geoms: np.ndarray, ids: np.ndarray, pixel_size: float
) -> tuple[SceneDifficulty, np.ndarray]:
    """The figures of :class:`SceneDifficulty`, and the pairs (k, 2) of fields touching.

    Touching with no visible gap is judged on the pixel grid: the two fields have at least
    two pairs of 4-adjacent pixels (a gap of a pixel or more leaves none). Neighbouring pairs
    are fields within :data:`NEIGHBOUR_DISTANCE_M` of each other, less those that only meet at
    a corner.
    """
    n = len(geoms)
    if n == 0:
        return SceneDifficulty(0, 0.0, 0.0, 0.0, math.nan, 0), np.zeros((0, 2), dtype=np.int64)
    area = shapely.area(geoms)
    rotated = area / shapely.area(shapely.envelope(geoms)) < 0.99
    # candidate pairs by bounding boxes grown by the neighbour distance, then exact distances
    grown = shapely.buffer(shapely.envelope(geoms), NEIGHBOUR_DISTANCE_M, join_style="mitre")
    left, right = shapely.STRtree(geoms).query(grown)
    keep = left < right
    left, right = left[keep].astype(np.int64), right[keep].astype(np.int64)
    distance = shapely.distance(geoms[left], geoms[right])
    codes = left * (n + 1) + right
    near = codes[distance <= NEIGHBOUR_DISTANCE_M]
    contact = codes[distance <= 1e-2]
    adjacent, counts = _pixel_adjacency(ids)
    touching = adjacent[counts >= 2]
    touching_codes = touching[:, 0] * (n + 1) + touching[:, 1]
    corner_only = np.setdiff1d(contact, touching_codes)
    neighbours = np.union1d(np.setdiff1d(near, corner_only), touching_codes)
    pairs = len(neighbours)
    figures = SceneDifficulty(
        n_fields=n,
        share_under_1ha=float((area < 10_000.0).mean()),
        share_touching_no_gap=float(len(touching_codes) / pairs) if pairs else 0.0,
        share_rotated_or_irregular=float(rotated.mean()),
        median_area_ha=float(np.median(area) / 10_000.0),
        n_neighbour_pairs=pairs,
    )
    return figures, touching


# --------------------------------------------------------------------------------------------
# crops and rendering


def _assign_crops(
    rng: np.random.Generator, n: int, touching: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop (1-based code), brightness gain and phenology shift (days) of each field.

    Neighbours often grow the same crop (the hard case), but then differ in gain or timing,
    like neighbouring farms do.
    """
    freq = np.array([c.frequency for c in _CROPS])
    crop = rng.choice(len(_CROPS), size=n, p=freq / freq.sum()) + 1
    gain = rng.normal(1.0, 0.06, n).clip(0.8, 1.2)
    shift = rng.normal(0.0, 1.0, n)
    copy = rng.random(n) < 0.35
    neighbours: list[list[int]] = [[] for _ in range(n)]
    for a, b in touching.tolist():
        neighbours[a].append(b)
        neighbours[b].append(a)
    for i in range(n):
        earlier = [j for j in neighbours[i] if j < i]
        if copy[i] and earlier:
            j = earlier[int(rng.integers(len(earlier)))]
            crop[i] = crop[j]
            gain[i] = gain[j] * (1.0 + rng.choice([-1.0, 1.0]) * rng.uniform(0.04, 0.1))
    for a, b in touching.tolist():
        if crop[a] == crop[b] and abs(gain[a] - gain[b]) < 0.03:
            gain[b] = gain[a] + (0.04 if gain[b] >= gain[a] else -0.04)
    days = np.array([_CROPS[c - 1].shift_days for c in crop])
    return crop, gain, shift * days


def _fractions(crop: _Crop, doy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Green, straw and flower cover fractions of a crop on (shifted) days of year."""

    def curve(points: tuple[tuple[float, float], ...]) -> np.ndarray:
        days, values = np.array(points, dtype=float).T
        return np.interp(doy % 365.0, days, values)

    green, straw, flower = curve(crop.green), curve(crop.straw), curve(crop.flower)
    total = green + straw + flower
    scale = np.where(total > 1.0, 1.0 / np.maximum(total, 1e-9), 1.0)
    return green * scale, straw * scale, flower * scale


def _unit_tables(
    rng: np.random.Generator,
    *,
    n_fields: int,
    crop_ids: np.ndarray,
    gain: np.ndarray,
    shift: np.ndarray,
    other_classes: np.ndarray,
    doys: np.ndarray,
    nbands: int,
) -> dict[str, np.ndarray]:
    """Per-unit spectra and texture parameters; unit 0 is the grass background."""
    n_units = 1 + n_fields + len(other_classes)
    dates = len(doys)

    def spectrum(values: np.ndarray) -> np.ndarray:
        return np.resize(values, nbands)

    soil, straw, flower = spectrum(_SOIL), spectrum(_STRAW), spectrum(_FLOWER)
    background = np.zeros((n_units, dates, nbands))  # what shows between the green cover
    green = np.zeros((n_units, dates))
    cls = np.concatenate([[_GRASS], np.full(n_fields, -1), other_classes])

    # fields: soil, straw and flowers by crop phenology; each farm its own soil brightness
    soil_gain = rng.normal(1.0, 0.1, n_fields).clip(0.7, 1.3)
    for code, crop in enumerate(_CROPS, start=1):
        members = np.flatnonzero(crop_ids == code)
        if members.size == 0:
            continue
        doy = doys[None, :] - shift[members, None]
        g, s, f = _fractions(crop, doy)
        g = g * rng.uniform(0.85, 1.0, (members.size, 1))
        bare = np.clip(1.0 - g - s - f, 0.0, None)
        rest = np.maximum(bare + s + f, 1e-9)
        mix = (
            bare[..., None] * soil * soil_gain[members, None, None]
            + s[..., None] * straw
            + f[..., None] * flower
        ) / rest[..., None]
        background[1 + members] = mix
        green[1 + members] = g

    grass = _CROPS[CROP_NAMES.index("grassland")]
    others = {
        _GRASS: (spectrum(_SOIL), None),
        _ROAD: (spectrum(_ASPHALT), 0.05),
        _TRACK: (spectrum(_SOIL), 0.15),
        _HEDGE: (spectrum(_SHADOW), 0.75),
        _FOREST: (spectrum(_SHADOW), 0.7),
        _WATER_CLASS: (spectrum(_WATER), 0.0),
        _BUILT_CLASS: (spectrum(_BUILT), 0.2),
    }
    for code, (spec, cover) in others.items():
        members = np.flatnonzero(cls == code)
        if members.size == 0:
            continue
        background[members] = spec
        if cover is None:
            g, _, _ = _fractions(grass, doys[None, :] + rng.normal(0, 5, (members.size, 1)))
            green[members] = 0.85 * g
        else:
            green[members] = cover
    unit_gain = np.concatenate([[1.0], gain, rng.normal(1.0, 0.05, len(other_classes))])

    # texture: within-field vigour patterns, soil patterns and sowing rows
    vigour = np.full(n_units, 0.08)
    vigour[1 : n_fields + 1] = rng.uniform(0.03, 0.14, n_fields)
    tex = np.full(n_units, 0.03)
    tex[1 : n_fields + 1] = rng.uniform(0.02, 0.07, n_fields)
    for code, v, t in ((_FOREST, 0.25, 0.12), (_BUILT_CLASS, 0.3, 0.25), (_WATER_CLASS, 0.0, 0.04)):
        vigour[cls == code] = v
        tex[cls == code] = t
    row_amp = np.zeros((n_units, dates))
    row_amp[1 : n_fields + 1] = rng.uniform(0.0, 0.05, (n_fields, 1)) * (
        1.0 - green[1 : n_fields + 1]
    )
    return {
        "background": background.astype(np.float32),
        "green": green.astype(np.float32),
        "gain": unit_gain.astype(np.float32),
        "vigour": vigour.astype(np.float32),
        "texture": tex.astype(np.float32),
        "row_amp": row_amp.astype(np.float32),
    }


def _row_pattern(
    rng: np.random.Generator, units: np.ndarray, field_geoms: np.ndarray
) -> np.ndarray:
    """Sowing-row / tramline pattern: a sinusoid along each field's long axis (float32)."""
    n_units = int(units.max()) + 1
    angle = np.zeros(n_units)
    freq = np.zeros(n_units)
    n = len(field_geoms)
    if n:
        rects = shapely.minimum_rotated_rectangle(field_geoms)
        xy = shapely.get_coordinates(rects).reshape(n, -1, 2)[:, :3]
        e1, e2 = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 1]
        longer = np.where(
            (np.hypot(e1[:, 0], e1[:, 1]) >= np.hypot(e2[:, 0], e2[:, 1]))[:, None], e1, e2
        )
        angle[1 : n + 1] = np.arctan2(-longer[:, 1], longer[:, 0])  # rows run south
        period_px = rng.uniform(2.2, 6.0, n)
        freq[1 : n + 1] = 2 * math.pi / period_px
    rows, cols = units.shape
    across_x = (-np.sin(angle) * freq).astype(np.float32)
    across_y = (np.cos(angle) * freq).astype(np.float32)
    yy = np.arange(rows, dtype=np.float32)[:, None]
    xx = np.arange(cols, dtype=np.float32)[None, :]
    phase = np.take(across_x, units) * xx + np.take(across_y, units) * yy
    return np.sin(phase)


@dataclass
class _Noise:
    """Image-wide random patterns that do not depend on the landscape.

    Attributes:
        vigour: smooth within-field vigour pattern (fields' green cover varies with it).
        texture: smooth brightness pattern (soil moisture, management).
        green: per date, a further vigour pattern, so fields do not look alike on each date.
        sensor: sensor noise (reflectance units), larger than the scene; each band reads it at
            its own offset.
        offsets: per band, the (row, col) offset into ``sensor``.
        clouds: per date, cloud opacity and the factor that dims the ground; None: no clouds.
        nodata: True where the scene is blanked; None: no nodata border.
    """

    vigour: np.ndarray
    texture: np.ndarray
    green: list[np.ndarray]
    sensor: np.ndarray
    offsets: list[tuple[int, int]]
    clouds: list[tuple[np.ndarray, np.ndarray]] | None
    nodata: np.ndarray | None


_SENSOR_PAD = 16


def _draw_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    *,
    bands: int,
    dates: int,
    clouds: bool,
    nodata_border: bool,
    pixel_size: float,
) -> _Noise:
    """Draw every image-wide pattern, in a fixed order (it may run in a background thread)."""
    vigour = _smooth_noise(rng, shape, 10.0)
    vigour += 0.5 * _smooth_noise(rng, shape, 3.0)
    texture = _smooth_noise(rng, shape, 6.0)
    texture += 0.4 * _smooth_noise(rng, shape, 2.0)
    green = [_smooth_noise(rng, shape, 12.0) for _ in range(dates)]
    pad = _SENSOR_PAD
    sensor = rng.standard_normal((shape[0] + pad, shape[1] + pad), dtype=np.float32)
    sensor *= 0.006
    count = bands * dates
    picks = rng.choice(pad * pad, size=count, replace=count > pad * pad)
    offsets = [divmod(int(p), pad) for p in picks]
    layers = [_cloud_layer(rng, shape, pixel_size) for _ in range(dates)] if clouds else None
    mask = _nodata_border_mask(rng, *shape) if nodata_border else None
    return _Noise(vigour, texture, green, sensor, offsets, layers, mask)


def _render(
    rng: np.random.Generator,
    units: np.ndarray,
    noise: _Noise,
    *,
    field_geoms: np.ndarray,
    crop_ids: np.ndarray,
    gain: np.ndarray,
    shift: np.ndarray,
    other_classes: np.ndarray,
    doys: np.ndarray,
) -> np.ndarray:
    """Draw the pixels: per-unit spectra mixed by green cover, textured, blurred, noised.

    Bands are painted in parallel threads (numpy releases the GIL), each on float32 images
    with in-place arithmetic; the result does not depend on the number of threads.
    """
    shape = units.shape
    bands = len(noise.offsets) // len(doys)
    tables = _unit_tables(
        rng,
        n_fields=len(field_geoms),
        crop_ids=crop_ids,
        gain=gain,
        shift=shift,
        other_classes=other_classes,
        doys=doys,
        nbands=bands,
    )
    vegetation = np.resize(_VEGETATION, bands).astype(np.float32)
    cloud_spec = np.resize(_CLOUD, bands).astype(np.float32)
    rows = _row_pattern(rng, units, field_geoms)
    vigour_amp = np.take(tables["vigour"], units)
    vigour = noise.vigour * vigour_amp
    mult = np.take(tables["texture"], units)
    mult *= noise.texture
    mult += 1.0
    mult *= np.take(tables["gain"], units)

    def per_date(d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # vigour varies the green cover in proportion: bare soil stays bare
        green = noise.green[d] * 0.3
        green *= vigour_amp
        green += vigour
        green += 1.0
        green *= np.take(tables["green"][:, d], units)
        np.clip(green, 0.0, 1.0, out=green)
        bare = 1.0 - green
        date_mult = np.take(tables["row_amp"][:, d], units)
        date_mult *= rows
        date_mult += 1.0
        date_mult *= mult
        return green, bare, date_mult

    data = np.empty((bands * len(doys), *shape), dtype=np.uint16)

    def paint(index: int) -> None:
        d, b = divmod(index, bands)
        green, bare, date_mult = dated[d]
        scratch = np.empty(shape, dtype=np.float32)
        value = np.take(np.ascontiguousarray(tables["background"][:, d, b]), units)
        value *= bare
        np.multiply(green, vegetation[b], out=scratch)
        value += scratch
        value *= date_mult
        _psf(value, scratch)
        oy, ox = noise.offsets[index]
        value += noise.sensor[oy : oy + shape[0], ox : ox + shape[1]]
        if noise.clouds is not None:
            alpha, shade = noise.clouds[d]
            value *= shade
            np.multiply(alpha, cloud_spec[b], out=scratch)
            value += scratch
        value *= 10_000.0
        np.clip(value, 1.0, 65_535.0, out=value)
        data[index] = value

    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        dated = list(pool.map(per_date, range(len(doys))))
        list(pool.map(paint, range(bands * len(doys))))
    return data


def _psf(band: np.ndarray, scratch: np.ndarray) -> None:
    """Blur mildly in place (0.6 centre, 0.1 per 4-neighbour), mixing pixels at field edges."""
    np.multiply(band, 0.1, out=scratch)
    band *= 0.6
    band[1:] += scratch[:-1]
    band[:-1] += scratch[1:]
    band[:, 1:] += scratch[:, :-1]
    band[:, :-1] += scratch[:, 1:]
    band[0] += scratch[0]
    band[-1] += scratch[-1]
    band[:, 0] += scratch[:, 0]
    band[:, -1] += scratch[:, -1]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth noise of about unit variance: a coarse Gaussian grid interpolated bilinearly.

    Returns a new float32 array of ``shape``.
    """
    rows, cols = shape
    grid = rng.standard_normal((int(rows / cell) + 2, int(cols / cell) + 2)).astype(np.float32)
    x = np.arange(cols, dtype=np.float32) / np.float32(cell)
    x0 = x.astype(np.int64)
    fx = x - x0
    across = grid[:, x0] * (1 - fx) + grid[:, x0 + 1] * fx  # (coarse rows, cols)
    y = np.arange(rows, dtype=np.float32) / np.float32(cell)
    y0 = y.astype(np.int64)
    fy = (y - y0)[:, None]
    out = across[y0]
    step = across[y0 + 1]
    step -= out
    step *= fy
    out += step
    return out


def _cloud_layer(
    rng: np.random.Generator, shape: tuple[int, int], pixel_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """Soft cloud opacity (0-1) for one date, and the factor that dims the ground below.

    The factor combines the cloud's own cover with the shadow it casts a little way off.
    """
    scale = 10.0 / pixel_size
    noise = _smooth_noise(rng, shape, 90 * scale)
    noise += 0.5 * _smooth_noise(rng, shape, 30 * scale)
    noise += 0.25 * _smooth_noise(rng, shape, 8 * scale)
    cover = rng.uniform(0.04, 0.3)
    threshold = float(np.quantile(noise[::7, ::7], 1.0 - cover))
    softness = rng.uniform(0.3, 0.6)
    alpha = np.clip((noise - threshold) / softness, 0.0, 1.0) ** 0.8 * rng.uniform(0.8, 1.0)
    haze = np.clip((noise - threshold + 0.6) / 2.0, 0.0, 0.12)
    alpha = np.maximum(alpha, haze).astype(np.float32)
    dy, dx = (int(v * scale) for v in rng.integers(8, 30, 2))
    shadow = np.zeros_like(alpha)
    rows, cols = shape
    if dy < rows and dx < cols:
        shadow[dy:, dx:] = alpha[: rows - dy, : cols - dx]
    shade = 1.0 - alpha
    shade *= 1.0 - 0.55 * shadow * shade
    return alpha, shade


def _nodata_border_mask(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """An irregular strip along one edge (5-25% of the scene), like a swath edge: True = nodata."""
    side = int(rng.integers(4))
    length, depth = (rows, cols) if side in (0, 1) else (cols, rows)
    t = np.arange(length, dtype=np.float64)
    share = rng.uniform(0.05, 0.25)
    slope = rng.uniform(-0.15, 0.15)
    edge = share * depth + slope * (t - length / 2)
    for k in (1, 3, 7):
        edge += rng.uniform(1.0, 6.0) / k * np.sin(2 * math.pi * k * t / length + rng.uniform(0, 6))
    steps = np.repeat(rng.integers(-2, 3, length // 23 + 1), 23)[:length]  # detector offsets
    edge = np.clip(edge + steps, 2.0, depth - 2.0)
    index = np.arange(depth)[None, :]
    mask = index < edge[:, None]  # (length, depth): near side of the chosen edge
    if side in (1, 3):
        mask = mask[:, ::-1]
    return mask if side in (0, 1) else mask.T
