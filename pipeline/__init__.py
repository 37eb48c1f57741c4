"""ddpipe.pipeline: replay schedules, image sources and the DALI / torch loaders (``docs/pipeline.md``).

Schedules and sources need only numpy (and Pillow); the loaders, the relabel step and the SRe2L
adapter need torch and are imported on first use, so a DALI worker process that only needs a
source and a feed does not pay for importing torch. The relabel step is
``from ddpipe.pipeline.relabel import relabel`` (the function shares its module's name).
"""

from __future__ import annotations

import importlib

from ..labelstore import Unit  # the one record of a unit's parameters (and labels)
from .errors import ImageSetMismatchError, LoaderSpecError, SourceError
from .feed import ScheduleFeed, StoreFeed
from .schedule import (
    RECIPES,
    Schedule,
    ScheduleConfig,
    crop_pixels,
    quantise_crops,
    recipe,
    replay_units,
    shard_for_rank,
)
from .sources import ArraySource, ImageFolderSource, ImageSource, WebDatasetSource, open_source

_LAZY = {
    "Batch": "ddpipe.pipeline.loader",
    "BatchMeta": "ddpipe.pipeline.loader",
    "Loader": "ddpipe.pipeline.loader",
    "LoaderConfig": "ddpipe.pipeline.loader",
    "make_loader": "ddpipe.pipeline.loader",
    "make_relabel_loader": "ddpipe.pipeline.loader",
    "torch_view": "ddpipe.pipeline.loader",
    "relabel_spec": "ddpipe.pipeline.relabel",
    "SRe2LBatches": "ddpipe.pipeline.sre2l_adapter",
    "apply_mix": "ddpipe.pipeline.mix",
    "init_distributed": "ddpipe.pipeline.distributed",
    "DistInfo": "ddpipe.pipeline.distributed",
    "dali_available": "ddpipe.pipeline.dali_backend",
    "CachedSource": "ddpipe.pipeline.cache",
    "build_cache": "ddpipe.pipeline.cache",
    "open_cache": "ddpipe.pipeline.cache",
    "BatchedBackend": "ddpipe.pipeline.batched",
}


def __getattr__(name: str):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ddpipe.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = sorted(
    [
        "ArraySource", "ImageFolderSource", "ImageSetMismatchError", "ImageSource", "LoaderSpecError", "RECIPES",
        "Schedule", "ScheduleConfig", "ScheduleFeed", "SourceError", "StoreFeed", "Unit", "WebDatasetSource",
        "crop_pixels", "open_source", "quantise_crops", "recipe", "replay_units", "shard_for_rank", *_LAZY,
    ]
)
