"""The zoo's CPU speed routes, in one place, so that the model files stay the papers.

Every model file computes in plain PyTorch: nn.Linear, activations as separate calls, RWKV's WKV
as a PyTorch recurrence or in chunks. That plain path is what the tests hold against the
references, and what runs with gradients, on CUDA and in other dtypes. The routes below compute
the same numbers (up to the order of the additions) faster for float32 inference on the CPU,
where this project's benchmarks run:

  linear  nn.Linear -> FastLinear, computed by `linear` below: a split matrix-vector product for
          a few rows (decoding), oneDNN's matrix multiply for more where torch runs AVX-512,
          MKL's elsewhere (ZOO_LINEAR_KERNEL chooses); with oneDNN chosen, a float32 training
          step's three products (forward, input and weight gradients) are oneDNN's too;
  ffn     a feed-forward layer's activation applied in the pass that writes its first matrix
          product (oneDNN) or in place after it (MKL) (FeedForward -> FusedFeedForward; LLaMA's
          SwiGLU -> FusedSwiGLU), and RWKV's squared ReLU squared in place as well
          (ChannelMix -> FusedChannelMix);
  wkv     RWKV's TimeMix -> CompiledWKVTimeMix: WKV as zoo/wkv_cpu.py's compiled C loop, with
          its C backward when a gradient is needed (training);
  wkv5    RWKV-5's and RWKV-6's TimeMix -> CompiledWKV5TimeMix, CompiledWKV6TimeMix: the
          matrix WKV, the GroupNorm of its heads and the gate as zoo/wkv5_cpu.py's compiled C
          loop; and their Block -> CompiledWKV5Block, CompiledWKV6Block: for a few rows
          (decoding) the whole block as one compiled call, zoo/wkv5_step_cpu.py, its products
          zoo/matvec_cpu.py's, as the output head's (-> MatvecHead) (inference); training's
          WKV alone as the C loop with its C backward, and RWKV-6's decay LoRA as `linear`'s
          products;
  wkv7    RWKV-7's TimeMix -> CompiledWKV7TimeMix: the generalised delta rule as
          zoo/wkv7_cpu.py's compiled C loop; and its Block -> CompiledWKV7Block: for a few rows
          (decoding) the whole block as one compiled call, zoo/wkv7_step_cpu.py, its products
          zoo/matvec_cpu.py's, as the output head's (-> MatvecHead) (inference); training's
          WKV as the C loop with its C backward, and its four LoRA projections as `linear`'s
          products;
  scan    Mamba's MambaMixer -> CompiledScanMambaMixer: the selective scan as zoo/scan_cpu.py's
          compiled C loop, with its C backward when a gradient is needed (training); and
          Mamba's and Mamba-2's causal convolution with its SiLU as zoo/conv_cpu.py's, with
          its backward (float32, and in float32 under autocast); Mamba2Mixer ->
          CompiledScanMamba2Mixer: Mamba-2's chunked SSD as zoo/ssd_cpu.py's (a C loop inside
          chunks, oneDNN's products with the state, its backward written out); GatedRMSNorm ->
          CompiledGatedRMSNorm: its gated RMSNorm as zoo/norm_cpu.py's, one pass each way;
  dropout (training) nn.Dropout -> FastDropout, and attention modules -> DropoutAttention /
          DropoutAlibiAttention: dropout masks drawn by zoo/dropout_cpu.py's C kernel, and
          attention with dropout computed as its math form with such a mask: in float32
          where oneDNN is chosen, by zoo/attention_cpu.py (oneDNN's products a head at a
          time, softmax and dropout in one C pass, its backward written out), else in
          PyTorch.

    model = zoo.build("gpt")              # every route; zoo.build("gpt", fast=False): none
    zoo.fast.remove(model)                # back to the plain modules
    zoo.fast.apply(model, ["linear"])     # one route
    zoo.fast.applied(model)               # ("linear",)
    zoo.fast.describe(model)              # in words, for benchmark records

A route changes the class of the modules it covers in place (`module.__class__ = FastLinear`),
as torch.nn.utils.parametrize does: the module stays the same object, so its parameters,
state-dict keys, hooks and every reference to it are kept. The fast classes subclass the plain
ones and add no state, only a faster forward, so `remove` is the assignment back. Only modules of
exactly the plain class are swapped: a subclass has a forward of its own that no route knows.

The measurements behind these routes (kernels, threads, bandwidths, what was tried and
rejected) are in zoo/fast_measurements.md; `benchmarks/linear_backends.py` times the
linear routes side by side.

Elsewhere the linear and ffn routes run the plain ops (CUDA, other dtypes, autocast,
torch.compile; F.linear without oneDNN; the ffn route with gradients), the wkv route the
PyTorch WKV (CUDA, no C compiler), and the dropout route PyTorch's dropout and SDPA (CUDA,
dtypes other than float32 and bfloat16, torch.compile, no C compiler).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from zoo import (
    attention_cpu,
    conv_cpu,
    dropout_cpu,
    matvec_cpu,
    norm_cpu,
    rwkv5,
    rwkv6,
    rwkv7,
    scan_cpu,
    ssd_cpu,
    wkv5_cpu,
    wkv5_step_cpu,
    wkv7_cpu,
    wkv7_step_cpu,
    wkv_cpu,
)
from zoo.layers import token_shift
from zoo.layers.attention import MultiHeadAttention, additive_mask
from zoo.layers.feedforward import ACTIVATIONS, FeedForward
from zoo.llama import SwiGLU
from zoo.mamba import MambaMixer
from zoo.mamba import chunk_length as mamba_chunk_length
from zoo.mamba2 import GatedRMSNorm, Mamba2Mixer
from zoo.mamba2 import chunk_length as mamba2_chunk_length
from zoo.mosaic_bert import AlibiAttention
from zoo.rwkv import ChannelMix, TimeMix, WKVState, chunk_length

FEW_ROWS = 4  # at most this many rows take the split product (measured faster up to 4)

# Route name -> what it does, in one line.
ROUTES: dict[str, str] = {
    "linear": f"nn.Linear: split matrix-vector products for <= {FEW_ROWS} rows, oneDNN's "
              "matmul with AVX-512, MKL's without (or as ZOO_LINEAR_KERNEL names) for more "
              "(CPU float32 inference; with oneDNN, training's three products too)",
    "ffn": "feed-forward layers (SwiGLU's included): the activation in oneDNN's matmul pass or "
           "in place after MKL's, RWKV's squared ReLU squared in place (CPU float32 inference)",
    "wkv": "RWKV's WKV as a compiled C loop with its backward (zoo.wkv_cpu; CPU float32, "
           "inference and training)",
    "wkv5": "RWKV-5/6's matrix WKV, with its GroupNorm and gate, as a compiled C loop "
            f"(zoo.wkv5_cpu), a block on <= {FEW_ROWS} rows (decoding) as one compiled call "
            "(zoo.wkv5_step_cpu) and the head's product as zoo.matvec_cpu's (CPU float32 "
            "inference; training: the WKV with its C backward, RWKV-6's decay LoRA as the "
            "linear route's products)",
    "wkv7": "RWKV-7's WKV as a compiled C loop (zoo.wkv7_cpu), a block on <= "
            f"{FEW_ROWS} rows (decoding) as one compiled call (zoo.wkv7_step_cpu) and the "
            "head's product as zoo.matvec_cpu's (CPU float32 inference; training: the WKV "
            "with its C backward, the LoRA projections as the linear route's products)",
    "scan": "Mamba's selective scan as a compiled C loop with its backward (zoo.scan_cpu; CPU, "
            "inference and training), Mamba-2's chunked SSD as another inside chunks with "
            "oneDNN's products between them (zoo.ssd_cpu), its gated RMSNorm as another "
            "(zoo.norm_cpu), and Mamba's and Mamba-2's causal convolution with its SiLU as "
            "another (zoo.conv_cpu; CPU float32, and under autocast in float32)",
    "dropout": "dropout masks drawn by a C kernel (zoo.dropout_cpu), attention with dropout "
               "as its math path on them (CPU training, float32 or bfloat16)",
}

# The activations of zoo.layers.ACTIVATIONS as oneDNN post-ops: name -> (post-op, algorithm).
_ONEDNN_POST_OPS = {None: ("none", ""), "relu": ("relu", ""), "gelu": ("gelu", "none"),
                    "gelu_tanh": ("gelu", "tanh")}
# The same activations applied in place to a fresh product (GELU has no in-place form).
_IN_PLACE = {"relu": F.relu_, "gelu": F.gelu,
             "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}
KERNELS = ("mkl", "onednn")  # for many rows; ZOO_LINEAR_KERNEL names one (default: auto)


# --- the linear route -----------------------------------------------------------------------

@functools.cache
def onednn_available() -> bool:
    """Whether this torch has oneDNN's fused linear (a CPU build with mkldnn, torch >= 2.0)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        x = torch.ones(2, 3)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 3), None, "none", [], "")
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.equal(y, torch.full((2, 4), 3.0)))


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels run with here ("AVX512", "AVX2", ...; torch
    >= 2.1's torch.backends.cpu.get_cpu_capability), "" where torch cannot say."""
    return str(getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")())


def avx512() -> bool:
    """Whether torch's CPU kernels run with AVX-512 here."""
    return cpu_capability().upper().startswith("AVX512")


@functools.cache
def many_rows_kernel() -> str:
    """"mkl" or "onednn": the matrix multiply the linear route uses for more than FEW_ROWS rows.
    The environment variable ZOO_LINEAR_KERNEL names one; unset (or "auto"): oneDNN's where
    torch runs AVX-512 and has oneDNN's fused linear, MKL's (F.linear's) elsewhere: oneDNN's
    ran at 470-485 GFLOP/s against MKL's 210-220 on a 2-core AMD Zen 4 host (AVX-512), MKL's
    3 to 14% ahead on a Zen 3 host without it (zoo/fast_measurements.md;
    benchmarks/linear_backends.py times both). A timing at start-up was tried and rejected:
    on this shared 2-core machine a quarter-second probe picked the slower kernel in about
    one process in three."""
    chosen = os.environ.get("ZOO_LINEAR_KERNEL", "").strip().lower() or "auto"
    if chosen not in (*KERNELS, "auto"):
        raise ValueError(f"ZOO_LINEAR_KERNEL={chosen!r}: expected one of "
                         f"{', '.join(KERNELS)} or auto")
    if chosen == "auto":
        chosen = "onednn" if avx512() else "mkl"
    return chosen if chosen == "mkl" or onednn_available() else "mkl"


def _compiling() -> bool:
    is_compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(is_compiling and is_compiling())


def _fast_path(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU float32 inference, nothing here needs a gradient, and not under torch.compile
    (which chooses its own kernels, and cannot lower the oneDNN call)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not _compiling()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or bias is not None and bias.requires_grad)))


def _training_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU float32 with gradients, oneDNN chosen for many rows, no autocast (which casts the
    product to its own dtype) and not under torch.compile."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not _compiling() and not torch.is_autocast_enabled("cpu")
            and many_rows_kernel() == "onednn")


class _OneDNNLinear(torch.autograd.Function):
    """x W^T + b with its three products (forward, input gradient, weight gradient) in oneDNN's
    matmul, which runs at about twice MKL's rate where it has AVX-512
    (benchmarks/linear_backends.py --training); the plain F.linear is its oracle."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor):
        x, weight = ctx.saved_tensors
        out_features, in_features = weight.shape
        dy2 = dy.contiguous().view(-1, out_features)  # a summed loss's gradient can be expanded
        dx = dw = db = None
        if ctx.needs_input_grad[0]:  # dy W: oneDNN takes W^T as a (in, out) "weight" view
            dx = torch.ops.mkldnn._linear_pointwise(dy2, weight.t(), None, "none", [], "")
            dx = dx.view(x.shape)
        if ctx.needs_input_grad[1]:  # dy^T x
            x2 = x.reshape(-1, in_features)
            rows = x2.size(0)
            # oneDNN copies a transposed input to rows first: dy^T (out x rows) as written, or
            # x^T (in x rows) for (x^T dy)^T, whose result is then transposed into place. The
            # smaller copy wins: for an LM head (out = vocabulary) the second, 25% faster
            # there (2048 rows, 8192 x 512).
            if rows * in_features + out_features * in_features < rows * out_features:
                dw = torch.ops.mkldnn._linear_pointwise(x2.t(), dy2.t(), None, "none", [], "")
                dw = dw.t().contiguous()
            else:
                dw = torch.ops.mkldnn._linear_pointwise(dy2.t(), x2.t(), None, "none", [], "")
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0)
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """activation(F.linear(x, weight, bias)) for x (..., in), weight (out, in), by the fastest
    route for where and how it runs; `activation` is None or a key of zoo.layers.ACTIVATIONS
    ("relu", "gelu" (exact), "gelu_tanh")."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    inference = _fast_path(x, weight, bias)
    if rows > FEW_ROWS and not inference and _training_path(x, weight):
        y = _OneDNNLinear.apply(x, weight, bias)  # with gradients: the three products in oneDNN
    elif not inference or rows == 0:
        y = F.linear(x, weight, bias)
    elif rows <= FEW_ROWS and out_features % 2 == 0 and weight.is_contiguous():
        # (2, out/2, in) @ (2, in, rows): each half of the weight's rows times the same inputs.
        # The columns' strides matter: built as below (a transposed view) the product runs at
        # 15-30 GB/s; built as x.reshape(1, in, 1).expand(2, in, 1), same values, at 6 GB/s.
        halves = weight.view(2, out_features // 2, in_features)
        columns = x.reshape(rows, in_features).t().expand(2, in_features, rows)
        y = torch.bmm(halves, columns)  # (2, out/2, rows)
        y = y.view(1, out_features) if rows == 1 else y.reshape(out_features, rows).t()
        if bias is not None:
            y = y + bias
        y = y.view(*x.shape[:-1], out_features)
    elif many_rows_kernel() == "onednn":
        post_op, algorithm = _ONEDNN_POST_OPS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)
    else:  # MKL's product, then the activation in place on the fresh tensor
        y = F.linear(x, weight, bias)
        return y if activation is None else _IN_PLACE[activation](y)
    return y if activation is None else ACTIVATIONS[activation](y)


class FastLinear(nn.Linear):
    """nn.Linear computed by `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


class _LinearLoRA:
    """A time mix whose low-rank projections (x down, then up: parameters (d, rank) and
    (rank, d)) are `linear`'s products, as the linear route's layers: in training, oneDNN's
    for the forward and both gradients where it is chosen, about twice MKL's rate for the
    PyTorch `@` these are otherwise (`python reports/train-cpu/lora-probe.py`)."""

    def lora(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
             inner=None) -> torch.Tensor:
        h = linear(x, down.t())
        return linear(h if inner is None else inner(h), up.t())


# --- the ffn route ----------------------------------------------------------------------------

def _hooked(module: nn.Module) -> bool:
    """Whether `module` has forward hooks, which expect it to be called as a module: a fused
    route that would only read its weights calls it instead."""
    return bool(module._forward_hooks or module._forward_pre_hooks)


class FusedFeedForward(FeedForward):
    """FeedForward with fc_in's activation applied in the same pass as its matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _hooked(self.fc_in):
            return super().forward(x)
        h = linear(x, self.fc_in.weight, self.fc_in.bias, self.activation)
        return self.fc_out(h)


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(F.linear(x, gate)) * F.linear(x, up), no biases, by the fastest route (see `linear`):
    with oneDNN, SiLU ("swish") as the gate product's post-op and the up product multiplied by
    the gate as it is written; otherwise SiLU and the product taken in place."""
    rows = x.numel() // x.size(-1) if x.size(-1) else 0
    if not (_fast_path(x, gate, None) and _fast_path(x, up, None)) or rows == 0:
        return F.silu(linear(x, gate)) * linear(x, up)  # training: `linear`'s oneDNN products
    if rows > FEW_ROWS and many_rows_kernel() == "onednn":
        g = torch.ops.mkldnn._linear_pointwise(x, gate, None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, g, up, None, "mul")
    return F.silu(linear(x, gate), inplace=True).mul_(linear(x, up))


class FusedSwiGLU(SwiGLU):
    """LLaMA's SwiGLU with SiLU and the gating product fused into the two products' passes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _hooked(self.gate_proj) or _hooked(self.up_proj):
            return super().forward(x)
        return self.down_proj(swiglu(x, self.gate_proj.weight, self.up_proj.weight))


class FusedChannelMix(ChannelMix):
    """RWKV's ChannelMix with the ReLU applied in the key's matrix product and the square taken
    in place when no gradient needs the unsquared values: a fresh 4d-wide tensor costs a page
    fault per 4 KiB on this CPU (~20 ms at 8192 tokens of width 2048), the squaring 2 ms."""

    def squared_relu_key(self, xk: torch.Tensor) -> torch.Tensor:
        if _hooked(self.key):
            return super().squared_relu_key(xk)
        k = linear(xk, self.key.weight, self.key.bias, "relu")
        return k.square() if k.requires_grad else k.square_()


# --- the wkv route ----------------------------------------------------------------------------

def _compiled_wkv_runs(*tensors: torch.Tensor) -> bool:
    """float32 CPU tensors and a C compiler that built the loop; with or without gradients
    (wkv_cpu.wkv_with_grad has the backward). torch.compile, which cannot trace the C call,
    runs it between its graphs."""
    return _cpu_float32(*tensors) and wkv_cpu.available()


def _cpu_float32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class CompiledWKVTimeMix(TimeMix):
    """RWKV's TimeMix with WKV computed by zoo/wkv_cpu.py's C loop where it can run, its
    backward included when a gradient is needed (training)."""

    def wkv(self, w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            state: WKVState) -> tuple[torch.Tensor, WKVState]:
        if _compiled_wkv_runs(w, u, k, v, *state):
            if _needs_grad(w, u, k, v, *state):
                return wkv_cpu.wkv_with_grad(w, u, k, v, state)
            return wkv_cpu.wkv(w, u, k, v, state)
        return super().wkv(w, u, k, v, state)


# --- the wkv5 route ---------------------------------------------------------------------------

def _cpu_float32_inference(*tensors: torch.Tensor) -> bool:
    return _cpu_float32(*tensors) and not _needs_grad(*tensors)


def _module_inference(module: nn.Module, *tensors: torch.Tensor) -> bool:
    """float32 CPU `tensors`, and no gradient needed for them or `module`'s parameters (which
    are looked at only with autograd on: iterating them took 70 us for an RWKV time mix)."""
    return (_cpu_float32_inference(*tensors)
            and not (torch.is_grad_enabled() and any(p.requires_grad
                                                     for p in module.parameters())))


class _CompiledMatrixWKV:
    """RWKV-5's or RWKV-6's TimeMix for float32 CPU inference (prefill and decoding), with the
    matrix WKV, the GroupNorm of its heads and the gate computed in one pass by zoo/wkv5_cpu.py's
    C loop: F.group_norm on a decoding step's few rows is an OpenMP region, whose barrier costs
    a scheduler's time slice where other jobs keep the cores busy (see `linear`), for a
    microsecond's work. With gradients (training), the plain forward with its WKV as the C
    loop and its C backward (zoo.wkv5_cpu.wkv_with_grad); on CUDA, in other dtypes or without
    a compiler, the plain forward and its PyTorch WKV forms (the recurrence for a token,
    chunks for more)."""

    def _compiled(self, x: torch.Tensor, state: torch.Tensor) -> bool:
        return (_module_inference(self, x, state, self.time_faaaa, self.ln_x.weight)
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
        if _cpu_float32(*tensors) and wkv5_cpu.available():
            if _needs_grad(*tensors):  # training: with the C backward
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


class CompiledWKV6TimeMix(_LinearLoRA, _CompiledMatrixWKV, rwkv6.TimeMix):
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


def _hooked_within(module: nn.Module) -> bool:
    """Whether `module` or a module inside it has forward hooks (a walk of the module
    dictionaries: nn.Module.modules() took 70 us for an RWKV block)."""
    return _hooked(module) or any(child is not None and _hooked_within(child)
                                  for child in module._modules.values())


def _steps(block: nn.Module, x: torch.Tensor, *state: torch.Tensor) -> bool:
    """Whether an RWKV block may run x (B, T, d) as one compiled step: at most FEW_ROWS rows
    (decoding), float32 CPU inference, no hooks on its modules (which expect to be called), not
    under torch.compile."""
    return (x.size(0) * x.size(1) <= FEW_ROWS and _module_inference(block, x, *state)
            and not _hooked_within(block) and not _compiling())


class _CompiledStep:
    """An RWKV-5 or RWKV-6 block whose forward, for at most FEW_ROWS rows (decoding) in float32
    CPU inference, is zoo/wkv5_step_cpu.py's one compiled call: the plain block runs about 250
    PyTorch operations on vectors of width d per token, whose dispatch took as long as its
    weights take to stream. Otherwise (prefill, gradients, other dtypes, hooks on its modules,
    no compiler) the block's own forward, with the modules' routes."""

    version: int

    def forward(self, x: torch.Tensor, att_x: torch.Tensor, wkv: torch.Tensor,
                ffn_x: torch.Tensor):
        if _steps(self, x, att_x, wkv, ffn_x) and wkv5_step_cpu.available():
            out = wkv5_step_cpu.step(self, self.version, x, att_x, wkv, ffn_x)
            if out is not None:
                return out
        return super().forward(x, att_x, wkv, ffn_x)


class MatvecHead(nn.Linear):
    """The output head of RWKV-5, RWKV-6 (route wkv5) or RWKV-7 (route wkv7), with its
    decoding product (at most FEW_ROWS rows) as zoo/matvec_cpu.py's, whose helper threads the
    blocks' compiled steps use: the split product's OpenMP region would leave OpenMP's second
    thread spinning on the core the helpers need (RWKV-5 small: 4.7-5.9 ms a token so, 6.4-6.8
    ms with the split product; quiet machine, ad hoc). Otherwise `linear`. Swapped in by its
    place in the model (it is an nn.Linear), so its route is that of the model it sits in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features if self.in_features else 0
        if (0 < rows <= FEW_ROWS and _fast_path(x, self.weight, self.bias)
                and self.weight.is_contiguous() and matvec_cpu.available()):
            return matvec_cpu.matvec(x, self.weight, self.bias)
        return linear(x, self.weight, self.bias)


class CompiledWKV5Block(_CompiledStep, rwkv5.Block):
    version = 5


class CompiledWKV6Block(_CompiledStep, rwkv6.Block):
    version = 6


# --- the wkv7 route ---------------------------------------------------------------------------

class CompiledWKV7TimeMix(_LinearLoRA, rwkv7.TimeMix):
    """RWKV-7's TimeMix with the WKV run by zoo/wkv7_cpu.py's C loop for float32 CPU tensors
    (prefill and decoding), its C backward included when a gradient is needed (training); on
    CUDA or without a compiler, the PyTorch forms. Its LoRA projections as _LinearLoRA's."""

    def wkv(self, r, log_w, k, v, kk, a, state):
        tensors = (r, log_w, k, v, kk, a, state)
        if _cpu_float32(*tensors) and wkv7_cpu.available():
            if _needs_grad(*tensors):
                return wkv7_cpu.wkv_with_grad(*tensors)
            return wkv7_cpu.wkv(*tensors)
        return super().wkv(*tensors)


class CompiledWKV7Block(rwkv7.Block):
    """An RWKV-7 block whose forward, for at most FEW_ROWS rows (decoding) in float32 CPU
    inference, is zoo/wkv7_step_cpu.py's one compiled call, as RWKV-5/6's (_CompiledStep);
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


# --- the scan route ---------------------------------------------------------------------------

class _CompiledConv:
    """A state-space mixer whose causal convolution and SiLU run as zoo/conv_cpu.py's C loop
    (with its backward) for float32 CPU tensors: one pass over the tokens in their (b, T,
    channels) layout, where the plain path transposes to channels-first for F.conv1d and back.
    Under CPU autocast over float32 weights too, its bfloat16 input taken to float32 (as the
    scan after it runs): autocast's bfloat16 depthwise convolution spent 10 ms a call in its
    backward, 15% of a Mamba-2 step, more than the bfloat16 products saved (`python
    benchmarks/training_parts.py --profile mamba2:1024 --dtype bfloat16`). Otherwise (float64,
    bfloat16 weights, CUDA, no compiler) the plain convolution."""

    def conv(self, x: torch.Tensor, conv_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parameters = tuple(self.conv1d.parameters())
        if (_cpu_float32(*parameters) and conv_cpu.available() and x.device.type == "cpu"
                and (_cpu_float32(x, conv_state) or torch.is_autocast_enabled("cpu"))):
            return conv_cpu.conv_silu(x.float(), conv_state.float(), self.conv1d.weight,
                                      self.conv1d.bias)
        return super().conv(x, conv_state)


class CompiledScanMambaMixer(_CompiledConv, MambaMixer):
    """Mamba's mixer with the selective scan run by zoo/scan_cpu.py's C loop on the CPU (the
    scan is always float32), its backward included when a gradient is needed (training); on
    CUDA or without a compiler, the PyTorch scans. Its convolution as _CompiledConv's."""

    def scan(self, x: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (x, delta, A, B, C, state)
        if (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
                and scan_cpu.available()):
            if _needs_grad(*tensors):
                return scan_cpu.scan_with_grad(*tensors)
            return scan_cpu.scan(*tensors)
        return super().scan(*tensors)


class CompiledScanMamba2Mixer(_CompiledConv, Mamba2Mixer):
    """Mamba-2's mixer with its chunked SSD run by zoo/ssd_cpu.py on the CPU (the work inside
    each chunk a C loop, the products with the state oneDNN's, its backward written out) for
    more than one token; decoding's one-token recurrence, CUDA and the lack of a compiler keep
    the PyTorch forms. Its convolution as _CompiledConv's."""

    def scan(self, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
             C: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = (x, dt, A, B, C, state)
        if x.size(1) > 1 and _cpu_float32(*tensors) and ssd_cpu.available():
            return ssd_cpu.ssd(*tensors, self.chunk_size or ssd_cpu.CHUNK)
        return super().scan(*tensors)


class CompiledGatedRMSNorm(GatedRMSNorm):
    """Mamba-2's gated RMSNorm as zoo/norm_cpu.py's C loop, one pass forward and one backward
    where PyTorch makes six and about twelve over the activations, for CPU float32 weights and
    y, z float32 or (autocast) bfloat16; otherwise GatedRMSNorm's own."""

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if (_cpu_float32(y, self.weight) and z.dtype in (torch.float32, torch.bfloat16)
                and z.device.type == "cpu" and not _compiling() and norm_cpu.available()):
            return norm_cpu.gated_rms_norm(y, z, self.weight, self.n_groups, self.eps)
        return super().forward(y, z)


# --- the dropout route ------------------------------------------------------------------------

def _dropout_runs(x: torch.Tensor, p: float) -> bool:
    return not _compiling() and dropout_cpu.runs(x, p)


class FastDropout(nn.Dropout):
    """nn.Dropout with its mask drawn by zoo/dropout_cpu.py's kernel where it runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.inplace and _dropout_runs(x, self.p):
            return dropout_cpu.dropout(x, self.p)
        return super().forward(x)


CAUSAL_BLOCK = 256  # query rows per block of causal attention with dropout
# Fewer keys than this, not causal: attention with dropout keeps the PyTorch form, which
# zoo/attention_cpu.py did not beat there (zoo/fast_measurements.md; training_parts.py --attention)
ATTENTION_MIN_KEYS = 512


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           attn_mask: torch.Tensor | None, is_causal: bool, p: float,
                           block: int = CAUSAL_BLOCK) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs) + mask) v with dropout p on the probabilities, written out as
    zoo.layers.math_attention is, with zoo/dropout_cpu.py's mask. `attn_mask` is None or an
    additive float mask, broadcasting to (B, nh, T_query, T_key); `is_causal` as in SDPA.

    Causal self-attention goes `block` query rows at a time, each block over the keys up to its
    last row only: the keys after it would all be masked. At T = 1024 in blocks of 256 that is
    62% of the full product's work and memory (1/2 + 1/(2 * blocks) of it in general)."""
    T, S = q.size(-2), k.size(-2)
    if not is_causal or T != S or T <= block:
        return _attention_rows(q, k, v, attn_mask, 0 if is_causal else None, p)
    # Heads split from (B, T, C) are strided views: laid out once here, each block's rows and
    # key prefix are views the batched products take as they are, not a copy per block.
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    rows = []
    for start in range(0, T, block):
        end = min(start + block, T)
        mask = attn_mask
        if mask is not None:  # its rows and columns, where it has them (not broadcast)
            mask = mask[..., start:end, :] if mask.size(-2) > 1 else mask
            mask = mask[..., :end] if mask.size(-1) > 1 else mask
        rows.append(_attention_rows(q[:, :, start:end], k[:, :, :end], v[:, :, :end], mask,
                                    start, p))
    return torch.cat(rows, dim=2)


def _kernel_attention(q, k, v, attn_mask, causal: bool) -> bool:
    """Whether attention with dropout over these goes to zoo/attention_cpu.py: float32 training
    where oneDNN takes the products, causal rows or ATTENTION_MIN_KEYS keys or more."""
    return ((causal or k.size(-2) >= ATTENTION_MIN_KEYS) and many_rows_kernel() == "onednn"
            and not _compiling() and not torch.is_autocast_enabled("cpu")
            and attention_cpu.runs(q, k, v, attn_mask))


def _attention_rows(q, k, v, attn_mask, first_row: int | None, p: float) -> torch.Tensor:
    """Attention of queries at rows first_row.. (None: not causal) over keys 0..S-1: by
    zoo/attention_cpu.py (oneDNN's products a head at a time, softmax and dropout in C) where
    float32 training takes oneDNN's products (and the rows are causal or the keys at least
    ATTENTION_MIN_KEYS), else written out in PyTorch."""
    if _kernel_attention(q, k, v, attn_mask, first_row is not None):
        return attention_cpu.attention(q, k, v, attn_mask, first_row, p)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.size(-1)))
    if first_row is not None:  # query r (row first_row + r) sees keys 0..first_row + r
        future = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device)
        scores.masked_fill_(future.triu(1 + first_row), float("-inf"))
    if attn_mask is not None:
        scores.add_(attn_mask)
    return torch.matmul(dropout_cpu.dropout(torch.softmax(scores, dim=-1), p), v)


class _DropoutAttend:
    """An attention module's `attend` with the probabilities' dropout done by zoo/dropout_cpu.py:
    PyTorch's CPU flash attention takes no dropout, so with dropout SDPA computes the same math
    path, with PyTorch's slow mask. A boolean mask (BERT's padding) is taken as an additive one
    (-inf where a query may not attend) where zoo/attention_cpu.py computes the attention,
    which gives a row with nothing to attend zeros as SDPA does; the PyTorch form would give
    NaNs, so there it stays SDPA's. Without dropout (inference, p = 0), or where the kernel
    does not run, it is the plain `attend` (SDPA)."""

    def attend(self, q, k, v, attn_mask, dropout, is_causal, new_key_length):
        if (dropout > 0 and _dropout_runs(q, dropout)
                and q.numel() // q.size(-1) * k.size(-2) < dropout_cpu.MAX_ELEMENTS):
            mask = attn_mask
            if (mask is not None and mask.dtype == torch.bool
                    and _kernel_attention(q, k, v, None, is_causal)):
                mask = additive_mask(mask, q.dtype)
            if mask is None or mask.dtype == q.dtype:
                return attention_with_dropout(q, k, v, mask, is_causal, dropout)
        return super().attend(q, k, v, attn_mask, dropout, is_causal, new_key_length)


class DropoutAttention(_DropoutAttend, MultiHeadAttention):
    pass


class DropoutAlibiAttention(_DropoutAttend, AlibiAttention):
    pass


# --- applying and removing routes -------------------------------------------------------------

# route -> {plain class: its fast subclass}
_SWAPS: dict[str, dict[type[nn.Module], type[nn.Module]]] = {
    "linear": {nn.Linear: FastLinear},
    "ffn": {FeedForward: FusedFeedForward, ChannelMix: FusedChannelMix, SwiGLU: FusedSwiGLU},
    "wkv": {TimeMix: CompiledWKVTimeMix},
    "wkv5": {rwkv5.TimeMix: CompiledWKV5TimeMix, rwkv6.TimeMix: CompiledWKV6TimeMix,
             rwkv5.Block: CompiledWKV5Block, rwkv6.Block: CompiledWKV6Block},
    "wkv7": {rwkv7.TimeMix: CompiledWKV7TimeMix, rwkv7.Block: CompiledWKV7Block},
    "scan": {MambaMixer: CompiledScanMambaMixer, Mamba2Mixer: CompiledScanMamba2Mixer,
             GatedRMSNorm: CompiledGatedRMSNorm},
    "dropout": {nn.Dropout: FastDropout, MultiHeadAttention: DropoutAttention,
                AlibiAttention: DropoutAlibiAttention},
}
# route -> its places: (model classes, the attribute of theirs, its fast class), a module
# swapped by its place in a model rather than by its class (it is an nn.Linear, or FastLinear
# by then); its route is told by that place too (a MatvecHead in an RWKV7 is wkv7's).
_BY_PLACE: dict[str, list[tuple[tuple[type[nn.Module], ...], str, type[nn.Module]]]] = {
    "wkv5": [((rwkv5.RWKV5, rwkv6.RWKV6), "head", MatvecHead)],
    "wkv7": [((rwkv7.RWKV7,), "head", MatvecHead)],
}
_PLAIN = {fast: plain for swaps in _SWAPS.values() for plain, fast in swaps.items()}
_PLAIN[MatvecHead] = nn.Linear
_ROUTE_OF = {fast: route for route, swaps in _SWAPS.items() for fast in swaps.values()}


def _route_names(routes: Iterable[str] | None) -> tuple[str, ...]:
    if routes is None:
        return tuple(ROUTES)
    if isinstance(routes, str):  # one name, not its letters
        routes = (routes,)
    names = tuple(routes)
    unknown = [name for name in names if name not in ROUTES]
    if unknown:
        raise ValueError(f"unknown fast route {unknown[0]!r}; valid: {', '.join(ROUTES)}")
    return names


def apply(model: nn.Module, routes: Iterable[str] | None = None) -> tuple[str, ...]:
    """Swap in the fast modules of `routes` (None: every route) in place. Returns the names of
    those routes that found modules to cover in `model`; applying again changes nothing."""
    names = _route_names(routes)
    for module in model.modules():
        for name in names:
            fast = _SWAPS[name].get(type(module))
            if fast is not None:
                module.__class__ = fast
    for name in names:
        for owners, attribute, fast in _BY_PLACE.get(name, ()):
            for module in model.modules():
                if type(module) in owners:
                    placed = getattr(module, attribute, None)
                    if type(placed) in (nn.Linear, FastLinear):
                        placed.__class__ = fast
    return tuple(name for name in applied(model) if name in names)


def remove(model: nn.Module) -> None:
    """Back to the plain modules, the paper's path, in place."""
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain


def applied(model: nn.Module) -> tuple[str, ...]:
    """The names of the routes `model` has now, in ROUTES' order."""
    modules = list(model.modules())
    found = {_ROUTE_OF[type(m)] for m in modules if type(m) in _ROUTE_OF}
    found.update(route for route, places in _BY_PLACE.items()
                 for owners, attribute, fast in places for m in modules
                 if type(m) in owners and type(getattr(m, attribute, None)) is fast)
    return tuple(name for name in ROUTES if name in found)


def describe(model: nn.Module, training: bool = False,
             dtype: torch.dtype | None = None) -> tuple[str, ...]:
    """In words, how `model` computes where its weights are: which routes run and what the
    plain path does where they do not, for benchmark records. `training`: in a training step
    (gradients), where the inference routes give way to the plain ops; `dtype`: what the
    model computes in (autocast), when not its weights' dtype."""
    weight = next(model.parameters())
    cpu = weight.device.type == "cpu"
    cpu32 = cpu and (dtype or weight.dtype) == torch.float32
    inference = cpu32 and not training
    # RWKV-5/6/7 cast their WKV's inputs to float32 (float64 in a float64 model) whatever the
    # model's dtype or autocast: the C loops take them in any dtype but float64.
    wkv_in_float32 = cpu and (dtype or weight.dtype) != torch.float64
    backward = " and its backward" if training else ""
    routes = applied(model)
    kinds = {type(m) for m in model.modules()}
    notes = []
    onednn = many_rows_kernel() == "onednn"
    if "linear" in routes and inference:
        many = "oneDNN matmul" if onednn else "MKL matmul (F.linear)"
        notes.append(f"linears: {many}, split matrix-vector products for <= {FEW_ROWS} rows "
                     "(zoo.fast)")
    elif "linear" in routes and cpu32 and onednn:
        notes.append("linears: oneDNN matmul for the forward and both gradients (zoo.fast)")
    else:
        notes.append("linears: F.linear")
    if kinds & {FeedForward, ChannelMix, SwiGLU, *_SWAPS["ffn"].values()}:
        fused = "ffn" in routes and inference
        notes.append(("feed-forward: activation in oneDNN's matmul pass (zoo.fast)" if onednn
                      else "feed-forward: activation in place after the matmul (zoo.fast)")
                     if fused else "feed-forward: activation as a separate op")
    time_mix = next((m for m in model.modules() if isinstance(m, TimeMix)), None)
    if time_mix is not None:
        if "wkv" in routes and cpu and wkv_cpu.available():
            notes.append("WKV: compiled C loop (zoo.wkv_cpu)")
        else:
            chunk = chunk_length(time_mix.chunk_len, weight.is_cuda)
            notes.append(f"WKV: PyTorch, chunks of {chunk} for prefill, the recurrence for "
                         "decoding")
    matrix = next((m for m in model.modules() if isinstance(m, (rwkv5.TimeMix, rwkv6.TimeMix))),
                  None)
    if matrix is not None:
        if "wkv5" in routes and inference and wkv5_cpu.available():
            notes.append("matrix WKV: compiled C loop with ln_x and the gate (zoo.wkv5_cpu); "
                         f"<= {FEW_ROWS} rows: a block in one compiled call (zoo.wkv5_step_cpu), "
                         "the head's product zoo.matvec_cpu's")
        elif "wkv5" in routes and wkv_in_float32 and wkv5_cpu.available():
            notes.append(f"matrix WKV: compiled C loop{backward} (zoo.wkv5_cpu)")
        else:
            notes.append(f"matrix WKV: PyTorch, chunks of {matrix.chunk_size} for prefill, the "
                         "recurrence for decoding")
    time_mix7 = next((m for m in model.modules() if isinstance(m, rwkv7.TimeMix)), None)
    if time_mix7 is not None:
        if "wkv7" in routes and inference and wkv7_cpu.available():
            notes.append("WKV-7: compiled C loop (zoo.wkv7_cpu); "
                         f"<= {FEW_ROWS} rows: a block in one compiled call (zoo.wkv7_step_cpu), "
                         "the head's product zoo.matvec_cpu's")
        elif "wkv7" in routes and wkv_in_float32 and wkv7_cpu.available():
            notes.append(f"WKV-7: compiled C loop{backward} (zoo.wkv7_cpu)")
        else:
            notes.append(f"WKV-7: PyTorch, chunks of {time_mix7.chunk_size} for prefill, the "
                         "recurrence for decoding")
    mixer = next((m for m in model.modules() if isinstance(m, MambaMixer)), None)
    if mixer is not None:
        if "scan" in routes and cpu and scan_cpu.available():
            notes.append("selective scan: compiled C loop (zoo.scan_cpu)")
        else:
            chunk = mamba_chunk_length(mixer.chunk_len, weight.is_cuda)
            notes.append(f"selective scan: PyTorch, chunks of {chunk} for prefill, the "
                         "recurrence for decoding")
    mixer2 = next((m for m in model.modules() if isinstance(m, Mamba2Mixer)), None)
    if mixer2 is not None:
        if "scan" in routes and cpu and ssd_cpu.available():
            chunk = mixer2.chunk_size or ssd_cpu.CHUNK
            notes.append(f"SSD: chunks of {chunk}, inside them a compiled C loop{backward}, "
                         "oneDNN's products with the state (zoo.ssd_cpu); the recurrence for "
                         "decoding")
        else:
            chunk = mamba2_chunk_length(mixer2.chunk_size, weight.is_cuda)
            notes.append(f"SSD: PyTorch, chunks of {chunk} for prefill, the recurrence for "
                         "decoding")
    if mixer2 is not None:
        notes.append("gated RMSNorm: compiled C loop (zoo.norm_cpu)"
                     if "scan" in routes and cpu and weight.dtype == torch.float32
                     and norm_cpu.available() else "gated RMSNorm: PyTorch")
    if any(isinstance(m, (MambaMixer, Mamba2Mixer)) for m in model.modules()):
        if "scan" in routes and cpu and weight.dtype == torch.float32 and conv_cpu.available():
            in_float32 = "" if cpu32 else " in float32"  # autocast's bfloat16 input, upcast
            notes.append(f"causal conv and SiLU: compiled C loop{in_float32} (zoo.conv_cpu)")
        else:
            notes.append("causal conv and SiLU: F.conv1d, then F.silu")
    if any(isinstance(m, tuple(_SWAPS["dropout"])) for m in model.modules()):
        kernel = ("dropout" in routes and cpu and (dtype or weight.dtype) in dropout_cpu.DTYPES
                  and dropout_cpu.available())
        notes.append("dropout (training): masks from a C kernel (zoo.dropout_cpu)" if kernel
                     else "dropout (training): PyTorch's")
        if (kernel and training and cpu32 and onednn and attention_cpu.available()
                and kinds & {DropoutAttention, DropoutAlibiAttention}):
            notes.append("attention with dropout: oneDNN's products a head at a time, softmax "
                         "and dropout in C (zoo.attention_cpu; causal, or over >= "
                         f"{ATTENTION_MIN_KEYS} keys)")
    return tuple(notes)
