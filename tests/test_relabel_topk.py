"""Relabel's fast softmax + top-k (:func:`ddpipe.pipeline.relabel.softmax_top_k`) gives labelstore's
reference ``top_k(softmax_at(logits, T), k)`` bit for bit: the stored bytes do not depend on which ran."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from ddpipe.labelstore import softmax_at, top_k  # noqa: E402
from ddpipe.pipeline.relabel import softmax_top_k  # noqa: E402


def _same(logits, t, k):
    ri, rv = top_k(softmax_at(logits, t), k)
    fi, fv = softmax_top_k(logits, t, k)
    assert fi.dtype == ri.dtype and fv.dtype == rv.dtype and fi.shape == ri.shape
    assert np.array_equal(fi, ri)
    assert np.array_equal(fv.view(np.uint32), rv.view(np.uint32))


@pytest.mark.parametrize("scale,t,k", [(0.3, 20.0, 100), (3.0, 1.0, 100), (30.0, 1.0, 10), (0.01, 20.0, 100),
                                       (200.0, 0.5, 50), (1.0, 4.0, 1)])
def test_fast_top_k_equals_the_reference(scale, t, k):
    rng = np.random.default_rng(int(scale * 100) + k)
    _same((rng.standard_normal((300, 2000)) * scale).astype(np.float32), t, k)


def test_ties_and_near_ties_take_the_reference_rule():
    """Exact ties (quantised logits), constant rows, a peaked row with underflowing tails, and logits one
    float32 ulp apart around the k-th place: the lower class index first, as the reference says."""
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((200, 1500)).astype(np.float32) * 4) / 4  # many equal logits
    x[0] = 0.0
    x[1] = -1e4
    x[1, 7] = 50.0
    base = np.float32(1.5)
    x[2] = np.nextafter(base, np.float32(0), dtype=np.float32)
    x[2, ::3] = base
    x[3, :40] = np.nextafter(base, np.float32(9), dtype=np.float32)
    for t, k in ((1.0, 10), (20.0, 100), (0.25, 32)):
        _same(x, t, k)


def test_small_rows_k_near_c_and_bad_logits_use_the_reference():
    rng = np.random.default_rng(4)
    _same(rng.standard_normal((50, 10)).astype(np.float32), 2.0, 3)
    _same(rng.standard_normal((50, 400)).astype(np.float32), 2.0, 390)
    bad = rng.standard_normal((4, 1000)).astype(np.float32)
    bad[2, 5] = np.nan
    with pytest.raises(Exception, match="NaN or infinity"):
        softmax_top_k(bad, 1.0, 10)


def test_leading_dimensions_and_one_row():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 70, 1000)).astype(np.float32)
    _same(x, 3.0, 20)
    _same(x[0, 0], 3.0, 20)
