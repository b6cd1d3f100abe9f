"""The zoo's CPU speed routes, in one place, so that the model files stay the papers.

Every model file computes in plain PyTorch: nn.Linear, activations as separate calls, RWKV's WKV
as a PyTorch recurrence or in chunks. That plain path is what the tests hold against the
references, and what runs on CUDA and in the dtypes no kernel takes. The routes below compute
the same numbers (up to the order of the additions) faster on the CPU, where this project's
benchmarks run, for inference and, where they say so, for training:

  linear  nn.Linear -> FastLinear, computed by `linear`: a split matrix-vector product for
          a few rows (decoding), oneDNN's matrix multiply for more where torch runs AVX-512,
          MKL's elsewhere (ZOO_LINEAR_KERNEL chooses); with oneDNN chosen, a float32 training
          step's three products (forward, input and weight gradients) are oneDNN's too;
  ffn     a feed-forward layer's activation applied in the pass that writes its first matrix
          product (oneDNN) or in place after it (MKL) (FeedForward -> FusedFeedForward; LLaMA's
          SwiGLU -> FusedSwiGLU; BART's, whose dropout after the activation is idle outside
          training, -> FusedBartFeedForward), and RWKV's squared ReLU squared in place as well
          (ChannelMix -> FusedChannelMix);
  wkv     RWKV's TimeMix -> CompiledWKVTimeMix: WKV as kernels/wkv_cpu.py's compiled C loop, with
          its C backward when a gradient is needed (training);
  wkv5    RWKV-5's and RWKV-6's TimeMix -> CompiledWKV5TimeMix, CompiledWKV6TimeMix: the
          matrix WKV, the GroupNorm of its heads and the gate as kernels/wkv5_cpu.py's compiled C
          loop; and their Block -> CompiledWKV5Block, CompiledWKV6Block: for a few rows
          (decoding) the whole block as one compiled call, kernels/wkv5_step_cpu.py, its products
          kernels/matvec_cpu.py's, as the output head's (-> MatvecHead) (inference); training's
          WKV alone as the C loop with its C backward, and RWKV-6's decay LoRA as `linear`'s
          products;
  wkv7    RWKV-7's TimeMix -> CompiledWKV7TimeMix: the generalised delta rule as
          kernels/wkv7_cpu.py's compiled C loop; and its Block -> CompiledWKV7Block: for a few rows
          (decoding) the whole block as one compiled call, kernels/wkv7_step_cpu.py, its products
          kernels/matvec_cpu.py's, as the output head's (-> MatvecHead) (inference); training's
          WKV as the C loop with its C backward, and its four LoRA projections as `linear`'s
          products;
  scan    Mamba's MambaMixer -> CompiledScanMambaMixer: the selective scan as kernels/scan_cpu.py's
          compiled C loop, with its C backward when a gradient is needed (training); and
          Mamba's and Mamba-2's causal convolution with its SiLU as kernels/conv_cpu.py's, with
          its backward (float32, and in float32 under autocast); Mamba2Mixer ->
          CompiledScanMamba2Mixer: Mamba-2's chunked SSD as kernels/ssd_cpu.py's (a C loop inside
          chunks, oneDNN's products with the state, its backward written out); GatedRMSNorm ->
          CompiledGatedRMSNorm: its gated RMSNorm as kernels/norm_cpu.py's, one pass each way;
  alibi   BLOOM's Attention -> FoldedAlibiAttention: ALiBi's causal bias as extra query and key
          channels whose products are exact, so SDPA runs its causal flash kernel instead of
          reading a (heads x T x T) float mask (float32, and bfloat16 under autocast; positions
          0..T-1 without padding: training and prefill);
  dropout (training) nn.Dropout -> FastDropout, and attention modules -> DropoutAttention /
          DropoutAlibiAttention / DropoutT5Attention: dropout masks drawn by
          kernels/dropout_cpu.py's C kernel, and attention with dropout computed as its math
          form with such a mask, by kernels/attention_cpu.py (softmax and dropout in one C pass,
          its backward written out, T5's position bias with its gradient; batched products, or
          oneDNN's a head at a time over many keys where oneDNN is chosen);
  loss    (training) every model's LMLoss -> FusedLMLoss: the cross-entropy as
          kernels/loss_cpu.py's C loop, one pass forward and one backward, holding one (rows x
          vocabulary) tensor less than F.cross_entropy at the start of the backward.

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

This file is the route table: ROUTES, which plain class each route swaps for which fast one,
and `apply`, `remove`, `applied`, `describe`. The fast classes, each a subclass of the plain
class it stands in for, live in one module per family of routes:

  dense.py        linear, ffn (and `linear` itself, the product the other routes call too)
  alibi.py        alibi
  rwkv.py         wkv, wkv5, wkv7
  state_space.py  scan
  dropout.py      dropout
  loss.py         loss
  conditions.py   the checks they share: CPU, dtype, gradients, torch.compile, forward hooks
  kernels/        the C kernels they call, compiled on first use and cached (kernels/ckernel.py)

The measurements behind these routes (kernels, threads, bandwidths, what was tried and
rejected) are in zoo/fast/measurements.md; `benchmarks/linear_backends.py` times the
linear routes side by side.

Elsewhere the linear and ffn routes run the plain ops (CUDA, other dtypes, autocast,
torch.compile; F.linear without oneDNN; the ffn route with gradients), the wkv route the PyTorch
WKV (CUDA, no C compiler), the alibi route the float mask (CUDA, dtypes other than float32 and
bfloat16, padding, a cache's later steps, attention dropout, torch.compile), the dropout route
PyTorch's dropout and SDPA (CUDA, dtypes other than float32 and bfloat16, torch.compile, no C
compiler), and the loss route F.cross_entropy (CUDA, float64, torch.compile, no C compiler).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from zoo import bart, bloom, rwkv5, rwkv6, rwkv7, t5
from zoo.fast import dense, dropout
from zoo.fast.alibi import FoldedAlibiAttention
from zoo.fast.dense import (
    FEW_ROWS,
    KERNELS,
    FastLinear,
    FusedBartFeedForward,
    FusedChannelMix,
    FusedFeedForward,
    FusedSwiGLU,
    avx512,
    cpu_capability,
    linear,
    many_rows_kernel,
    onednn_available,
)
from zoo.fast.dropout import (
    DropoutAlibiAttention,
    DropoutAttention,
    DropoutT5Attention,
    FastDropout,
)
from zoo.fast.kernels import (
    attention_cpu,
    conv_cpu,
    dropout_cpu,
    loss_cpu,
    norm_cpu,
    scan_cpu,
    ssd_cpu,
    wkv5_cpu,
    wkv5_step_cpu,
    wkv7_cpu,
    wkv7_step_cpu,
    wkv_cpu,
)
from zoo.fast.loss import FusedLMLoss
from zoo.fast.rwkv import (
    CompiledWKV5Block,
    CompiledWKV5TimeMix,
    CompiledWKV6Block,
    CompiledWKV6TimeMix,
    CompiledWKV7Block,
    CompiledWKV7TimeMix,
    CompiledWKVTimeMix,
    MatvecHead,
)
from zoo.fast.state_space import (
    CompiledGatedRMSNorm,
    CompiledScanMamba2Mixer,
    CompiledScanMambaMixer,
)
from zoo.layers.attention import MultiHeadAttention
from zoo.layers.feedforward import FeedForward
from zoo.llama import SwiGLU
from zoo.mamba import MambaMixer
from zoo.mamba import chunk_length as mamba_chunk_length
from zoo.mamba2 import GatedRMSNorm, Mamba2Mixer
from zoo.mamba2 import chunk_length as mamba2_chunk_length
from zoo.model import LMLoss
from zoo.mosaic_bert import AlibiAttention
from zoo.rwkv import ChannelMix, TimeMix, chunk_length

# The routes' interface, and the linear route's product, which the harness and the benchmarks
# call too (tests that steer a route patch the module that holds it: zoo.fast.dense, ...).
__all__ = ["FEW_ROWS", "KERNELS", "ROUTES", "FastLinear", "applied", "apply", "avx512",
           "cpu_capability", "describe", "linear", "many_rows_kernel", "onednn_available",
           "remove"]

# Route name -> what it does, in one line.
ROUTES: dict[str, str] = {
    "linear": f"nn.Linear: split matrix-vector products for <= {FEW_ROWS} rows, oneDNN's "
              "matmul with AVX-512, MKL's without (or as ZOO_LINEAR_KERNEL names) for more "
              "(CPU float32 inference; with oneDNN, training's three products too)",
    "ffn": "feed-forward layers (SwiGLU's included): the activation in oneDNN's matmul pass or "
           "in place after MKL's, RWKV's squared ReLU squared in place (CPU float32 inference)",
    "wkv": "RWKV's WKV as a compiled C loop with its backward (kernels.wkv_cpu; CPU float32, "
           "inference and training)",
    "wkv5": "RWKV-5/6's matrix WKV, with its GroupNorm and gate, as a compiled C loop "
            f"(kernels.wkv5_cpu), a block on <= {FEW_ROWS} rows (decoding) as one compiled call "
            "(kernels.wkv5_step_cpu) and the head's product as kernels.matvec_cpu's (CPU float32 "
            "inference; training: the WKV with its C backward, RWKV-6's decay LoRA as the "
            "linear route's products)",
    "wkv7": "RWKV-7's WKV as a compiled C loop (kernels.wkv7_cpu), a block on <= "
            f"{FEW_ROWS} rows (decoding) as one compiled call (kernels.wkv7_step_cpu) and the "
            "head's product as kernels.matvec_cpu's (CPU float32 inference; training: the WKV "
            "with its C backward, the LoRA projections as the linear route's products)",
    "scan": "Mamba's selective scan as a compiled C loop with its backward (kernels.scan_cpu; "
            "CPU, inference and training), Mamba-2's chunked SSD as another inside chunks with "
            "oneDNN's products between them (kernels.ssd_cpu), its gated RMSNorm as another "
            "(kernels.norm_cpu), and Mamba's and Mamba-2's causal convolution with its SiLU as "
            "another (kernels.conv_cpu; CPU float32, and under autocast in float32)",
    "alibi": "BLOOM's causal ALiBi bias as extra query and key channels, so that SDPA runs its "
             "causal flash kernel without a (heads x T x T) mask (CPU float32 or bfloat16, "
             "positions from 0 without padding: training and prefill)",
    "dropout": "dropout masks drawn by a C kernel (kernels.dropout_cpu), attention with "
               "dropout as its math path on them (CPU training, float32 or bfloat16)",
    "loss": "the training cross-entropy in one C pass forward and one backward "
            "(kernels.loss_cpu; CPU, float32 logits or bfloat16 under autocast)",
}


# --- applying and removing routes -------------------------------------------------------------

# route -> {plain class: its fast subclass}
_SWAPS: dict[str, dict[type[nn.Module], type[nn.Module]]] = {
    "linear": {nn.Linear: FastLinear},
    "ffn": {FeedForward: FusedFeedForward, ChannelMix: FusedChannelMix, SwiGLU: FusedSwiGLU,
            bart.FeedForward: FusedBartFeedForward},
    "wkv": {TimeMix: CompiledWKVTimeMix},
    "wkv5": {rwkv5.TimeMix: CompiledWKV5TimeMix, rwkv6.TimeMix: CompiledWKV6TimeMix,
             rwkv5.Block: CompiledWKV5Block, rwkv6.Block: CompiledWKV6Block},
    "wkv7": {rwkv7.TimeMix: CompiledWKV7TimeMix, rwkv7.Block: CompiledWKV7Block},
    "scan": {MambaMixer: CompiledScanMambaMixer, Mamba2Mixer: CompiledScanMamba2Mixer,
             GatedRMSNorm: CompiledGatedRMSNorm},
    "alibi": {bloom.Attention: FoldedAlibiAttention},
    "dropout": {nn.Dropout: FastDropout, MultiHeadAttention: DropoutAttention,
                AlibiAttention: DropoutAlibiAttention, t5.Attention: DropoutT5Attention},
    "loss": {LMLoss: FusedLMLoss},
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
    onednn = dense.many_rows_kernel() == "onednn"
    if "linear" in routes and inference:
        many = "oneDNN matmul" if onednn else "MKL matmul (F.linear)"
        notes.append(f"linears: {many}, split matrix-vector products for <= {FEW_ROWS} rows "
                     "(zoo.fast)")
    elif "linear" in routes and cpu32 and onednn:
        notes.append("linears: oneDNN matmul for the forward and both gradients (zoo.fast)")
    else:
        notes.append("linears: F.linear")
    if kinds & {*_SWAPS["ffn"], *_SWAPS["ffn"].values()}:
        fused = "ffn" in routes and inference
        notes.append(("feed-forward: activation in oneDNN's matmul pass (zoo.fast)" if onednn
                      else "feed-forward: activation in place after the matmul (zoo.fast)")
                     if fused else "feed-forward: activation as a separate op")
    time_mix = next((m for m in model.modules() if isinstance(m, TimeMix)), None)
    if time_mix is not None:
        if "wkv" in routes and cpu and wkv_cpu.available():
            notes.append("WKV: compiled C loop (zoo.fast.kernels.wkv_cpu)")
        else:
            chunk = chunk_length(time_mix.chunk_len, weight.is_cuda)
            notes.append(f"WKV: PyTorch, chunks of {chunk} for prefill, the recurrence for "
                         "decoding")
    # RWKV-5/6's and RWKV-7's WKV: the same three cases, in their own words
    for route, classes, label, fused, kernel, step in (
            ("wkv5", (rwkv5.TimeMix, rwkv6.TimeMix), "matrix WKV", " with ln_x and the gate",
             wkv5_cpu, wkv5_step_cpu),
            ("wkv7", (rwkv7.TimeMix,), "WKV-7", "", wkv7_cpu, wkv7_step_cpu)):
        mix = next((m for m in model.modules() if isinstance(m, classes)), None)
        if mix is None:
            continue
        if route in routes and inference and kernel.available():
            notes.append(f"{label}: compiled C loop{fused} ({kernel.__name__}); <= {FEW_ROWS} "
                         f"rows: a block in one compiled call ({step.__name__}), the head's "
                         "product zoo.fast.kernels.matvec_cpu's")
        elif route in routes and wkv_in_float32 and kernel.available():
            notes.append(f"{label}: compiled C loop{backward} ({kernel.__name__})")
        else:
            notes.append(f"{label}: PyTorch, chunks of {mix.chunk_size} for prefill, the "
                         "recurrence for decoding")
    mixer = next((m for m in model.modules() if isinstance(m, MambaMixer)), None)
    if mixer is not None:
        if "scan" in routes and cpu and scan_cpu.available():
            notes.append("selective scan with its softplus, skip and gate: compiled C loop "
                         "(zoo.fast.kernels.scan_cpu)")
        else:
            chunk = mamba_chunk_length(mixer.chunk_len, weight.is_cuda)
            notes.append(f"selective scan: PyTorch, chunks of {chunk} for prefill, the "
                         "recurrence for decoding")
    mixer2 = next((m for m in model.modules() if isinstance(m, Mamba2Mixer)), None)
    if mixer2 is not None:
        if "scan" in routes and cpu and ssd_cpu.available():
            chunk = mixer2.chunk_size or ssd_cpu.CHUNK
            notes.append(f"SSD: chunks of {chunk}, inside them a compiled C loop{backward}, "
                         "oneDNN's products with the state (zoo.fast.kernels.ssd_cpu); the "
                         "recurrence for decoding")
        else:
            chunk = mamba2_chunk_length(mixer2.chunk_size, weight.is_cuda)
            notes.append(f"SSD: PyTorch, chunks of {chunk} for prefill, the recurrence for "
                         "decoding")
    if mixer2 is not None:
        notes.append("gated RMSNorm: compiled C loop (zoo.fast.kernels.norm_cpu)"
                     if "scan" in routes and cpu and weight.dtype == torch.float32
                     and norm_cpu.available() else "gated RMSNorm: PyTorch")
    if any(isinstance(m, (MambaMixer, Mamba2Mixer)) for m in model.modules()):
        if "scan" in routes and cpu and weight.dtype == torch.float32 and conv_cpu.available():
            in_float32 = "" if cpu32 else " in float32"  # autocast's bfloat16 input, upcast
            notes.append(f"causal conv and SiLU: compiled C loop{in_float32} "
                         "(zoo.fast.kernels.conv_cpu)")
        else:
            notes.append("causal conv and SiLU: F.conv1d, then F.silu")
    if bloom.Attention in kinds or FoldedAlibiAttention in kinds:
        attention_dropout = training and any(m.attn_dropout > 0 for m in model.modules()
                                             if isinstance(m, bloom.Attention))
        folded = ("alibi" in routes and cpu and not attention_dropout
                  and (dtype or weight.dtype) in (torch.float32, torch.bfloat16))
        notes.append("ALiBi: in extra query and key channels, SDPA's causal kernel (zoo.fast)"
                     if folded else "ALiBi: a (heads x T x T) float mask")
    if any(isinstance(m, tuple(_SWAPS["dropout"])) for m in model.modules()):
        kernel = ("dropout" in routes and cpu and (dtype or weight.dtype) in dropout_cpu.DTYPES
                  and dropout_cpu.available())
        notes.append("dropout (training): masks from a C kernel (zoo.fast.kernels.dropout_cpu)"
                     if kernel else "dropout (training): PyTorch's")
        attention_dropout = any(m.dropout > 0 for m in model.modules() if isinstance(
            m, (DropoutAttention, DropoutAlibiAttention, DropoutT5Attention)))
        if kernel and training and attention_cpu.available() and attention_dropout:
            per_head = (f", from {dropout.PER_HEAD_MIN_KEYS} keys oneDNN's a head at a time"
                        if cpu32 and onednn else "")
            notes.append("attention with dropout: softmax and dropout in C with their backward "
                         f"(zoo.fast.kernels.attention_cpu), batched products{per_head}")
    if training and kinds & {LMLoss, FusedLMLoss}:
        fused = ("loss" in routes and cpu and (dtype or weight.dtype) in FusedLMLoss.DTYPES
                 and loss_cpu.available())
        notes.append("loss: cross-entropy in one C pass each way (zoo.fast.kernels.loss_cpu)"
                     if fused else "loss: F.cross_entropy")
    return tuple(notes)
