"""One device vocabulary (ddpipe.pipeline.device) for the phases, the loader and the distributed setup."""

from __future__ import annotations

import pytest
import torch

from ddpipe.evaluate._phase import check_device as phase_check_device
from ddpipe.evaluate.errors import TrainError
from ddpipe.pipeline import DistInfo, LoaderSpecError, init_distributed
from ddpipe.pipeline.device import check_device, parse_device, resolve_device, torch_device
from ddpipe.pipeline.loader import LoaderConfig

NO_CUDA = not torch.cuda.is_available()


@pytest.mark.parametrize("given, canonical", [("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda"), ("cuda:3", "cuda:3"),
                                               ("gpu", "cuda")])
def test_one_spelling_everywhere(given, canonical):
    assert parse_device(LoaderSpecError, "device", given) == canonical
    assert LoaderConfig(device=given).device == given  # the loader takes the phases' words (and gpu)


@pytest.mark.parametrize("bad", ["tpu", "cuda:", "cuda:x", "CUDA", "", None, 0])
def test_bad_devices_are_one_line_in_the_callers_error(bad):
    with pytest.raises(LoaderSpecError, match=r"^device must be auto, cpu, cuda or cuda:N, got"):
        LoaderConfig(device=bad)
    with pytest.raises(TrainError, match=r"^device must be auto, cpu, cuda or cuda:N, got"):
        phase_check_device(TrainError, "device", bad)


def test_resolving():
    assert resolve_device("cpu") == "cpu" and torch_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == ("cpu" if NO_CUDA else "cuda")
    if NO_CUDA:
        for d in ("cuda", "cuda:0", "gpu"):
            with pytest.raises(LoaderSpecError, match="no CUDA GPU is available"):
                check_device(LoaderSpecError, "device", d)
    else:
        n = torch.cuda.device_count()
        with pytest.raises(LoaderSpecError, match=f"this machine has {n} CUDA GPU"):
            check_device(LoaderSpecError, "device", f"cuda:{n}")
        assert torch_device("gpu").type == "cuda"


def test_a_single_process_distinfo():
    info = init_distributed("cpu", announce=False)
    assert isinstance(info, DistInfo)
    assert (info.distributed, info.rank, info.world_size, info.backend, info.device) == (False, 0, 1, None, "cpu")
