"""The batched backend against the torch reference: the CPU kernel (per-sample uint8 SIMD resize) and
the GPU kernel (resident set + batched resize matrices) run here on the CPU with device="cpu"; same
ids and targets exactly, images within 1/255 mean absolute error; device selection and fallbacks."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dist_pipeline_data import ToyTeacher, class_sorted, fashion_mnist, pattern_images
from ddpipe.pipeline import ArraySource, LoaderSpecError, ScheduleConfig, open_source, recipe
from ddpipe.pipeline.batched import ImageBatcher, resize_weights, resolve_kernel
from ddpipe.pipeline.device import torch_device
from ddpipe.pipeline.loader import LoaderConfig, make_loader
from ddpipe.pipeline.relabel import relabel, relabel_spec
from ddpipe.pipeline.stages import IMAGENET_STD, image_stages

GRAY = dict(channels=1, mean=(0.286,), std=(0.353,))
NO_CUDA = not torch.cuda.is_available()


def _levels(x0, x1, std):
    std = torch.tensor(std or [1.0] * x0.shape[1]).reshape(-1).expand(x0.shape[1]).reshape(1, -1, 1, 1)
    return ((x0.cpu() - x1.cpu()).abs() * std * 255).mean().item()


def _compare(src, path, epochs, std=IMAGENET_STD, **kw):
    """Batches of the reference and of the batched backend: ids, targets and units exact; the mean
    absolute image difference per batch in pixel levels."""
    common = {k: v for k, v in kw.items() if k not in ("kernel", "cache", "num_workers", "device")}
    ref = make_loader(src, path, backend="torch", num_workers=0, std=std, **common)
    new = make_loader(src, path, backend="batched", std=std, **kw)
    maes = []
    for e in range(epochs):
        a, b = list(ref.epoch(e)), list(new.epoch(e))
        assert len(a) == len(b)
        for (x0, t0, m0), (x1, t1, m1) in zip(a, b):
            assert m0.unit == m1.unit and x0.shape == x1.shape and x1.dtype == torch.float32
            assert torch.equal(m0.sample_ids, m1.sample_ids)
            torch.testing.assert_close(t0, t1, rtol=0, atol=0)
            maes.append(_levels(x0, x1, std))
    new.close()
    return float(np.mean(maes)), float(np.max(maes))


def test_resize_matrices_are_torch_and_pillow_antialiased_bilinear():
    rng = np.random.default_rng(0)
    img = torch.from_numpy(rng.uniform(0, 255, (2, 3, 40, 52)).astype(np.float32))
    for (y, x, h, w), (oh, ow) in [((3, 5, 20, 30), (48, 48)), ((0, 0, 40, 52), (16, 12)), ((7, 1, 33, 9), (10, 31)),
                                   ((39, 51, 1, 1), (5, 5))]:
        want = F.interpolate(img[:, :, y:y + h, x:x + w], size=(oh, ow), mode="bilinear", antialias=True,
                             align_corners=False)
        t = torch.tensor
        wy = resize_weights(t([y, y]), t([h, h]), oh, 40)
        wx = resize_weights(t([x, x]), t([w, w]), ow, 52, flip=t([False, True]))
        got = torch.matmul(wy.unsqueeze(1), torch.matmul(img, wx.transpose(1, 2).unsqueeze(1)))
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=2e-3)
        torch.testing.assert_close(got[1], want[1].flip(-1), rtol=0, atol=2e-3)  # flip = reversed Wx rows
        # no weight outside the box: pixels there do not matter
        assert wy[:, :, :y].abs().sum() == 0 and wy[:, :, y + h:].abs().sum() == 0
    # and Pillow's uint8 resize agrees to a level
    from PIL import Image

    u8 = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(u8).crop((4, 2, 4 + 33, 2 + 21)).resize((50, 17), Image.BILINEAR)).astype(float)
    t = torch.tensor
    wy, wx = resize_weights(t([2]), t([21]), 17, 30), resize_weights(t([4]), t([33]), 50, 44)
    x = torch.from_numpy(u8).permute(2, 0, 1).float()[None]
    got = torch.matmul(wy.unsqueeze(1), torch.matmul(x, wx.transpose(1, 2).unsqueeze(1)))[0].permute(1, 2, 0).numpy()
    assert np.abs(got - pil).max() <= 1.0 and np.abs(got - pil).mean() < 0.5


@pytest.fixture(scope="module")
def colour_jpegs(tmp_path_factory):
    """Colour JPEGs of two sizes (96x80 and 40x56): the crops are up- and downscaled to 32x32."""
    from PIL import Image

    root = tmp_path_factory.mktemp("cj")
    images, labels = class_sorted(*fashion_mnist(96))
    rgb = np.stack([images, 255 - images, (images // 2 + 60).astype(np.uint8)], -1)
    big = [np.asarray(Image.fromarray(x).resize((96, 80) if i % 2 else (40, 56), Image.BICUBIC)) for i, x in enumerate(rgb)]
    folder = str(root / "rgb")
    import os

    for i, (img, c) in enumerate(zip(big, labels)):
        d = os.path.join(folder, f"c{int(c):02d}")
        os.makedirs(d, exist_ok=True)
        Image.fromarray(img).save(os.path.join(d, f"img{i:05d}.jpg"), quality=90)
    cfg = ScheduleConfig(output_size=(32, 32), scale=(0.08, 1.0), flip=0.5, mix="cutmix", cutout=0.3, fill="random")
    relabel(str(root / "s"), folder, ToyTeacher(10),
            *relabel_spec(folder, cfg, epochs=2, batch_size=24, num_classes=10, k=10),
            loader=LoaderConfig(num_workers=0), teacher_input="numpy")
    return folder, str(root / "s")


@pytest.mark.parametrize("kernel,cache,workers", [("per-sample", None, 2), ("per-sample", "memory", 0),
                                                  ("matmul", None, 0), ("matmul", "memory", 2)])
def test_batched_matches_the_reference_on_colour_jpegs(colour_jpegs, kernel, cache, workers):
    folder, store = colour_jpegs
    mean_mae, max_mae = _compare(open_source(folder), store, 2, kernel=kernel, cache=cache, num_workers=workers,
                                 device="cpu")
    print(f"{kernel} cache={cache}: MAE {mean_mae:.3f} levels (max batch {max_mae:.3f})")
    assert max_mae < 1.0, (mean_mae, max_mae)  # < 1/255 per pixel in every batch


def test_batched_matches_on_grayscale_mixup_and_exact_ramps(tmp_path):
    images, labels = fashion_mnist(100)
    src = ArraySource(images, labels)
    relabel(str(tmp_path / "g"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l-mixup", output_size=(20, 20)), epochs=1, batch_size=32, num_classes=10,
                          k=3),
            loader=LoaderConfig(num_workers=0, **GRAY), teacher_input="numpy")
    for kernel in ("per-sample", "matmul"):
        mean_mae, max_mae = _compare(src, str(tmp_path / "g"), 1, kernel=kernel, num_workers=2, **GRAY)
        assert max_mae < 1.0, (kernel, mean_mae, max_mae)
    # a constant RGB cutout colour on grayscale images takes its first channel, like the mix stage
    relabel(str(tmp_path / "c"), src, ToyTeacher(10),
            *relabel_spec(src, ScheduleConfig(output_size=(20, 20), cutout=0.5, fill=(200, 30, 90), mix="cutmix"),
                          epochs=1, batch_size=32, num_classes=10, k=3),
            loader=LoaderConfig(num_workers=0, **GRAY), teacher_input="numpy")
    for kernel in ("per-sample", "matmul"):
        mean_mae, max_mae = _compare(src, str(tmp_path / "c"), 1, kernel=kernel, num_workers=2, **GRAY)
        assert max_mae < 1.0, (kernel, mean_mae, max_mae)
    # on linear ramps the uint8 kernel is Pillow's to the level
    pat = ArraySource(pattern_images(60), np.arange(60) % 6)
    relabel(str(tmp_path / "p"), pat, ToyTeacher(6),
            *relabel_spec(pat, ScheduleConfig(output_size=(24, 32), flip=0.5), epochs=1, batch_size=20, num_classes=6,
                          k=2),
            loader=LoaderConfig(num_workers=0), teacher_input="numpy")
    mean_mae, _ = _compare(pat, str(tmp_path / "p"), 1, kernel="per-sample", num_workers=0)
    assert mean_mae < 0.05


def test_device_selection_and_fallbacks():
    assert torch_device("cpu").type == "cpu"
    assert resolve_kernel("auto", torch.device("cpu")) == "per-sample"
    assert resolve_kernel("auto", torch.device("cuda", 0)) == "matmul"
    with pytest.raises(LoaderSpecError, match="kernel"):
        resolve_kernel("fast", torch.device("cpu"))
    with pytest.raises(LoaderSpecError, match="kernel"):
        LoaderConfig(kernel="fast")
    with pytest.raises(LoaderSpecError, match="device"):
        torch_device("tpu")
    if NO_CUDA:
        assert torch_device("auto").type == "cpu"
        with pytest.raises(LoaderSpecError, match="CUDA is not available"):
            torch_device("gpu")
        with pytest.raises(LoaderSpecError, match="CUDA is not available"):
            torch_device("cuda:0")
    else:
        assert torch_device("auto").type == "cuda" and torch_device("gpu").type == "cuda"


def test_streamed_fallback_equals_the_resident_set(colour_jpegs):
    """When the set does not fit the device, batches are gathered on the host and sent per batch:
    the same pixels as the resident set, bit for bit."""
    from ddpipe.labelstore import open_store

    folder, store = colour_jpegs
    src = open_source(folder)
    r = open_store(store)
    stages = image_stages((32, 32))
    resident = ImageBatcher(src, stages, device="cpu", kernel="matmul", threads=0, resident=True)
    streamed = ImageBatcher(src, stages, device="cpu", kernel="matmul", threads=0, resident=False)
    assert resident.resident and not streamed.resident
    assert resident._images.shape == (96, 80, 96, 3)  # padded to the largest image
    for u in (r.read_unit(0), r.read_unit(5)):
        torch.testing.assert_close(resident(u), streamed(u), rtol=0, atol=0)
    with pytest.raises(LoaderSpecError, match="CUDA"):
        if NO_CUDA:
            make_loader(src, store, backend="batched", device="gpu")
        else:
            raise LoaderSpecError("CUDA present: nothing to refuse")


def test_per_sample_kernel_decodes_each_jpeg_once_and_gives_the_same_pixels(colour_jpegs):
    """The per-sample kernel keeps an image after its first decode (the set fits in RAM): a second
    pass over the same units decodes nothing and equals a batcher that decodes every time."""
    from ddpipe.labelstore import open_store

    folder, store = colour_jpegs
    src = open_source(folder)
    r = open_store(store)
    stages = image_stages((32, 32))
    kept = ImageBatcher(src, stages, device="cpu", kernel="per-sample", threads=0)
    fresh = ImageBatcher(src, stages, device="cpu", kernel="per-sample", threads=0, resident=False)
    assert kept._decoded is not None and fresh._decoded is None
    units = [r.read_unit(0), r.read_unit(5)]
    first = [kept(u).clone() for u in units]
    decoded = sum(a is not None for a in kept._decoded)
    assert decoded == len({int(i) for u in units for i in u.sample_ids})
    calls = []
    plain = src.array
    src.array = lambda *a, **k: calls.append(a) or plain(*a, **k)
    try:
        again = [kept(u).clone() for u in units]
    finally:
        del src.array
    assert calls == []  # nothing decoded twice
    for a, b, u in zip(first, again, units):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(b, fresh(u), rtol=0, atol=0)


def test_kept_batches_are_never_overwritten_and_dropped_ones_are_reused(colour_jpegs):
    folder, store = colour_jpegs
    src = open_source(folder)
    kw = dict(backend="batched", num_workers=2, prefetch=2, cache="memory")
    kept = [(x.clone(), x) for x, _, _ in make_loader(src, store, **kw).epoch(0)]
    for copy, x in kept:  # every batch still holds its own pixels after the epoch
        torch.testing.assert_close(copy, x, rtol=0, atol=0)
    ld = make_loader(src, store, **kw)
    ptrs = set()
    for e in range(2):
        for x, _, _ in ld.epoch(e):
            ptrs.add(x.data_ptr())
            del x
    gc.collect()
    assert len(ptrs) <= 2 + 3  # a small pool of buffers, reused (prefetch + 3 at most)
    again = [x for x, _, _ in make_loader(src, store, backend="batched", num_workers=0, cache="memory").epoch(0)]
    for (copy, _), x in zip(kept, again):  # and threads or not, the same pixels
        torch.testing.assert_close(copy, x, rtol=0, atol=0)


def test_resume_and_abandoned_epochs(colour_jpegs):
    folder, store = colour_jpegs
    src = open_source(folder)
    kw = dict(backend="batched", num_workers=2, cache="memory")
    whole = [(x.clone(), m.unit) for x, _, m in make_loader(src, store, **kw).epoch(1)]
    a = make_loader(src, store, **kw)
    it = a.epoch(1)
    next(it), next(it)
    state = a.state_dict()
    b = make_loader(src, store, **kw)
    b.load_state_dict(state)
    rest = [(x, m.unit) for x, _, m in b.epoch(1)]
    assert [u for _, u in rest] == [u for _, u in whole[2:]]
    for (x0, _), (x1, _) in zip(whole[2:], rest):
        torch.testing.assert_close(x0, x1, rtol=0, atol=0)
    # an abandoned epoch's producer stops; the next epoch runs from its start
    assert [m.unit for _, _, m in a.epoch(0)] == [m.unit for _, _, m in make_loader(src, store, **kw).epoch(0)]
    a.close()
    stages = a.stage_seconds()
    assert set(stages) >= {"decode", "crop_resize", "collate", "mix", "labels"} and stages["crop_resize"] > 0


def test_relabel_with_the_batched_loader_trains_on_what_the_teacher_saw(tmp_path):
    images, labels = fashion_mnist(64)
    src = ArraySource(images, labels)
    relabel(str(tmp_path / "s"), src, ToyTeacher(10),
            *relabel_spec(src, recipe("sre2l", output_size=(16, 16)), epochs=1, batch_size=16, num_classes=10, k=3),
            loader=LoaderConfig(backend="batched", num_workers=0, **GRAY), teacher_input="numpy")
    ids = np.concatenate([m.sample_ids.numpy() for _, _, m in
                          make_loader(src, str(tmp_path / "s"), backend="batched", **GRAY).epoch(0)])
    np.testing.assert_array_equal(np.sort(ids), np.arange(64))


@pytest.fixture(scope="module")
def synthetic_jpegs(tmp_path_factory):
    """The loader bench's kind of images (no dataset needed: bench/gpu_check.sh runs this on a bare GPU
    machine): 64 colour JPEGs of 96x96, crops down- and upscaled to 48x40, CutMix and random cutout."""
    from ddpipe.bench.loader import make_images

    root = tmp_path_factory.mktemp("syn")
    make_images(str(root / "imgs"), 64, 8, 96, 90)
    cfg = ScheduleConfig(output_size=(48, 40), scale=(0.08, 1.0), flip=0.5, mix="cutmix", cutout=0.25, fill="random")
    relabel(str(root / "s"), str(root / "imgs"), ToyTeacher(8),
            *relabel_spec(str(root / "imgs"), cfg, epochs=2, batch_size=16, num_classes=8, k=4),
            loader=LoaderConfig(num_workers=0), teacher_input="numpy")
    return str(root / "imgs"), str(root / "s")


@pytest.mark.parametrize("device", ["cpu", pytest.param("gpu", marks=pytest.mark.skipif(
    NO_CUDA, reason="needs CUDA (bench/gpu_check.sh runs it on a GPU machine)"))])
def test_gpu_path_matches_the_reference(synthetic_jpegs, device):
    """The GPU path (resident decoded set, batched resize matrices, normalise and mix on the device):
    on the GPU where there is one, and the very same code on the CPU everywhere."""
    folder, store = synthetic_jpegs
    ld = make_loader(open_source(folder), store, backend="batched", device=device, kernel="matmul", cache="memory")
    x, t, m = next(iter(ld.epoch(0)))
    assert x.device.type == ("cuda" if device == "gpu" else "cpu") and ld.backend.images.resident
    assert ld.backend.images.kernel == "matmul" and x.shape == (16, 3, 48, 40)
    mean_mae, max_mae = _compare(open_source(folder), store, 2, device=device, kernel="matmul", cache="memory",
                                 num_workers=2)
    print(f"{device}: MAE {mean_mae:.3f} levels (max batch {max_mae:.3f})")
    assert max_mae < 1.0, (mean_mae, max_mae)
    # the fallback for a set that does not fit the device (gathered on the host per batch): same pixels
    from ddpipe.labelstore import open_store

    src, unit = open_source(folder), open_store(store).read_unit(3)
    stages = image_stages((48, 40))
    resident = ImageBatcher(src, stages, device=device, kernel="matmul", threads=0, resident=True)
    streamed = ImageBatcher(src, stages, device=device, kernel="matmul", threads=0, resident=False)
    torch.testing.assert_close(resident(unit), streamed(unit), rtol=0, atol=1e-5)
    if device == "gpu":  # and the default kernel on a GPU is this one
        auto = make_loader(open_source(folder), store, backend="batched", device="auto", cache="memory")
        assert auto.backend.images.kernel == "matmul" and auto.backend.device.type == "cuda"
