"""The store spec: what a label store holds, validated from untrusted input.

A :class:`StoreSpec` is written into the group attributes of every store (``docs/format.md``) and
read back with :meth:`StoreSpec.from_dict`. Each field is checked by a small ``parse_*`` function
that says what it expected and what it found.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from .codecs import get_codec
from .errors import SpecError
from .packing import INDEX_CODINGS

FORMAT_VERSION = 3
"""The on-disk format this code writes (``docs/format.md``). Version 2 added ``sample_cutout_fill``;
version 3 binds content: a store id and a checksum in the attributes, a commit record per shard
holding the store id, shard, unit range and each array object's SHA-256."""

READ_FORMAT_VERSIONS = (1, 2, 3, 4)
"""The formats this code reads; any other version is refused. Version-1 stores have no
``sample_cutout_fill``: their per-sample colour is the augmentation record's constant ``fill``.
Version-1 and -2 stores have one-byte commit flags and no content binding."""

WRITE_FORMAT_VERSIONS = (3, 4)
"""The formats a writer writes: 3 (the default) or 4 when the spec asks (``StoreSpec(format_version=4)``):
class indices bit-packed, the quantised ``abs*`` value codecs, crops on their pixel grid (``crop_grid``)."""

PACKED_FORMAT_VERSION = 4
"""The first format with bit-packed ``label_index`` and ``crop_grid`` crops."""

BOUND_FORMAT_VERSION = 3
"""The first format with content binding (store id, attribute checksum, commit records)."""

MIX_KINDS = ("none", "cutmix", "mixup")
"""Stored as ``unit_mix_kind`` = the position in this tuple."""

PRUNE_GRANULARITIES = ("batch", "epoch")

VALUE_KINDS = ("probs", "logits")
"""What ``label_value`` holds: top-k probabilities at ``temperature`` (``probs``), or the teacher's
top-k logits with each row's log-sum-exp at ``temperature`` in ``label_lse`` (``logits``), so the
training temperature is chosen when training (``docs/format.md`` §5)."""

OPTIONAL_SPEC_FIELDS = {"value_kind": "probs", "exact_fields": False, "aux_fields": (), "format_version": FORMAT_VERSION,
                        "crop_grid": 0, "derived_fields": False, "index_coding": "packed"}
"""Spec fields written into the attributes only when they differ from these defaults, so stores
that do not use them keep exactly the attributes they had before the fields existed."""


def parse_aux_fields(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise SpecError(f"aux_fields must be a list of names, got {value!r}")
    names = tuple(value)
    if any(not isinstance(n, str) or not n for n in names) or len(set(names)) != len(names):
        raise SpecError(f"aux_fields must be distinct non-empty strings, got {value!r}")
    return names


def parse_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise SpecError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def parse_nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 0:
        raise SpecError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def parse_temperature(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise SpecError(f"temperature must be a positive number, got {value!r}") from None
    if not math.isfinite(t) or t <= 0:
        raise SpecError(f"temperature must be a positive number, got {value!r}")
    return t


def parse_json_mapping(name: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{name} must be a mapping of JSON values, got {type(value).__name__}")
    try:
        return json.loads(json.dumps(dict(value), sort_keys=True))
    except (TypeError, ValueError) as e:
        raise SpecError(f"{name} must hold only JSON values: {e}") from None


def parse_hash(name: str, value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpecError(f"{name} must be a string (a content hash), got {value!r}")
    return value


def parse_pruning(value: Any) -> dict | None:
    """``None`` for an unpruned store, else ``{"keep", "granularity", "seed", "source_units"}``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise SpecError(f"pruning must be null or a mapping, got {value!r}")
    keep = float(value.get("keep", -1))
    if not 0 < keep <= 1:
        raise SpecError(f"pruning.keep must be in (0, 1], got {value.get('keep')!r}")
    gran = value.get("granularity")
    if gran not in PRUNE_GRANULARITIES:
        raise SpecError(f"pruning.granularity must be one of {PRUNE_GRANULARITIES}, got {gran!r}")
    return {
        "keep": keep,
        "granularity": gran,
        "seed": parse_nonnegative_int("pruning.seed", value.get("seed", 0)),
        "source_units": parse_positive_int("pruning.source_units", value.get("source_units", 1)),
    }


CHUNK_SAMPLES = 2048
"""Target samples per inner chunk of the per-slot arrays (``layout.inner_chunk_units``)."""


def default_units_per_shard(batches_per_epoch: int, batch_size: int) -> int:
    """One epoch's batches, rounded up to a whole number of inner chunks of about
    :data:`CHUNK_SAMPLES` samples, so small batches still get compressible chunks (Tiny-ImageNet's
    157 batches of 64 make shards of 160 units in chunks of 32; ImageNet's 49 batches of 1024
    make shards of 50 in chunks of 2)."""
    per_chunk = max(1, min(CHUNK_SAMPLES // batch_size, batches_per_epoch))
    return -(-batches_per_epoch // per_chunk) * per_chunk


@dataclass(frozen=True)
class StoreSpec:
    """Everything that fixes a store's shape and meaning. Written once, at creation."""

    num_samples: int  # images in the synthetic set (sample ids are 0 .. num_samples-1)
    num_classes: int  # width of the teacher's output
    epochs: int  # student training epochs the labels cover
    batch_size: int  # relabel batch = replay batch; the last batch of an epoch may be short
    k: int  # soft-label entries kept per sample (k = num_classes keeps everything)
    value_codec: str = "fp16"  # how top-k probabilities are stored: fp32 | fp16 | uint8, format 4 also abs256 … abs8192(d)
    temperature: float = 1.0  # stored values are softmax(logits / temperature)
    seed: int = 0  # seed of the replay schedule (order, crops, flips, mixes)
    augmentation: dict = field(default_factory=dict)  # crop scale/ratio, flip, mix, output size …
    image_set_hash: str = ""  # content hash of the image set the crops refer to
    teacher_hash: str = ""  # hash of the teacher weights that produced the labels
    units_per_shard: int = 0  # units per writer shard; 0 = about one epoch (default_units_per_shard)
    pruning: dict | None = None  # None, or how the units were chosen (see parse_pruning)
    value_kind: str = "probs"  # probs | logits: what label_value holds (VALUE_KINDS)
    exact_fields: bool = False  # crops as float32 fractions and lambda as float64, exactly as given
    aux_fields: tuple = ()  # names of per-sample float64 values kept in sample_aux (an importer's extra fields)
    format_version: int = FORMAT_VERSION  # the format written: 3, or 4 (packed indices, abs* codecs, crop_grid)
    crop_grid: int = 0  # format 4: crops stored as integer pixels of a source image this many pixels a side; 0 = 1/65535 fixed point
    index_coding: str = "packed"  # format 4: class indices bit-packed (packed) or class-sorted gaps (gaps), packing.py
    derived_fields: bool = False  # format 4: the schedule fields (ids, crops, flips, cutout, mix) are not stored but
    # recomputed from the replay schedule by the reader, checked against a per-unit digest (fields.py)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "num_samples", parse_positive_int("num_samples", self.num_samples))
        set_(self, "num_classes", parse_positive_int("num_classes", self.num_classes))
        set_(self, "epochs", parse_positive_int("epochs", self.epochs))
        set_(self, "batch_size", parse_positive_int("batch_size", self.batch_size))
        set_(self, "k", parse_positive_int("k", self.k))
        if self.k > self.num_classes:
            raise SpecError(f"k must be at most num_classes ({self.num_classes}), got k={self.k}")
        if self.num_classes > 2**32 - 1:
            raise SpecError(f"num_classes must be below 2**32, got {self.num_classes}")
        if self.num_samples > 2**32 - 2:
            raise SpecError(f"num_samples must be below 2**32 - 1, got {self.num_samples}")
        get_codec(self.value_codec)
        set_(self, "temperature", parse_temperature(self.temperature))
        set_(self, "seed", parse_nonnegative_int("seed", self.seed))
        set_(self, "augmentation", parse_json_mapping("augmentation", self.augmentation))
        set_(self, "image_set_hash", parse_hash("image_set_hash", self.image_set_hash))
        set_(self, "teacher_hash", parse_hash("teacher_hash", self.teacher_hash))
        ups = parse_nonnegative_int("units_per_shard", self.units_per_shard)
        set_(self, "units_per_shard", ups or default_units_per_shard(self.batches_per_epoch, self.batch_size))
        set_(self, "pruning", parse_pruning(self.pruning))
        if self.value_kind not in VALUE_KINDS:
            raise SpecError(f"value_kind must be one of {VALUE_KINDS}, got {self.value_kind!r}")
        if self.value_kind == "logits" and get_codec(self.value_codec).dtype.kind != "f":
            raise SpecError(f"a logit store takes the fp16 or fp32 codec, not {self.value_codec!r} (it quantises probabilities)")
        if not isinstance(self.exact_fields, (bool, np.bool_)):
            raise SpecError(f"exact_fields must be true or false, got {self.exact_fields!r}")
        set_(self, "exact_fields", bool(self.exact_fields))
        set_(self, "aux_fields", parse_aux_fields(self.aux_fields))
        fv = self.format_version
        if isinstance(fv, bool) or not isinstance(fv, (int, np.integer)) or int(fv) not in WRITE_FORMAT_VERSIONS:
            raise SpecError(f"format_version must be one of {WRITE_FORMAT_VERSIONS}, got {fv!r}")
        set_(self, "format_version", int(fv))
        codec = get_codec(self.value_codec)
        if codec.min_format > self.format_version:
            raise SpecError(f"value codec {self.value_codec!r} needs format_version {codec.min_format}, got {self.format_version}")
        set_(self, "crop_grid", parse_nonnegative_int("crop_grid", self.crop_grid))
        if self.crop_grid and (self.format_version < PACKED_FORMAT_VERSION or self.exact_fields or self.crop_grid > 65535):
            raise SpecError(f"crop_grid (integer source pixels, 1..65535) needs format_version 4 and no exact_fields, "
                            f"got crop_grid={self.crop_grid}, format_version={self.format_version}, exact_fields={self.exact_fields}")
        if self.index_coding not in INDEX_CODINGS:
            raise SpecError(f"index_coding must be one of {INDEX_CODINGS}, got {self.index_coding!r}")
        if self.index_coding != "packed" and self.format_version < PACKED_FORMAT_VERSION:
            raise SpecError(f"index_coding {self.index_coding!r} needs format_version 4, got {self.format_version}")
        if not isinstance(self.derived_fields, (bool, np.bool_)):
            raise SpecError(f"derived_fields must be true or false, got {self.derived_fields!r}")
        set_(self, "derived_fields", bool(self.derived_fields))
        if self.derived_fields and (self.format_version < PACKED_FORMAT_VERSION or self.exact_fields):
            raise SpecError("derived_fields (schedule fields recomputed from the replay schedule) needs format_version 4 "
                            f"and no exact_fields (imported fields are not a schedule's), got format_version={self.format_version}, "
                            f"exact_fields={self.exact_fields}")

    # --- derived shape -------------------------------------------------------------------
    @property
    def batches_per_epoch(self) -> int:
        return -(-self.num_samples // self.batch_size)

    @property
    def last_batch_size(self) -> int:
        return self.num_samples - (self.batches_per_epoch - 1) * self.batch_size

    @property
    def full_units(self) -> int:
        """Units of the unpruned schedule: epochs x batches_per_epoch."""
        return self.epochs * self.batches_per_epoch

    @property
    def index_dtype(self) -> np.dtype:
        """uint16 up to 65,535 classes, uint32 above."""
        return np.dtype("<u2") if self.num_classes <= 65535 else np.dtype("<u4")

    @property
    def index_bits(self) -> int:
        """Format 4: bits of one packed class index, ``max(1, ceil(log2(num_classes)))``."""
        return max(1, (self.num_classes - 1).bit_length())

    @property
    def packed_index_bytes(self) -> int:
        """Format 4: bytes of one sample's packed top-k indices, ``ceil(k * index_bits / 8)``."""
        return -(-self.k * self.index_bits // 8)

    @property
    def slot_dtype(self) -> np.dtype:
        """dtype of in-batch positions (the mix permutation)."""
        return np.dtype("<u2") if self.batch_size <= 65536 else np.dtype("<u4")

    @property
    def crop_scale(self) -> int:
        """What a stored integer crop coordinate is divided by: ``crop_grid``, or 65535 (fixed point)."""
        return self.crop_grid or 65535

    def batch_count(self, batch: int) -> int:
        """Valid samples in batch ``batch`` of an epoch (the last one may be short)."""
        return self.last_batch_size if batch == self.batches_per_epoch - 1 else self.batch_size

    # --- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        for name, default in OPTIONAL_SPEC_FIELDS.items():
            if d[name] == default:
                del d[name]
        if "aux_fields" in d:
            d["aux_fields"] = list(d["aux_fields"])
        return d

    @classmethod
    def from_dict(cls, data: Any) -> "StoreSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"a store spec must be a mapping, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec fields {unknown}; known fields are {sorted(known)}")
        missing = [f for f in ("num_samples", "num_classes", "epochs", "batch_size", "k") if f not in data]
        if missing:
            raise SpecError(f"store spec is missing required fields {missing}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "StoreSpec":
        return StoreSpec.from_dict({**self.to_dict(), **changes})


def full_plan(spec: StoreSpec) -> np.ndarray:
    """Every (epoch, batch) of the schedule in training order: int64 ``[epochs*batches, 2]``."""
    e, b = np.divmod(np.arange(spec.full_units, dtype=np.int64), spec.batches_per_epoch)
    return np.stack([e, b], axis=1)


def parse_plan(spec: StoreSpec, plan: Any) -> np.ndarray:
    """Check a unit plan: (epoch, batch) rows, in range, strictly increasing (training order)."""
    if plan is None:
        return full_plan(spec)
    arr = np.asarray(plan)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise SpecError(f"a unit plan must be a non-empty integer array [units, 2] of (epoch, batch), got shape {arr.shape}")
    arr = arr.astype(np.int64)
    e, b = arr[:, 0], arr[:, 1]
    if e.min() < 0 or e.max() >= spec.epochs or b.min() < 0 or b.max() >= spec.batches_per_epoch:
        raise SpecError(
            f"unit plan holds (epoch, batch) outside [0, {spec.epochs}) x [0, {spec.batches_per_epoch})"
        )
    flat = e * spec.batches_per_epoch + b
    if np.any(np.diff(flat) <= 0):
        raise SpecError("unit plan must list each (epoch, batch) once, in training order")
    return arr
