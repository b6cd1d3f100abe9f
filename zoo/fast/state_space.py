"""The scan route: Mamba's selective scan, Mamba-2's chunked SSD and gated RMSNorm, and both
models' causal convolution with its SiLU, as the compiled kernels of zoo.fast.kernels.

The mixers in zoo/mamba.py and zoo/mamba2.py name their scan and convolution as methods; the
classes here override those methods where the kernels run (CPU float32; the convolution under
CPU autocast too) and leave decoding's one-token recurrence, CUDA and the lack of a compiler to
the plain forms.
"""

from __future__ import annotations

import torch

from zoo.fast.conditions import compiling, cpu_float32, needs_grad
from zoo.fast.kernels import conv_cpu, norm_cpu, scan_cpu, ssd_cpu
from zoo.mamba import MambaMixer
from zoo.mamba2 import GatedRMSNorm, Mamba2Mixer


class _CompiledConv:
    """A state-space mixer whose causal convolution and SiLU run as kernels/conv_cpu.py's C loop
    (with its backward) for float32 CPU tensors: one pass over the tokens in their (b, T,
    channels) layout, where the plain path transposes to channels-first for F.conv1d and back.
    Under CPU autocast over float32 weights too, its bfloat16 input taken to float32 (as the
    scan after it runs): autocast's bfloat16 depthwise convolution spent 10 ms a call in its
    backward, 15% of a Mamba-2 step, more than the bfloat16 products saved (`python
    benchmarks/training_parts.py --profile mamba2:1024 --dtype bfloat16`). Otherwise (float64,
    bfloat16 weights, CUDA, no compiler) the plain convolution."""

    def conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parameters = tuple(self.conv1d.parameters())
        if (cpu_float32(*parameters) and conv_cpu.available() and x.device.type == "cpu"
                and (cpu_float32(x, conv_state) or torch.is_autocast_enabled("cpu"))):
            return conv_cpu.conv_silu(x.float(), conv_state.float(), self.conv1d.weight,
                                      self.conv1d.bias)
        return super().conv(x, conv_state)


class CompiledScanMambaMixer(_CompiledConv, MambaMixer):
    """Mamba's mixer with the selective scan run by kernels/scan_cpu.py's C loop on the CPU (the
    scan is always float32), its backward included when a gradient is needed (training), the
    step sizes' softplus, the skip D x and the gate SiLU(z) in the same pass each way where
    the inputs are CPU float32 or (autocast) bfloat16, taken to float32; on CUDA or without a
    compiler, the PyTorch scans. Its convolution as _CompiledConv's."""

    def gated_scan(self, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, z: torch.Tensor, state: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        if (cpu_float32(A, state, self.D) and scan_cpu.available()
                and all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16)
                        for t in (x, dt, B, C, z))
                and (cpu_float32(x, dt, B, C, z) or torch.is_autocast_enabled("cpu"))):
            args = [t.float() for t in (x, dt, A, B, C)] + [self.D, z.float(), state]
            if needs_grad(*args):
                return scan_cpu.gated_scan_with_grad(*args)
            return scan_cpu.gated_scan(*args)
        return super().gated_scan(x, dt, A, B, C, z, state)

    def scan(self, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (x, delta, A, B, C, state)
        if (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
                and scan_cpu.available()):
            if needs_grad(*tensors):
                return scan_cpu.scan_with_grad(*tensors)
            return scan_cpu.scan(*tensors)
        return super().scan(*tensors)


class CompiledScanMamba2Mixer(_CompiledConv, Mamba2Mixer):
    """Mamba-2's mixer with its chunked SSD run by kernels/ssd_cpu.py on the CPU (the work inside
    each chunk a C loop, the products with the state oneDNN's, its backward written out) for
    more than one token; decoding's one-token recurrence, CUDA and the lack of a compiler keep
    the PyTorch forms. Its convolution as _CompiledConv's."""

    def scan(self, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (x, dt, A, B, C, state)
        if x.size(1) > 1 and cpu_float32(*tensors) and ssd_cpu.available():
            return ssd_cpu.ssd(*tensors, self.chunk_size or ssd_cpu.CHUNK)
        return super().scan(*tensors)


class CompiledGatedRMSNorm(GatedRMSNorm):
    """Mamba-2's gated RMSNorm as kernels/norm_cpu.py's C loop, one pass forward and one backward
    where PyTorch makes six and about twelve over the activations, for CPU float32 weights and
    y, z float32 or (autocast) bfloat16; otherwise GatedRMSNorm's own."""

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if (cpu_float32(y, self.weight) and z.dtype in (torch.float32, torch.bfloat16)
                and z.device.type == "cpu" and not compiling() and norm_cpu.available()):
            return norm_cpu.gated_rms_norm(y, z, self.weight, self.n_groups, self.eps)
        return super().forward(y, z)
