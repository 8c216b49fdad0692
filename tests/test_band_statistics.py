"""Band statistics: exact for 8/16-bit integers, weighted samples otherwise, bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from fieldseg.band_statistics import BandStatisticsAccumulator, weighted_percentiles


def _chips(dtype: str, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    chips = []
    for i in range(5):
        data = rng.normal(1000 + 300 * i, 200 + 50 * i, size=(3, 32, 32)).astype(dtype)
        valid = rng.random((32, 32)) > 0.2 * i  # later chips have fewer valid pixels
        chips.append((data, valid))
    return chips


@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint8"])
def test_small_integers_give_exact_statistics(dtype: str) -> None:
    chips = _chips(dtype)
    acc = BandStatisticsAccumulator(3, dtype)
    for data, valid in chips:
        acc.add(data, valid)
    stats = acc.result(["a", "b", "c"])
    pooled = np.concatenate([d[:, v] for d, v in chips], axis=1).astype(np.float64)
    for band, s in enumerate(stats):
        values = pooled[band]
        assert s.n_pixels == values.size
        assert s.mean == pytest.approx(values.mean(), rel=1e-12)
        assert s.std == pytest.approx(values.std(), rel=1e-9)
        assert s.p2 == np.percentile(values, 2, method="inverted_cdf")
        assert s.p98 == np.percentile(values, 98, method="inverted_cdf")


def test_floats_use_a_weighted_sample_close_to_the_truth() -> None:
    chips = _chips("float32")
    acc = BandStatisticsAccumulator(3, "float32", seed=1, sample_per_chip=300)
    for data, valid in chips:
        acc.add(data, valid)
    stats = acc.result(["a", "b", "c"])
    pooled = np.concatenate([d[:, v] for d, v in chips], axis=1).astype(np.float64)
    for band, s in enumerate(stats):
        values = pooled[band]
        assert s.mean == pytest.approx(values.mean(), rel=1e-9)
        spread = np.percentile(values, 98) - np.percentile(values, 2)
        assert abs(s.p2 - np.percentile(values, 2)) < 0.05 * spread
        assert abs(s.p98 - np.percentile(values, 98)) < 0.05 * spread


def test_a_chip_with_few_valid_pixels_does_not_dominate_the_percentiles() -> None:
    acc = BandStatisticsAccumulator(1, "float32", sample_per_chip=100)
    full = np.full((1, 40, 40), 10.0, dtype=np.float32)
    acc.add(full, np.ones((40, 40), dtype=bool))
    sparse = np.full((1, 40, 40), 500.0, dtype=np.float32)
    few = np.zeros((40, 40), dtype=bool)
    few[0, :10] = True  # 10 valid pixels against 1,600
    acc.add(sparse, few)
    (stats,) = acc.result(["x"])
    assert stats.p98 == 10.0 and stats.n_pixels == 1610


def test_no_valid_pixel_gives_no_statistics() -> None:
    acc = BandStatisticsAccumulator(2, "uint16")
    acc.add(np.zeros((2, 4, 4), dtype=np.uint16), np.zeros((4, 4), dtype=bool))
    assert acc.result(["a", "b"]) == []


def test_weighted_percentiles_follow_the_weights() -> None:
    values = np.array([[1.0], [2.0], [3.0]])
    assert weighted_percentiles(values, np.array([1.0, 1.0, 1.0]), [50])[0, 0] == 2.0
    assert weighted_percentiles(values, np.array([10.0, 1.0, 1.0]), [50])[0, 0] == 1.0
    assert weighted_percentiles(values, np.array([1.0, 1.0, 10.0]), [50])[0, 0] == 3.0
