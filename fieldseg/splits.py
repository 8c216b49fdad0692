"""Train/val/test splits by spatial blocks, with no pixel shared between splits.

Neighbouring chips overlap and neighbouring pixels are alike, so a random split per chip leaks
the test set into training. Chips are grouped into square blocks; whole blocks go to a split;
and where chips of two splits still overlap at a block border, one of them is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import shapely

from fieldseg.errors import ConfigError
from fieldseg.labels import SPLITS

#: When chips of two splits overlap, the chip of the split listed later is dropped: evaluation
#: splits stay intact and training, the largest split, gives up its border chips.
KEEP_PRIORITY: dict[str, int] = {"test": 0, "val": 1, "train": 2}


def parse_fractions(text: str | Sequence[float]) -> dict[str, float]:
    """Parse ``0.8,0.1,0.1`` into train/val/test fractions summing to 1."""
    try:
        values = (
            [float(v) for v in text.split(",")] if isinstance(text, str) else list(map(float, text))
        )
    except ValueError as exc:
        raise ConfigError(f"--split expects three numbers like 0.8,0.1,0.1, got {text!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ConfigError(f"--split expects three non-negative numbers like 0.8,0.1,0.1: {text!r}")
    if abs(sum(values) - 1) > 1e-6:
        raise ConfigError(f"--split fractions must add up to 1, got {sum(values):g}")
    return dict(zip(SPLITS, values, strict=True))


def assign_blocks(
    block_of_chip: Sequence[Hashable], fractions: dict[str, float], seed: int
) -> np.ndarray:
    """Give each chip the split of its block; blocks are dealt out to track the fractions.

    Blocks are visited in a seeded random order and each goes to the split that is furthest
    below its target share of the chips dealt so far, so realised fractions stay close to the
    request even with few blocks.
    """
    keys = list(dict.fromkeys(block_of_chip))  # unique, in first-seen order
    index_of = {key: i for i, key in enumerate(keys)}
    chip_block = np.array([index_of[k] for k in block_of_chip], dtype=np.int64)
    sizes = np.bincount(chip_block, minlength=len(keys))
    order = np.random.default_rng(seed).permutation(len(keys))
    names = [name for name in SPLITS if fractions.get(name, 0) > 0]
    targets = np.array([fractions[name] for name in names])
    dealt = np.zeros(len(names))
    block_split = np.empty(len(keys), dtype=object)
    for block in order:
        after = dealt.sum() + sizes[block]
        deficit = targets * after - dealt
        choice = int(np.argmax(deficit))
        block_split[block] = names[choice]
        dealt[choice] += sizes[block]
    return block_split[chip_block]


def block_keys(centres: np.ndarray, block_side: float) -> list[tuple[int, int]]:
    """The block (column, row) of each chip centre, blocks being squares of ``block_side``.

    Centres are in map units of one CRS shared by all scenes, so chips of two scenes over the
    same ground (two dates, say) fall in the same block and hence the same split.
    """
    keys = np.floor(np.asarray(centres, dtype=float) / block_side).astype(np.int64)
    return [(int(x), int(y)) for x, y in keys]


def drop_cross_split_overlaps(
    footprints: Sequence[shapely.Geometry] | np.ndarray,
    splits: np.ndarray,
    *,
    min_overlap_area: float = 0.0,
) -> np.ndarray:
    """Return a keep-mask that leaves no two overlapping chips in different splits.

    Args:
        footprints: chip footprints in one CRS shared by all scenes, so that chips of different
            scenes over the same ground are seen to overlap.
        splits: split name per chip.
        min_overlap_area: overlaps of this area or less do not count (chips that only touch
            share no area; half a pixel absorbs reprojection noise between scenes).
    """
    footprints = np.asarray(footprints, dtype=object)
    keep = np.ones(len(splits), dtype=bool)
    if len(footprints) == 0:
        return keep
    left, right = shapely.STRtree(footprints).query(footprints, predicate="intersects")
    differ = (left < right) & (splits[left] != splits[right])
    left, right = left[differ], right[differ]
    area = shapely.area(shapely.intersection(footprints[left], footprints[right]))
    neighbours: dict[int, list[int]] = {}
    for a, b in zip(left[area > min_overlap_area], right[area > min_overlap_area], strict=True):
        neighbours.setdefault(int(a), []).append(int(b))
        neighbours.setdefault(int(b), []).append(int(a))
    # decide the splits in priority order: a chip survives unless it overlaps a surviving chip
    # of a split that ranks above it, so no chip is dropped for a chip that was itself dropped
    for chip in sorted(neighbours, key=lambda c: KEEP_PRIORITY[splits[c]]):
        rank = KEEP_PRIORITY[splits[chip]]
        if any(keep[o] and KEEP_PRIORITY[splits[o]] < rank for o in neighbours[chip]):
            keep[chip] = False
    return keep
