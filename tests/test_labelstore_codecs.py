"""Every registered value codec passes one conformance suite; top-k and densify are exact."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ddpipe.labelstore import densify, get_codec, list_codecs, softmax_at, top_k

CODECS = list_codecs()


def prob_rows(max_rows=8, max_k=12):
    """Rows of top-k-like probabilities: non-negative, each row summing to at most 1."""
    return st.tuples(st.integers(1, max_rows), st.integers(1, max_k)).flatmap(
        lambda s: hnp.arrays(np.float64, (s[0], s[1] + 1), elements=st.floats(0, 1e6)).map(
            lambda a: (a / np.maximum(a.sum(1, keepdims=True), 1e-300))[:, : s[1]].astype(np.float32)
        )
    )


def test_the_codecs_are_registered():
    assert [c for c in CODECS if get_codec(c).min_format <= 3] == ["fp16", "fp32", "uint8"]
    # format 4's quantised probabilities, named by their bound: abs512 = within 1/512; "d" = delta form
    assert [c for c in CODECS if get_codec(c).min_format == 4] == sorted(
        f"abs{b}{d}" for b in (256, 512, 2048, 8192) for d in ("", "d"))


@pytest.mark.parametrize("name", CODECS)
@settings(max_examples=60, deadline=None)
@given(values=prob_rows())
def test_codec_round_trip_within_its_bound(name, values):
    codec = get_codec(name)
    stored, scale = codec.encode(values)
    assert stored.dtype == codec.dtype
    assert (scale is not None) == codec.has_scale
    back = codec.decode(stored, scale)
    assert back.dtype == np.float32 and back.shape == values.shape
    err = np.abs(back - values)
    assert np.all(err <= codec.max_error(values))
    if codec.lossless:
        assert np.array_equal(back, values)


@pytest.mark.parametrize("name", CODECS)
def test_codec_keeps_the_top1_and_order(name):
    rng = np.random.default_rng(0)
    p = softmax_at(rng.normal(0, 3, (200, 50)), 1.0)
    _, v = top_k(p, 10)
    codec = get_codec(name)
    back = codec.decode(*codec.encode(v))
    assert np.all(np.diff(back, axis=1) <= 0), "decoding must not reorder the top-k"
    if codec.has_scale:
        np.testing.assert_allclose(back[:, 0], v[:, 0], rtol=1e-6)


@settings(max_examples=80, deadline=None)
@given(
    probs=st.tuples(st.integers(1, 6), st.integers(1, 30)).flatmap(
        lambda s: hnp.arrays(np.float32, s, elements=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.125, 1e-3]))
    ),
    data=st.data(),
)
def test_top_k_matches_a_lexicographic_reference(probs, data):
    c = probs.shape[1]
    k = data.draw(st.integers(1, c))
    idx, val = top_k(probs, k)
    for row in range(probs.shape[0]):
        ref = sorted(range(c), key=lambda j: (-probs[row, j], j))[:k]  # value desc, index asc
        assert idx[row].tolist() == ref
        assert np.array_equal(val[row], probs[row, ref])


def test_softmax_at_temperature():
    z = np.array([[1.0, 2.0, 3.0]])
    for t in (0.5, 1.0, 20.0):
        e = np.exp(z / t)
        np.testing.assert_allclose(softmax_at(z, t), e / e.sum(), rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(values=prob_rows(max_k=8), c_extra=st.integers(0, 20), data=st.data())
def test_densify_is_marginal_smoothing(values, c_extra, data):
    n, k = values.shape
    c = k + c_extra
    idx = np.stack([data.draw(st.permutations(range(c)))[:k] for _ in range(n)])
    dense = densify(idx, values, c)
    assert dense.shape == (n, c) and dense.dtype == np.float32
    assert np.array_equal(np.take_along_axis(dense, idx, 1), values)
    if c_extra:
        mask = np.ones((n, c), bool)
        np.put_along_axis(mask, idx, False, 1)
        expected = np.maximum(0, 1 - values.sum(1, dtype=np.float32)) / np.float32(c - k)
        for r in range(n):
            assert np.all(dense[r][mask[r]] == expected[r])
        np.testing.assert_allclose(dense.sum(1), np.maximum(1, values.sum(1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["fp32", "fp16"])
def test_k_equal_classes_is_the_lossless_reference(name):
    rng = np.random.default_rng(1)
    p = softmax_at(rng.normal(0, 2, (64, 100)), 4.0)
    idx, val = top_k(p, 100)
    codec = get_codec(name)
    dense = densify(idx, codec.decode(*codec.encode(val)), 100)
    if name == "fp32":
        assert np.array_equal(dense, p)
    else:
        assert np.array_equal(dense, p.astype(np.float16).astype(np.float32))
