"""Per-band normalisation statistics over valid pixels, gathered chip by chip.

Exact mean and standard deviation come from running sums; the 2nd and 98th percentiles from a
bounded random sample of valid pixels per chip, so memory stays flat however large the dataset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel


class BandStatistics(BaseModel):
    """Statistics of one band over the valid pixels of the training chips."""

    name: str
    p2: float
    p98: float
    mean: float
    std: float
    n_pixels: int


@dataclass
class PixelSample:
    """What one chip contributes: exact sums and a random sample of its valid pixels."""

    total: np.ndarray  # (bands,) float64 sum
    total_sq: np.ndarray  # (bands,) float64 sum of squares
    count: int
    sample: np.ndarray  # (n, bands) float64

    @classmethod
    def from_chip(
        cls, data: np.ndarray, valid: np.ndarray, rng: np.random.Generator, max_sample: int = 2048
    ) -> PixelSample:
        """Summarise the ``valid`` pixels of a (bands, rows, cols) chip."""
        bands = data.shape[0]
        chosen = data.reshape(bands, -1) if valid.all() else data[:, valid]
        pixels = chosen.astype(np.float64)  # (bands, n)
        count = pixels.shape[1]
        if count > max_sample:
            pick = rng.choice(count, size=max_sample, replace=False)
            sample = pixels[:, pick].T
        else:
            sample = pixels.T
        return cls(pixels.sum(axis=1), np.einsum("ij,ij->i", pixels, pixels), count, sample)


def weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, percentiles: Sequence[float]
) -> np.ndarray:
    """Per-column weighted percentiles of (n, bands) ``values``: shape (len(percentiles), bands).

    The inverted-CDF rule: the smallest value whose cumulative weight reaches the percentile.
    """
    order = np.argsort(values, axis=0, kind="stable")
    sorted_values = np.take_along_axis(values, order, axis=0)
    cumulative = np.cumsum(weights[order], axis=0)
    cumulative /= cumulative[-1]
    out = np.empty((len(percentiles), values.shape[1]))
    for i, q in enumerate(percentiles):
        for band in range(values.shape[1]):
            index = np.searchsorted(cumulative[:, band], q / 100, side="left")
            out[i, band] = sorted_values[min(index, len(values) - 1), band]
    return out


def combine_statistics(
    samples: Iterable[PixelSample], band_names: Sequence[str]
) -> list[BandStatistics]:
    """Combine chip summaries into per-band statistics (empty list when no valid pixel)."""
    samples = list(samples)
    count = sum(s.count for s in samples)
    if count == 0:
        return []
    total = np.sum([s.total for s in samples], axis=0)
    total_sq = np.sum([s.total_sq for s in samples], axis=0)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    kept = [s for s in samples if len(s.sample)]
    pooled = np.concatenate([s.sample for s in kept], axis=0)
    # each sampled pixel stands for count / sample-size pixels of its chip, so a chip with few
    # valid pixels weighs no more than it should
    weights = np.concatenate([np.full(len(s.sample), s.count / len(s.sample)) for s in kept])
    p2, p98 = weighted_percentiles(pooled, weights, [2, 98])
    return [
        BandStatistics(
            name=name,
            p2=float(p2[i]),
            p98=float(p98[i]),
            mean=float(mean[i]),
            std=float(std[i]),
            n_pixels=int(count),
        )
        for i, name in enumerate(band_names)
    ]
