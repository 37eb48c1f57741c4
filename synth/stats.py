"""Statistics of a teacher's layers: forward hooks, one-pass class-wise BN statistics, conv statistics.

Everything here works on any ``nn.Module``: BatchNorm layers are ``nn.BatchNorm2d`` (and its
subclasses, e.g. timm's ``BatchNormAct2d`` or LPLD's class-aware BN), convolutions ``nn.Conv2d``.
A teacher whose BN layers carry LPLD's ``class_running_mean`` / ``class_running_var`` buffers
([num_classes, C]) is detected by those buffer names; no class is imported.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import TeacherError

__all__ = [
    "bn_layers", "conv_layers", "Recorder", "channel_stats", "patch_stats", "has_class_buffers", "class_buffers",
    "collect_class_bn_stats", "collect_conv_stats", "module_hash", "penultimate_features",
]


def bn_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


class Recorder:
    """Forward pre-hooks keeping the *input* of every BN (and, if asked, conv) layer of the last forward.

    ``bn`` and ``conv`` map layer names to the input tensors in ``named_modules`` order (the graph
    stays attached, so losses on them reach the images). Use as a context manager.
    """

    def __init__(self, model: nn.Module, bn: bool = True, conv: bool = False):
        self.model = model
        self.bn: dict[str, torch.Tensor] = {}
        self.conv: dict[str, torch.Tensor] = {}
        self.bn_modules = dict(bn_layers(model)) if bn else {}
        self.conv_modules = dict(conv_layers(model)) if conv else {}
        self._handles: list = []

    def _hook(self, store: dict, name: str) -> Callable:
        def hook(module, inputs):
            x = inputs[0]
            store[name] = x[0] if isinstance(x, (tuple, list)) else x  # LPLD passes (x, labels)
        return hook

    def __enter__(self) -> "Recorder":
        for name, m in self.bn_modules.items():
            self._handles.append(m.register_forward_pre_hook(self._hook(self.bn, name)))
        for name, m in self.conv_modules.items():
            self._handles.append(m.register_forward_pre_hook(self._hook(self.conv, name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.clear()

    def clear(self) -> None:
        self.bn.clear()
        self.conv.clear()


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of [B, C, H, W] (SRe2L's ``BNFeatureHook``)."""
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


def patch_stats(x: torch.Tensor, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """G-VBSM's patch statistics: resize to multiples of ``patch`` (bilinear, rounding up), then mean and
    biased variance per patch position over (batch, channel, pixels of the patch): shape [(H/p)(W/p)]."""
    _, _, h, w = x.shape
    nh, nw = max(1, -(-h // patch)), max(1, -(-w // patch))
    if (nh * patch, nw * patch) != (h, w):
        x = F.interpolate(x, size=(nh * patch, nw * patch), mode="bilinear", align_corners=False)
    b, c = x.shape[:2]
    # "b c (u h) (v w) -> (u v) (b c h w)"
    t = x.reshape(b, c, nh, patch, nw, patch).permute(2, 4, 0, 1, 3, 5).reshape(nh * nw, -1)
    return t.mean(dim=1), t.var(dim=1, unbiased=False)


def has_class_buffers(model: nn.Module) -> bool:
    return any(hasattr(m, "class_running_mean") and hasattr(m, "class_running_var") for _, m in bn_layers(model))


def class_buffers(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LPLD's class-wise BN buffers ``{layer: (class_running_mean, class_running_var)}`` ([K, C] each)."""
    return {n: (m.class_running_mean, m.class_running_var) for n, m in bn_layers(model)
            if hasattr(m, "class_running_mean") and hasattr(m, "class_running_var")}


@torch.no_grad()
def collect_class_bn_stats(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                           num_classes: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One eval-mode pass: exact per-class mean and biased variance of every BN layer's input.

    ``batches`` yields (normalised images, labels). Sums are kept in float64 per class, so the
    result equals the statistics of each class's images taken together, whatever the batching
    (LPLD's ``forward_once`` keeps an EMA of per-batch statistics instead; see docs/synth.md).
    Classes never seen keep mean 0 and variance 1, like LPLD's initial buffers.
    """
    layers = bn_layers(model)
    if not layers:
        raise TeacherError(f"{type(model).__name__} has no BatchNorm2d layer, so it has no class-wise BN statistics")
    sums: dict[str, list] = {}
    count = torch.zeros(num_classes, dtype=torch.float64)
    with Recorder(model) as rec:
        model.eval()
        for images, labels in batches:
            rec.clear()
            model(images)
            labels = labels.long().cpu()
            onehot = F.one_hot(labels, num_classes).double()  # [B, K]
            for name, x in rec.bn.items():
                xd = x.detach().double().cpu()
                pixels = xd.shape[2] * xd.shape[3]
                s1 = onehot.t() @ xd.sum(dim=(2, 3))  # [K, C]
                s2 = onehot.t() @ (xd * xd).sum(dim=(2, 3))
                if name not in sums:
                    sums[name] = [torch.zeros_like(s1), torch.zeros_like(s2), pixels]
                sums[name][0] += s1
                sums[name][1] += s2
            count += onehot.sum(dim=0)
    out = {}
    for name, (s1, s2, pixels) in sums.items():
        n = (count * pixels)[:, None]
        seen = n > 0
        mean = torch.where(seen, s1 / n.clamp_min(1), torch.zeros_like(s1))
        var = torch.where(seen, (s2 / n.clamp_min(1) - mean * mean).clamp_min(0), torch.ones_like(s2))
        out[name] = (mean.float(), var.float())
    return out


@torch.no_grad()
def collect_conv_stats(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], total: int,
                       patch: int) -> dict[str, dict[str, torch.Tensor]]:
    """G-VBSM's conv targets: ``sum over batches of stat(batch) * batch_size / total`` for the channel
    mean/var and patch mean/var of every conv layer's input (keys ``mean, var, patch_mean, patch_var``)."""
    acc: dict[str, dict[str, torch.Tensor]] = {}
    with Recorder(model, bn=False, conv=True) as rec:
        model.eval()
        for images, _ in batches:
            rec.clear()
            model(images)
            w = images.shape[0] / total
            for name, x in rec.conv.items():
                m, v = channel_stats(x)
                pm, pv = patch_stats(x, patch)
                d = acc.setdefault(name, {k: 0.0 for k in ("mean", "var", "patch_mean", "patch_var")})
                for k, t in zip(("mean", "var", "patch_mean", "patch_var"), (m, v, pm, pv)):
                    d[k] = d[k] + t.detach().double().cpu() * w
    if not acc:
        raise TeacherError(f"{type(model).__name__} has no Conv2d layer, so it has no convolution statistics")
    return {n: {k: t.float() for k, t in d.items()} for n, d in acc.items()}


def state_dict_hash(state_dict: dict) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state dict's tensors, sorted by name
    (the ``teacher_hash`` of ddpipe teacher files)."""
    h = hashlib.sha256(b"ddpipe-state-dict-v1\0")
    for name in sorted(state_dict):
        t = state_dict[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def module_hash(model: nn.Module) -> str:
    """:func:`state_dict_hash` of a module."""
    return state_dict_hash(model.state_dict())


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the last ``nn.Linear`` (the classifier) for ``x``, flattened: [B, D]."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise TeacherError(f"{type(model).__name__} has no nn.Linear classifier to take penultimate features from")
    got: list[torch.Tensor] = []
    handle = linears[-1].register_forward_pre_hook(lambda m, inp: got.append(inp[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return got[-1].flatten(1)
