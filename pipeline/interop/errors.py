"""The one error of the interop package: a label folder or store that cannot be imported or exported."""

from ddpipe.errors import DDPipeError


class InteropError(DDPipeError, ValueError):
    """A foreign label folder (or a store to export) is unreadable, inconsistent or refused; the
    message names the file and says why."""
