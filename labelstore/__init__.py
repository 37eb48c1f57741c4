"""ddpipe.labelstore: the Zarr v3 soft-label store (format 3, or 4 on request; reads formats 1 and 2 too; ``docs/format.md``). No torch here.

Write with :func:`create_store` / :func:`open_writer`, read with :func:`open_store`, shrink with
:func:`prune_store` (or plan the kept units before relabel with :func:`plan_units`), check with
:func:`verify_store`, summarise with :func:`store_info`. Name a store's location with
:func:`store_location` (relative paths, ``~``, ``file://`` and other URLs, in one normal form) and
refuse to write an output onto its input with :func:`check_distinct_locations`.
"""

from .codecs import ValueCodec, get_codec, list_codecs, register_codec
from .errors import (
    ChunkCorruptError,
    FieldsMismatchError,
    FormatVersionError,
    ImageSetMismatchError,
    IncompleteUnitError,
    MetadataEditedError,
    MisplacedShardError,
    NotAStoreError,
    SameLocationError,
    SpecError,
    StoredValueError,
    StoreError,
    StoreExistsError,
    StoreIOError,
)
from .fields import FieldsFn, encode_fields, fields_digest
from .info import store_info
from .location import check_distinct_locations, is_url, locations_overlap, results_path, same_location, store_location, \
    write_results
from .plan import plan_units
from .prune import prune_store
from .reader import Slab, StoreReader, UnitData, open_store
from .spec import FORMAT_VERSION, MIX_KINDS, StoreSpec, full_plan
from .topk import dense_logits, densify, logit_probs, logsumexp_at, softmax_at, top_k
from .verify import verify_store
from .unit import Unit
from .writer import StoreWriter, create_store, open_writer

__all__ = [
    "FORMAT_VERSION",
    "FieldsFn",
    "MIX_KINDS",
    "ChunkCorruptError",
    "FieldsMismatchError",
    "FormatVersionError",
    "ImageSetMismatchError",
    "IncompleteUnitError",
    "MetadataEditedError",
    "MisplacedShardError",
    "NotAStoreError",
    "SameLocationError",
    "StoredValueError",
    "StoreIOError",
    "Slab",
    "SpecError",
    "StoreError",
    "StoreExistsError",
    "StoreReader",
    "StoreSpec",
    "StoreWriter",
    "Unit",
    "UnitData",
    "ValueCodec",
    "check_distinct_locations",
    "is_url",
    "create_store",
    "dense_logits",
    "encode_fields",
    "fields_digest",
    "densify",
    "full_plan",
    "get_codec",
    "list_codecs",
    "locations_overlap",
    "logit_probs",
    "logsumexp_at",
    "open_store",
    "open_writer",
    "plan_units",
    "prune_store",
    "register_codec",
    "results_path",
    "same_location",
    "softmax_at",
    "store_info",
    "store_location",
    "write_results",
    "top_k",
    "verify_store",
]
