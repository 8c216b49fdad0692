"""Stitched fields -> georeferenced polygons with their attributes.

Polygons are traced on the pixel grid (:mod:`fieldseg.outline_tracing`, 4-connected, the
polygons of ``rasterio.features.shapes``) through the predicted area's transform, so they are
exact and neighbours share their edges; optionally they are simplified as a coverage, so that
neighbours still share their (simplified) edges. Either way they are noded: shared edges have
the same vertices on both sides, a valid coverage that reprojects without slivers (the tracer
nodes the fields of one batch as it walks their outlines; :func:`_noded` adds the vertices of
fields traced in other batches). A field whose
pixels fall apart into several pieces keeps its largest piece; the others are dropped (they
are left to no field). Areas and perimeters are true metres: planar in a projected CRS (scaled
by its unit), on the ellipsoid in a geographic one. The output schema is in docs/formats.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import geopandas as gpd
import numba
import numpy as np
import pandas as pd
import shapely
from pyproj import CRS, Geod
from rasterio.transform import Affine
from shapely.geometry.polygon import orient

from fieldseg.outline_tracing import trace_outlines
from fieldseg.stitching import FieldBatch

#: Rounds of simplification that take spoilt small fields out before all stay exact.
MAX_SIMPLIFY_ROUNDS = 4
#: Output columns in order (``field_id`` is given by the writer).
FIELD_COLUMNS = ("field_id", "score", "area_m2", "perimeter_m", "n_chips", "seam_merged",
                 "touches_edge_or_nodata", "model", "class")  # fmt: skip


class FieldTracer:
    """Trace batches of stitched fields into polygons with their attributes (no ``field_id``).

    Args:
        transform: the predicted area's transform (its row 0 is the top of the area).
        crs: the scene CRS.
        categories: class names by category id - 1.
        model: the ``model`` attribute (family and checkpoint hash).
        min_area_m2: smaller fields are dropped.
        simplify_m: simplification tolerance in metres (0: exact pixel edges). Edges are
            simplified as a coverage (``shapely.coverage_simplify``), each shared edge once for
            both its sides, so simplifying opens no gap and makes no overlap between neighbours.
            Edges between fields finished in different batches stay exact on both sides; a
            field is also kept off any earlier field where both were simplified into a
            background strip between them.
        pixel_m: the pixel side in metres (default: the transform's, for a metric CRS).
    """

    def __init__(
        self,
        transform: Affine,
        crs: CRS,
        *,
        categories: Sequence[str],
        model: str,
        min_area_m2: float = 0.0,
        simplify_m: float = 0.0,
        pixel_m: float | None = None,
    ) -> None:
        self.transform = transform
        self.crs = CRS.from_user_input(crs)  # once: frames are made batch by batch
        square = transform.b == 0 and transform.d == 0 and abs(transform.a) == abs(transform.e)
        self._pixel_side_m = (
            abs(transform.a) * _metres_per_unit(self.crs)
            if square and not self.crs.is_geographic
            else None
        )  # pixels measured as they are, not through their world coordinates
        self.categories = np.asarray(list(categories) or ["field"], dtype=object)
        self.model = model
        self.min_area_m2 = min_area_m2
        self.pixel_m = pixel_m or abs(transform.a)
        self.simplify_px = simplify_m / self.pixel_m if simplify_m > 0 else 0.0
        self._recent = np.zeros(0, dtype=object)  # simplified fields near the moving window
        self._recent_bottom = np.zeros(0)  # their lowest pixel row
        self._held = np.zeros(0, dtype=object)  # fields a later field may still touch
        self._held_bottom = np.zeros(0)  # their pixels' lowest line
        self._held_frame = _empty_attributes()

    def trace(self, batch: FieldBatch) -> gpd.GeoDataFrame:
        """The polygons of one batch (see :class:`FieldBatch`) that are ready to be written.

        Outlines are noded: a field that a later batch's field may still touch (its pixels
        reach the row above ``batch.later_from``) is held back until that neighbour is traced,
        so that each gets the other's vertices on their shared edge. :meth:`finish` hands
        over the fields still held.
        """
        polygons, frame, bottom = self._traced(batch)
        # exact outlines come noded among the batch's fields; simplified ones are walked
        walk = np.full(len(polygons), bool(self.simplify_px))
        if len(self._held):
            # held fields are noded among themselves already: only those the new ones touch,
            # and the new ones touching them, can gain vertices
            touched = np.zeros(len(self._held), bool)
            if len(polygons):
                tree = shapely.STRtree(self._held)
                new, old = tree.query(polygons, predicate="intersects")
                touched[old] = True
                walk[new] = True
            walk = np.concatenate([touched, walk])
            polygons = np.concatenate([self._held, polygons])
            frame = pd.concat([self._held_frame, frame], ignore_index=True)
            bottom = np.concatenate([self._held_bottom, bottom])
        polygons = _noded(polygons, walk)
        ready = np.ones(len(polygons), bool) if batch.later_from is None else (
            bottom < batch.later_from
        )  # fmt: skip
        self._held, self._held_bottom = polygons[~ready], bottom[~ready]
        self._held_frame = frame[~ready].reset_index(drop=True)
        return self._georeferenced(polygons[ready], frame[ready].reset_index(drop=True))

    def finish(self) -> gpd.GeoDataFrame:
        """The fields still held back (call once the last batch is traced)."""
        out = self._georeferenced(self._held, self._held_frame)
        self._held, self._held_bottom = np.zeros(0, dtype=object), np.zeros(0)
        self._held_frame = _empty_attributes()
        return out

    def _traced(self, batch: FieldBatch) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
        """The batch's fields in area pixel coordinates, their attributes and lowest lines.

        The lowest line (the bottom edge of the field's lowest pixel row) is its pixels', also
        where simplifying moved the outline.
        """
        polygons, ids, exact = self._pieces(batch)
        if len(polygons) == 0:
            return polygons, _empty_attributes(), np.zeros(0)
        areas = shapely.area(exact)
        order = np.lexsort((-areas, ids))  # per field, its largest piece first
        largest = order[np.r_[True, ids[order][1:] != ids[order][:-1]]]
        polygons, ids, exact = polygons[largest], ids[largest], exact[largest]
        if self.simplify_px:
            polygons = self._off_earlier_fields(polygons, batch.row_offset)
        area_m2, perimeter_m = self._measured(polygons)
        # the minimum area applies to the field's pixels: simplifying never drops a field
        size_m2 = self._measured(exact)[0] if self.simplify_px else area_m2
        keep = (size_m2 >= self.min_area_m2) & (area_m2 > 0)
        polygons, ids, bottom = polygons[keep], ids[keep], shapely.bounds(exact[keep])[:, 3]
        class_index = np.clip(batch.class_id[ids] - 1, 0, len(self.categories) - 1)
        frame = pd.DataFrame({
            "score": batch.score[ids].astype(np.float64).round(4),
            "area_m2": area_m2[keep].round(2),
            "perimeter_m": perimeter_m[keep].round(2),
            "n_chips": batch.n_chips[ids].astype(np.int32),
            "seam_merged": batch.seam_merged[ids],
            "touches_edge_or_nodata": batch.touches_edge_or_nodata[ids],
            "model": self.model,
            "class": self.categories[class_index],
        })  # fmt: skip
        return polygons, frame, bottom

    def _georeferenced(self, polygons: np.ndarray, frame: pd.DataFrame) -> gpd.GeoDataFrame:
        """Pixel-coordinate polygons and their attributes as a frame in the scene CRS.

        Rings follow the right-hand rule (RFC 7946): exteriors counter-clockwise, holes
        clockwise, whatever way the tracer walked and the transform turns them.
        """
        if len(polygons) == 0:
            return empty_fields(self.crs)
        world = shapely.orient_polygons(shapely.transform(polygons, self._to_world))
        return gpd.GeoDataFrame(frame, geometry=world, crs=self.crs)

    def _pieces(self, batch: FieldBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch's fields in area pixel coordinates.

        Returns their pieces (simplified if asked), each piece's field index, and the pieces'
        exact pixel outlines.
        """
        labels = batch.labels
        # simplified, the batch's fields and the land between them are one coverage; fields
        # of other batches (-1) are left out, so edges against them are its fixed boundary
        mask = labels >= 0 if self.simplify_px else labels > 0
        polygons, values = trace_outlines(
            labels, mask, row_offset=batch.row_offset, nodes=not self.simplify_px
        )
        values = values - 1
        exact = np.asarray(polygons, dtype=object)
        simple = self._simplified(exact, values >= 0) if self.simplify_px and len(exact) else exact
        fields = values >= 0
        return simple[fields], values[fields], exact[fields]

    def _simplified(self, polygons: np.ndarray, is_field: np.ndarray) -> np.ndarray:
        """The batch's coverage simplified, small fields kept whole (pixel coordinates).

        A field that simplification would spoil (invalid, empty, less than half its area left,
        or fallen under the minimum area: a 5 px field becomes a sliver and is then dropped,
        leaving a hole) keeps its exact pixel edges: it is taken out of the coverage and the
        rest simplified again, so its edges are the coverage's fixed boundary, shared exactly
        with its neighbours. Repeated until no field is spoilt.
        """
        noded = shapely.transform(shapely.segmentize(polygons, 1.0), np.rint)  # all corners
        exact = shapely.area(polygons)
        min_area_px = self.min_area_m2 / self.pixel_m**2
        out = noded.copy()
        free = np.ones(len(polygons), bool)
        for _ in range(MAX_SIMPLIFY_ROUNDS):
            if not free.any():
                break
            simple = shapely.coverage_simplify(noded[free], self.simplify_px,
                                               simplify_boundary=False)  # fmt: skip
            area = shapely.area(simple)
            spoilt = is_field[free] & (
                ~shapely.is_valid(simple)
                | shapely.is_empty(simple)
                | (area < 0.5 * exact[free])
                | ((area < min_area_px) & (exact[free] >= min_area_px))
            )
            if not spoilt.any():
                out[free] = simple
                return _straight_runs_removed(out)
            free[np.flatnonzero(free)[spoilt]] = False  # exact from now on
        # still spoilt after every round: all exact (shared edges stay shared)
        return _straight_runs_removed(out)

    def _off_earlier_fields(self, polygons: np.ndarray, top: int) -> np.ndarray:
        """Cut away what simplification moved onto fields handed over before."""
        keep = self._recent_bottom >= top - 1
        recent = self._recent[keep]
        if len(recent):
            tree = shapely.STRtree(recent)
            new, old = tree.query(polygons, predicate="intersects")
            overlap = shapely.area(shapely.intersection(polygons[new], recent[old])) > 0
            for index in np.unique(new[overlap]):
                others = recent[old[overlap & (new == index)]]
                cut = shapely.difference(polygons[index], shapely.union_all(others))
                polygons[index] = _largest_polygon(cut)
        bottoms = shapely.bounds(polygons)[:, 3] if len(polygons) else np.zeros(0)
        self._recent = np.concatenate([recent, polygons])
        self._recent_bottom = np.concatenate([self._recent_bottom[keep], bottoms])
        return polygons

    def _measured(self, polygons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """True areas (m2) and perimeters (m) of polygons in area pixel coordinates.

        In a projected CRS with square, unrotated pixels these are the pixel measures
        scaled; otherwise they are measured in the scene CRS (on the ellipsoid if geographic).
        """
        if self._pixel_side_m:
            side = self._pixel_side_m
            return shapely.area(polygons) * side**2, shapely.length(polygons) * side
        return true_area_perimeter(shapely.transform(polygons, self._to_world), self.crs)

    def _to_world(self, coords: np.ndarray) -> np.ndarray:
        x, y = self.transform * (coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])


def _largest_polygon(geometry: object) -> object:
    """The largest polygon of a geometry (an empty polygon when it has none)."""
    parts = shapely.get_parts(geometry)
    parts = parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]
    if len(parts) == 0:
        return shapely.Polygon()
    return parts[np.argmax(shapely.area(parts))]


def empty_fields(crs: CRS) -> gpd.GeoDataFrame:
    """A frame with the output columns and no rows."""
    return gpd.GeoDataFrame(_empty_attributes(), geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def _empty_attributes() -> pd.DataFrame:
    """The attribute columns (all but ``field_id`` and the geometry) with no rows."""
    return pd.DataFrame({
        "score": pd.Series(dtype="float64"),
        "area_m2": pd.Series(dtype="float64"),
        "perimeter_m": pd.Series(dtype="float64"),
        "n_chips": pd.Series(dtype="int32"),
        "seam_merged": pd.Series(dtype="bool"),
        "touches_edge_or_nodata": pd.Series(dtype="bool"),
        "model": pd.Series(dtype="object"),
        "class": pd.Series(dtype="object"),
    })  # fmt: skip


def _noded(polygons: np.ndarray, walk: np.ndarray | None = None) -> np.ndarray:
    """Outlines on the pixel grid, each given every vertex of the others that lies on its edges.

    Traced outlines have vertices only where they turn, so where a field's corner meets the
    straight edge of its neighbour (a T junction) the neighbour has no vertex there: the two
    shared edges differ, which is not a valid coverage, and reprojecting them opens slivers.
    Edges along the pixel grid (all of an exact outline's) are walked corner by corner and
    keep the corners that are a vertex of any outline; other edges (simplified ones, already
    noded as a coverage) and vertices off the grid are left as they are. With ``walk`` (a
    mask), only those polygons gain vertices; every polygon's vertices count.
    """
    if len(polygons) == 0:
        return polygons
    if walk is None or walk.all():
        return _walked(polygons, np.zeros((0, 2)))
    out = np.asarray(polygons, dtype=object).copy()
    if walk.any():
        # only the vertices of outlines whose bounds meet the walked ones' can lie on them
        walked = shapely.bounds(polygons[walk])
        low, high = walked.min(axis=0), walked.max(axis=0)
        others = polygons[~walk]
        bounds = shapely.bounds(others)
        near = (bounds[:, 0] <= high[2]) & (bounds[:, 2] >= low[0])
        near &= (bounds[:, 1] <= high[3]) & (bounds[:, 3] >= low[1])
        out[walk] = _walked(polygons[walk], shapely.get_coordinates(others[near]))
    return out


def _walked(polygons: np.ndarray, others: np.ndarray) -> np.ndarray:
    """:func:`_noded` of ``polygons``, with the points ``others`` (N, 2) as vertices too."""
    kind, points, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(polygons)
    corners = np.rint(points).astype(np.int64)  # (x column, y row)
    on_grid = (corners == points).all(axis=1)
    extra = np.rint(others).astype(np.int64)
    extra = extra[(extra == others).all(axis=1)]
    low = corners.min(axis=0)
    corners -= low
    extra -= low
    width = int(corners[:, 0].max()) + 1
    extra = extra[(extra >= 0).all(axis=1) & (extra[:, 0] < width)]  # off these outlines: moot
    flat = corners[:, 1] * width + corners[:, 0]
    is_vertex = np.zeros(int(flat.max()) + 1, bool)
    is_vertex[flat[on_grid]] = True
    extra_flat = extra[:, 1] * width + extra[:, 0]
    is_vertex[extra_flat[extra_flat < len(is_vertex)]] = True
    kept, kept_per_ring = _walk_edges(
        points, ring_offsets, corners, on_grid, is_vertex, width, low.astype(np.float64)
    )
    return _closed_polygons(kind, kept, kept_per_ring, polygon_offsets)


@numba.njit(cache=True, nogil=True)
def _walk_edges(
    points: np.ndarray,
    ring_offsets: np.ndarray,
    corners: np.ndarray,
    on_grid: np.ndarray,
    is_vertex: np.ndarray,
    width: int,
    low: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The rings' points with every vertex (``is_vertex``) that their grid edges pass.

    ``corners`` are the points as grid positions (column, row, less ``low``) and
    ``is_vertex`` is indexed by row x ``width`` + column. Every ring's points come as they
    were, not closed, each followed by the vertices that the edge to the next point passes
    in order; edges off the grid or not along a row or column are left as they are.

    Returns the points, and how many each ring has.
    """
    n_rings = len(ring_offsets) - 1
    per_ring = np.zeros(n_rings, np.int64)
    out = np.empty((len(points) + 16, 2), np.float64)
    n = 0
    for ring in range(n_rings):
        first = n
        for i in range(ring_offsets[ring], ring_offsets[ring + 1] - 1):
            if n == out.shape[0]:
                out = _grown_rows(out)
            out[n] = points[i]  # an edge's start, as it was (off the grid too)
            n += 1
            if not (on_grid[i] and on_grid[i + 1]):
                continue
            dx = corners[i + 1, 0] - corners[i, 0]
            dy = corners[i + 1, 1] - corners[i, 1]
            if dx != 0 and dy != 0:
                continue  # not along a row or a column
            ux, uy = np.sign(dx), np.sign(dy)
            for k in range(1, abs(dx) + abs(dy)):
                x, y = corners[i, 0] + ux * k, corners[i, 1] + uy * k
                if is_vertex[y * width + x]:
                    if n == out.shape[0]:
                        out = _grown_rows(out)
                    out[n, 0] = x + low[0]
                    out[n, 1] = y + low[1]
                    n += 1
        per_ring[ring] = n - first
    return out[:n], per_ring


@numba.njit(cache=True, nogil=True)
def _grown_rows(array: np.ndarray) -> np.ndarray:
    out = np.empty((2 * array.shape[0], array.shape[1]), array.dtype)
    out[: array.shape[0]] = array
    return out


def _straight_runs_removed(polygons: np.ndarray) -> np.ndarray:
    """A simplified batch coverage without the vertices that lie in a straight run.

    Coverage simplification keeps every pixel corner it does not move, so long straight edges
    keep a vertex per pixel. A vertex is dropped where it lies straight between its ring
    neighbours and at most two polygons of the coverage have it: inside the coverage that is
    one edge, the same for both sides, so both drop it; on its boundary (the area's edge, or
    fields of other batches, whose edges stay exact) :func:`_noded` puts back the vertices that
    fields on the other side have. A vertex of three or more polygons is a node and stays.
    """
    if len(polygons) == 0:
        return polygons
    kind, points, (ring_offsets, polygon_offsets) = shapely.to_ragged_array(polygons)
    corners = np.rint(points).astype(np.int64)  # coverage simplification keeps pixel corners
    n_rings = len(ring_offsets) - 1
    ring_length = np.diff(ring_offsets) - 1  # distinct points per ring (less the closing one)
    ring = np.repeat(np.arange(n_rings), ring_length)
    first = np.repeat(ring_offsets[:-1], ring_length)
    point = first + np.arange(len(ring)) - np.repeat(np.cumsum(ring_length) - ring_length,
                                                     ring_length)  # fmt: skip
    length = ring_length[ring]
    previous = first + (point - first - 1) % length
    following = first + (point - first + 1) % length
    before, after = corners[point] - corners[previous], corners[following] - corners[point]
    straight = (before[:, 0] * after[:, 1] == before[:, 1] * after[:, 0]) & (
        (before * after).sum(axis=1) > 0
    )
    # how many polygons have each point as a vertex
    polygon_of_ring = np.repeat(np.arange(len(polygon_offsets) - 1), np.diff(polygon_offsets))
    low = corners.min(axis=0)
    key = (corners[point, 1] - low[1]) * (corners[:, 0].max() - low[0] + 1) + (
        corners[point, 0] - low[0]
    )
    owner_key = np.unique(np.column_stack([key, polygon_of_ring[ring]]), axis=0)[:, 0]
    keys, owners = np.unique(owner_key, return_counts=True)
    shared_by = owners[np.searchsorted(keys, key)]
    drop = straight & (shared_by <= 2)
    per_ring = np.bincount(ring[~drop], minlength=n_rings)
    return _closed_polygons(kind, points[point[~drop]], per_ring, polygon_offsets)


def _closed_polygons(
    kind: shapely.GeometryType,
    points: np.ndarray,
    per_ring: np.ndarray,
    polygon_offsets: np.ndarray,
) -> np.ndarray:
    """Polygons from their rings' points, in order and not closed (``per_ring`` points each).

    Each ring is closed again with its first point.
    """
    ends = np.cumsum(per_ring)
    closed = np.insert(points, ends, points[ends - per_ring], axis=0)
    offsets = np.r_[0, ends + np.arange(1, len(ends) + 1)]
    return shapely.from_ragged_array(kind, closed, (offsets, polygon_offsets))


def true_area_perimeter(polygons: np.ndarray, crs: CRS) -> tuple[np.ndarray, np.ndarray]:
    """Areas (m2) and perimeters (m, holes included) of polygons in ``crs``."""
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        # pyproj signs each ring's area by its orientation and measures the exterior's length
        # only: orient holes against the shell, and measure the length of every ring
        geod = crs.get_geod() or Geod(ellps="WGS84")
        oriented = [orient(p, sign=1.0) for p in polygons]
        area = np.array([geod.geometry_area_perimeter(p)[0] for p in oriented], np.float64)
        perimeter = np.array([geod.geometry_length(p.boundary) for p in oriented], np.float64)
        return np.abs(area), perimeter
    unit = _metres_per_unit(crs)
    return shapely.area(polygons) * unit**2, shapely.length(polygons) * unit


def pixel_polygon(transform: Affine, col: int, row: int) -> shapely.Polygon:
    """The footprint of pixel (``col``, ``row``) in the CRS of ``transform`` (north-up)."""
    x0, y0 = transform * (col, row)
    x1, y1 = transform * (col + 1, row + 1)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def pixel_side_m(crs: CRS, transform: Affine, col: int = 0, row: int = 0) -> float:
    """The side in metres of a square with the true area of pixel (``col``, ``row``).

    Measured on the ellipsoid in every CRS, so a projection's own scale (Web Mercator's 1.5 x
    at 48 degrees) does not count: it is the ground the pixel covers.
    """
    from pyproj import Transformer

    crs = CRS.from_user_input(crs)
    pixel = pixel_polygon(transform, col, row)
    geodetic = crs.geodetic_crs or CRS.from_epsg(4326)
    if not crs.is_geographic:
        to_geodetic = Transformer.from_crs(crs, geodetic, always_xy=True)

        def project(xy: np.ndarray) -> np.ndarray:
            return np.column_stack(to_geodetic.transform(xy[:, 0], xy[:, 1]))

        pixel = shapely.transform(shapely.segmentize(pixel, abs(transform.a) / 4), project)
    area, _ = true_area_perimeter(np.asarray([pixel], dtype=object), geodetic)
    return float(np.sqrt(area[0]))


def _metres_per_unit(crs: CRS) -> float:
    axis = crs.axis_info[0] if crs.axis_info else None
    factor = getattr(axis, "unit_conversion_factor", None)
    return float(factor) if factor else 1.0
