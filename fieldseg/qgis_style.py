"""Default QGIS styles embedded in a GeoPackage, so that layers open styled in QGIS.

QGIS looks for a layer's default style in a ``layer_styles`` table inside the GeoPackage itself
(the table it writes on "Save as Default" to the datasource). :func:`add_layer_styles` writes that
table with the stdlib ``sqlite3`` exactly as QGIS (through GDAL) would, and the ``*_style``
builders generate the QML documents with :mod:`xml.etree.ElementTree`.

What QGIS expects, from its OGR provider (``QgsOgrProviderMetadata::saveStyle`` / ``loadStyle``):

- the table is created as a GDAL non-spatial layer with FID column ``id``, so GDAL registers it
  in ``gpkg_contents`` with ``data_type='attributes'`` (and in ``gpkg_ogr_contents`` with
  feature-count triggers); the column types below are what GDAL makes of QGIS's field
  definitions;
- rows are matched on ``f_table_schema=''`` (an empty string, not NULL), ``f_table_name`` (the
  layer name) and ``f_geometry_column`` (the layer's geometry column); ``f_table_catalog`` is
  ``''`` too;
- the row with ``useAsDefault`` true wins, else the newest ``update_time``; only ``styleQML`` is
  read, ``styleSLD`` may stay empty.
"""

from __future__ import annotations

import math
import os
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from fieldseg.errors import ConfigError, InputFileError, first_line

#: The table QGIS reads default styles from.
STYLES_TABLE = "layer_styles"

#: Layers written by ``fieldseg predict`` that get a default style.
FIELDS_LAYER = "fields"
CHIPS_LAYER = "chips"
SEAMS_LAYER = "seams"

#: Score class breaks of the ``fields`` renderer: everything below 0.5 in one class, then 0.1 steps.
DEFAULT_SCORE_BREAKS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

#: Colour ramp from low score (red) over orange and light green to high score (green), as
#: (position 0..1, RGB) stops.
SCORE_RAMP: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (215, 25, 28)),
    (1 / 3, (253, 174, 97)),
    (2 / 3, (166, 217, 106)),
    (1.0, (26, 150, 65)),
)

#: QGIS version the QML claims to come from; QGIS only upgrades documents older than itself.
QML_VERSION = "3.28.0-Firenze"

# Qgis::GeometryType values, as QGIS writes them in <layerGeometryType>.
_GEOMETRY_TYPE_CODES = {"point": 0, "line": 1, "polygon": 2}

# GeoPackage geometry type names (gpkg_geometry_columns.geometry_type_name) per QGIS geometry type;
# GEOMETRY and GEOMETRYCOLLECTION are not checked.
_GPKG_GEOMETRY_NAMES = {
    "point": {"POINT", "MULTIPOINT"},
    "line": {"LINESTRING", "MULTILINESTRING", "CIRCULARSTRING", "COMPOUNDCURVE", "MULTICURVE"},
    "polygon": {"POLYGON", "MULTIPOLYGON", "CURVEPOLYGON", "MULTISURFACE"},
}

# The schema QGIS's OGR provider creates, as GDAL's GPKG driver writes it: string widths become
# TEXT(n), the boolean subtype BOOLEAN, the CURRENT_TIMESTAMP default GDAL's ISO-8601 strftime.
_NOW_SQL = "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
_CREATE_STYLES_TABLE = f"""
CREATE TABLE "{STYLES_TABLE}" (
    "id" INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    "f_table_catalog" TEXT(256),
    "f_table_schema" TEXT(256),
    "f_table_name" TEXT(256),
    "f_geometry_column" TEXT(256),
    "styleName" TEXT(30),
    "styleQML" TEXT,
    "styleSLD" TEXT,
    "useAsDefault" BOOLEAN,
    "description" TEXT,
    "owner" TEXT(30),
    "ui" TEXT(30),
    "update_time" DATETIME DEFAULT ({_NOW_SQL})
)
"""

RGBA = tuple[int, int, int, int]


@dataclass(frozen=True)
class LayerStyle:
    """One QGIS style: the QML document, the geometry type it is for, and its listed name.

    Attributes:
        qml: The QGIS QML document.
        geometry_type: ``"point"``, ``"line"`` or ``"polygon"``; QGIS refuses to apply a symbology
            to a layer of another geometry type, so :func:`add_layer_styles` checks it up front.
        name: Style name shown in QGIS's style list (QGIS stores at most 30 characters).
        description: Free text shown next to the name.
    """

    qml: str
    geometry_type: str
    name: str = "fieldseg"
    description: str = "fieldseg default style"

    def __post_init__(self) -> None:
        if self.geometry_type not in _GEOMETRY_TYPE_CODES:
            known = ", ".join(_GEOMETRY_TYPE_CODES)
            raise ConfigError(
                f"style geometry type must be one of {known}, got {self.geometry_type!r}"
            )
        if not 0 < len(self.name) <= 30:
            raise ConfigError(f"style name must have 1 to 30 characters, got {self.name!r}")


# --------------------------------------------------------------------------------------------
# QML builders


def fields_style(
    *,
    attribute: str = "score",
    breaks: Sequence[float] = DEFAULT_SCORE_BREAKS,
    fill_alpha: int = 90,
    outline_width_mm: float = 0.4,
    display_expression: str = "field_id",
) -> LayerStyle:
    """Graduated style for the ``fields`` polygons: translucent fill, solid outline, red→green.

    Classes are ``breaks[i]..breaks[i + 1]`` of ``attribute``; labels are off and the layer's
    display expression (feature identification, attribute form titles) is ``display_expression``.

    Raises:
        ConfigError: fewer than two breaks, breaks not strictly increasing, or alpha not 0..255.
    """
    values = [float(b) for b in breaks]
    if len(values) < 2 or any(not math.isfinite(b) for b in values):
        raise ConfigError(f"score breaks need at least two finite values, got {list(breaks)}")
    if any(lo >= hi for lo, hi in pairwise(values)):
        raise ConfigError(f"score breaks must increase strictly, got {values}")
    if not 0 <= fill_alpha <= 255:
        raise ConfigError(f"fill alpha must be within 0..255, got {fill_alpha}")

    n_classes = len(values) - 1
    renderer = ET.Element(
        "renderer-v2",
        {
            "type": "graduatedSymbol",
            "attr": attribute,
            "graduatedMethod": "GraduatedColor",
            **_RENDERER_FLAGS,
        },
    )
    ranges = ET.SubElement(renderer, "ranges")
    symbols = ET.SubElement(renderer, "symbols")
    for i, (lower, upper) in enumerate(pairwise(values)):
        rgb = _ramp_color(i / (n_classes - 1) if n_classes > 1 else 1.0)
        ET.SubElement(
            ranges,
            "range",
            {
                "lower": _num(lower),
                "upper": _num(upper),
                "symbol": str(i),
                "label": f"{lower:.2f} - {upper:.2f}",
                "render": "true",
                "uuid": f"{attribute}_{i}",
            },
        )
        _add_symbol(
            symbols, str(i), "fill", "SimpleFill", _fill_props(rgb, fill_alpha, outline_width_mm)
        )
    # The source symbol and ramp are what QGIS reuses when the user reclassifies the layer.
    source = ET.SubElement(renderer, "source-symbol")
    _add_symbol(
        source,
        "0",
        "fill",
        "SimpleFill",
        _fill_props((128, 128, 128), fill_alpha, outline_width_mm),
    )
    _add_color_ramp(renderer)
    method = ET.SubElement(renderer, "classificationMethod", id="EqualInterval")
    ET.SubElement(method, "symmetricMode", enabled="0", symmetrypoint="0", astride="0")
    ET.SubElement(
        method, "labelFormat", format="%1 - %2", labelprecision="2", trimtrailingzeroes="0"
    )
    _add_empty_renderer_tail(renderer)
    return LayerStyle(
        qml=_qml_document(renderer, "polygon", display_expression=_column_ref(display_expression)),
        geometry_type="polygon",
    )


def chips_style(*, color: RGBA = (128, 128, 128, 255), width_mm: float = 0.26) -> LayerStyle:
    """Single-symbol style for the ``chips`` debug polygons: no fill, thin dashed grey outline."""
    props = {
        "color": _rgba((255, 255, 255, 0)),
        "style": "no",
        "outline_color": _rgba(color),
        "outline_style": "dash",
        "outline_width": _num(width_mm),
        "outline_width_unit": "MM",
        "joinstyle": "miter",
        "offset": "0,0",
        "offset_unit": "MM",
    }
    renderer = _single_symbol_renderer("fill", "SimpleFill", props)
    return LayerStyle(qml=_qml_document(renderer, "polygon"), geometry_type="polygon")


def seams_style(*, color: RGBA = (227, 26, 28, 255), width_mm: float = 0.3) -> LayerStyle:
    """Single-symbol style for the ``seams`` debug lines: a thin solid red line."""
    props = {
        "line_color": _rgba(color),
        "line_style": "solid",
        "line_width": _num(width_mm),
        "line_width_unit": "MM",
        "capstyle": "round",
        "joinstyle": "round",
        "offset": "0",
        "offset_unit": "MM",
    }
    renderer = _single_symbol_renderer("line", "SimpleLine", props)
    return LayerStyle(qml=_qml_document(renderer, "line"), geometry_type="line")


def categorized_style(
    attribute: str,
    categories: Sequence[tuple[str, str, RGBA]],
    *,
    outline_width_mm: float = 0.4,
    display_expression: str = "field_id",
) -> LayerStyle:
    """Categorised polygon style: one translucent fill per value of ``attribute``.

    Args:
        attribute: the column whose values pick the symbol.
        categories: ``(value, label, rgba)`` per category; the fill takes the colour's alpha,
            the outline the opaque colour.
        outline_width_mm: outline width.
        display_expression: column shown as the feature's title in QGIS.

    Raises:
        ConfigError: no categories, or a value given twice.
    """
    values = [value for value, _, _ in categories]
    if not values or len(set(values)) != len(values):
        raise ConfigError(f"categories need distinct values, got {values}")
    renderer = ET.Element(
        "renderer-v2", {"type": "categorizedSymbol", "attr": attribute, **_RENDERER_FLAGS}
    )
    listed = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for i, (value, label, color) in enumerate(categories):
        ET.SubElement(
            listed,
            "category",
            {
                "value": value,
                "symbol": str(i),
                "label": label,
                "render": "true",
                "type": "string",
                "uuid": f"{attribute}_{i}",
            },
        )
        _add_symbol(
            symbols,
            str(i),
            "fill",
            "SimpleFill",
            _fill_props(tuple(color[:3]), color[3], outline_width_mm),  # type: ignore[arg-type]
        )
    source = ET.SubElement(renderer, "source-symbol")
    _add_symbol(
        source, "0", "fill", "SimpleFill", _fill_props((128, 128, 128), 90, outline_width_mm)
    )
    _add_empty_renderer_tail(renderer)
    return LayerStyle(
        qml=_qml_document(renderer, "polygon", display_expression=_column_ref(display_expression)),
        geometry_type="polygon",
        description=f"fieldseg style by {attribute}",
    )


def default_styles(layers: Iterable[str]) -> dict[str, LayerStyle]:
    """The default style of each of ``layers`` that fieldseg writes (others are skipped)."""
    builders = {FIELDS_LAYER: fields_style, CHIPS_LAYER: chips_style, SEAMS_LAYER: seams_style}
    return {name: builders[name]() for name in layers if name in builders}


# --------------------------------------------------------------------------------------------
# Writing the styles into a GeoPackage


def add_layer_styles(gpkg_path: str | os.PathLike[str], styles: Mapping[str, LayerStyle]) -> None:
    """Store ``styles`` (layer name → style) as the QGIS default styles inside a GeoPackage.

    Creates and registers ``layer_styles`` the way QGIS does if it is missing. Idempotent: a
    layer's style of the same name is replaced in place, and any other style of that layer stops
    being the default, so running twice leaves one row per layer. All or nothing: every layer is
    checked before anything is written, and the writes share one transaction.

    Raises:
        InputFileError: the file is missing or not a GeoPackage, a layer is missing or has another
            geometry type than its style, or an existing ``layer_styles`` table is unusable.
    """
    path = Path(gpkg_path)
    if not path.is_file():
        raise InputFileError(f"GeoPackage not found: {path}")
    if not styles:
        return
    try:
        # mode=rw: never create an empty database where the GeoPackage should be.
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise InputFileError(f"cannot open GeoPackage {path}: {first_line(exc)}") from exc
    with closing(connection):
        connection.isolation_level = None  # explicit transactions, DDL included
        try:
            targets = _resolve_layers(connection, path, styles)
            connection.execute("BEGIN IMMEDIATE")
            try:
                _ensure_styles_table(connection)
                for (table, geometry_column), style in zip(targets, styles.values(), strict=True):
                    _upsert_style(connection, table, geometry_column, style)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise InputFileError(
                f"cannot write QGIS styles into {path}: {first_line(exc)}"
            ) from exc


def add_default_styles(gpkg_path: str | os.PathLike[str]) -> list[str]:
    """Give every fieldseg layer present in the GeoPackage its default style; return their names."""
    present = set(_gpkg_layers(gpkg_path))
    styles = default_styles(
        name for name in (FIELDS_LAYER, CHIPS_LAYER, SEAMS_LAYER) if name in present
    )
    add_layer_styles(gpkg_path, styles)
    return list(styles)


def _gpkg_layers(gpkg_path: str | os.PathLike[str]) -> list[str]:
    """Names of the feature and attribute tables registered in a GeoPackage."""
    path = Path(gpkg_path)
    if not path.is_file():
        raise InputFileError(f"GeoPackage not found: {path}")
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as con:
            rows = con.execute(
                "SELECT table_name FROM gpkg_contents WHERE data_type IN ('features', 'attributes')"
            ).fetchall()
    except sqlite3.Error as exc:
        raise InputFileError(f"{path} is not a readable GeoPackage: {first_line(exc)}") from exc
    return [row[0] for row in rows]


def _resolve_layers(
    connection: sqlite3.Connection, path: Path, styles: Mapping[str, LayerStyle]
) -> list[tuple[str, str]]:
    """(table name as stored, geometry column) for each styled layer; raises if one is unusable."""
    try:
        contents = connection.execute(
            "SELECT c.table_name, c.data_type, g.column_name, g.geometry_type_name "
            "FROM gpkg_contents c LEFT JOIN gpkg_geometry_columns g "
            "ON lower(g.table_name) = lower(c.table_name) "
            "WHERE c.data_type IN ('features', 'attributes')"
        ).fetchall()
    except sqlite3.DatabaseError as exc:
        raise InputFileError(f"{path} is not a GeoPackage: {first_line(exc)}") from exc
    by_name = {row[0].lower(): row for row in contents}
    resolved = []
    for layer, style in styles.items():
        row = by_name.get(layer.lower())
        if row is None or row[0] == STYLES_TABLE:
            known = ", ".join(sorted(r[0] for r in contents if r[0] != STYLES_TABLE)) or "none"
            raise InputFileError(
                f"GeoPackage {path} has no layer {layer!r} to style (layers: {known})"
            )
        table, _, geometry_column, geometry_name = row
        actual = _geometry_type_of(geometry_name)
        if actual is not None and actual != style.geometry_type:
            raise InputFileError(
                f"layer {table!r} in {path} holds {geometry_name} geometries, "
                f"but its style is for {style.geometry_type}s"
            )
        # Non-spatial layers have no geometry column; OGR reports it as "".
        resolved.append((table, geometry_column or ""))
    return resolved


def _geometry_type_of(gpkg_geometry_name: str | None) -> str | None:
    """QGIS geometry type of a GeoPackage geometry type name; None if unknown or mixed."""
    name = (gpkg_geometry_name or "").upper()
    return next((kind for kind, names in _GPKG_GEOMETRY_NAMES.items() if name in names), None)


def _ensure_styles_table(connection: sqlite3.Connection) -> None:
    """Create and register ``layer_styles`` like QGIS does through GDAL, unless it exists."""
    exists = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type IN ('table', 'view') AND lower(name) = ?",
        (STYLES_TABLE,),
    ).fetchone()
    if exists:
        return
    connection.execute(_CREATE_STYLES_TABLE)
    # GeoPackage 1.2+ non-spatial table, as GDAL registers the layer QGIS creates.
    connection.execute(
        "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, last_change, "
        f"srs_id) VALUES (?, 'attributes', ?, '', {_NOW_SQL}, 0)",
        (STYLES_TABLE, STYLES_TABLE),
    )
    has_ogr_contents = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'gpkg_ogr_contents'"
    ).fetchone()
    if has_ogr_contents:
        # GDAL's cached feature count and the triggers keeping it current (without them GDAL
        # notes the triggers are missing and falls back to counting rows).
        connection.execute(
            "INSERT INTO gpkg_ogr_contents (table_name, feature_count) VALUES (?, 0)",
            (STYLES_TABLE,),
        )
        for event, change in (("insert", "+ 1"), ("delete", "- 1")):
            connection.execute(
                f'CREATE TRIGGER "trigger_{event}_feature_count_{STYLES_TABLE}" '
                f'AFTER {event.upper()} ON "{STYLES_TABLE}" BEGIN '
                f"UPDATE gpkg_ogr_contents SET feature_count = feature_count {change} "
                f"WHERE lower(table_name) = lower('{STYLES_TABLE}'); END"
            )


def _upsert_style(
    connection: sqlite3.Connection, table: str, geometry_column: str, style: LayerStyle
) -> None:
    """Make ``style`` the one default style of ``table``, replacing a style of the same name."""
    key = (table, geometry_column)
    # QGIS keys styles on schema '' + table + geometry column (+ name), case-sensitively.
    layer_filter = "f_table_schema = '' AND f_table_name = ? AND f_geometry_column = ?"
    connection.execute(
        f'UPDATE "{STYLES_TABLE}" SET useAsDefault = 0 '
        f"WHERE {layer_filter} AND coalesce(styleName, '') <> ?",
        (*key, style.name),
    )
    updated = connection.execute(
        f"UPDATE \"{STYLES_TABLE}\" SET styleQML = ?, styleSLD = '', useAsDefault = 1, "
        f"description = ?, update_time = {_NOW_SQL} WHERE {layer_filter} AND styleName = ?",
        (style.qml, style.description, *key, style.name),
    ).rowcount
    if not updated:
        connection.execute(
            f'INSERT INTO "{STYLES_TABLE}" (f_table_catalog, f_table_schema, f_table_name, '
            "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner) "
            "VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '')",
            (*key, style.name, style.qml, style.description),
        )


# --------------------------------------------------------------------------------------------
# QML helpers

_RENDERER_FLAGS = {
    "symbollevels": "0",
    "forceraster": "0",
    "enableorderby": "0",
    "referencescale": "-1",
}


def _qml_document(
    renderer: ET.Element, geometry_type: str, *, display_expression: str | None = None
) -> str:
    """Wrap a renderer in a QGIS QML document with labels off and the layer's geometry type."""
    root = ET.Element(
        "qgis",
        {
            "version": QML_VERSION,
            # What this document holds; QGIS checks the geometry type when Symbology is listed.
            "styleCategories": "LayerConfiguration|Symbology|Labeling|Rendering",
            "labelsEnabled": "0",
            "hasScaleBasedVisibilityFlag": "0",
            "minScale": "100000000",
            "maxScale": "0",
            "readOnly": "0",
        },
    )
    root.append(renderer)
    ET.SubElement(root, "blendMode").text = "0"
    ET.SubElement(root, "featureBlendMode").text = "0"
    ET.SubElement(root, "layerOpacity").text = "1"
    if display_expression:
        ET.SubElement(root, "previewExpression").text = display_expression
    ET.SubElement(root, "layerGeometryType").text = str(_GEOMETRY_TYPE_CODES[geometry_type])
    ET.indent(root, space="  ")
    # ElementTree cannot write a DOCTYPE; QGIS writes exactly this one.
    doctype = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>"
    return f"{doctype}\n{ET.tostring(root, encoding='unicode')}\n"


def _single_symbol_renderer(kind: str, layer_class: str, props: dict[str, str]) -> ET.Element:
    """A ``singleSymbol`` renderer drawing every feature with one symbol layer."""
    renderer = ET.Element("renderer-v2", {"type": "singleSymbol", **_RENDERER_FLAGS})
    _add_symbol(ET.SubElement(renderer, "symbols"), "0", kind, layer_class, props)
    _add_empty_renderer_tail(renderer)
    return renderer


def _add_empty_renderer_tail(renderer: ET.Element) -> None:
    """The empty rotation/size-scale elements QGIS always writes after the symbols."""
    ET.SubElement(renderer, "rotation")
    ET.SubElement(renderer, "sizescale")


def _add_symbol(
    parent: ET.Element, name: str, kind: str, layer_class: str, props: dict[str, str]
) -> None:
    """Append a one-layer ``<symbol>`` (``kind`` is ``fill``, ``line`` or ``marker``)."""
    symbol = ET.SubElement(
        parent,
        "symbol",
        {"type": kind, "name": name, "alpha": "1", "clip_to_extent": "1", "force_rhr": "0"},
    )
    layer = ET.SubElement(
        symbol, "layer", {"class": layer_class, "enabled": "1", "locked": "0", "pass": "0"}
    )
    _add_properties(layer, props)


def _add_properties(element: ET.Element, props: dict[str, str]) -> None:
    """Write ``props`` in both QGIS encodings, so that every QGIS 3.x reads them.

    QGIS >= 3.18 reads an ``<Option type="Map">`` and ignores ``<prop>`` when it finds one; older
    3.x releases only read ``<prop k= v=>`` (QGIS itself wrote both during the transition).
    """
    option_map = ET.SubElement(element, "Option", type="Map")
    for key, value in props.items():
        ET.SubElement(option_map, "Option", name=key, type="QString", value=value)
    for key, value in props.items():
        ET.SubElement(element, "prop", k=key, v=value)


def _add_color_ramp(renderer: ET.Element) -> None:
    """Append :data:`SCORE_RAMP` as the renderer's source gradient ramp."""
    (_, first), *inner, (_, last) = SCORE_RAMP
    stops = ":".join(f"{_num(position)};{_rgba((*rgb, 255))}" for position, rgb in inner)
    ramp = ET.SubElement(renderer, "colorramp", type="gradient", name="[source]")
    _add_properties(
        ramp,
        {
            "color1": _rgba((*first, 255)),
            "color2": _rgba((*last, 255)),
            "discrete": "0",
            "rampType": "gradient",
            "stops": stops,
        },
    )


def _fill_props(
    rgb: tuple[int, int, int], fill_alpha: int, outline_width_mm: float
) -> dict[str, str]:
    """SimpleFill properties: translucent ``rgb`` fill with an opaque ``rgb`` outline."""
    return {
        "color": _rgba((*rgb, fill_alpha)),
        "style": "solid",
        "outline_color": _rgba((*rgb, 255)),
        "outline_style": "solid",
        "outline_width": _num(outline_width_mm),
        "outline_width_unit": "MM",
        "joinstyle": "miter",
        "offset": "0,0",
        "offset_unit": "MM",
    }


def _ramp_color(position: float) -> tuple[int, int, int]:
    """Linear RGB interpolation of :data:`SCORE_RAMP` at ``position`` in 0..1."""
    position = min(max(position, 0.0), 1.0)
    for (start, low), (end, high) in pairwise(SCORE_RAMP):
        if position <= end:
            t = (position - start) / (end - start)
            red, green, blue = (round(a + (b - a) * t) for a, b in zip(low, high, strict=True))
            return red, green, blue
    return SCORE_RAMP[-1][1]


def _rgba(color: Sequence[int]) -> str:
    """QGIS's ``r,g,b,a`` colour encoding."""
    return ",".join(str(int(c)) for c in color)


def _num(value: float) -> str:
    """A number in plain decimal form (``0.5``, ``1``), as QGIS parses it with ``toDouble``."""
    return format(float(value), ".15g")


def _column_ref(name: str) -> str:
    """A QGIS expression referencing column ``name`` (double-quoted, quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'
