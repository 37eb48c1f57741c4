"""ddpipe.synth: recover (synthesis) methods and selection baselines, as configurations of one engine.

``recover(method, teachers=..., real=RealData(...), num_classes=..., ipc=..., mean=..., std=..., out=...)``
runs a recipe (``sre2l``, ``cda``, ``lpld``, ``gvbsm``, ``delt``, ``dm``, ``rded``, ``random``, ``herding``,
or ``family.tag``) and writes an ImageFolder plus ``manifest.json``. See docs/synth.md.
"""

from ._registry import (create_loss, create_method, default_recipe, is_method, list_losses, list_methods,
                                    method_doc, register_loss, register_method)
from .config import RecoverConfig
from .engine import (Batch, Engine, RealData, delt_schedule, delt_start_rounds, medium_order,
                                 rank_order, recover)
from .errors import RunStateError, SynthConfigError, SynthError, TeacherError, UnknownLossError, UnknownMethodError
from .losses import LossTerm, Step, densify_loss, dm_mean_loss
from .stats import collect_class_bn_stats, collect_conv_stats, module_hash, penultimate_features
from .select import herding_order
from .writer import MANIFEST, read_manifest, to_uint8
from . import sre2l, cda, lpld, gvbsm, delt, dm, rded, select  # noqa: F401  (register the recipes)

__all__ = [
    "Batch", "Engine", "LossTerm", "MANIFEST", "RealData", "RecoverConfig", "RunStateError", "Step",
    "SynthConfigError", "SynthError", "TeacherError", "UnknownLossError", "UnknownMethodError", "collect_class_bn_stats",
    "collect_conv_stats", "create_loss", "create_method", "default_recipe", "delt_schedule", "delt_start_rounds",
    "densify_loss", "dm_mean_loss", "herding_order", "is_method", "list_losses", "list_methods", "medium_order",
    "method_doc", "module_hash", "penultimate_features", "rank_order", "read_manifest", "recover", "register_loss",
    "register_method", "to_uint8",
]
