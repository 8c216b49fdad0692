"""Label image -> polygons: every 4-connected region of equal value traced on the pixel grid.

The same polygons as ``rasterio.features.shapes(labels, mask, connectivity=4)`` (one per
region: its outer ring, then its holes; vertices at the corners where an outline turns),
built straight into shapely's ragged arrays by a compiled boundary walk instead of through
GDAL's polygons and one GeoJSON dict each. It is several times faster than ``shapes``, and it
can also place a vertex wherever a straight edge passes a junction of two other regions
(``nodes=True``), so that neighbours come out noded, as a valid coverage, in the same pass.

Regions are numbered first (union-find over runs), then each ring is walked with its region
on the right. At each pixel corner the walk turns left onto a pixel of its own region ahead
on the left, else goes straight along one ahead on the right, else turns right. Comparing
region numbers, not values, keeps regions of one value that touch only at a corner apart
(4-connectivity), while a region touching itself at a corner is one outer ring and a hole
that meet there, as GDAL gives it. Each region's first pixel in raster order has its top edge
on the outer ring; every other ring of the region (a hole) is met later in the scan at one of
its top edges.
"""

from __future__ import annotations

import numba
import numpy as np
import shapely


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
    # a one-pixel ring of untraced pixels around the image spares every bounds check
    height, width = labels.shape
    ringed_labels = np.zeros((height + 2, width + 2), labels.dtype)
    ringed_labels[1:-1, 1:-1] = labels
    ringed = np.zeros((height + 2, width + 2), np.bool_)
    ringed[1:-1, 1:-1] = traced
    corner_at, ring_ends, ring_region, n_regions, region_value = _walk(
        ringed_labels.ravel(), ringed.ravel(), height, width, nodes
    )
    if n_regions == 0:
        return np.empty(0, dtype=object), np.zeros(0, labels.dtype)
    # rings come in scan order; each region's outer ring is its first
    order = np.argsort(ring_region, kind="stable")
    starts = np.r_[0, ring_ends[:-1]]
    lengths = ring_ends - starts
    sorted_lengths = lengths[order]
    gather = np.repeat(starts[order] - np.r_[0, np.cumsum(sorted_lengths)[:-1]], sorted_lengths)
    gather += np.arange(len(gather))
    # corner (row, column) is the top-left corner of ringed pixel (row, column)
    rows, cols = np.divmod(corner_at[gather], width + 2)
    coords = np.empty((len(gather), 2), np.float64)
    coords[:, 0] = cols
    coords[:, 1] = rows + row_offset
    ring_offsets = np.r_[0, np.cumsum(sorted_lengths)]
    polygon_offsets = np.r_[0, np.cumsum(np.bincount(ring_region, minlength=n_regions))]
    polygons = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, coords, (ring_offsets, polygon_offsets)
    )
    return polygons, region_value.astype(labels.dtype)


@numba.njit(cache=True, nogil=True)
def _walk(
    labels: np.ndarray, traced: np.ndarray, height: int, width: int, nodes: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """Every ring of every traced region, as its closed list of corners, by scan.

    ``labels`` and ``traced`` are the image with a ring of untraced pixels around it,
    flattened: pixel (row, column) of the image is ringed pixel (row + 1, column + 1), and
    corner (row, column) of the image (the top-left corner of its pixel) is given as the
    index of ringed pixel (row, column), the pixel above and left of the corner.

    Returns the corners of all rings one after another, where each ring ends, each ring's
    region number, the number of regions and each region's label.
    """
    stride = width + 2
    # the four pixels around a corner, from its index: above left, above right, below left,
    # below right; by walking direction (east, south, west, north): the corner's step and
    # the pixels ahead on the right, ahead on the left and behind on the left of the walk
    step = np.array([1, stride, -1, -stride])
    ahead_right = np.array([stride + 1, stride, 0, 1])
    ahead_left = np.array([1, stride + 1, stride, 0])
    behind_left = np.array([0, 1, stride + 1, stride])
    # the next direction by (own region ahead left, ahead right): turn right where neither
    # is, go straight along own pixels on the right, turn left onto own pixels ahead left
    # (also across a corner: the far side is then a ring of its own, a hole)
    turns = np.empty((4, 4), np.int64)
    for direction in range(4):
        right_turn, left_turn = (direction + 1) % 4, (direction + 3) % 4
        turns[direction, 0], turns[direction, 1] = right_turn, direction
        turns[direction, 2], turns[direction, 3] = left_turn, left_turn
    region, region_value = _regions(labels, traced, height, width)
    n_regions = len(region_value)
    top_done = np.zeros(len(labels), np.bool_)
    corners = np.empty(1024, np.int64)
    ring_ends = np.empty(64, np.int64)
    ring_region = np.empty(64, np.int64)
    n_corners = 0
    n_rings = 0
    for row in range(1, height + 1):
        for pixel in range(row * stride + 1, row * stride + width + 1):
            if not traced[pixel]:
                continue
            here = region[pixel]
            if top_done[pixel] or region[pixel - stride] == here:
                continue
            # a ring starts at this top edge, walking east from the pixel's top-left corner
            start = n_corners
            corner = pixel - stride - 1
            direction = 0
            while True:
                if direction == 0:
                    top_done[corner + stride + 1] = True  # the pixel below the edge walked
                corner += step[direction]
                left = region[corner + ahead_left[direction]] == here
                right = region[corner + ahead_right[direction]] == here
                turn = turns[direction, 2 * left + right]
                keep = turn != direction
                if nodes and not keep:  # straight on: a vertex where two regions meet on the left
                    keep = (
                        region[corner + ahead_left[direction]]
                        != region[corner + behind_left[direction]]
                    )  # all untraced pixels are one: -1
                if keep:
                    if n_corners + 2 > len(corners):
                        corners = _grown(corners)
                    corners[n_corners] = corner
                    n_corners += 1
                direction = turn
                if corner == pixel - stride - 1 and direction == 0:
                    break
            # close the ring with its first corner
            corners[n_corners] = corners[start]
            n_corners += 1
            if n_rings == len(ring_ends):
                ring_ends = _grown(ring_ends)
                ring_region = _grown(ring_region)
            ring_ends[n_rings] = n_corners
            ring_region[n_rings] = here
            n_rings += 1
    return corners[:n_corners], ring_ends[:n_rings], ring_region[:n_rings], n_regions, region_value


@numba.njit(cache=True, nogil=True)
def _regions(
    labels: np.ndarray, traced: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Each ringed pixel's region (4-connected, one value; -1 untraced), and regions' labels.

    Regions are numbered in the raster order of their first pixels (two passes: runs joined
    to the row above by union-find, then every pixel given its set's number).
    """
    stride = width + 2
    provisional = np.full(len(labels), -1, np.int64)
    parent = np.empty(64, np.int64)
    n = 0
    for row in range(1, height + 1):
        for pixel in range(row * stride + 1, row * stride + width + 1):
            if not traced[pixel]:
                continue
            value = labels[pixel]
            left = pixel - 1
            up = pixel - stride
            same_left = traced[left] and labels[left] == value
            same_up = traced[up] and labels[up] == value
            if same_left:
                provisional[pixel] = provisional[left]
                if same_up and provisional[up] != provisional[left]:
                    a, b = find_root(parent, provisional[left]), find_root(parent, provisional[up])
                    if a != b:  # the smaller (earlier) set's number stays the root
                        parent[max(a, b)] = min(a, b)
            elif same_up:
                provisional[pixel] = provisional[up]
            else:
                if n == len(parent):
                    parent = _grown(parent)
                parent[n] = n
                provisional[pixel] = n
                n += 1
    # roots come in the raster order of their first pixels: number them so
    number = np.full(n, -1, np.int64)
    count = 0
    for k in range(n):
        root = find_root(parent, k)
        if number[root] < 0:
            number[root] = count
            count += 1
        number[k] = number[root]
    region = np.full(len(labels), -1, np.int32)
    values = np.empty(count, np.int64)
    for pixel in range(len(labels)):
        if provisional[pixel] >= 0:
            region[pixel] = number[provisional[pixel]]
            values[region[pixel]] = labels[pixel]
    return region, values


@numba.njit(cache=True, nogil=True)
def find_root(parent: np.ndarray, x: int) -> int:
    """The root of ``x`` in the union-find forest ``parent`` (halving the path walked)."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


@numba.njit(cache=True, nogil=True)
def _grown(array: np.ndarray) -> np.ndarray:
    out = np.empty(2 * len(array), array.dtype)
    out[: len(array)] = array
    return out
