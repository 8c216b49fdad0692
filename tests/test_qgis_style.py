"""QGIS default styles embedded in a GeoPackage's ``layer_styles`` table."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from contextlib import closing
from itertools import pairwise
from pathlib import Path

import geopandas as gpd
import pyogrio
import pytest
from geopandas.testing import assert_geodataframe_equal
from shapely.geometry import LineString, box

from fieldseg.errors import ConfigError, InputFileError
from fieldseg.qgis_style import (
    STYLES_TABLE,
    LayerStyle,
    add_default_styles,
    add_layer_styles,
    chips_style,
    default_styles,
    fields_style,
    seams_style,
)

CRS = "EPSG:32633"

# (name, declared type) of every column QGIS's layer_styles table has, as GDAL creates it.
QGIS_COLUMNS = [
    ("id", "INTEGER"),
    ("f_table_catalog", "TEXT(256)"),
    ("f_table_schema", "TEXT(256)"),
    ("f_table_name", "TEXT(256)"),
    ("f_geometry_column", "TEXT(256)"),
    ("styleName", "TEXT(30)"),
    ("styleQML", "TEXT"),
    ("styleSLD", "TEXT"),
    ("useAsDefault", "BOOLEAN"),
    ("description", "TEXT"),
    ("owner", "TEXT(30)"),
    ("ui", "TEXT(30)"),
    ("update_time", "DATETIME"),
]


def _fields_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {
            "field_id": [1, 2],
            "score": [0.42, 0.93],
            "area_m2": [10_000.0, 40_000.0],
            "perimeter_m": [400.0, 800.0],
            "n_chips": [1, 2],
            "seam_merged": [False, True],
            "touches_edge_or_nodata": [False, False],
            "model": ["unet-r34", "unet-r34"],
            "class": ["field", "field"],
        },
        geometry=[
            box(500_000, 5_799_900, 500_100, 5_800_000),
            box(500_200, 5_799_800, 500_400, 5_800_000),
        ],
        crs=CRS,
    )


def _chips_frame() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"chip_id": [0, 1]},
        geometry=[
            box(500_000, 5_799_000, 501_280, 5_800_000),
            box(500_960, 5_799_000, 502_240, 5_800_000),
        ],
        crs=CRS,
    )


@pytest.fixture
def gpkg(tmp_path: Path) -> Path:
    """A closed GeoPackage as ``fieldseg predict`` writes it: ``fields`` plus a ``chips`` layer."""
    path = tmp_path / "fields.gpkg"
    pyogrio.write_dataframe(_fields_frame(), path, layer="fields", driver="GPKG")
    pyogrio.write_dataframe(_chips_frame(), path, layer="chips", driver="GPKG")
    return path


def _styled(path: Path) -> Path:
    add_layer_styles(path, {"fields": fields_style(), "chips": chips_style()})
    return path


def _rows(path: Path) -> list[sqlite3.Row]:
    with closing(sqlite3.connect(path)) as con:
        con.row_factory = sqlite3.Row
        return con.execute(f"SELECT * FROM {STYLES_TABLE} ORDER BY f_table_name").fetchall()


def _qml(path: Path, layer: str) -> ET.Element:
    (row,) = [r for r in _rows(path) if r["f_table_name"] == layer and r["useAsDefault"] == 1]
    assert row["styleQML"].startswith("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>")
    return ET.fromstring(row["styleQML"])


def _symbol_props(symbol: ET.Element) -> dict[str, str]:
    """Properties of a one-layer symbol, checking both encodings agree."""
    (layer,) = symbol.findall("layer")
    options = {o.get("name"): o.get("value") for o in layer.find("Option[@type='Map']")}
    props = {p.get("k"): p.get("v") for p in layer.findall("prop")}
    assert options == props
    return options


def test_table_has_qgis_schema_and_is_registered_like_gdal_does(gpkg: Path) -> None:
    _styled(gpkg)
    with closing(sqlite3.connect(gpkg)) as con:
        columns = [(row[1], row[2]) for row in con.execute(f"PRAGMA table_info({STYLES_TABLE})")]
        contents = con.execute(
            "SELECT data_type, identifier, srs_id FROM gpkg_contents WHERE table_name = ?",
            (STYLES_TABLE,),
        ).fetchall()
        feature_count = con.execute(
            "SELECT feature_count FROM gpkg_ogr_contents WHERE table_name = ?", (STYLES_TABLE,)
        ).fetchone()
    assert columns == QGIS_COLUMNS
    assert contents == [("attributes", STYLES_TABLE, 0)]
    assert feature_count == (2,)  # kept by the triggers GDAL expects


def test_one_default_row_per_layer_keyed_the_way_qgis_looks_it_up(gpkg: Path) -> None:
    _styled(gpkg)
    rows = _rows(gpkg)
    assert [(r["f_table_name"], r["f_geometry_column"], r["useAsDefault"]) for r in rows] == [
        ("chips", "geom", 1),
        ("fields", "geom", 1),
    ]
    # QGIS matches f_table_schema = '' literally: NULL would hide the style.
    assert {(r["f_table_catalog"], r["f_table_schema"], r["styleName"]) for r in rows} == {
        ("", "", "fieldseg")
    }
    assert all(r["update_time"] for r in rows)


def test_gdal_answers_qgis_default_style_query(gpkg: Path) -> None:
    """The attribute filter QGIS's OGR provider sets on layer_styles, run through GDAL."""
    _styled(gpkg)
    where = (
        "f_table_schema='' AND f_table_name='fields' AND f_geometry_column='geom' "
        "ORDER BY CASE WHEN useAsDefault THEN 1 ELSE 2 END,update_time DESC LIMIT 1"
    )
    found = pyogrio.read_dataframe(gpkg, layer=STYLES_TABLE, where=where)
    assert len(found) == 1
    assert found["styleQML"].iloc[0] == fields_style().qml
    assert bool(found["useAsDefault"].iloc[0]) is True


def test_fields_qml_is_graduated_on_score_covering_zero_to_one(gpkg: Path) -> None:
    root = _qml(_styled(gpkg), "fields")
    assert root.tag == "qgis"
    assert root.get("version", "").startswith("3.")
    assert "Symbology" in root.get("styleCategories", "").split("|")
    assert root.get("labelsEnabled") == "0"
    assert root.findtext("previewExpression") == '"field_id"'
    assert root.findtext("layerGeometryType") == "2"  # polygon

    renderer = root.find("renderer-v2")
    assert renderer.get("type") == "graduatedSymbol"
    assert renderer.get("attr") == "score"
    bounds = [(float(r.get("lower")), float(r.get("upper"))) for r in renderer.iter("range")]
    assert len(bounds) >= 4
    assert bounds[0][0] == 0.0 and bounds[-1][1] == 1.0
    assert all(lower < upper for lower, upper in bounds)
    assert all(prev[1] == nxt[0] for prev, nxt in pairwise(bounds))

    symbols = {s.get("name"): s for s in renderer.find("symbols").findall("symbol")}
    assert {r.get("symbol") for r in renderer.iter("range")} == set(symbols)
    fills, outlines = [], []
    for symbol in symbols.values():
        assert symbol.get("type") == "fill"
        props = _symbol_props(symbol)
        assert props["style"] == "solid" and props["outline_style"] == "solid"
        assert 0.3 <= float(props["outline_width"]) <= 0.5 and props["outline_width_unit"] == "MM"
        fills.append([int(c) for c in props["color"].split(",")])
        outlines.append([int(c) for c in props["outline_color"].split(",")])
    ordered = [fills[int(r.get("symbol"))] for r in renderer.iter("range")]
    assert all(60 <= alpha <= 128 for *_, alpha in ordered)  # see-through fill
    assert all(alpha == 255 for *_, alpha in outlines)
    low, high = ordered[0], ordered[-1]
    assert low[0] > low[1]  # low scores: red/orange
    assert high[1] > high[0] and high[1] > high[2]  # high scores: green
    assert renderer.find("colorramp[@name='[source]']") is not None


def test_chips_and_seams_qml() -> None:
    chips = ET.fromstring(chips_style().qml)
    assert chips.find("renderer-v2").get("type") == "singleSymbol"
    props = _symbol_props(chips.find("renderer-v2/symbols/symbol"))
    assert props["style"] == "no" and props["outline_style"] == "dash"
    red, green, blue, _ = (int(c) for c in props["outline_color"].split(","))
    assert red == green == blue  # grey
    assert float(props["outline_width"]) <= 0.3

    seams = ET.fromstring(seams_style().qml)
    assert seams.findtext("layerGeometryType") == "1"  # line
    symbol = seams.find("renderer-v2/symbols/symbol")
    assert symbol.get("type") == "line"
    props = _symbol_props(symbol)
    red, green, blue, alpha = (int(c) for c in props["line_color"].split(","))
    assert red > 200 and green < 60 and blue < 60 and alpha == 255
    assert float(props["line_width"]) <= 0.5


def test_layers_still_read_unchanged(gpkg: Path) -> None:
    _styled(gpkg)
    layers = {name: geometry for name, geometry in pyogrio.list_layers(gpkg)}
    assert layers == {"fields": "Polygon", "chips": "Polygon", STYLES_TABLE: None}
    fields = pyogrio.read_dataframe(gpkg, layer="fields")
    assert_geodataframe_equal(fields, _fields_frame(), check_dtype=False)
    chips = pyogrio.read_dataframe(gpkg, layer="chips")
    assert_geodataframe_equal(chips, _chips_frame(), check_dtype=False)
    assert pyogrio.read_info(gpkg, layer=STYLES_TABLE)["features"] == 2


def test_running_twice_replaces_rather_than_duplicates(gpkg: Path) -> None:
    _styled(gpkg)
    first = {r["f_table_name"]: r["id"] for r in _rows(gpkg)}
    add_layer_styles(gpkg, {"fields": fields_style(breaks=(0.0, 0.25, 0.5, 0.75, 1.0))})
    _styled(gpkg)
    rows = _rows(gpkg)
    assert {r["f_table_name"]: r["id"] for r in rows} == first
    assert pyogrio.read_info(gpkg, layer=STYLES_TABLE)["features"] == 2
    assert len(list(_qml(gpkg, "fields").iter("range"))) == 6  # the default breaks again


def test_other_styles_of_a_layer_are_kept_but_no_longer_default(gpkg: Path) -> None:
    _styled(gpkg)
    with closing(sqlite3.connect(gpkg)) as con, con:
        con.execute(
            f"INSERT INTO {STYLES_TABLE} (f_table_catalog, f_table_schema, f_table_name, "
            "f_geometry_column, styleName, styleQML, useAsDefault) "
            "VALUES ('', '', 'fields', 'geom', 'mine', '<qgis/>', 1)"
        )
        con.execute(f"UPDATE {STYLES_TABLE} SET useAsDefault = 0 WHERE styleName = 'fieldseg'")
    _styled(gpkg)
    fields_rows = {
        r["styleName"]: r["useAsDefault"] for r in _rows(gpkg) if r["f_table_name"] == "fields"
    }
    assert fields_rows == {"fieldseg": 1, "mine": 0}


def test_missing_layer_is_a_clear_error_and_writes_nothing(gpkg: Path) -> None:
    with pytest.raises(InputFileError, match=r"no layer 'seams'.*chips, fields"):
        add_layer_styles(gpkg, {"fields": fields_style(), "seams": seams_style()})
    with closing(sqlite3.connect(gpkg)) as con:
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master")}
    assert STYLES_TABLE not in tables


def test_style_of_another_geometry_type_is_refused(gpkg: Path) -> None:
    with pytest.raises(InputFileError, match=r"POLYGON geometries.*for lines"):
        add_layer_styles(gpkg, {"chips": seams_style()})


def test_missing_or_foreign_file_is_an_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gpkg"
    with pytest.raises(InputFileError, match="not found"):
        add_layer_styles(missing, {"fields": fields_style()})
    assert not missing.exists()
    other = tmp_path / "notes.gpkg"
    other.write_text("not a database at all, just text padding it out " * 20)
    with pytest.raises(InputFileError):
        add_layer_styles(other, {"fields": fields_style()})


def test_add_default_styles_styles_the_fieldseg_layers_present(tmp_path: Path) -> None:
    path = tmp_path / "debug.gpkg"
    pyogrio.write_dataframe(_fields_frame(), path, layer="fields", driver="GPKG")
    seams = gpd.GeoDataFrame(
        {"seam_id": [0]},
        geometry=[LineString([(500_960, 5_799_000), (500_960, 5_800_000)])],
        crs=CRS,
    )
    pyogrio.write_dataframe(seams, path, layer="seams", driver="GPKG")
    assert sorted(add_default_styles(path)) == ["fields", "seams"]
    assert _qml(path, "seams").find("renderer-v2").get("type") == "singleSymbol"
    assert set(default_styles(["fields", "other"])) == {"fields"}


def test_invalid_style_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        fields_style(breaks=(0.5, 0.5, 1.0))
    with pytest.raises(ConfigError):
        fields_style(breaks=(0.5,))
    with pytest.raises(ConfigError):
        fields_style(fill_alpha=300)
    with pytest.raises(ConfigError):
        LayerStyle(qml="<qgis/>", geometry_type="surface")
    with pytest.raises(ConfigError):
        LayerStyle(qml="<qgis/>", geometry_type="line", name="x" * 31)
