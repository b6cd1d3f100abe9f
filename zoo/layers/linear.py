"""nn.Linear with faster routes for float32 inference on the CPU; F.linear everywhere else.

`linear(x, weight, bias, activation)` is F.linear (then the activation) computed one of three
ways, all giving the same numbers up to the order of the additions:

  - one to FEW_ROWS rows (decoding one token at a time): a matrix-vector product, whose speed is
    the speed at which the weight streams from memory. MKL's routine for it (what F.linear
    reaches) streams the weights of a `small` model at 7 to 12 GB/s on the 2-core AMD EPYC this
    project is measured on; the same product as a batch of two half-height products
    (`torch.bmm` on a free view of the weight's two halves) streams them at 15 to 30 GB/s;
  - more rows, no gradient needed: oneDNN's matrix multiply (`torch.ops.mkldnn._linear_pointwise`,
    the kernel torch.compile uses for CPU linears), 30 to 65% faster than MKL's on the model
    shapes here at 2048 rows, with the activation applied in the same pass over the output;
  - otherwise (CUDA, other dtypes, a weight that needs a gradient, torch.compile, no oneDNN):
    F.linear.

`benchmarks/linear_backends.py` measures the three side by side on this machine.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

FEW_ROWS = 4  # at most this many rows take the split product (measured faster up to 4)

# The activations a linear layer can apply in the same call: name -> the plain function.
ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,  # exact, erf form
    "gelu_tanh": functools.partial(F.gelu, approximate="tanh"),  # GPT-2's "gelu_new"
}
# The same as oneDNN post-ops: name -> (post-op, its algorithm argument).
_ONEDNN_POST_OPS = {None: ("none", ""), "relu": ("relu", ""), "gelu": ("gelu", "none"),
                    "gelu_tanh": ("gelu", "tanh")}


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


def route(device: torch.device | str, dtype: torch.dtype) -> str:
    """In words, how linear layers compute without gradients on `device` in `dtype`."""
    if torch.device(device).type != "cpu" or dtype != torch.float32:
        return "linears: F.linear"
    many = "oneDNN matmul" if onednn_available() else "F.linear"
    return (f"linears: {many}, split matrix-vector products for <= {FEW_ROWS} rows "
            "(zoo.layers.linear)")


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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """activation(F.linear(x, weight, bias)) for x (..., in), weight (out, in); `activation`
    is None, "relu", "gelu" (exact) or "gelu_tanh"."""
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    if not _fast_path(x, weight, bias) or rows == 0:
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
    elif onednn_available():
        post_op, algorithm = _ONEDNN_POST_OPS[activation]
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)
    else:
        y = F.linear(x, weight, bias)
    return y if activation is None else ACTIVATIONS[activation](y)


class Linear(nn.Linear):
    """nn.Linear (same parameters, state-dict keys and initialisation) computed by `linear`;
    `forward(x, activation=...)` applies an activation in the same call."""

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation)
