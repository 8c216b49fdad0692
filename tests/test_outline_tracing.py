"""The compiled outline tracer: rasterio's ``shapes`` polygons, and noded ones on request."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio import features

from fieldseg.field_polygons import _noded
from fieldseg.outline_tracing import trace_outlines


def shapes_polygons(
    labels: np.ndarray, traced: np.ndarray, row_offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """rasterio's polygons of the same regions, as shapely polygons and values."""
    out = [
        (shapely.geometry.shape(geometry), int(value))
        for geometry, value in features.shapes(
            labels.astype(np.int32),
            mask=traced,
            connectivity=4,
            transform=Affine.translation(0, row_offset),
        )
    ]
    polygons = np.array([p for p, _ in out], dtype=object)
    return polygons, np.array([v for _, v in out], np.int64)


def canonical(polygons: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Polygons and values in an order that does not depend on the tracer."""
    bounds = shapely.bounds(polygons) if len(polygons) else np.zeros((0, 4))
    order = np.lexsort((bounds[:, 1], bounds[:, 0], shapely.area(polygons), values))
    return polygons[order], values[order]


def assert_same_as_shapes(labels: np.ndarray, traced: np.ndarray, row_offset: int = 0) -> None:
    ours, our_values = canonical(*trace_outlines(labels, traced, row_offset=row_offset))
    theirs, their_values = canonical(*shapes_polygons(labels, traced, row_offset))
    np.testing.assert_array_equal(our_values, their_values)
    assert shapely.equals(ours, theirs).all()
    assert shapely.is_valid(ours).all()
    # the same vertices: one where an outline turns, none in a straight run
    np.testing.assert_array_equal(
        shapely.get_num_coordinates(ours), shapely.get_num_coordinates(theirs)
    )
    np.testing.assert_array_equal(
        shapely.get_num_interior_rings(ours), shapely.get_num_interior_rings(theirs)
    )


label_images = arrays(
    np.int64,
    st.tuples(st.integers(1, 14), st.integers(1, 14)),
    elements=st.integers(-1, 3),
)


@settings(max_examples=300, deadline=None)
@given(labels=label_images, background=st.booleans(), row_offset=st.integers(0, 50))
def test_same_polygons_as_rasterio_shapes(
    labels: np.ndarray, background: bool, row_offset: int
) -> None:
    # traced: fields only, or fields and the background between them (as simplifying does)
    traced = labels >= 0 if background else labels > 0
    assert_same_as_shapes(labels, traced, row_offset)


@settings(max_examples=300, deadline=None)
@given(labels=label_images)
def test_nodes_put_every_outlines_vertices_on_its_neighbours(labels: np.ndarray) -> None:
    traced = labels > 0
    noded, values = canonical(*trace_outlines(labels, traced, nodes=True))
    plain, plain_values = canonical(*trace_outlines(labels, traced))
    np.testing.assert_array_equal(values, plain_values)
    assert shapely.equals(noded, plain).all()
    # exactly the vertices that walking every edge for the others' corners gives
    expected = _noded(plain)
    np.testing.assert_array_equal(
        shapely.get_num_coordinates(noded), shapely.get_num_coordinates(expected)
    )
    assert shapely.equals_exact(shapely.normalize(noded), shapely.normalize(expected)).all()


def test_holes_and_fields_inside_holes_match_shapes() -> None:
    labels = np.zeros((20, 24), np.int32)
    labels[1:12, 1:12] = 1
    labels[4:7, 4:7] = 0  # a hole
    labels[8:10, 8:10] = 2  # a field inside another's hole
    labels[7:11, 7:11][labels[7:11, 7:11] == 1] = 0
    labels[14:18, 2:20] = 3
    labels[15:17, 10] = 0  # two holes side by side
    labels[15:17, 14] = 0
    labels[2:6, 15:22] = 4
    labels[3, 18] = 4
    assert_same_as_shapes(labels, labels > 0, row_offset=7)
    polygons, values = trace_outlines(labels, labels > 0)
    holes = shapely.get_num_interior_rings(polygons)
    assert dict(zip(values.tolist(), holes.tolist(), strict=True)) == {1: 2, 2: 0, 3: 2, 4: 0}


def test_a_ring_that_touches_itself_becomes_a_shell_and_a_hole() -> None:
    # field 1 wraps pixel (2, 2), which meets the outside only at a corner
    labels = np.array(
        [
            [0, 0, 0, 0, 0],
            [0, 1, 1, 1, 0],
            [0, 1, 0, 1, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ]
    )
    polygons, values = trace_outlines(labels, labels > 0)
    assert values.tolist() == [1]
    (polygon,) = polygons
    assert shapely.is_valid(polygon)
    assert len(polygon.interiors) == 1
    assert polygon.area == 7
    assert shapely.box(2, 2, 3, 3).equals(shapely.Polygon(polygon.interiors[0]))


def test_regions_of_one_value_touching_at_a_corner_are_two_polygons() -> None:
    labels = np.array([[1, 0], [0, 1]])
    polygons, values = trace_outlines(labels, labels > 0)
    assert values.tolist() == [1, 1]
    assert sorted(shapely.area(polygons).tolist()) == [1.0, 1.0]


def test_a_t_junction_is_a_vertex_of_the_straight_side() -> None:
    # field 1's right edge runs straight past the point where fields 2 and 3 meet
    labels = np.array([[1, 2], [1, 3]])
    polygons, values = trace_outlines(labels, labels > 0, nodes=True)
    field_1 = polygons[values.tolist().index(1)]
    assert (1.0, 1.0) in {tuple(p) for p in shapely.get_coordinates(field_1).tolist()}
    plain, plain_values = trace_outlines(labels, labels > 0)
    assert (1.0, 1.0) not in {
        tuple(p) for p in shapely.get_coordinates(plain[plain_values.tolist().index(1)]).tolist()
    }


def test_nothing_traced_gives_no_polygons() -> None:
    polygons, values = trace_outlines(np.zeros((3, 4), np.int32), np.zeros((3, 4), bool))
    assert len(polygons) == 0 and len(values) == 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="2-D integer"):
        trace_outlines(np.zeros((3, 4), np.float32), np.ones((3, 4), bool))
    with pytest.raises(ValueError, match="shape"):
        trace_outlines(np.zeros((3, 4), np.int32), np.ones((4, 3), bool))
