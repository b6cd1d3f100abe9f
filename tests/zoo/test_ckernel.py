"""zoo/fast/kernels/ckernel.py's kernels all compile where there is a C compiler.

A route whose kernel does not compile falls back to PyTorch without a word (by design: a machine
without a compiler still runs every model), so a source that stopped compiling, e.g. a name clash
between two sources compiled together (zoo/fast/kernels/wkv7_step_cpu.py builds
zoo/fast/kernels/wkv7_cpu.py's source with its own), would only show as a slower route and skipped
tests. This says it aloud.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zoo.fast.kernels import (
    attention_cpu,
    conv_cpu,
    dropout_cpu,
    loss_cpu,
    matvec_cpu,
    norm_cpu,
    scan_cpu,
    ssd_cpu,
    wkv5_cpu,
    wkv5_step_cpu,
    wkv7_cpu,
    wkv7_step_cpu,
    wkv_cpu,
)

KERNELS = (attention_cpu, conv_cpu, dropout_cpu, loss_cpu, matvec_cpu, norm_cpu, scan_cpu, ssd_cpu,
           wkv_cpu, wkv5_cpu, wkv5_step_cpu, wkv7_cpu, wkv7_step_cpu)


def test_the_list_holds_every_kernel_module():
    """A kernel added to zoo/fast/kernels/ without a line here would go unchecked."""
    folder = Path(wkv_cpu.__file__).parent
    assert {p.stem for p in folder.glob("*_cpu.py")} == {m.__name__.rsplit(".", 1)[-1]
                                                        for m in KERNELS}


@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")),
                    reason="no C compiler: the routes run their PyTorch paths")
@pytest.mark.parametrize("module", KERNELS, ids=lambda m: m.__name__)
def test_every_kernel_compiles_where_there_is_a_compiler(module):
    assert module.available(), f"{module.__name__}'s C source did not compile"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc")
def test_the_openmp_kernels_share_pytorchs_openmp_runtime():
    """Kernels built with OpenMP (their training forms run as OpenMP regions) must find the
    libgomp.so.1 PyTorch has loaded, not load a second runtime with threads of its own."""
    for module in KERNELS:
        module.available()
    with open("/proc/self/maps") as maps:
        runtimes = {line.split()[-1] for line in maps if "libgomp" in line}
    assert len(runtimes) <= 1, runtimes


HAS_COMPILER = any(shutil.which(c) for c in ("cc", "gcc", "clang"))


@pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler")
def test_the_inlined_exp_is_within_one_ulp_of_exp():
    """ckernel.EXP, the exp the kernels' vector loops inline, against float64's exp over its
    whole range (every float32 step of 2^-10 from -87 to 88, and the ends), compiled as they
    are: within 1 ulp of the float32 result (0.60 of float32's epsilon times the value
    when written; PyTorch's own exp: 0.53); 0 below -87, exp(88) above 88."""
    import ctypes

    import torch

    from zoo.fast.kernels import ckernel

    library = ckernel.load("exp_check", ckernel.EXP + r"""
void exp_all(int64_t n, const float *x, float *y) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) y[i] = exp_inline(x[i]);
}
""")
    assert library is not None
    x = torch.cat([torch.arange(-87 * 1024, 88 * 1024 + 1) / 1024.0,
                   torch.tensor([-87.5, -100.0, -3.4e38, 88.5, 1e3])]).float()
    y = torch.empty_like(x)
    library.exp_all(ctypes.c_int64(x.numel()), ctypes.c_void_p(x.data_ptr()),
                    ctypes.c_void_p(y.data_ptr()))
    inside = (x >= -87) & (x <= 88)
    want = x[inside].double().exp()
    ulp = torch.finfo(torch.float32).eps * want.float().abs().double()  # one ulp at that value
    error = ((y[inside].double() - want).abs() / ulp).max().item()
    assert error <= 1.0, error
    assert torch.all(y[x < -87] == 0)
    assert torch.all(y[x > 88] == y[x == 88][0])
