"""Which layer of a vector file with several is read as the fields."""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import pytest
import shapely

from fieldseg.vector_io import read_vector


def _layer(path: Path, name: str, n: int) -> None:
    frame = gpd.GeoDataFrame({"n": range(n)},
                             geometry=[shapely.box(i, 0, i + 1, 1) for i in range(n)],
                             crs="EPSG:32633")  # fmt: skip
    frame.to_file(path, layer=name, engine="pyogrio")


def test_the_fields_layer_is_read_where_there_are_several(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "fields.gpkg"
    _layer(path, "chips", 2)
    _layer(path, "fields", 3)
    with caplog.at_level(logging.INFO, logger="fieldseg"):
        assert len(read_vector(path)) == 3
    assert caplog.records == []


def test_a_file_of_other_layers_gives_its_first_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "parcels.gpkg"
    _layer(path, "parcels_2020", 2)
    _layer(path, "parcels_2021", 5)
    assert len(read_vector(path)) == 2
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1
    assert "parcels_2020, parcels_2021 and none is called 'fields'" in warning[0].getMessage()
    assert len(read_vector(path, layer="parcels_2021")) == 5
    assert "(name another as FILE|layername=NAME)" in warning[0].getMessage()


def test_a_layer_is_named_as_qgis_names_it(tmp_path: Path) -> None:
    from fieldseg.errors import InputFileError

    path = tmp_path / "parcels.gpkg"
    _layer(path, "parcels_2020", 2)
    _layer(path, "parcels_2021", 5)
    assert len(read_vector(f"{path}|layername=parcels_2021")) == 5
    assert len(read_vector(f"{path}|layername=parcels_2021|subset=")) == 5  # QGIS's other parts
    with pytest.raises(InputFileError, match=r"has no layer 'parcels_2022'; its layers: parcels_2"):
        read_vector(f"{path}|layername=parcels_2022")
    with pytest.raises(InputFileError, match=r"vector file not found: .*nowhere\.gpkg$"):
        read_vector(f"{tmp_path / 'nowhere.gpkg'}|layername=x")
