"""Errors raised by ``ddpipe.evaluate``: each message says what was expected, what was found and the fix."""

from ddpipe.errors import DDPipeError


class EvaluateError(DDPipeError):
    """Raised for any user-fixable problem in datasets, models, checkpoints or a phase's flags."""


class DatasetNotFoundError(EvaluateError, FileNotFoundError):
    """Raised when a dataset's files are not where we looked; the message says how to get them."""


class UnknownDatasetError(EvaluateError, ValueError):
    """Raised when a dataset name is neither registered nor ``imagefolder:<path>`` nor a directory."""


class UnknownModelError(EvaluateError, ValueError):
    """Raised when a model name is not registered (the message lists close names)."""


class ModelConfigError(EvaluateError, ValueError):
    """Raised when a model cannot be built with the given arguments (e.g. too deep for the input size)."""


class ClassCountMismatchError(EvaluateError, ValueError):
    """Raised when a checkpoint's classifier and the dataset disagree on the number of classes."""


class CheckpointError(EvaluateError):
    """Raised when a checkpoint or state dict cannot be read or does not fit the model."""


class RunStateError(EvaluateError):
    """Raised when an output directory's state conflicts with the flags (existing run, changed config)."""


# --- one error class per phase: bad settings raise it when the phase's config is built ---------------------
class SqueezeError(EvaluateError):
    """Raised by ``ddpipe squeeze`` / :class:`~ddpipe.evaluate.squeeze.SqueezeConfig` for a bad setting."""


class RecoverError(EvaluateError):
    """Raised by ``ddpipe recover`` / :class:`~ddpipe.evaluate.recover.RecoverRunConfig` for a bad setting."""


class TrainError(EvaluateError):
    """Raised by ``ddpipe train`` / :class:`~ddpipe.evaluate.student.TrainConfig` for a bad setting."""


class ShowError(EvaluateError):
    """Raised by ``ddpipe show`` / :class:`~ddpipe.evaluate.show.ShowConfig` for a bad setting."""


class PruneError(EvaluateError):
    """Raised by ``ddpipe prune`` / :class:`~ddpipe.evaluate.prune.PruneConfig` for a bad setting."""


class DemoError(EvaluateError):
    """Raised by ``ddpipe demo`` / :class:`~ddpipe.evaluate.demo.DemoConfig` for a bad setting."""


class RelabelError(EvaluateError):
    """Raised by ``ddpipe relabel`` / :class:`~ddpipe.evaluate.relabel.RelabelConfig` for a bad setting."""


class TeacherError(EvaluateError):
    """Raised when a teacher cannot be built or loaded as given (:mod:`ddpipe.evaluate.teacher`)."""


class TeacherMismatchError(TeacherError):
    """Raised when a store was not labelled by the given teacher (recorded hash, or re-run top-k)."""
