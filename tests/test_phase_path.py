"""Every phase goes through one path (ddpipe.phase.run_phase), results are read one way (attributes),
and pipeline.relabel.relabel takes relabel_spec's schedule and spec."""

import importlib

import numpy as np
import pytest

from ddpipe.cli import PHASES
from ddpipe.config import Result


@pytest.mark.parametrize("command", sorted([*PHASES, "demo"]))
def test_every_phase_run_checks_its_config_the_same_way(command, tmp_path):
    module, cls_name, _ = PHASES.get(command, ("ddpipe.evaluate.demo", "DemoConfig", ""))
    mod = importlib.import_module(module)
    with pytest.raises(TypeError, match=rf"^{command}\.run takes a {cls_name}, got dict$"):
        mod.run({"out": str(tmp_path / "x")})
    assert not (tmp_path / "x").exists()


def test_results_are_read_as_attributes_only():
    for name in ("__getitem__", "__contains__", "get"):
        assert not hasattr(Result, name), name


def test_info_and_verify_return_typed_results(tmp_path):
    from ddpipe.evaluate import info, verify
    from ddpipe.labelstore import StoreSpec, create_store, store_info, verify_store
    from labelstore_units import all_units

    spec = StoreSpec(num_samples=20, num_classes=5, epochs=2, batch_size=10, k=2)
    path = str(tmp_path / "s.zarr")
    create_store(path, spec).write_many(all_units(spec))
    got = info.run(info.InfoConfig(store=path))
    assert isinstance(got, info.InfoResult) and got.to_dict() == store_info(path)
    checked = verify.run(verify.VerifyConfig(store=path, progress=False))
    assert isinstance(checked, verify.VerifyResult) and checked.ok and checked.store_ok
    assert checked.to_dict() == verify_store(path)  # without a teacher check: verify_store's keys, as before
    assert "ok: 4 of 4 units checked" in verify.summary_text(checked)


def test_relabel_refuses_a_schedule_the_spec_does_not_record(tmp_path):
    from ddpipe.pipeline import ArraySource, LoaderSpecError, recipe
    from ddpipe.pipeline.relabel import relabel, relabel_spec

    rng = np.random.default_rng(1)
    src = ArraySource(rng.integers(0, 256, (30, 8, 8), dtype=np.uint8), np.arange(30) % 3)
    sched, spec = relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=2, batch_size=10, num_classes=3, k=2)
    other, _ = relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=3, batch_size=10, num_classes=3, k=2)
    with pytest.raises(LoaderSpecError, match="epochs 3 != 2"):
        relabel(str(tmp_path / "s"), src, lambda x: x, other, spec)
    moved = ArraySource(rng.integers(0, 256, (30, 8, 8), dtype=np.uint8), np.arange(30) % 3)
    with pytest.raises(LoaderSpecError, match="other images"):
        relabel(str(tmp_path / "s"), moved, lambda x: x, sched, spec)
    assert not (tmp_path / "s").exists()


def test_a_pruned_spec_plans_its_kept_units(tmp_path):
    from ddpipe.labelstore import open_store, plan_units
    from ddpipe.pipeline import ArraySource, LoaderConfig, recipe
    from ddpipe.pipeline.relabel import relabel, relabel_spec

    rng = np.random.default_rng(2)
    src = ArraySource(rng.integers(0, 256, (40, 8, 8), dtype=np.uint8), np.arange(40) % 4)
    sched, spec = relabel_spec(src, recipe("sre2l", output_size=(8, 8)), epochs=4, batch_size=10, num_classes=4, k=2,
                               keep=0.25, granularity="batch", prune_seed=3)
    assert spec.pruning == {"keep": 0.25, "granularity": "batch", "seed": 3, "source_units": 16}
    out = relabel(str(tmp_path / "p"), src, lambda x: np.asarray(x).reshape(len(x), -1)[:, :4].astype(np.float32),
                  sched, spec, loader=LoaderConfig(num_workers=0, channels=1, mean=(0.5,), std=(0.5,)),
                  teacher_input="numpy")
    r = open_store(str(tmp_path / "p"))
    np.testing.assert_array_equal(r.plan, plan_units(spec.replace(pruning=None), 0.25, "batch", 3))
    assert out["units_written"] == 4 and r.complete
