"""``ddpipe demo store``: the label store end to end in a few seconds, on labels from the teacher model.

Writes a small store (2,000 images, 100 classes, 40 epochs, batch 128, top-10 fp16, CutMix): the
units of ddpipe's own relabel schedule (:mod:`ddpipe.pipeline.schedule`, the ``sre2l`` recipe) with
labels from the seeded teacher-logit model in :mod:`ddpipe.bench.teacher_model`, prunes it to 1/40,
shows both next to SRe2L's layout, then damages one byte of a copy and shows that ``verify``
names the damaged unit and array and that reading that unit raises ``ChunkCorruptError``.
Needs neither torch nor scipy (the base install).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass

from ddpipe.config import option
from ddpipe.errors import DDPipeError

NUM_CLASSES, IPC, EPOCHS, BATCH, K = 100, 20, 40, 128, 10


def _write_store(path: str) -> dict:
    """Relabel the way ``ddpipe relabel`` does: ddpipe's own schedule (the SRe2L recipe: RandomResizedCrop,
    flip, CutMix) over 224 px images, with the teacher model's top-k labels added to each unit."""
    from dataclasses import replace

    from ddpipe.bench.teacher_model import TeacherModel, square_schedule
    from ddpipe.labelstore import create_store

    sched = square_schedule(NUM_CLASSES * IPC, 224, BATCH, EPOCHS, seed=0, schedule="sre2l")
    spec = sched.store_spec(NUM_CLASSES, K, value_codec="fp16", temperature=1.0, teacher_hash="bench.teacher_model")
    teacher = TeacherModel(NUM_CLASSES, IPC, seed=0)
    with create_store(path, spec, overwrite=True, provenance={"labels": "bench.teacher_model (demo)"}) as w:
        for e in range(EPOCHS):
            for b in range(spec.batches_per_epoch):
                unit = sched.unit(e, b)
                w.write(replace(unit, topk=teacher.topk(unit, K)))
    return {"units": spec.full_units, "samples": spec.num_samples * EPOCHS}


def _summary(info: dict) -> dict:
    keys = ("path", "units", "keep", "bytes_on_disk", "sre2l_equivalent_bytes", "compression_vs_sre2l", "bytes_per_sample_epoch")
    return {k: info[k] for k in keys}


def _flip_byte(store: str, array: str, shard: int) -> dict:
    """Invert one byte inside the first inner chunk of ``array``'s object for ``shard``."""
    from ddpipe.labelstore.layout import shard_key

    key = shard_key(array, shard, 3)
    path = os.path.join(store, *key.split("/"))
    size = os.path.getsize(path)
    offset = min(64, size // 4)
    with open(path, "r+b") as f:
        f.seek(offset)
        old = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([old ^ 0xFF]))
    return {"object": key, "offset": offset, "object_bytes": size, "old": old, "new": old ^ 0xFF}


def demo(out: str) -> dict:
    """Run the demo under ``out``; return everything it found as one dict."""
    from ddpipe.labelstore import ChunkCorruptError, open_store, prune_store, store_info, verify_store

    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    store, pruned, broken = (os.path.join(out, n) for n in ("labels.zarr", "labels-40x.zarr", "labels-damaged.zarr"))
    written = _write_store(store)
    t_write = time.perf_counter() - t0
    prune_store(store, pruned, 1 / 40, granularity="batch", seed=0, overwrite=True)
    full_info, pruned_info = store_info(store), store_info(pruned)

    if os.path.exists(broken):
        shutil.rmtree(broken)
    shutil.copytree(store, broken)
    reader = open_store(broken)
    target_epoch = EPOCHS // 2
    shard = reader.epoch_units(target_epoch).start // reader.spec.units_per_shard
    flipped = _flip_byte(broken, "label_value", shard)
    result = verify_store(broken)
    named = [p for p in result["problems"] if p["array"] == "label_value"]
    read_error = None
    if named:
        try:
            open_store(broken).read_unit(named[0]["unit"])
        except ChunkCorruptError as e:
            read_error = f"ChunkCorruptError: {e}"
    caught = (not result["ok"]) and bool(named) and read_error is not None
    return {
        "labels": "bench/teacher_model.py (seeded model of teacher logits; no real teacher)",
        "shape": {"images": NUM_CLASSES * IPC, "classes": NUM_CLASSES, "epochs": EPOCHS, "batch": BATCH, "k": K, "codec": "fp16", "mix": "cutmix"},
        "written": {**written, "seconds": t_write},
        "store": _summary(full_info),
        "pruned": _summary(pruned_info),
        "corruption": {
            "copy": broken,
            "flipped": flipped,
            "damaged_shard_epoch": target_epoch,
            "verify_ok": result["ok"],
            "problems": result["problems"],
            "named": named[0] if named else None,
            "read_error": read_error,
            "caught": caught,
        },
        "elapsed_s": time.perf_counter() - t0,
    }


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _report(r: dict) -> str:
    s, p, c = r["store"], r["pruned"], r["corruption"]
    sh = r["shape"]
    lines = [
        "ddpipe demo: labels from the seeded teacher-logit model (bench/teacher_model.py), not a real teacher",
        "",
        f"1. relabel  {sh['images']:,} images x {sh['epochs']} epochs, batch {sh['batch']}, top-{sh['k']} {sh['codec']}, {sh['mix']}"
        f"  -> {s['units']} units in {r['written']['seconds']:.1f} s",
        f"   {s['path']}: {_mb(s['bytes_on_disk'])} on disk, SRe2L's per-batch fp16 logits would take "
        f"{_mb(s['sre2l_equivalent_bytes'])} ({s['compression_vs_sre2l']:.0f}x smaller)",
        f"2. prune to 1/40  -> {p['units']} units",
        f"   {p['path']}: {_mb(p['bytes_on_disk'])} on disk vs {_mb(p['sre2l_equivalent_bytes'])} in SRe2L's layout "
        f"({p['compression_vs_sre2l']:.0f}x)",
        f"3. damage a copy: flipped byte {c['flipped']['offset']} of {c['flipped']['object']} "
        f"(0x{c['flipped']['old']:02x} -> 0x{c['flipped']['new']:02x})",
    ]
    if c["named"]:
        n = c["named"]
        span = f"-{n['last_unit']}" if "last_unit" in n else ""
        lines.append(
            f"   verify: {len(c['problems'])} problem(s); unit {n['unit']}{span} (epoch {n['epoch']}, batch {n['batch']}) "
            f"array {n['array']}: {n['error']}"
        )
    else:
        lines.append(f"   verify: ok={c['verify_ok']} (the damage was NOT found)")
    lines.append(f"   read_unit({c['named']['unit'] if c['named'] else '?'}): {c['read_error'] or 'no error (damage NOT caught)'}")
    lines.append("")
    lines.append(f"corruption caught: {'yes' if c['caught'] else 'NO'}   ({r['elapsed_s']:.1f} s)")
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class StoreDemoConfig:
    """``ddpipe demo store``: where the demo writes (it replaces what an earlier demo left there)."""

    out: str = option("demo_out/store", help="working directory (default ./demo_out/store)")


def run(config: StoreDemoConfig) -> dict:
    """Write, prune, damage and verify a store under ``config.out``; the result as a dict
    (``result["corruption"]["caught"]`` says whether the damage was found)."""
    out = os.path.abspath(os.path.expanduser(config.out))
    if os.path.exists(out) and not os.path.isdir(out):
        raise DDPipeError(f"--out {out} exists and is not a directory")
    return demo(out)


def summary_text(result: dict) -> str:
    return _report(result)
