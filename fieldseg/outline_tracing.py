"""Label image -> polygons: every 4-connected region of equal value traced on the pixel grid.

The same polygons as ``rasterio.features.shapes(labels, mask, connectivity=4)`` (one per
region: its outer ring, then its holes; vertices at the corners where an outline turns),
built straight into shapely's ragged arrays by a compiled boundary walk instead of through
GDAL's polygons and one GeoJSON dict each. It is several times faster than ``shapes``, and it
can also place a vertex wherever a straight edge passes a junction of two other regions
(``nodes=True``), so that neighbours come out noded, as a valid coverage, in the same pass.

The walk keeps the region on its right. At each pixel corner it turns right where it can,
else goes straight, else turns left: turning right first keeps the outline tight around its
own pixels, so regions that touch only at a corner stay apart (4-connectivity). Each region's
first pixel in raster order has its top edge on the outer ring; every other ring of the region
(a hole) is met later in the scan at one of its top edges.
"""

from __future__ import annotations

import numba
import numpy as np
import shapely

#: Walking directions: east, south, west, north (row and column steps).
_STEP_ROW = np.array([0, 1, 0, -1], np.int64)
_STEP_COL = np.array([1, 0, -1, 0], np.int64)
#: For each direction, the offsets (row, column) from the corner just reached to the pixel
#: ahead on the right, ahead on the left and behind on the left of the walk.
_AHEAD_RIGHT = np.array([[0, 0], [0, -1], [-1, -1], [-1, 0]], np.int64)
_AHEAD_LEFT = np.array([[-1, 0], [0, 0], [0, -1], [-1, -1]], np.int64)
_BEHIND_LEFT = np.array([[-1, -1], [-1, 0], [0, 0], [0, -1]], np.int64)


def trace_outlines(
    labels: np.ndarray, traced: np.ndarray, *, row_offset: int = 0, nodes: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Polygons of the 4-connected regions of ``labels`` where ``traced`` holds.

    Args:
        labels: (H, W) integer labels.
        traced: (H, W) bool: the pixels whose regions become polygons (the others only bound
            them, as ``shapes``' mask does).
        row_offset: added to every row coordinate (the labels' first row in a larger area).
        nodes: also put a vertex where a straight edge passes a point at which two different
            labels meet on its other side (a T junction), so neighbours share their vertices.

    Returns:
        The polygons in pixel coordinates (x the column, y the row plus ``row_offset``), in
        the raster order of their regions' first pixels, and each one's label.
    """
    labels = np.ascontiguousarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    if traced.shape != labels.shape:
        raise ValueError(f"traced has shape {traced.shape}, labels {labels.shape}")
    labels = labels.astype(np.int64, copy=False)
    traced = np.ascontiguousarray(traced, dtype=np.bool_)
    corners, ring_ends, ring_region, n_regions, region_value = _walk(labels, traced, nodes)
    if n_regions == 0:
        return np.empty(0, dtype=object), np.zeros(0, labels.dtype)
    # rings come in scan order; each region's outer ring is its first
    order = np.argsort(ring_region, kind="stable")
    starts = np.r_[0, ring_ends[:-1]]
    lengths = ring_ends - starts
    sorted_lengths = lengths[order]
    gather = np.repeat(starts[order] - np.r_[0, np.cumsum(sorted_lengths)[:-1]], sorted_lengths)
    gather += np.arange(len(gather))
    points = corners[gather]
    coords = np.empty((len(points), 2), np.float64)
    coords[:, 0] = points[:, 1]
    coords[:, 1] = points[:, 0] + row_offset
    ring_offsets = np.r_[0, np.cumsum(sorted_lengths)]
    polygon_offsets = np.r_[0, np.cumsum(np.bincount(ring_region, minlength=n_regions))]
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords, (ring_offsets, polygon_offsets)
    )
    return polygons, region_value.astype(labels.dtype)


@numba.njit(cache=True)
def _walk(
    labels: np.ndarray, traced: np.ndarray, nodes: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """Every ring of every traced region: its closed corner list (row, column), by scan.

    Returns the corners of all rings one after another, where each ring ends, each ring's
    region number, the number of regions and each region's label.
    """
    height, width = labels.shape
    region = np.full((height, width), -1, np.int64)
    top_done = np.zeros((height, width), np.bool_)
    stack = np.empty(height * width, np.int64)
    corners = np.empty((1024, 2), np.int64)
    ring_ends = np.empty(64, np.int64)
    ring_region = np.empty(64, np.int64)
    region_value = np.empty(64, np.int64)
    n_corners = 0
    n_rings = 0
    n_regions = 0
    for row in range(height):
        for col in range(width):
            if not traced[row, col]:
                continue
            value = labels[row, col]
            if region[row, col] < 0:  # a new region: number its pixels (flood fill)
                if n_regions == len(region_value):
                    region_value = _grown(region_value)
                region_value[n_regions] = value
                region[row, col] = n_regions
                size = 1
                stack[0] = row * width + col
                while size > 0:
                    size -= 1
                    r, c = divmod(stack[size], width)
                    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
                        rr, cc = r + dr, c + dc
                        if (
                            0 <= rr < height
                            and 0 <= cc < width
                            and region[rr, cc] < 0
                            and traced[rr, cc]
                            and labels[rr, cc] == value
                        ):
                            region[rr, cc] = n_regions
                            stack[size] = rr * width + cc
                            size += 1
                n_regions += 1
            here = region[row, col]
            if top_done[row, col] or (row > 0 and region[row - 1, col] == here):
                continue
            # a ring starts at this top edge, walking east from the pixel's top-left corner
            start = n_corners
            r, c, direction = row, col, 0
            while True:
                if direction == 0:
                    top_done[r, c] = True
                r += _STEP_ROW[direction]
                c += _STEP_COL[direction]
                left_r = r + _AHEAD_LEFT[direction, 0]
                left_c = c + _AHEAD_LEFT[direction, 1]
                right_r = r + _AHEAD_RIGHT[direction, 0]
                right_c = c + _AHEAD_RIGHT[direction, 1]
                if _region_at(region, left_r, left_c) == here:
                    turn = (direction + 3) % 4  # also across a corner: the far side is a hole
                elif _region_at(region, right_r, right_c) == here:
                    turn = direction
                else:
                    turn = (direction + 1) % 4
                keep = turn != direction
                if nodes and not keep:  # straight on: a vertex where two regions meet on the left
                    behind_r = r + _BEHIND_LEFT[direction, 0]
                    behind_c = c + _BEHIND_LEFT[direction, 1]
                    keep = _differ(labels, traced, left_r, left_c, behind_r, behind_c)
                if keep:
                    if n_corners + 2 > len(corners):
                        corners = _grown_rows(corners)
                    corners[n_corners, 0] = r
                    corners[n_corners, 1] = c
                    n_corners += 1
                direction = turn
                if r == row and c == col and direction == 0:
                    break
            # close the ring with its first corner
            corners[n_corners, 0] = corners[start, 0]
            corners[n_corners, 1] = corners[start, 1]
            n_corners += 1
            if n_rings == len(ring_ends):
                ring_ends = _grown(ring_ends)
                ring_region = _grown(ring_region)
            ring_ends[n_rings] = n_corners
            ring_region[n_rings] = region[row, col]
            n_rings += 1
    return (
        corners[:n_corners],
        ring_ends[:n_rings],
        ring_region[:n_rings],
        n_regions,
        region_value[:n_regions],
    )


@numba.njit(cache=True, inline="always")
def _region_at(region: np.ndarray, row: int, col: int) -> int:
    """The region number of pixel (row, col): -1 untraced, not numbered yet or outside."""
    if 0 <= row < region.shape[0] and 0 <= col < region.shape[1]:
        return region[row, col]
    return -1


@numba.njit(cache=True, inline="always")
def _inside(traced: np.ndarray, row: int, col: int) -> bool:
    """Whether pixel (row, col) lies inside the image and is traced."""
    return 0 <= row < traced.shape[0] and 0 <= col < traced.shape[1] and traced[row, col]


@numba.njit(cache=True, inline="always")
def _differ(
    labels: np.ndarray, traced: np.ndarray, row: int, col: int, row2: int, col2: int
) -> bool:
    """Whether two side by side pixels lie in different regions (all untraced ones are one).

    Side by side pixels of one value are one region, so labels tell regions apart here even
    where they are not numbered yet.
    """
    first, second = _inside(traced, row, col), _inside(traced, row2, col2)
    if first and second:
        return labels[row, col] != labels[row2, col2]
    return first or second


@numba.njit(cache=True)
def _grown(array: np.ndarray) -> np.ndarray:
    out = np.empty(2 * len(array), array.dtype)
    out[: len(array)] = array
    return out


@numba.njit(cache=True)
def _grown_rows(array: np.ndarray) -> np.ndarray:
    out = np.empty((2 * array.shape[0], array.shape[1]), array.dtype)
    out[: array.shape[0]] = array
    return out
