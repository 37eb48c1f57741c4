"""ddpipe.evaluate: the phases (squeeze, recover, relabel, prune, train, show, demo), datasets, models,
teachers and the one training loop.

Every phase is a module with a frozen config, ``run(config) -> result`` and ``summary_text(result)``
(``docs/api.md``)::

    from . import squeeze
    result = squeeze.run(squeeze.SqueezeConfig(out="runs/teacher", dataset="digits", epochs=2))

The configs and results are also attributes of this package (``ddpipe.evaluate.SqueezeConfig`` …).
Attributes load on first use, so importing the package, or a phase module for its config, does not
import torch. See ``docs/evaluate.md``.
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
    "init_distributed": "ddpipe.pipeline.distributed",
    "is_main_process": "ddpipe.evaluate.distributed",
    "save_on_main": "ddpipe.evaluate.distributed",
    # teachers (one owner: ddpipe.evaluate.teacher)
    "Teacher": "ddpipe.evaluate.teacher",
    "open_teacher": "ddpipe.evaluate.teacher",
    "load_teacher": "ddpipe.evaluate.teacher",
    "write_teacher": "ddpipe.evaluate.teacher",
    # the phases' configs and results
    "SqueezeConfig": "ddpipe.evaluate.squeeze",
    "SqueezeResult": "ddpipe.evaluate.squeeze",
    "RecoverRunConfig": "ddpipe.evaluate.recover",
    "RecoverResult": "ddpipe.evaluate.recover",
    "RelabelConfig": "ddpipe.evaluate.relabel",
    "RelabelResult": "ddpipe.evaluate.relabel",
    "PruneConfig": "ddpipe.evaluate.prune",
    "PruneResult": "ddpipe.evaluate.prune",
    "TrainConfig": "ddpipe.evaluate.student",
    "TrainResult": "ddpipe.evaluate.student",
    "ShowConfig": "ddpipe.evaluate.show",
    "ShowResult": "ddpipe.evaluate.show",
    "InfoConfig": "ddpipe.evaluate.info",
    "InfoResult": "ddpipe.evaluate.info",
    "VerifyConfig": "ddpipe.evaluate.verify",
    "VerifyResult": "ddpipe.evaluate.verify",
    "DemoConfig": "ddpipe.evaluate.demo",
    "DemoResult": "ddpipe.evaluate.demo",
    "TrainingRun": "ddpipe.evaluate.loop",
}

# the phase modules: ``from ddpipe.evaluate import squeeze`` (``run``, its config, ``summary_text``)
PHASES = ("squeeze", "recover", "relabel", "prune", "student", "show", "demo", "info", "verify")

_ERRORS = ("EvaluateError", "DatasetNotFoundError", "UnknownDatasetError", "UnknownModelError", "ModelConfigError",
           "ClassCountMismatchError", "CheckpointError", "RunStateError", "SqueezeError", "RecoverError",
           "RelabelError", "PruneError", "TrainError", "ShowError", "DemoError", "TeacherError")


def __getattr__(name: str):
    if name in _ERRORS:
        return getattr(importlib.import_module("ddpipe.evaluate.errors"), name)
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'ddpipe.evaluate' has no attribute {name!r}")
    return getattr(importlib.import_module(mod), name)


__all__ = sorted([*_LAZY, *_ERRORS])
