"""Where to compute, in one vocabulary for every phase and loader: parsing, checking and resolving device strings.

A device is one of

- ``auto``: a CUDA GPU when torch sees one, else the CPU;
- ``cpu``;
- ``cuda``: torch's current CUDA device; ``cuda:N``: GPU ``N``;
- ``gpu``: an alias of ``cuda`` (the loader's and ``ddpipe bench loader``'s older spelling).

:func:`parse_device` checks the spelling only (a config can name a GPU on a machine without
one); :func:`check_device` also checks that the GPU exists here; :func:`resolve_device` turns
``auto`` into ``cuda`` or ``cpu``; :func:`torch_device` gives the ``torch.device``. Every check
raises the caller's error class with one line. Nothing here imports torch at import time.
"""

from __future__ import annotations

import re

from .errors import LoaderSpecError

__all__ = ["DEVICES", "cuda_available", "parse_device", "check_device", "resolve_device", "device_index",
           "torch_device"]

DEVICES = "auto, cpu, cuda or cuda:N"
"""The vocabulary, as error messages and help texts spell it (``gpu`` is accepted as ``cuda``)."""

_PATTERN = re.compile(r"cuda(?::(\d+))?")


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU (False where torch is not installed)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def parse_device(error: type[Exception], name: str, device) -> str:
    """``device`` in its canonical spelling (``auto``, ``cpu``, ``cuda``, ``cuda:N``; ``gpu`` -> ``cuda``),
    or ``error`` naming ``name`` when it is not a device string. Does not look for a GPU."""
    if device == "gpu":
        return "cuda"
    if device in ("auto", "cpu") or (isinstance(device, str) and _PATTERN.fullmatch(device)):
        return device
    raise error(f"{name} must be {DEVICES}, got {device!r}")


def check_device(error: type[Exception], name: str, device) -> str:
    """:func:`parse_device`, and a GPU device only where such a GPU exists on this machine."""
    device = parse_device(error, name, device)
    m = _PATTERN.fullmatch(device)
    if m is None:
        return device
    if not cuda_available():
        raise error(f"{name} {device}: no CUDA GPU is available on this machine (CUDA is not available to torch); "
                    f"use {name} cpu or auto")
    import torch

    count = torch.cuda.device_count()
    if m.group(1) is not None and int(m.group(1)) >= count:
        raise error(f"{name} {device}: this machine has {count} CUDA GPU(s)")
    return device


def resolve_device(device, error: type[Exception] = LoaderSpecError, name: str = "device") -> str:
    """The device to compute on: ``cpu``, ``cuda`` or ``cuda:N`` (``auto`` -> ``cuda`` where a GPU is
    available, else ``cpu``), checked as :func:`check_device` does."""
    device = check_device(error, name, device)
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def device_index(device: str) -> int | None:
    """The GPU index a canonical device string names (``cuda:N`` -> N), None for ``cuda``, ``cpu`` and ``auto``."""
    m = _PATTERN.fullmatch(device)
    return int(m.group(1)) if m is not None and m.group(1) is not None else None


def torch_device(device="auto", error: type[Exception] = LoaderSpecError, name: str = "device"):
    """The ``torch.device`` of :func:`resolve_device` (``cuda`` without an index: torch's current device)."""
    import torch

    if isinstance(device, torch.device):
        return device
    device = resolve_device(device, error, name)
    if device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(device)
