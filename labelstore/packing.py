"""Format 4's class-index codings (``docs/format.md`` §3.1): bit-packed, or class-sorted gaps.

**packed** (the default):

Each sample's ``k`` indices are written as ``bits``-bit unsigned integers, most significant bit
first, one after the other in the row's order, the row padded with zero bits to a whole byte: byte
``i`` holds bits ``8i … 8i+7`` of that stream, the first of them in its most significant bit
(numpy's ``packbits`` with ``bitorder="big"``). Rows are packed on their own, so one sample's
indices are ``ceil(k * bits / 8)`` bytes that decode without their neighbours.

**gaps**: each sample's top-k in ascending class order (its values permuted alike), stored as the
first index and then the differences of consecutive ones, in the index dtype: a sorted set of ``k`` of
``C`` classes is about ``log2(C / k) + 1.5`` bits an entry once bit-shuffled and compressed, against
``log2(C)`` packed (the top-k's probability order is the values' own, so nothing is lost). A reader
returns the top-k in class order.
"""

from __future__ import annotations

import numpy as np


def pack_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    """uint8 ``[..., ceil(k * bits / 8)]`` from non-negative integers ``[..., k]`` below ``2**bits``."""
    idx = np.asarray(indices).astype(np.uint32)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    stream = ((idx[..., None] >> shifts) & 1).astype(np.uint8)  # [..., k, bits], MSB first
    return np.packbits(stream.reshape(*idx.shape[:-1], -1), axis=-1, bitorder="big")


def unpack_indices(packed: np.ndarray, bits: int, k: int, dtype=np.uint32) -> np.ndarray:
    """The ``[..., k]`` integers of :func:`pack_indices`' bytes, as ``dtype``.

    Index ``j`` starts at bit ``j * bits``; the 3 bytes from its first byte (5 above 17 bits) hold it
    whatever its offset: read them as one big-endian number, shift and mask."""
    raw = np.asarray(packed, dtype=np.uint8)
    lead, width = raw.shape[:-1], raw.shape[-1]
    nb = 3 if bits <= 17 else 5
    word = np.uint32 if nb == 3 else np.uint64
    row = np.zeros((*lead, width + nb), np.uint8)  # zero bytes past the end: the last field's window
    row[..., :width] = raw
    off = np.arange(k, dtype=np.int64) * bits
    window = row[..., (off // 8)[:, None] + np.arange(nb)]  # [..., k, nb]
    acc = window[..., 0].astype(word)
    for t in range(1, nb):
        acc = (acc << word(8)) | window[..., t]
    shift = (nb * 8 - off % 8 - bits).astype(word)
    return ((acc >> shift) & word((1 << bits) - 1)).astype(dtype)


INDEX_CODINGS = ("packed", "gaps")
"""Format 4's ``index_coding`` values (``StoreSpec.index_coding``)."""


def class_order(indices: np.ndarray, *rows: np.ndarray) -> tuple[np.ndarray, ...]:
    """``indices [..., k]`` sorted ascending along the last axis, and each of ``rows`` (same shape)
    permuted alike."""
    order = np.argsort(indices, axis=-1, kind="stable")
    return tuple(np.take_along_axis(np.asarray(a), order, axis=-1) for a in (indices, *rows))


def to_gaps(sorted_indices: np.ndarray, dtype) -> np.ndarray:
    """The gap form of ascending ``sorted_indices [..., k]``: the first index, then the differences."""
    idx = np.asarray(sorted_indices).astype(np.int64)
    return np.diff(idx, axis=-1, prepend=np.zeros_like(idx[..., :1])).astype(dtype)


def from_gaps(gaps: np.ndarray, num_classes: int, dtype) -> np.ndarray:
    """The indices of :func:`to_gaps`' form; a running sum past the class count (damage) becomes
    ``num_classes``, which the reader's range check reports."""
    idx = np.cumsum(np.asarray(gaps).astype(np.int64), axis=-1)
    return np.minimum(idx, num_classes).astype(dtype)
