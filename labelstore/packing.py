"""Format 4's bit-packed class indices (``docs/format.md`` §3).

Each sample's ``k`` indices are written as ``bits``-bit unsigned integers, most significant bit
first, one after the other in the row's order, the row padded with zero bits to a whole byte: byte
``i`` holds bits ``8i … 8i+7`` of that stream, the first of them in its most significant bit
(numpy's ``packbits`` with ``bitorder="big"``). Rows are packed on their own, so one sample's
indices are ``ceil(k * bits / 8)`` bytes that decode without their neighbours.
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
