"""The linear and ffn routes: nn.Linear's product, and a feed-forward layer's activation fused
into it, by the fastest kernel for where and how it runs.

`linear` is the one product the other routes call too (RWKV-6/7's LoRA projections, the
output heads): a split matrix-vector product for a few rows (decoding), oneDNN's matmul for
more where torch runs AVX-512, MKL's (F.linear's) elsewhere; with oneDNN chosen, a float32
training step's three products as well. F.linear is its oracle (tests/zoo/test_fast.py).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from zoo import bart
from zoo.fast.conditions import compiling, hooked
from zoo.layers.feedforward import ACTIVATIONS, FeedForward
from zoo.llama import SwiGLU
from zoo.rwkv import ChannelMix

FEW_ROWS = 4  # at most this many rows take the split product (measured faster up to 4)
KERNELS = ("mkl", "onednn")  # for many rows; ZOO_LINEAR_KERNEL names one (default: auto)

# The activations of zoo.layers.ACTIVATIONS as oneDNN post-ops: name -> (post-op, algorithm).
_ONEDNN_POST_OPS = {None: ("none", ""), "relu": ("relu", ""), "gelu": ("gelu", "none"),
                    "gelu_tanh": ("gelu", "tanh")}
# The same activations applied in place to a fresh product (GELU has no in-place form).
_IN_PLACE = {"relu": F.relu_, "gelu": F.gelu,
             "gelu_tanh": functools.partial(F.gelu, approximate="tanh")}


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


@functools.cache
def onednn_bfloat16_available() -> bool:
    """Whether oneDNN's fused linear takes bfloat16 here: CPUs with AVX-512 (BF16 or not) or
    AMX; on an AVX2-only CPU it cannot build the product ("could not create a primitive
    descriptor"). The routes call it with bfloat16 only where this holds; tests that force it
    ask first."""
    if not onednn_available():
        return False
    try:
        x = torch.ones(2, 3, dtype=torch.bfloat16)
        y = torch.ops.mkldnn._linear_pointwise(x, torch.ones(4, 3, dtype=torch.bfloat16), None,
                                               "none", [], "")
    except RuntimeError:
        return False
    return bool(torch.equal(y.float(), torch.full((2, 4), 3.0)))


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
    3 to 14% ahead on a Zen 3 host without it (zoo/fast/measurements.md;
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


def inference_path(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """CPU float32 inference, nothing here needs a gradient, not under autocast (whose F.linear
    computes in its own dtype) and not under torch.compile (which chooses its own kernels, and
    cannot lower the oneDNN call)."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not compiling() and not torch.is_autocast_enabled("cpu")
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                                  or bias is not None and bias.requires_grad)))


def _training_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """CPU float32 with gradients, oneDNN chosen for many rows, no autocast (which casts the
    product to its own dtype) and not under torch.compile."""
    return (x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not compiling() and not torch.is_autocast_enabled("cpu")
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
    inference = inference_path(x, weight, bias)
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


class LinearLoRA:
    """A time mix whose low-rank projections (x down, then up: parameters (d, rank) and
    (rank, d)) are `linear`'s products, as the linear route's layers: in training, oneDNN's
    for the forward and both gradients where it is chosen, about twice MKL's rate for the
    PyTorch `@` these are otherwise (`python reports/train-cpu/lora-probe.py`)."""

    def lora(self, x: torch.Tensor, down: torch.Tensor, up: torch.Tensor,
             inner=None) -> torch.Tensor:
        h = linear(x, down.t())
        return linear(h if inner is None else inner(h), up.t())


# --- the ffn route ----------------------------------------------------------------------------

class FusedFeedForward(FeedForward):
    """FeedForward with fc_in's activation applied in the same pass as its matrix product."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hooked(self.fc_in):
            return super().forward(x)
        h = linear(x, self.fc_in.weight, self.fc_in.bias, self.activation)
        return self.fc_out(h)


class FusedBartFeedForward(bart.FeedForward):
    """BART's feed-forward with fc1's activation applied in the same pass as its matrix
    product, where the dropout after the activation does nothing (inference, or p = 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hooked(self.fc1) or (self.training and self.act_drop.p > 0):
            return super().forward(x)
        return self.fc2(linear(x, self.fc1.weight, self.fc1.bias, self.activation))


def swiglu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(F.linear(x, gate)) * F.linear(x, up), no biases, by the fastest route (see `linear`):
    with oneDNN, SiLU ("swish") as the gate product's post-op and the up product multiplied by
    the gate as it is written; otherwise SiLU and the product taken in place."""
    rows = x.numel() // x.size(-1) if x.size(-1) else 0
    if not (inference_path(x, gate, None) and inference_path(x, up, None)) or rows == 0:
        return F.silu(linear(x, gate)) * linear(x, up)  # training: `linear`'s oneDNN products
    if rows > FEW_ROWS and many_rows_kernel() == "onednn":
        g = torch.ops.mkldnn._linear_pointwise(x, gate, None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, g, up, None, "mul")
    return F.silu(linear(x, gate), inplace=True).mul_(linear(x, up))


class FusedSwiGLU(SwiGLU):
    """LLaMA's SwiGLU with SiLU and the gating product fused into the two products' passes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hooked(self.gate_proj) or hooked(self.up_proj):
            return super().forward(x)
        return self.down_proj(swiglu(x, self.gate_proj.weight, self.up_proj.weight))


class FusedChannelMix(ChannelMix):
    """RWKV's ChannelMix with the ReLU applied in the key's matrix product and the square taken
    in place when no gradient needs the unsquared values: a fresh 4d-wide tensor costs a page
    fault per 4 KiB on this CPU (~20 ms at 8192 tokens of width 2048), the squaring 2 ms."""

    def squared_relu_key(self, xk: torch.Tensor) -> torch.Tensor:
        if hooked(self.key):
            return super().squared_relu_key(xk)
        k = linear(xk, self.key.weight, self.key.bias, "relu")
        return k.square() if k.requires_grad else k.square_()
