"""zoo.fast.kernels.norm_cpu, Mamba-2's gated RMSNorm as a compiled C loop with its backward (part
of zoo.fast's "scan" route), against GatedRMSNorm's formula in float64.

The output and the gradients of y, z (as part of a wider projection, as the mixer passes it)
and the weight, within 1e-6 of the largest entry of each (float32 against float64; measured
<= 7e-7), for one and three groups, rows split between 1 to 3 threads, in one OpenMP region or
the kernels' own threads; z in bfloat16 (autocast's) against GatedRMSNorm under autocast; and
the route swaps the module and says so.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import max_diff

import zoo
import zoo.fast
from zoo.fast.kernels import norm_cpu
from zoo.mamba2 import GatedRMSNorm

pytestmark = pytest.mark.skipif(not norm_cpu.available(),
                                reason="no C compiler: Mamba-2 keeps PyTorch's gated RMSNorm")


def formula(y, z, weight, groups, eps):
    g = (y * F.silu(z)).unflatten(-1, (groups, -1))
    return weight * (g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + eps)).flatten(-2)


@pytest.mark.parametrize("rows, D, groups", [(37, 64, 1), (50, 96, 3), (300, 256, 1)])
def test_the_kernel_and_its_gradients_equal_the_formula(rows, D, groups, kernel_threads,
                                                        kernel_split):
    g = torch.Generator().manual_seed(rows + D)
    wide = torch.randn(2, rows, 2 * D, generator=g, dtype=torch.float64)  # z = wide[..., :D]
    y = torch.randn(2, rows, D, generator=g, dtype=torch.float64)
    weight = 1 + 0.1 * torch.randn(D, generator=g, dtype=torch.float64)
    dout = torch.randn(2, rows, D, generator=g, dtype=torch.float64)

    def run(function, dtype):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (y, wide, weight)]
        out = function(leaves[0], leaves[1][..., :D], leaves[2], groups, 1e-5)
        (out * dout.to(dtype)).sum().backward()
        return [out] + [t.grad for t in leaves]

    ours, reference = run(norm_cpu.gated_rms_norm, torch.float32), run(formula, torch.float64)
    for name, got, want in zip(["out", "y", "z (in the projection)", "weight"], ours, reference,
                               strict=True):
        assert got.dtype == torch.float32 and got.shape == want.shape, name
        assert max_diff(got, want) <= 1e-6 * want.abs().max().item(), name


def test_a_bfloat16_z_is_taken_to_float32_as_the_module_does():
    norm = GatedRMSNorm(64, 1, 1e-5)
    y, z = torch.randn(3, 10, 64), torch.randn(3, 10, 64).bfloat16()
    ours = norm_cpu.gated_rms_norm(y, z, norm.weight, 1, 1e-5)
    assert ours.dtype == torch.float32
    assert max_diff(ours, formula(y.double(), z.double(), norm.weight.double(), 1, 1e-5)) < 1e-5


def test_the_kernel_refuses_other_dtypes_and_shapes():
    y, weight = torch.randn(2, 5, 8), torch.ones(8)
    with pytest.raises(ValueError, match="float32 CPU y and weight"):
        norm_cpu.gated_rms_norm(y.double(), y, weight, 1, 1e-5)
    with pytest.raises(ValueError, match=r"shapes: .* the groups dividing the channels"):
        norm_cpu.gated_rms_norm(y, y, weight, 3, 1e-5)


def test_the_route_swaps_mamba2s_norm_and_says_so(monkeypatch):
    calls = []
    real = norm_cpu.gated_rms_norm
    monkeypatch.setattr(norm_cpu, "gated_rms_norm", lambda *a: calls.append(1) or real(*a))
    model = zoo.build("mamba2", vocab_size=100, n_layer=2, d_model=32, head_dim=16, d_state=16)
    ids = torch.randint(0, 100, (1, 12))
    model(ids, targets=ids).loss.backward()
    assert len(calls) == 2
    assert "gated RMSNorm: compiled C loop (zoo.fast.kernels.norm_cpu)" in zoo.fast.describe(model)
    zoo.fast.remove(model)
    assert "gated RMSNorm: PyTorch" in zoo.fast.describe(model)
    assert all(type(m) is GatedRMSNorm for m in model.modules() if isinstance(m, GatedRMSNorm))
