"""Data-parallel training under `torchrun`: joining the process group it set up. The trainer
(`harness.quality.train`) finds the group initialised and splits each batch across it."""

from __future__ import annotations

from collections.abc import Mapping

import torch


def init_distributed(device: str, env: Mapping[str, str]) -> tuple[str, int]:
    """Join the process group that `torchrun` set up (its variables are in `env`): gloo on
    CPU, nccl on CUDA with one GPU per process. Returns (this process's device, its rank);
    (device, 0) outside torchrun."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1:
        return device, 0
    import torch.distributed as dist

    if device.startswith("cuda"):
        device = f"cuda:{int(env.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return device, dist.get_rank()
