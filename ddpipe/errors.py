"""The root of ddpipe's error hierarchy. No imports: every package may depend on this file."""


class DDPipeError(Exception):
    """Raised for any error a user can fix: bad input, a damaged store, a mismatched image set.

    The CLI prints the message as one line and exits non-zero; any other exception is a bug.
    """
