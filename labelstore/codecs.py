"""Value codecs: how the top-k probabilities of one sample are stored.

A codec is a small frozen record registered by name. ``encode`` takes float32 probabilities
``[..., k]`` and returns the stored array plus, for codecs that need one, a float32 per-row
scale ``[...]``; ``decode`` inverts it. ``max_error`` bounds the absolute error of one entry, so
tests and ``verify`` can hold a codec to its promise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import SpecError

_CODECS: dict[str, "ValueCodec"] = {}


@dataclass(frozen=True)
class ValueCodec:
    name: str  # the value of StoreSpec.value_codec
    dtype: np.dtype  # dtype of the stored ``label_value`` array
    has_scale: bool  # stores a float32 per-row scale in ``label_scale``
    lossless: bool  # float32 input comes back bit-exact
    min_format: int = 1  # the first store format that knows this codec (docs/format.md §5)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        values = np.asarray(values, dtype=np.float32)
        if not self.has_scale:
            return values.astype(self.dtype), None
        # uint8: one scale per row, the row maximum, so the top-1 value is stored exactly as 255.
        scale = values.max(axis=-1, initial=0.0).astype(np.float32)
        safe = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.rint(values / safe[..., None] * 255.0)
        return np.clip(q, 0, 255).astype(np.uint8), scale

    def decode(self, stored: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        if not self.has_scale:
            return np.asarray(stored).astype(np.float32)
        if scale is None:
            raise SpecError(f"codec {self.name!r} needs the per-row scale to decode")
        return np.asarray(stored, dtype=np.float32) * (np.asarray(scale, dtype=np.float32)[..., None] / 255.0)

    def max_error(self, values: np.ndarray) -> np.ndarray:
        """Upper bound of ``|decode(encode(v)) - v|`` per entry of ``values`` in [0, 1]."""
        values = np.abs(np.asarray(values, dtype=np.float32))
        if self.lossless:
            return np.zeros_like(values)
        if self.has_scale:
            row_max = values.max(axis=-1, keepdims=True, initial=0.0)
            return np.broadcast_to(row_max / 510.0 + 1e-7, values.shape)
        eps = np.finfo(self.dtype).eps  # relative spacing; subnormals below 2**-14 have 2**-24
        return values * eps + float(np.finfo(self.dtype).smallest_subnormal)

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.str, "has_scale": self.has_scale}


def register_codec(codec: ValueCodec) -> ValueCodec:
    _CODECS[codec.name] = codec
    return codec


def get_codec(name: str) -> ValueCodec:
    try:
        return _CODECS[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown value codec {name!r}; choose one of {list_codecs()}") from None


def list_codecs() -> list[str]:
    return sorted(_CODECS)


@dataclass(frozen=True)
class StepCodec(ValueCodec):
    """Format 4: probabilities on a fixed absolute grid of step ``2**-bits``, ``q = rint(p * 2**bits)``
    (``0 <= q <= 2**bits``, round half to even), decoded as ``q / 2**bits``: every decoded entry is
    within ``2**-(bits + 1)`` of the float32 input, whatever the row. ``delta``: stored as the
    differences of consecutive ``q`` along the row (``q[j-1] - q[j]``; the first entry as it is)
    modulo ``2**(8 * itemsize)``; a
    descending top-k row then holds small numbers that compress well. Decoding is the running sum."""

    bits: int = 8
    delta: bool = False

    @property
    def _modulus(self) -> int:
        return 2 ** (8 * self.dtype.itemsize)

    @property
    def bound(self) -> float:
        """The largest absolute error of one decoded entry."""
        return 2.0 ** -(self.bits + 1)

    def encode(self, values: np.ndarray) -> tuple[np.ndarray, None]:
        values = np.asarray(values, dtype=np.float32)
        q = np.clip(np.rint(values.astype(np.float64) * 2.0**self.bits), 0, 2**self.bits).astype(np.int64)
        if self.delta and q.shape[-1] > 1:
            q[..., 1:] = q[..., :-1] - q[..., 1:]
        return (q % self._modulus).astype(self.dtype), None

    def decode(self, stored: np.ndarray, scale: np.ndarray | None = None) -> np.ndarray:
        q = np.asarray(stored).astype(np.int64)
        if self.delta and q.shape[-1] > 1:
            first = q[..., :1]
            q = np.concatenate([first, first - np.cumsum(q[..., 1:], axis=-1)], axis=-1) % self._modulus
        return (q.astype(np.float64) / 2.0**self.bits).astype(np.float32)

    def max_error(self, values: np.ndarray) -> np.ndarray:
        return np.full(np.shape(values), self.bound, dtype=np.float32)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "bits": self.bits, "delta": self.delta}


register_codec(ValueCodec("fp32", np.dtype("<f4"), has_scale=False, lossless=True))
register_codec(ValueCodec("fp16", np.dtype("<f2"), has_scale=False, lossless=False))
register_codec(ValueCodec("uint8", np.dtype("u1"), has_scale=True, lossless=False))
# Format 4's quantised probabilities: the name says the bound on each decoded entry ("abs512": within
# 1/512), "d" the delta form. Bits of the grid: 7 (uint8), 8, 10, 12 (uint16, whose unused high
# bit planes the bit-shuffled zstd stores as nearly nothing).
for _bits in (7, 8, 10, 12):
    for _delta in (False, True):
        register_codec(StepCodec(
            f"abs{2 ** (_bits + 1)}{'d' if _delta else ''}", np.dtype("u1") if _bits <= 7 else np.dtype("<u2"),
            has_scale=False, lossless=False, min_format=4, bits=_bits, delta=_delta))
