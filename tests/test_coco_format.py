"""RLE helpers: the one-pass label-image encoder agrees with pycocotools mask by mask."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from fieldseg.coco_format import (
    decode_mask,
    encode_label_image,
    encode_rle,
    rle_from_json,
    rle_to_json,
)


@settings(max_examples=80, deadline=None)
@given(
    arrays(
        np.int32,
        st.tuples(st.integers(1, 12), st.integers(1, 12)),
        elements=st.integers(0, 4),
    )
)
def test_encode_label_image_matches_pycocotools_per_label(label: np.ndarray) -> None:
    values, rles, areas = encode_label_image(label)
    assert values.tolist() == sorted(set(np.unique(label).tolist()) - {0})
    assert areas.tolist() == [int((label == v).sum()) for v in values.tolist()]
    for value, rle in zip(values.tolist(), rles, strict=True):
        expected = encode_rle(label == value)
        assert rle["counts"] == expected["counts"]
        assert list(rle["size"]) == list(expected["size"])
        assert (mask_utils.decode(rle).astype(bool) == (label == value)).all()


def test_encode_label_image_counts_large_areas() -> None:
    label = np.zeros((64, 64), dtype=np.int32)
    label[:, :40] = 7  # 2,560 pixels: more than pycocotools' list ``area`` can hold
    values, _, areas = encode_label_image(label)
    assert values.tolist() == [7] and areas.tolist() == [2560]


def test_encode_label_image_of_an_empty_image() -> None:
    values, rles, areas = encode_label_image(np.zeros((4, 5), dtype=np.int32))
    assert len(values) == 0 and rles == [] and len(areas) == 0


def test_rle_json_round_trip_with_a_hole_and_two_parts() -> None:
    mask = np.zeros((9, 11), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False  # a hole
    mask[7:9, 8:11] = True  # a second part
    as_json = rle_to_json(encode_rle(mask))
    assert isinstance(as_json["counts"], str) and as_json["size"] == [9, 11]
    assert (decode_mask(as_json) == mask).all()
    assert (decode_mask(rle_from_json(as_json)) == mask).all()
    assert mask_utils.area(rle_from_json(as_json)) == mask.sum()
