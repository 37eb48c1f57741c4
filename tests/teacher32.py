"""Test material for the teacher tests: a 32 px ImageFolder of 10 classes and plain torchvision
``resnet18(num_classes=10)`` state dicts trained on it for a few steps at 32 px."""

from __future__ import annotations

import os

import numpy as np

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def make_image_folder(root: str, classes: int = 10, per_class: int = 2, size: int = 32, seed: int = 0) -> str:
    """``root/c<k>/<i>.png``: each class a colour of its own plus noise, so a few steps separate them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, size=(classes, 3))
    for c in range(classes):
        d = os.path.join(root, f"c{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            img = np.clip(colours[c] + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(os.path.join(d, f"{i}.png"))
    return root


def folder_tensors(root: str):
    """The folder's images as one normalised float batch and their labels (sorted like ImageFolder)."""
    import torch
    from PIL import Image

    xs, ys = [], []
    for c, name in enumerate(sorted(os.listdir(root))):
        for f in sorted(os.listdir(os.path.join(root, name))):
            xs.append(np.asarray(Image.open(os.path.join(root, name, f)).convert("RGB"), np.float32) / 255.0)
            ys.append(c)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2)
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    return x.contiguous(), torch.tensor(ys)


def train_resnet18(root: str, steps: int = 6, seed: int = 0):
    """A torchvision ``resnet18(num_classes=10)`` (the plain module, standard stem) trained briefly at 32 px."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(seed)
    model = resnet18(num_classes=10)
    x, y = folder_tensors(root)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    # BN statistics of the whole set (a few steps leave the running averages far from it)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model(x)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.1
    return model.eval()


def save_state_dict(model, path: str) -> str:
    import torch

    torch.save(model.state_dict(), path)
    return path
