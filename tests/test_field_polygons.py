"""Tracing stitched fields: exact outlines noded into a coverage, also across batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import shapely
from affine import Affine
from conftest import overlapping_pairs
from pyproj import CRS

from fieldseg.field_polygons import FieldTracer
from fieldseg.stitching import FieldBatch

TRANSFORM = Affine(10, 0, 500_000, 0, -10, 5_800_000)


def _batch(labels: np.ndarray, row_offset: int, later_from: int | None) -> FieldBatch:
    k = int(labels.max())
    return FieldBatch(row_offset=row_offset, labels=labels, score=np.ones(k, np.float32),
                      class_id=np.ones(k, np.int64), n_chips=np.ones(k, np.int32),
                      seam_merged=np.zeros(k, bool), touches_edge_or_nodata=np.zeros(k, bool),
                      later_from=later_from)  # fmt: skip


def _tracer() -> FieldTracer:
    return FieldTracer(TRANSFORM, CRS.from_epsg(32633), categories=["field"], model="m")


def _pixel_vertices(polygon: shapely.Polygon) -> set[tuple[int, int]]:
    """(column, row) of every vertex of a polygon's rings."""
    xy = ~TRANSFORM * shapely.get_coordinates(polygon).T
    return {(round(x), round(y)) for x, y in zip(*xy, strict=True)}


def test_a_corner_on_a_neighbours_edge_becomes_a_vertex_of_both() -> None:
    """A strip along the top; below it two fields meet at column 4, and a field in the hole
    of a ring field is cut in two at column 14: every meeting point is a vertex on both sides."""
    labels = np.zeros((10, 20), np.int32)
    labels[0:2, 0:8] = 1  # the strip
    labels[2:6, 0:4] = 2
    labels[2:6, 4:8] = 3  # 2 and 3 meet at (4, 2), halfway along the strip's bottom edge
    labels[1:9, 10:18] = 4  # a ring field ...
    labels[3:7, 12:14] = 5  # ... whose hole holds two fields meeting at column 14
    labels[3:7, 14:16] = 6
    fields = _tracer().trace(_batch(labels, 0, None))
    polygons = fields.geometry.values
    assert len(fields) == 6 and shapely.coverage_is_valid(polygons)
    assert (4, 2) in _pixel_vertices(polygons[0])
    ring = polygons[3]
    assert len(ring.interiors) == 1
    assert {(14, 3), (14, 7)} <= _pixel_vertices(ring)
    # the same areas and outlines as the bare traced pixels, only more vertices
    assert fields["area_m2"].tolist() == [1600.0, 1600.0, 1600.0, 4800.0, 800.0, 800.0]
    assert shapely.equals(polygons, shapely.simplify(polygons, 0.0)).all()
    assert overlapping_pairs(fields.to_crs("EPSG:4326")) == 0
    # the right-hand rule: exteriors counter-clockwise, the hole clockwise
    assert shapely.is_ccw(shapely.get_exterior_ring(polygons)).all()
    assert not shapely.is_ccw(ring.interiors[0])


def test_a_field_waits_for_the_later_neighbour_that_may_touch_it() -> None:
    """Batch 1 ends a field on the row above where batch 2's fields may begin: it is held
    back, noded with the two fields that meet under it, and handed over with them."""
    tracer = _tracer()
    first = np.zeros((4, 12), np.int32)
    first[0:1, 0:12] = 1  # ends two rows above row 3: final
    first[1:3, 0:12] = 2  # ends on row 2, right above row 3
    out = [tracer.trace(_batch(first, 0, later_from=3))]
    assert len(out[0]) == 1  # field 2 is held
    second = np.full((5, 12), -1, np.int32)  # row 2 (field 2, handed over) and rows 3-6
    second[1:5, 0:5] = 1
    second[1:5, 5:12] = 2
    out.append(tracer.trace(_batch(second, 2, later_from=None)))
    assert len(out[1]) == 3
    fields = pd.concat(out)
    assert shapely.coverage_is_valid(fields.geometry.values)
    assert (5, 3) in _pixel_vertices(fields.geometry.values[1])
    assert len(tracer.finish()) == 0


def test_held_fields_are_handed_over_when_tracing_finishes() -> None:
    tracer = _tracer()
    labels = np.zeros((3, 6), np.int32)
    labels[1:3, 1:5] = 1
    assert len(tracer.trace(_batch(labels, 0, later_from=3))) == 0
    (held,) = tracer.finish().geometry.values
    assert held.area == 8 * 100.0 and len(tracer.finish()) == 0
