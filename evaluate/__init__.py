"""ddpipe.evaluate: datasets, models, squeeze (teacher training), and the shared train loop.

Attributes load on first use (``ddpipe.evaluate.load_dataset`` …), so importing the package, or
``ddpipe.evaluate.squeeze`` for its flags, does not import torch. See ``docs/evaluate.md``.
"""

from __future__ import annotations

import importlib

_LAZY = {
    # datasets
    "Dataset": "ddpipe.evaluate.datasets",
    "Split": "ddpipe.evaluate.datasets",
    "SplitDataset": "ddpipe.evaluate.datasets",
    "list_datasets": "ddpipe.evaluate.datasets",
    "load_dataset": "ddpipe.evaluate.datasets",
    "real_subset": "ddpipe.evaluate.datasets",
    "train_transform": "ddpipe.evaluate.datasets",
    "eval_transform": "ddpipe.evaluate.datasets",
    # models
    "create_model": "ddpipe.evaluate.models",
    "list_models": "ddpipe.evaluate.models",
    "register_model": "ddpipe.evaluate.models",
    "convert_to_classwise_bn": "ddpipe.evaluate.models",
    "class_labels": "ddpipe.evaluate.models",
    "collect_class_stats": "ddpipe.evaluate.models",
    # training
    "train_one_epoch": "ddpipe.evaluate.train",
    "validate": "ddpipe.evaluate.train",
    "build_optimizer": "ddpipe.evaluate.train",
    "build_scheduler": "ddpipe.evaluate.train",
    "build_loaders": "ddpipe.evaluate.train",
    "init_distributed": "ddpipe.evaluate.distributed",
    "is_main_process": "ddpipe.evaluate.distributed",
    "save_on_main": "ddpipe.evaluate.distributed",
    # squeeze
    "load_teacher": "ddpipe.evaluate.squeeze",
}

_ERRORS = ("EvaluateError", "DatasetNotFoundError", "UnknownDatasetError", "UnknownModelError", "ModelConfigError",
           "ClassCountMismatchError", "CheckpointError", "RunStateError")


def __getattr__(name: str):
    if name in _ERRORS:
        return getattr(importlib.import_module("ddpipe.evaluate.errors"), name)
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ddpipe.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = sorted([*_LAZY, *_ERRORS])
