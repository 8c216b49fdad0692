"""Per-band normalisation statistics over valid pixels, gathered chip by chip in bounded memory.

Mean and standard deviation are exact (running sums). Percentiles are exact for 8- and 16-bit
integer data (Sentinel-2 reflectances), from one histogram per band; for other data types they
come from a bounded random sample of each chip's valid pixels, each weighted by the pixels it
stands for, so that a chip with few valid pixels weighs no more than it should.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

#: Percentiles stored as the robust range of each band.
LOW_PERCENTILE, HIGH_PERCENTILE = 2.0, 98.0


class BandStatistics(BaseModel):
    """Statistics of one band over the valid pixels of the training chips."""

    name: str
    p2: float
    p98: float
    mean: float
    std: float
    n_pixels: int


class BandStatisticsAccumulator:
    """Accumulate per-band statistics of valid pixels, one chip at a time.

    Args:
        bands: number of bands.
        dtype: pixel data type; 8/16-bit integers get exact histograms.
        seed: seed of the pixel sample (other data types).
        sample_per_chip: sampled pixels kept per chip (other data types).
    """

    def __init__(self, bands: int, dtype: str, *, seed: int = 0, sample_per_chip: int = 512):
        self._dtype = np.dtype(dtype)
        self._exact = self._dtype.kind in "iu" and self._dtype.itemsize <= 2
        self._total = np.zeros(bands)
        self._total_sq = np.zeros(bands)
        self._count = 0
        self._rng = np.random.default_rng(seed)
        self._sample_per_chip = sample_per_chip
        self._samples: list[np.ndarray] = []
        self._weights: list[np.ndarray] = []
        if self._exact:
            self._offset = int(np.iinfo(self._dtype).min)
            self._histogram = np.zeros((bands, 2 ** (8 * self._dtype.itemsize)), dtype=np.int64)

    def add(self, data: np.ndarray, valid: np.ndarray) -> None:
        """Add the ``valid`` pixels of a (bands, rows, cols) chip."""
        bands = data.shape[0]
        chosen = data.reshape(bands, -1) if valid.all() else data[:, valid]
        count = chosen.shape[1]
        if count == 0:
            return
        pixels = chosen.astype(np.float64)
        self._total += pixels.sum(axis=1)
        self._total_sq += np.einsum("ij,ij->i", pixels, pixels)
        self._count += count
        if self._exact:
            shifted = chosen.astype(np.int64) - self._offset
            for band in range(bands):
                self._histogram[band] += np.bincount(
                    shifted[band], minlength=self._histogram.shape[1]
                )
        else:
            size = min(count, self._sample_per_chip)
            if size < count:
                pixels = pixels[:, self._rng.choice(count, size=size, replace=False)]
            self._samples.append(pixels.T.astype(np.float32))
            self._weights.append(np.full(size, count / size))

    def result(self, band_names: Sequence[str]) -> list[BandStatistics]:
        """The statistics so far, one entry per band (empty when no valid pixel was seen)."""
        if self._count == 0:
            return []
        mean = self._total / self._count
        std = np.sqrt(np.maximum(self._total_sq / self._count - mean**2, 0.0))
        quantiles = [LOW_PERCENTILE, HIGH_PERCENTILE]
        if self._exact:
            low, high = _histogram_percentiles(self._histogram, quantiles) + self._offset
        else:
            pooled = np.concatenate(self._samples).astype(np.float64)
            low, high = weighted_percentiles(pooled, np.concatenate(self._weights), quantiles)
        return [
            BandStatistics(
                name=name,
                p2=float(low[i]),
                p98=float(high[i]),
                mean=float(mean[i]),
                std=float(std[i]),
                n_pixels=int(self._count),
            )
            for i, name in enumerate(band_names)
        ]


def weighted_percentiles(
    values: np.ndarray, weights: np.ndarray, percentiles: Sequence[float]
) -> np.ndarray:
    """Per-column weighted percentiles of (n, bands) ``values``: shape (len(percentiles), bands).

    The inverted-CDF rule: the smallest value whose cumulative weight reaches the percentile.
    """
    out = np.empty((len(percentiles), values.shape[1]))
    for band in range(values.shape[1]):
        order = np.argsort(values[:, band], kind="stable")
        cumulative = np.cumsum(weights[order])
        cumulative /= cumulative[-1]
        for i, q in enumerate(percentiles):
            index = min(int(np.searchsorted(cumulative, q / 100, side="left")), len(order) - 1)
            out[i, band] = values[order[index], band]
    return out


def _histogram_percentiles(histogram: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
    """Inverted-CDF percentiles (as bin indices) of per-band histograms (bands, bins)."""
    cumulative = np.cumsum(histogram, axis=1)
    totals = cumulative[:, -1]
    out = np.empty((len(percentiles), histogram.shape[0]), dtype=np.int64)
    for i, q in enumerate(percentiles):
        for band in range(histogram.shape[0]):
            out[i, band] = np.searchsorted(cumulative[band], q / 100 * totals[band], side="left")
    return out
