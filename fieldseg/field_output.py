"""Write predicted fields batch by batch, atomically, in the format the extension names.

Fields are appended to a GeoPackage as the stitcher finishes them, so no more than one batch is
held in memory. For ``.gpkg`` that GeoPackage (with its spatial index and QGIS default styles)
is the output; ``.parquet`` (GeoParquet 1.0, WKB), ``.fgb`` and ``.geojson`` are converted from
it at the end in streamed Arrow batches. Either way the result appears under its final name
only when complete; an existing file is replaced only with ``overwrite``.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import TracebackType

import geopandas as gpd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pyogrio
from pyproj import CRS

from fieldseg.atomic_output import atomic_file, finish_then_exit
from fieldseg.field_polygons import empty_fields
from fieldseg.vector_io import VECTOR_DRIVERS, check_vector_format, layer_names

#: The fields layer's name (GeoPackage) and geometry type.
FIELDS_LAYER = "fields"
GEOMETRY_TYPE = "Polygon"


class FieldWriter:
    """Append field batches; on a clean exit the complete file takes its final name.

    Args:
        path: the output; its extension picks the format.
        crs: the fields' CRS.
        overwrite: replace an existing output.
        style: add QGIS default styles to a GeoPackage output.
    """

    def __init__(
        self, path: str | os.PathLike[str], crs: CRS, *, overwrite: bool, style: bool = True
    ) -> None:
        self.path = Path(path)
        self.format = check_vector_format(self.path)
        self.crs = crs
        self.style = style
        self.n_fields = 0
        self._atomic = atomic_file(self.path, overwrite=overwrite)
        self._tmp: Path | None = None
        self._staging: Path | None = None
        self._extra_layers: list[str] = []

    def __enter__(self) -> FieldWriter:
        self._tmp = self._atomic.__enter__()
        # the staging GeoPackage is the output itself for .gpkg; else a side file that the
        # atomic writer removes with the temporary output
        self._staging = self._tmp if self.format == ".gpkg" else Path(f"{self._tmp}.staging.gpkg")
        return self

    def write(self, fields: gpd.GeoDataFrame) -> None:
        """Append fields (without ``field_id``: it is numbered here, from 1)."""
        if len(fields) == 0:
            return
        fields = fields.copy()
        fields.insert(0, "field_id", range(self.n_fields + 1, self.n_fields + len(fields) + 1))
        self._append(fields, FIELDS_LAYER)
        self.n_fields += len(fields)

    def write_layer(self, name: str, frame: gpd.GeoDataFrame) -> None:
        """Add another layer (GeoPackage output only; e.g. the debug layers)."""
        if self.format != ".gpkg":
            return
        assert self._staging is not None
        kind = str(frame.geom_type.iloc[0]) if len(frame) else "Unknown"
        pyogrio.write_dataframe(frame, self._staging, layer=name, driver="GPKG",
                                geometry_type=kind)  # fmt: skip
        self._extra_layers.append(name)

    def _append(self, frame: gpd.GeoDataFrame, layer: str) -> None:
        assert self._staging is not None
        exists = self._staging.exists() and layer in layer_names(self._staging)
        pyogrio.write_dataframe(frame, self._staging, layer=layer, driver="GPKG",
                                geometry_type=GEOMETRY_TYPE, append=exists)  # fmt: skip

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        return finish_then_exit(self._atomic, self._finish, kind, error, traceback)

    def _finish(self) -> None:
        assert self._staging is not None and self._tmp is not None
        if not (self._staging.exists() and FIELDS_LAYER in layer_names(self._staging)):
            frame = empty_fields(self.crs)
            frame.insert(0, "field_id", pd.Series(dtype="int64"))
            self._append(frame, FIELDS_LAYER)
        if self.format == ".gpkg":
            if self.style:
                from fieldseg.qgis_style import add_default_styles

                add_default_styles(self._staging)
            return
        if self.format == ".parquet":
            _gpkg_to_geoparquet(self._staging, self._tmp, self.crs)
        else:
            with pyogrio.open_arrow(self._staging, layer=FIELDS_LAYER, use_pyarrow=True) as (
                meta,
                reader,
            ):
                # the layer is named for the output, not the temporary file written first
                pyogrio.write_arrow(reader, self._tmp, driver=VECTOR_DRIVERS[self.format],
                                    layer=self.path.stem, crs=meta["crs"],
                                    geometry_type=GEOMETRY_TYPE,
                                    geometry_name=meta["geometry_name"] or "geometry")  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            self._staging.unlink()


def _gpkg_to_geoparquet(source: Path, target: Path, crs: CRS) -> None:
    """Stream the fields layer into a GeoParquet 1.0 file (WKB geometry named ``geometry``)."""
    geo = {
        "version": "1.0.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [GEOMETRY_TYPE],
                "crs": CRS.from_user_input(crs).to_json_dict(),
            }
        },
    }
    writer: pq.ParquetWriter | None = None
    with pyogrio.open_arrow(source, layer=FIELDS_LAYER, use_pyarrow=True) as (meta, reader):
        geometry_name = meta["geometry_name"] or "wkb_geometry"
        for batch in reader:
            table = pa.Table.from_batches([batch])
            names = ["geometry" if n == geometry_name else n for n in table.column_names]
            table = table.rename_columns(names)
            if writer is None:
                metadata = {**(table.schema.metadata or {}), b"geo": json.dumps(geo).encode()}
                writer = pq.ParquetWriter(target, table.schema.with_metadata(metadata))
            writer.write_table(table.cast(writer.schema))
        if writer is None:  # no batch at all: an empty table with the layer's schema
            schema = reader.schema
            names = ["geometry" if n == geometry_name else n for n in schema.names]
            empty = pa.Table.from_batches([], schema=schema).rename_columns(names)
            metadata = {**(empty.schema.metadata or {}), b"geo": json.dumps(geo).encode()}
            writer = pq.ParquetWriter(target, empty.schema.with_metadata(metadata))
    writer.close()
