"""Joining torchrun's process group: outside torchrun nothing is joined. (Two processes under
torchrun: tests/cli/test_quality_cli.py::test_two_processes_train_data_parallel.)"""

from __future__ import annotations

import torch.distributed as dist

from harness.quality.distributed import init_distributed


def test_outside_torchrun_the_device_is_kept_and_the_rank_is_0():
    assert init_distributed("cpu", {}) == ("cpu", 0)
    assert init_distributed("cuda", {"WORLD_SIZE": "1", "LOCAL_RANK": "0"}) == ("cuda", 0)
    assert not dist.is_initialized()
