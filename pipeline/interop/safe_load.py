"""Loading other codebases' ``torch.save`` files without running their pickles.

Every label file of SRe2L, LPLD, LPQLD, G-VBSM and FKD is a ``torch.save`` of a short list of
tensors, Python numbers, ``None`` and, in some variants, numpy values (SRe2L's CutMix box is four
numpy ``int64`` scalars; FKD's crop coordinates and labels are numpy arrays). They are read with
``torch.load(weights_only=True)``, whose unpickler builds tensors and plain containers only, plus an
explicit allow-list of the numpy names those files need: the scalar and array reconstructors and
``numpy.dtype`` (under both numpy 1's ``numpy.core`` and numpy 2's ``numpy._core`` paths). Anything
else a pickle names (a class of the writing program, ``os.system``, ``builtins.eval`` ...) is
refused with the name, and nothing of the file is used. Arrays of dtype ``object`` are refused too:
they would carry arbitrary Python objects.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from typing import Any

import numpy as np

from .errors import InteropError

_NUMPY_NAMES = (
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct",
    "numpy.ndarray",
    "numpy.dtype",
)

_DTYPE_CLASSES = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64",
                  "Float16", "Float32", "Float64")

ALLOWED_GLOBALS = _NUMPY_NAMES + tuple(f"numpy.dtypes.{c}DType" for c in _DTYPE_CLASSES)
"""The only pickled globals (besides what ``weights_only=True`` itself allows: tensors, storages,
plain containers and numbers) a label file may name."""


def _allow_list() -> list:
    try:
        from numpy._core import multiarray as mc
    except ImportError:  # numpy 1
        from numpy.core import multiarray as mc
    out: list = [
        (mc.scalar, "numpy.core.multiarray.scalar"),
        (mc.scalar, "numpy._core.multiarray.scalar"),
        (mc._reconstruct, "numpy.core.multiarray._reconstruct"),
        (mc._reconstruct, "numpy._core.multiarray._reconstruct"),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
    ]
    dtypes = getattr(np, "dtypes", None)
    for c in _DTYPE_CLASSES:
        cls = getattr(dtypes, f"{c}DType", None) if dtypes is not None else None
        if cls is not None:
            out.append((cls, f"numpy.dtypes.{c}DType"))
    return out


_ALLOW: list | None = None


def load_label_file(path: str | os.PathLike) -> Any:
    """``torch.load`` of one label file with ``weights_only=True`` and the numpy allow-list; any
    failure is an :class:`InteropError` naming the file (a refused global is named too)."""
    import torch

    global _ALLOW
    if _ALLOW is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            _ALLOW = _allow_list()
    path = os.fspath(path)
    try:
        with torch.serialization.safe_globals(_ALLOW):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        name = _refused_name(msg)
        if name:
            raise InteropError(
                f"{path}: refused: the pickle names {name}, which is outside the allow-list of a label file "
                f"(tensors, numbers, lists and numpy scalars/arrays); ddpipe never runs a file's pickled code"
            ) from None
        raise InteropError(f"{path}: not a readable torch.save label file ({_first_line(msg)})") from None
    except FileNotFoundError:
        raise InteropError(f"{path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad magic, ...
        raise InteropError(f"{path}: not a readable torch.save label file ({type(e).__name__}: {_first_line(str(e))})") from None
    _refuse_objects(obj, path)
    return obj


def _first_line(msg: str) -> str:
    msg = msg.strip().splitlines()[0] if msg.strip() else "empty message"
    return msg[:200]


def _refused_name(msg: str) -> str | None:
    for pat in (r"Unsupported global: GLOBAL ([\w.]+)", r"unsupported GLOBAL ([\w.]+)", r"GLOBAL ([\w.]+)"):
        m = re.search(pat, msg)
        if m:
            return m.group(1)
    return None


def _refuse_objects(obj: Any, path: str, depth: int = 0) -> None:
    if depth > 8:
        raise InteropError(f"{path}: refused: nested deeper than a label file is")
    if isinstance(obj, np.ndarray) and obj.dtype == object:
        raise InteropError(f"{path}: refused: a numpy array of Python objects (dtype object)")
    if isinstance(obj, (list, tuple)):
        for x in obj:
            _refuse_objects(x, path, depth + 1)
    elif isinstance(obj, dict):
        for x in obj.values():
            _refuse_objects(x, path, depth + 1)
