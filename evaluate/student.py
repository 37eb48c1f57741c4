"""``ddpipe train``: train a student on the distilled images and validate it on the real test set.

Three label modes, one loop (``ddpipe.evaluate.train.train_one_epoch``):

- ``--labels STORE``: replay the store (crops, flips, mixes and top-k soft labels read back, never
  re-derived) through the torch or DALI loader; loss ``KL(softmax_T(teacher) || log_softmax(student / T))``
  with the store's temperature (SRe2L's recipe: AdamW 1e-3, weight decay 0.01 on weights only,
  cosine, batch = relabel batch).
- ``--online-teacher CKPT``: no store; the same schedule is generated from ``--seed`` and the
  teacher labels each mixed batch live (RDED-style). Targets go through the store's arithmetic
  (softmax at T, top-k, marginal smoothing), so they equal what a store would have replayed.
- ``--hard-labels``: the same schedule with one-hot labels mixed by lambda (the baseline).

Checkpoints are written atomically every epoch; ``--resume`` continues at the next epoch and gives
the same final weights as an uninterrupted run on the CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_arguments", "run", "make_args", "summary_text", "kd_loss", "soft_cross_entropy"]

_RESUME_KEYS = ("images", "labels", "online_teacher", "hard_labels", "dataset", "model", "model_args", "epochs",
                "batch_size", "schedule", "mix", "seed", "temperature", "topk", "opt", "lr", "weight_decay")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = parser.add_argument_group("data")
    d.add_argument("--images", required=True, help="the distilled image set (ImageFolder, .npz, .tar shards)")
    d.add_argument("--dataset", default="fashion-mnist",
                   help="the real dataset to validate on: fashion-mnist, digits, imagefolder:<path> (default fashion-mnist)")
    d.add_argument("--data-root", default=None, help="where the dataset's files are (default: the Debian package's location)")
    lab = parser.add_argument_group("labels (choose one)").add_mutually_exclusive_group(required=True)
    lab.add_argument("--labels", metavar="STORE", help="replay this label store")
    lab.add_argument("--online-teacher", metavar="CKPT", action="append",
                     help="label every batch live with this teacher (repeat for an ensemble)")
    lab.add_argument("--hard-labels", action="store_true", help="one-hot labels of the images (mixed by lambda)")
    s = parser.add_argument_group("schedule (online teacher and hard labels; a store carries its own)")
    s.add_argument("--epochs", type=int, default=None, help="training epochs (default: the store's, else 300)")
    s.add_argument("-b", "--batch-size", type=int, default=None, help="batch size (default: the store's, else 1024)")
    s.add_argument("--schedule", default="sre2l", help="schedule recipe (default sre2l)")
    s.add_argument("--mix", choices=["none", "cutmix", "mixup"], default=None, help="override the recipe's mix")
    s.add_argument("--min-scale", type=float, default=None, help="override the recipe's smallest crop area")
    s.add_argument("--schedule-seed", type=int, default=42, help="schedule seed (default 42)")
    s.add_argument("--topk", type=int, default=None, help="online teacher: keep top-k like a store (default: all classes)")
    s.add_argument("-T", "--temperature", type=float, default=None,
                   help="distillation temperature (default: the store's; online teacher 20)")
    m = parser.add_argument_group("model and optimisation")
    m.add_argument("--model", default="convnet_d3_w32_bn", help="student model (default convnet_d3_w32_bn)")
    m.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                   help="extra model keyword argument, repeatable")
    m.add_argument("--opt", choices=["adamw", "sgd"], default="adamw", help="optimizer (default adamw, SRe2L)")
    m.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    m.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, default=0.01,
                   help="weight decay on conv/linear kernels only (default 0.01)")
    m.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    r = parser.add_argument_group("run")
    r.add_argument("--out", required=True, help="output directory (checkpoint.pth, results.json, student.pt)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    r.add_argument("--overwrite", action="store_true", help="start afresh even if OUT holds a run")
    r.add_argument("--seed", type=int, default=0, help="seed of the student's initialisation (default 0)")
    r.add_argument("--val-every", type=int, default=10, help="validate every N epochs and after the last (default 10)")
    r.add_argument("--stop-after-epoch", type=int, default=None, metavar="E", help="stop after epoch E (testing --resume)")
    r.add_argument("--loader", choices=["torch", "dali"], default="torch", help="image backend (default torch)")
    r.add_argument("-j", "--workers", type=int, default=2, help="loader workers (default 2)")
    r.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    r.add_argument("--no-deterministic", dest="deterministic", action="store_false", help="allow non-deterministic kernels")
    r.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars on stderr")
    r.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return parser


def make_args(out: str, images: str, **overrides) -> argparse.Namespace:
    """Parsed defaults plus ``overrides`` (give one of ``labels``, ``online_teacher``, ``hard_labels``)."""
    from ddpipe.evaluate._phase import parse_with_overrides

    argv = ["--out", os.fspath(out), "--images", os.fspath(images), "--hard-labels"]  # one label mode is required
    return parse_with_overrides(add_arguments, argv, {"hard_labels": False, **overrides}, "train")


# --- losses -------------------------------------------------------------------------------------------
def kd_loss(temperature: float):
    """KL(targets || softmax(student / T)), batch mean; targets are probabilities at T (SRe2L)."""
    import torch.nn.functional as F

    def loss(output, targets):
        return F.kl_div(F.log_softmax(output / temperature, dim=1), targets, reduction="batchmean")

    return loss


def soft_cross_entropy(output, targets):
    import torch.nn.functional as F

    return -(targets * F.log_softmax(output, dim=1)).sum(1).mean()


def online_targets(logits, temperature: float, k: int | None):
    """A live teacher's targets through the store's arithmetic: softmax at T, top-k, marginal smoothing."""
    import torch

    from ddpipe.labelstore import densify, softmax_at, top_k

    probs = softmax_at(logits.detach().float().cpu().numpy(), temperature)
    c = probs.shape[1]
    if k is not None and k < c:
        idx, val = top_k(probs, k)
        probs = densify(idx, val, c)
    return torch.from_numpy(probs)


def mixed_one_hot(meta, num_classes: int):
    """SRe2L's hard-label baseline under the same mix: lam * y + (1 - lam) * y[perm]."""
    import torch

    y = torch.nn.functional.one_hot(meta.labels, num_classes).float()
    if meta.mix_kind == "none":
        return y
    return meta.mix_lambda * y + (1.0 - meta.mix_lambda) * y[meta.mix_perm]


# --- batches ------------------------------------------------------------------------------------------
class _Batches:
    """One epoch of ``(images, targets, meta)`` for the chosen label mode (the loop never branches on it)."""

    def __init__(self, args, dataset, dist, device):
        from ddpipe.labelstore import open_store
        from ddpipe.pipeline import LoaderConfig, open_source

        self.args, self.dist = args, dist
        self.source = open_source(args.images)
        self.config = LoaderConfig(backend=args.loader, channels=dataset.in_chans, mean=tuple(dataset.mean),
                                   std=tuple(dataset.std), num_workers=args.workers,
                                   output_size=(dataset.input_size, dataset.input_size))
        self.num_classes = dataset.num_classes
        self.teacher = None
        self.store = open_store(args.labels) if args.labels else None
        if self.store is not None:
            spec = self.store.spec
            self.epochs = args.epochs or spec.epochs
            self.batch_size = spec.batch_size
            self.temperature = args.temperature or spec.temperature
            if spec.num_classes != dataset.num_classes:
                from ddpipe.evaluate.errors import ClassCountMismatchError

                raise ClassCountMismatchError(
                    f"the store {args.labels} holds {spec.num_classes}-class labels but {dataset.name} has "
                    f"{dataset.num_classes} classes")
            if args.batch_size not in (None, spec.batch_size):
                from ddpipe.pipeline import LoaderSpecError

                raise LoaderSpecError(f"--batch-size {args.batch_size} differs from the store's {spec.batch_size}; "
                                      "replay batches are the relabel batches")
            self.loader = self._store_loader()
        else:
            from ddpipe.pipeline import Schedule, recipe

            self.epochs = args.epochs or 300
            self.batch_size = args.batch_size or 1024
            self.temperature = args.temperature or 20.0
            cfg = recipe(args.schedule, output_size=(dataset.input_size, dataset.input_size), mix=args.mix,
                         scale=(args.min_scale, 1.0) if args.min_scale is not None else None)
            self.schedule = Schedule(cfg, args.schedule_seed, self.source.sizes, self.batch_size, self.epochs)
            if args.online_teacher:
                from ddpipe.evaluate.relabel import Ensemble, load_teachers

                models, metas = load_teachers(args.online_teacher, device)
                if metas[0]["num_classes"] != dataset.num_classes:
                    from ddpipe.evaluate.errors import ClassCountMismatchError

                    raise ClassCountMismatchError(
                        f"teacher {metas[0]['path']} predicts {metas[0]['num_classes']} classes but {dataset.name} "
                        f"has {dataset.num_classes}")
                self.teacher = Ensemble(models, device)

    def _store_loader(self):
        from ddpipe.pipeline import make_loader

        return make_loader(self.source, self.store, self.config, rank=self.dist.rank, world_size=self.dist.world_size)

    def epoch(self, epoch: int):
        import numpy as np

        if self.store is not None:
            yield from self.loader.epoch(epoch)
            return
        from ddpipe.pipeline import make_relabel_loader

        nb = self.schedule.batches_per_epoch
        rows = np.stack([np.full(nb, epoch), np.arange(nb)], axis=1)[self.dist.rank :: self.dist.world_size]
        with make_relabel_loader(self.source, self.schedule, rows, self.config) as loader:
            for images, _, meta in loader.epoch(0):
                if self.teacher is not None:
                    targets = online_targets(self.teacher(images), self.temperature, self.args.topk)
                else:
                    targets = mixed_one_hot(meta, self.num_classes)
                yield images, targets, meta

    def criterion(self):
        return soft_cross_entropy if self.args.hard_labels else kd_loss(self.temperature)

    def close(self) -> None:
        if self.store is not None:
            self.loader.close()


# --- the run --------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict:
    from ddpipe.evaluate._phase import torch_threads

    with torch_threads(args.threads):
        return _run(args)


def _run(args: argparse.Namespace) -> dict:
    import torch

    from ddpipe import __version__
    from ddpipe.evaluate.checkpoint import (resume_checkpoint, rng_state, set_rng_state, unwrap_model,
                                            write_json_atomic)
    from ddpipe.evaluate.datasets import load_dataset
    from ddpipe.evaluate.distributed import barrier, init_distributed, is_main_process, save_on_main
    from ddpipe.evaluate.errors import EvaluateError
    from ddpipe.evaluate.models import create_model
    from ddpipe.evaluate.squeeze import _parse_model_args
    from ddpipe.evaluate.train import (build_loaders, build_optimizer, build_scheduler, deterministic,
                                       seed_everything, train_one_epoch, validate)

    t_start = time.perf_counter()
    # 1. output directory, distributed mode, config
    dist = init_distributed(args.device, announce=args.progress)
    main = is_main_process()
    say = args.progress and main
    out = os.path.abspath(args.out)
    ckpt_path, results_path, student_path = (os.path.join(out, f) for f in ("checkpoint.pth", "results.json", "student.pt"))
    cfg = {k: v for k, v in vars(args).items() if not callable(v)}
    cfg["model_args"] = _parse_model_args(args.model_args)
    ckpt = resume_checkpoint(ckpt_path, cfg, _RESUME_KEYS, resume=args.resume, overwrite=args.overwrite, phase="train")
    if main:
        os.makedirs(out, exist_ok=True)
    device = torch.device(dist.device)

    # 2. data: the distilled images with their labels, and the real test set
    dataset = load_dataset(args.dataset, data_root=args.data_root)
    batches = _Batches(args, dataset, dist, device)
    _, val_loader = build_loaders(dataset, 256, 0, "none", args.seed)
    mode = "store" if args.labels else "online-teacher" if args.online_teacher else "hard-labels"
    if say:
        print(f"train: {args.model} on {len(batches.source)} images ({mode}), {batches.epochs} epochs of batch "
              f"{batches.batch_size}, validating on {dataset.name} ({len(dataset.test)} images)", file=sys.stderr)

    # 3. model, criterion, optimiser, schedule
    seed_everything(args.seed)
    model = create_model(args.model, dataset.num_classes, dataset.in_chans, dataset.input_size, **cfg["model_args"])
    model.to(device)
    criterion = batches.criterion()
    optimizer = build_optimizer(model, args.opt, args.lr, args.momentum, args.weight_decay)
    scheduler = build_scheduler(optimizer, batches.epochs)
    model_without_ddp = model
    if dist.distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)

    # 4. resume
    start_epoch, history, elapsed_before = 0, [], 0.0
    if ckpt is not None:
        model_without_ddp.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        set_rng_state(ckpt["rng"])
        start_epoch, history, elapsed_before = ckpt["epoch"] + 1, list(ckpt["history"]), float(ckpt["elapsed_s"])
    label_bytes = LabelBytesRead(batches.store) if batches.store is not None else None
    if label_bytes is not None:
        for epoch in range(start_epoch):  # what the sessions before this one read
            label_bytes.add_epoch(epoch)

    def results(status: str) -> dict:
        last = next((h["val"] for h in reversed(history) if "val" in h), None)
        return {
            "phase": "train", "status": status, "mode": mode, "out": out, "epochs_done": len(history),
            "epochs": batches.epochs, "batch_size": batches.batch_size, "temperature": batches.temperature,
            "final": last, "wall_time_s": elapsed_before + time.perf_counter() - t_start,
            "label_bytes": label_bytes.bytes if label_bytes is not None else 0,
            "label_shards_read": len(label_bytes.shards) if label_bytes is not None else 0,
            "label_seconds": batches.loader.label_seconds if batches.store is not None else None,
            "model": unwrap_model(model).model_cfg, "history": history, "config": cfg, "world_size": dist.world_size,
            "versions": {"ddpipe": __version__, "torch": str(torch.__version__), "python": sys.version.split()[0]},
        }

    # 5. the epoch loop
    try:
        with deterministic(args.deterministic):
            for epoch in range(start_epoch, batches.epochs):
                stats = train_one_epoch(model, batches.epoch(epoch), criterion, optimizer, device, epoch,
                                        progress=args.progress, header=f"epoch {epoch + 1}/{batches.epochs}")
                scheduler.step()
                if label_bytes is not None:
                    label_bytes.add_epoch(epoch)
                if (epoch + 1) % args.val_every == 0 or epoch + 1 == batches.epochs:
                    stats["val"] = validate(model, val_loader, device, progress=args.progress)
                history.append(stats)
                if say and "val" in stats:
                    print(f"epoch {epoch + 1}/{batches.epochs}: loss {stats['train_loss']:.4f}  val top-1 "
                          f"{stats['val']['top1']:.2f}% top-5 {stats['val']['top5']:.2f}%", file=sys.stderr)
                save_on_main({
                    "model": model_without_ddp.state_dict(), "optimizer": optimizer.state_dict(),
                    "lr_scheduler": scheduler.state_dict(), "epoch": epoch, "config": cfg, "history": history,
                    "rng": rng_state(), "elapsed_s": elapsed_before + time.perf_counter() - t_start,
                }, ckpt_path)
                if main:
                    write_json_atomic(results("running"), results_path)
                barrier()
                if args.stop_after_epoch is not None and epoch >= args.stop_after_epoch and epoch + 1 < batches.epochs:
                    return results("stopped")
    finally:
        batches.close()
    if not history:
        raise EvaluateError(f"nothing to train: --epochs {batches.epochs}")
    res = results("complete")
    if main:
        torch.save({"model": model_without_ddp.state_dict(), "model_cfg": unwrap_model(model).model_cfg}, student_path)
        write_json_atomic(res, results_path)
    return res


class LabelBytesRead:
    """The label bytes a run read: the compressed size of every store object it fetched, each once.

    A store keeps one object per data array per writer shard (``docs/format.md`` §3), and the feed
    fetches whole shards (``StoreReader.read_slab``). Replaying epoch ``e`` reads the units
    ``ddpipe.pipeline.schedule.replay_units(plan, spec, e)`` (an unpruned store: epoch ``e``'s own
    units; a pruned one: LPLD's draws from the kept pool), so the objects a run needs are those of
    the shards holding a replayed unit, for every data array (replayed with the feed's default seed,
    as ``make_loader`` does here). Each object counts once, however many ranks share an epoch and
    however often a loader's cache or worker processes re-read it. The store's metadata (``zarr.json``)
    and the ``commit_shard`` flags are not labels and are not counted. Computed from the store's
    layout and object sizes, so it is exact, identical on every rank and unchanged by ``--resume``.
    (A byte counter inside ``labelstore``'s reader would also see re-reads; there is none yet.)
    """

    def __init__(self, reader):
        from ddpipe.labelstore.layout import array_defs, shard_key

        self.reader = reader
        read = set(reader.array_names)  # the arrays read_slab reads: this store's format's data arrays
        self._keys = [(d.name, 1 + len(d.trailing)) for d in array_defs(reader.spec) if d.name in read]
        self._shard_key = shard_key
        self.shards: set[int] = set()
        self.bytes = 0
        self._store = None

    def add_epoch(self, epoch: int) -> None:
        """Count the objects of the shards that epoch ``epoch``'s replay reads (new ones only)."""
        import numpy as np

        from ddpipe.pipeline.schedule import replay_units

        units = replay_units(self.reader.plan, self.reader.spec, epoch)
        for s in np.unique(units // self.reader.spec.units_per_shard).tolist():
            if s not in self.shards:
                self.shards.add(s)
                self.bytes += sum(self._size(self._shard_key(name, s, ndim)) for name, ndim in self._keys)

    def _size(self, key: str) -> int:
        from ddpipe.labelstore.metadata import is_local

        if is_local(self.reader.path):
            return os.path.getsize(os.path.join(self.reader.path, key))
        from zarr.core.sync import sync

        if self._store is None:
            from ddpipe.labelstore.metadata import open_group

            self._store = open_group(self.reader.path).store
        return int(sync(self._store.getsize(key)))


def summary_text(res: dict) -> str:
    f = res.get("final") or {}
    top = f"top-1 {f['top1']:.2f}%  top-5 {f['top5']:.2f}%" if f else "not validated"
    return (f"train {res['status']} ({res['mode']}): {res['epochs_done']}/{res['epochs']} epochs in "
            f"{res['wall_time_s']:.1f} s, {top}, label bytes read {res['label_bytes']:,}\n"
            f"  results {os.path.join(res['out'], 'results.json')}")
