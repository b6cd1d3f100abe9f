"""When a route may run: the checks the routes of zoo.fast share.

A route computes the plain module's numbers by another path only where that path is known to
hold: the CPU, the dtypes its kernels take, with or without gradients as they allow, not under
torch.compile (which traces PyTorch's ops and cannot lower a C call or a oneDNN op), and not
where forward hooks expect a module to be called. Everywhere else the plain module runs.
"""

from __future__ import annotations

import torch
from torch import nn


def compiling() -> bool:
    """Whether torch.compile is tracing the call (torch >= 2.3 can tell)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None)
    return bool(is_compiling and is_compiling())


def cpu_float32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def cpu_float32_inference(*tensors: torch.Tensor) -> bool:
    return cpu_float32(*tensors) and not needs_grad(*tensors)


def module_inference(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """float32 CPU `tensors`, and no gradient needed for them or `module`'s parameters (which
    are looked at only with autograd on: iterating them took 70 us for an RWKV time mix)."""
    return (cpu_float32_inference(*tensors)
            and not (torch.is_grad_enabled() and any(p.requires_grad
                                                     for p in module.parameters())))


def hooked(module: nn.Module) -> bool:
    """Whether `module` has forward hooks, which expect it to be called as a module: a fused
    route that would only read its weights calls it instead."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


def hooked_within(module: nn.Module) -> bool:
    """Whether `module` or a module inside it has forward hooks (a walk of the module
    dictionaries: nn.Module.modules() took 70 us for an RWKV block)."""
    return hooked(module) or any(child is not None and hooked_within(child)
                                 for child in module._modules.values())
