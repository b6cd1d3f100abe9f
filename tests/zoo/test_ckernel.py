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
