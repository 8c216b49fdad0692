"""COCO JSON with fieldseg's georeferencing extras (see docs/formats.md).

Masks are compressed RLE made by pycocotools, so holes and multi-part pieces are exact and the
files load with ``pycocotools.coco.COCO``. In memory an RLE keeps pycocotools' form (``counts``
as bytes, ready for ``merge``/``area``/``toBbox``); in JSON ``counts`` is a string.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """Compressed RLE (pycocotools form) of a 2-D boolean mask."""
    return mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))


def encode_label_image(
    label: np.ndarray,
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """RLE of every non-zero label of an integer label image, in one pass over its pixels.

    Equivalent to :func:`encode_rle` of ``label == v`` for each value ``v``, but the runs of all
    labels come from one scan of the column-major pixels, and pycocotools compresses them in one
    call: a chip of small fields holds hundreds of instances.

    Returns:
        The label values (ascending), their RLEs (pycocotools form) and their pixel counts, in
        the same order. (pycocotools' own ``area`` overflows on lists under numpy 2.)
    """
    height, width = label.shape
    flat = np.asarray(label).ravel(order="F")
    n = flat.size
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, n]
    values = flat[starts]
    runs = values != 0
    starts, ends, values = starts[runs], ends[runs], values[runs]
    if len(values) == 0:
        return values, [], np.zeros(0, dtype=np.int64)
    order = np.argsort(values, kind="stable")  # runs grouped by label, in pixel order
    return rles_from_runs(values[order], starts[order], ends[order], height, width)


def rles_from_runs(
    labels: np.ndarray, starts: np.ndarray, ends: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, list[dict[str, Any]], np.ndarray]:
    """RLEs of labelled runs of column-major pixels ``[start, end)``, compressed in one call.

    The runs must be grouped by label, each label's runs in pixel order and not touching.

    Returns:
        The labels (one per group), their RLEs (pycocotools form) and their pixel counts.
    """
    n = height * width
    first = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    last = np.r_[first[1:], len(labels)] - 1
    previous_end = np.r_[0, ends[:-1]]
    previous_end[first] = 0
    counts = np.empty(2 * len(labels), dtype=np.int64)
    counts[0::2] = starts - previous_end  # background before each run
    counts[1::2] = ends - starts  # the run
    counts_list = counts.tolist()
    uncompressed = []
    for a, b in zip(first.tolist(), last.tolist(), strict=True):
        run_counts = counts_list[2 * a : 2 * b + 2]
        if ends[b] < n:
            run_counts.append(int(n - ends[b]))
        uncompressed.append({"counts": run_counts, "size": [height, width]})
    areas = np.add.reduceat(ends - starts, first).astype(np.int64)
    return labels[first], mask_utils.frPyObjects(uncompressed, height, width), areas


def rle_to_json(rle: dict[str, Any]) -> dict[str, Any]:
    """An RLE with ``counts`` as a string, as COCO files store it."""
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def rle_from_json(rle: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`rle_to_json`: pycocotools' form."""
    counts = rle["counts"]
    return {
        "size": rle["size"],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }


def decode_mask(rle: dict[str, Any]) -> np.ndarray:
    """A 2-D boolean mask from an RLE in either form."""
    return mask_utils.decode(rle_from_json(rle)).astype(bool)


def write_coco(
    path: str | os.PathLike[str],
    *,
    images: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    categories: list[dict[str, Any]],
    info: dict[str, Any],
) -> None:
    """Write one COCO file (images, annotations, categories, info)."""
    document = {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    Path(path).write_text(json.dumps(document, separators=(",", ":")))
