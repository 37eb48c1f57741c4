"""Errors raised by ``ddpipe.synth``: each message says what was expected, what was found and the fix."""

from ddpipe.errors import DDPipeError

__all__ = ["SynthError", "UnknownMethodError", "UnknownLossError", "SynthConfigError", "TeacherError", "RunStateError"]


class SynthError(DDPipeError):
    """Raised for any user-fixable problem in a recover or selection run."""


class UnknownMethodError(SynthError, ValueError):
    """Raised when a method or recipe name is not registered (the message lists the valid names)."""


class UnknownLossError(SynthError, ValueError):
    """Raised when a config names a loss term that is not registered."""


class SynthConfigError(SynthError, ValueError):
    """Raised when a config or its inputs cannot work together (bad ipc, missing real data, bad option)."""


class TeacherError(SynthError):
    """Raised when a teacher lacks what a loss term needs (no BatchNorm, no classifier, no embedding)."""


class RunStateError(SynthError):
    """Raised when an output directory holds a different run (other config, teachers or counts)."""
