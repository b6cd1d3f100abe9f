"""The RWKV routes: wkv (RWKV-4), wkv5 (RWKV-5/6) and wkv7 (RWKV-7).

Each time mix keeps its paper's forward in its model file and names the WKV as a method; the
classes here override that method (and, for RWKV-5/6, the time mix's inference forward, which
folds the GroupNorm of the heads and the gate into the C loop) with the compiled kernels of
zoo.fast.kernels, their C backward when a gradient is needed. For decoding (a few rows, float32
CPU inference) a whole block is one compiled call. Where a kernel cannot run (CUDA, float64 or
other dtypes where it takes none, no C compiler, hooks) the plain module's forward runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zoo import rwkv5, rwkv6, rwkv7
from zoo.fast import dense
from zoo.fast.conditions import (
    compiling,
    cpu_float32,
    hooked_within,
    module_inference,
    needs_grad,
)
from zoo.fast.dense import FEW_ROWS, LinearLoRA
from zoo.fast.kernels import matvec_cpu, wkv5_cpu, wkv5_step_cpu, wkv7_cpu, wkv7_step_cpu, wkv_cpu
from zoo.layers import token_shift
from zoo.rwkv import TimeMix, WKVState

# --- the wkv route ----------------------------------------------------------------------------

def _compiled_wkv_runs(*tensors: torch.Tensor) -> bool:
    """float32 CPU tensors and a C compiler that built the loop; with or without gradients
    (wkv_cpu.wkv_with_grad has the backward). torch.compile, which cannot trace the C call,
    runs it between its graphs."""
    return cpu_float32(*tensors) and wkv_cpu.available()


class CompiledWKVTimeMix(TimeMix):
    """RWKV's TimeMix with WKV computed by kernels/wkv_cpu.py's C loop where it can run, its
    backward included when a gradient is needed (training)."""

    def wkv(self, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            state: WKVState) -> tuple[torch.Tensor, WKVState]:
        if _compiled_wkv_runs(w, u, k, v, *state):
            if needs_grad(w, u, k, v, *state):
                return wkv_cpu.wkv_with_grad(w, u, k, v, state)
            return wkv_cpu.wkv(w, u, k, v, state)
        return super().wkv(w, u, k, v, state)


# --- the wkv5 route ---------------------------------------------------------------------------

class _CompiledMatrixWKV:
    """RWKV-5's or RWKV-6's TimeMix for float32 CPU inference (prefill and decoding), with the
    matrix WKV, the GroupNorm of its heads and the gate computed in one pass by
    kernels/wkv5_cpu.py's C loop: F.group_norm on a decoding step's few rows is an OpenMP region,
    whose barrier costs a scheduler's time slice where other jobs keep the cores busy (see
    `linear`), for a microsecond's work. With gradients (training), the plain forward with its WKV
    as the C loop and its C backward (zoo.fast.kernels.wkv5_cpu.wkv_with_grad); on CUDA, in other
    dtypes or without a compiler, the plain forward and its PyTorch WKV forms (the recurrence for a
    token, chunks for more)."""

    def _compiled(self, x: torch.Tensor, state: torch.Tensor) -> bool:
        return (module_inference(self, x, state, self.time_faaaa, self.ln_x.weight)
                and wkv5_cpu.available())

    def _wkv_norm_gate(self, r, log_w, k, v, g, state):
        """GroupNorm(WKV) * g, (B, T, d), and the new state; r, k, v, g (B, T, d)."""
        B, T, d = r.shape
        heads = (B, T, self.n_head, self.head_size)
        y, state = wkv5_cpu.wkv_group_norm_gate(
            r.view(heads), log_w, k.view(heads), v.view(heads), self.time_faaaa, state,
            self.ln_x.weight, self.ln_x.bias, self.ln_x.eps, g)
        return y.view(B, T, d), state

    def wkv(self, r, log_w, k, v, u, state):
        tensors = (r, log_w, k, v, u, state)
        if cpu_float32(*tensors) and wkv5_cpu.available():
            if needs_grad(*tensors):  # training: with the C backward
                return wkv5_cpu.wkv_with_grad(*tensors)
            return wkv5_cpu.wkv(*tensors)
        return super().wkv(*tensors)


class CompiledWKV5TimeMix(_CompiledMatrixWKV, rwkv5.TimeMix):
    def forward(self, x: torch.Tensor, last_x: torch.Tensor, state: torch.Tensor):
        if not self._compiled(x, state):
            return super().forward(x, last_x, state)
        B, T, d = x.shape
        prev = token_shift(x, last_x)
        xk, xv, xr, xg = (torch.lerp(prev, x, mix) for mix in
                          (self.time_mix_k, self.time_mix_v, self.time_mix_r, self.time_mix_g))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        log_w = -torch.exp(self.time_decay).expand(1, T, self.n_head, self.head_size)
        y, state = self._wkv_norm_gate(r, log_w, k, v, g, state)
        return self.output(y), x[:, -1], state


class CompiledWKV6TimeMix(LinearLoRA, _CompiledMatrixWKV, rwkv6.TimeMix):
    def forward(self, x: torch.Tensor, last_x: torch.Tensor, state: torch.Tensor):
        if not self._compiled(x, state):
            return super().forward(x, last_x, state)
        B, T, d = x.shape
        dx = token_shift(x, last_x) - x
        lora = torch.tanh((x + dx * self.time_maa_x) @ self.time_maa_w1).view(B, T, 5, -1)
        # The five mixes' second products one by one: as one einsum they are a batched
        # product, an OpenMP region (see _CompiledMatrixWKV).
        xw, xk, xv, xr, xg = (x + dx * (getattr(self, f"time_maa_{m}")
                                        + lora[:, :, i] @ self.time_maa_w2[i])
                              for i, m in enumerate(rwkv6.MIXES))
        r, k, v = self.receptance(xr), self.key(xk), self.value(xv)
        g = F.silu(self.gate(xg))
        log_w = -torch.exp(self.time_decay + torch.tanh(xw @ self.time_decay_w1)
                           @ self.time_decay_w2)
        heads = (B, T, self.n_head, self.head_size)
        y, state = self._wkv_norm_gate(r, log_w.view(heads), k, v, g, state)
        return self.output(y), x[:, -1], state


def _steps(block: nn.Module, x: torch.Tensor, *state: torch.Tensor) -> bool:
    """Whether an RWKV block may run x (B, T, d) as one compiled step: at most FEW_ROWS rows
    (decoding), float32 CPU inference, no hooks on its modules (which expect to be called), not
    under torch.compile."""
    return (x.size(0) * x.size(1) <= FEW_ROWS and module_inference(block, x, *state)
            and not hooked_within(block) and not compiling())


class _CompiledStep:
    """An RWKV-5 or RWKV-6 block whose forward, for at most FEW_ROWS rows (decoding) in
    float32 CPU inference, is kernels/wkv5_step_cpu.py's one compiled call: the plain block runs
    about 250 PyTorch operations on vectors of width d per token, whose dispatch took as long as its
    weights take to stream. Otherwise (prefill, gradients, other dtypes, hooks on its modules, no
    compiler) the block's own forward, with the modules' routes."""

    version: int

    def forward(self, x: torch.Tensor, att_x: torch.Tensor, wkv: torch.Tensor,
                ffn_x: torch.Tensor):
        if _steps(self, x, att_x, wkv, ffn_x) and wkv5_step_cpu.available():
            out = wkv5_step_cpu.step(self, self.version, x, att_x, wkv, ffn_x)
            if out is not None:
                return out
        return super().forward(x, att_x, wkv, ffn_x)


class MatvecHead(nn.Linear):
    """The output head of RWKV-5, RWKV-6 (route wkv5) or RWKV-7 (route wkv7), with its decoding
    product (at most FEW_ROWS rows) as kernels/matvec_cpu.py's, whose helper threads the
    blocks' compiled steps use: the split product's OpenMP region would leave OpenMP's second thread
    spinning on the core the helpers need (RWKV-5 small: 4.7-5.9 ms a token so, 6.4-6.8 ms with the
    split product; quiet machine, ad hoc). Otherwise `linear`. Swapped in by its place in the model
    (it is an nn.Linear), so its route is that of the model it sits in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if (0 < rows <= FEW_ROWS and dense.inference_path(x, self.weight, self.bias)
                and self.weight.is_contiguous() and matvec_cpu.available()):
            return matvec_cpu.matvec(x, self.weight, self.bias)
        return dense.linear(x, self.weight, self.bias)


class CompiledWKV5Block(_CompiledStep, rwkv5.Block):
    version = 5


class CompiledWKV6Block(_CompiledStep, rwkv6.Block):
    version = 6


# --- the wkv7 route ---------------------------------------------------------------------------

class CompiledWKV7TimeMix(LinearLoRA, rwkv7.TimeMix):
    """RWKV-7's TimeMix with the WKV run by kernels/wkv7_cpu.py's C loop for float32 CPU tensors
    (prefill and decoding), its C backward included when a gradient is needed (training); on
    CUDA or without a compiler, the PyTorch forms. Its LoRA projections as LinearLoRA's."""

    def wkv(self, r, log_w, k, v, kk, a, state):
        tensors = (r, log_w, k, v, kk, a, state)
        if cpu_float32(*tensors) and wkv7_cpu.available():
            if needs_grad(*tensors):
                return wkv7_cpu.wkv_with_grad(*tensors)
            return wkv7_cpu.wkv(*tensors)
        return super().wkv(*tensors)


class CompiledWKV7Block(rwkv7.Block):
    """An RWKV-7 block whose forward, for at most FEW_ROWS rows (decoding) in float32 CPU
    inference, is kernels/wkv7_step_cpu.py's one compiled call, as RWKV-5/6's (_CompiledStep);
    otherwise (prefill, gradients, other dtypes, hooks on its modules, no compiler) the
    block's own forward, with the modules' routes."""

    def forward(self, x: torch.Tensor, v_first: torch.Tensor | None, att_x: torch.Tensor,
                wkv: torch.Tensor, ffn_x: torch.Tensor):
        given = (att_x, wkv, ffn_x) if v_first is None else (v_first, att_x, wkv, ffn_x)
        if _steps(self, x, *given) and wkv7_step_cpu.available():
            out = wkv7_step_cpu.step(self, x, v_first, att_x, wkv, ffn_x)
            if out is not None:
                return out
        return super().forward(x, v_first, att_x, wkv, ffn_x)
