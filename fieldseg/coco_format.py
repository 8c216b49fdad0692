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
