"""What every phase module shares: library entry points from CLI defaults, and torch's thread count."""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Callable, Sequence


def parse_with_overrides(add_arguments: Callable, argv: Sequence[str], overrides: dict, phase: str) -> argparse.Namespace:
    """The phase's parsed defaults for ``argv`` (its required flags) with ``overrides`` applied."""
    ns = add_arguments(argparse.ArgumentParser()).parse_args(list(argv))
    for k, v in overrides.items():
        if not hasattr(ns, k):
            raise TypeError(f"{phase} has no option {k!r}")
        setattr(ns, k, v)
    return ns


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (``None``: torch's choice), restoring the previous count."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
