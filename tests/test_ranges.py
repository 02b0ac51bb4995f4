"""The one-pass activation histograms (int8/ranges.py: GrowingHistogram) against histograms
binned on the final range after the fact, on data whose range grows from photo to photo."""
from __future__ import annotations

import numpy as np
import pytest

from darknet2tflite.int8.ranges import FINE_BINS, HIST_BINS, GrowingHistogram, mse_range


def _photos(seed: int) -> list[np.ndarray]:
    """Leaky-ReLU-like activations per "photo": most values within a few units, a heavy
    tail, and a range that first is a constant, then grows by orders of magnitude."""
    rng = np.random.default_rng(seed)
    out = [np.zeros(5000, np.float32)]
    for scale in (0.01, 1.0, 3.0, 0.5, 40.0, 2.0, 900.0):
        v = rng.standard_normal(60000) * scale
        v = np.where(v < 0, 0.1 * v, v) + rng.standard_cauchy(60000) * 0.05 * scale
        out.append(v.astype(np.float32))
    return out


def _counted(photos: list[np.ndarray]) -> GrowingHistogram:
    h = GrowingHistogram()
    for v in photos:
        h.add(v.copy(), float(v.min()), float(v.max()))
    return h


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_growing_histogram_counts_every_value_in_its_own_bin(seed):
    photos = _photos(seed)
    h = _counted(photos)
    values = np.concatenate(photos).astype(np.float64)
    assert len(h.counts) <= FINE_BINS and h.counts.sum() == len(values)
    # the doublings merged whole bins: the counts are those of the final grid, up to the
    # values float32 arithmetic puts on the other side of a bin edge
    direct = np.bincount(np.floor((values - h.origin) / h.width).astype(np.int64),
                         minlength=len(h.counts))
    assert len(direct) == len(h.counts)
    assert np.abs(direct - h.counts).sum() <= 1e-3 * len(values)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_growing_histogram_rebinned_is_the_histogram_of_the_final_range(seed):
    photos = _photos(seed)
    values = np.concatenate(photos).astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    got = _counted(photos).over(lo, hi)
    ref, edges = np.histogram(values, bins=HIST_BINS, range=(lo, hi))
    assert got.sum() == ref.sum()
    # each final bin is off by at most the values within one fine bin of its two edges
    h = _counted(photos)
    assert (hi - lo) / HIST_BINS >= 16 * h.width
    sv = np.sort(values)
    near = (np.searchsorted(sv, edges + h.width, "right")
            - np.searchsorted(sv, edges - h.width, "left"))
    assert np.all(np.abs(got - ref) <= near[:-1] + near[1:])
    # and the MSE clipping range found on it is the one found on the exact histogram
    assert mse_range(got, lo, hi, 0.01) == pytest.approx(mse_range(ref, lo, hi, 0.01),
                                                         abs=(hi - lo) / 64)


def test_a_tensor_that_never_varies_has_no_histogram_range():
    h = GrowingHistogram()
    for _ in range(3):
        z = np.zeros(100, np.float32)
        h.add(z, 0.0, 0.0)
    assert h.counts.sum() == 300 and np.count_nonzero(h.counts) == 1
