"""ddpipe: soft-label storage, replay loaders and synthesis for large-scale dataset distillation.

Kept deliberately light: importing any subpackage (``ddpipe.labelstore`` …) runs this file.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
