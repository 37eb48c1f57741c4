"""ddpipe.labelstore: the Zarr v3 soft-label store (format 2; reads format 1 too; ``docs/format.md``). No torch here.

Write with :func:`create_store` / :func:`open_writer`, read with :func:`open_store`, shrink with
:func:`prune_store` (or plan the kept units before relabel with :func:`plan_units`), check with
:func:`verify_store`, summarise with :func:`store_info`.
"""

from ddpipe.labelstore.codecs import ValueCodec, get_codec, list_codecs, register_codec
from ddpipe.labelstore.errors import (
    ChunkCorruptError,
    FormatVersionError,
    ImageSetMismatchError,
    IncompleteUnitError,
    NotAStoreError,
    SpecError,
    StoreError,
    StoreExistsError,
)
from ddpipe.labelstore.info import store_info
from ddpipe.labelstore.prune import plan_units, prune_store
from ddpipe.labelstore.reader import Slab, StoreReader, UnitData, open_store
from ddpipe.labelstore.spec import FORMAT_VERSION, MIX_KINDS, StoreSpec, full_plan
from ddpipe.labelstore.topk import densify, softmax_at, top_k
from ddpipe.labelstore.verify import verify_store
from ddpipe.labelstore.writer import StoreWriter, Unit, create_store, open_writer

__all__ = [
    "FORMAT_VERSION",
    "MIX_KINDS",
    "ChunkCorruptError",
    "FormatVersionError",
    "ImageSetMismatchError",
    "IncompleteUnitError",
    "NotAStoreError",
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
    "create_store",
    "densify",
    "full_plan",
    "get_codec",
    "list_codecs",
    "open_store",
    "open_writer",
    "plan_units",
    "prune_store",
    "register_codec",
    "softmax_at",
    "store_info",
    "top_k",
    "verify_store",
]
