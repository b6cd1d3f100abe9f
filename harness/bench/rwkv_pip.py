"""The official `rwkv` pip package as a peer (`catalog bench --against rwkv-pip`): BlinkDL's
ChatRWKV inference code, RWKV-4, RWKV-5.2, RWKV-6 and RWKV-7 (its `RWKV_x070`), in the
configuration its authors ship.

The zoo model's weights are written as an official .pth file (`zoo.convert.rwkv_to_official`,
`rwkv5_to_official`, `rwkv6_to_official`, `rwkv7_to_official`) and loaded by the package, which
reads the version off the keys; the package takes no batch, so each sequence of
the cell's inputs (handed over, see harness.bench.workload) runs on its own. Inference only: no
train mode.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from harness.bench.workload import BenchError, Cell, Inputs, Workload, accounting, check_mode
from harness.environment import environment_defaults
from zoo.convert import (
    rwkv5_to_official,
    rwkv6_to_official,
    rwkv7_to_official,
    rwkv_to_official,
)

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The package reads its switches from the environment, when it is imported, when it loads a model
# and in every forward call: they are set around each of those (`switches`), never for good, at
# a cost of microseconds against the milliseconds of a call. TorchScript on is its default and the
# configuration its authors ship; its CUDA kernel is compiled at import with nvcc and ninja,
# which a machine need not have, so WKV runs as its PyTorch loop. RWKV_V7_ON=1 at import turns
# the module into RWKV-7's (`RWKV = RWKV_x070`, TorchScript forced): RWKV-7 gets a second copy
# of the module, imported under its own name with the switch on (`_package`).
SWITCHES = {"RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_V7_ON": "0"}


def switches(v7: bool = False):
    """The package's switches in os.environ for the duration of a block."""
    return environment_defaults({**SWITCHES, "RWKV_V7_ON": "1" if v7 else "0"}, override=True)


def _package(v7: bool = False):
    """rwkv.model, or for RWKV-7 its copy imported with RWKV_V7_ON=1 (once per process)."""
    try:
        return _v7_module() if v7 else importlib.import_module("rwkv.model")
    except ImportError:
        raise BenchError("this peer needs the 'rwkv' package (pip install it, or the project's "
                         "test extra)") from None


@functools.cache
def _v7_module():
    found = importlib.util.find_spec("rwkv.model")
    if found is None or found.origin is None:
        raise ImportError("rwkv.model")
    spec = importlib.util.spec_from_file_location("rwkv_model_v7", found.origin)
    module = importlib.util.module_from_spec(spec)
    with switches(v7=True), contextlib.redirect_stdout(io.StringIO()):  # it prints a banner
        spec.loader.exec_module(module)
    return module


# zoo module -> (RWKV version, the writer of its official .pth layout)
_VERSIONS = {"zoo.rwkv": ("4", rwkv_to_official), "zoo.rwkv5": ("5.2", rwkv5_to_official),
             "zoo.rwkv6": ("6", rwkv6_to_official), "zoo.rwkv7": ("7", rwkv7_to_official)}


def _version(zoo_model: Any) -> str:
    return _VERSIONS[type(zoo_model).__module__][0]


def _is_rwkv7(zoo_model: Any) -> bool:
    return _version(zoo_model) == "7"


def pip_model(zoo_model: Any, device: torch.device):
    """(rwkv.model.RWKV loaded from the zoo weights written as an official .pth, notes)."""
    c = zoo_model.config
    rwkv_version, to_official = _VERSIONS[type(zoo_model).__module__]
    v7, matrix = rwkv_version == "7", rwkv_version != "4"  # v5-v7: a matrix state, GroupNorm ln_x
    if c.layer_norm_eps != 1e-5 or (matrix and c.group_norm_eps != 64e-5):
        raise BenchError("the rwkv pip package fixes LayerNorm eps at 1e-5 (and RWKV-5-7's "
                         f"GroupNorm eps at 64e-5); this config has {c.layer_norm_eps}"
                         + (f" and {c.group_norm_eps}" if matrix else ""))
    if matrix and c.d_ff == 0:
        raise BenchError(f"the rwkv pip package's RWKV-{rwkv_version} needs a channel mix; this "
                         "config has d_ff 0")
    dtype = next(zoo_model.parameters()).dtype
    strategy = f"{device} {_PRECISIONS[dtype]}"  # "cpu fp32", "cuda fp16", "cuda:1 bf16"
    with tempfile.TemporaryDirectory() as folder, switches(v7):
        package = _package(v7)
        path = Path(folder) / f"rwkv-{rwkv_version.replace('.', '_')}.pth"
        official = to_official(zoo_model.state_dict())
        torch.save({key: tensor.cpu() for key, tensor in official.items()}, path)
        del official
        if v7:  # RWKV_x070 takes the path without .pth and prints as it loads
            with contextlib.redirect_stdout(io.StringIO()):
                model = package.RWKV(model=str(path.with_suffix("")), strategy=strategy)
        else:
            model = package.RWKV(model=str(path), strategy=strategy, verbose=False)
    jit = int(package.MyModule is torch.jit.ScriptModule)  # imported before with other switches?
    rescale = getattr(model, "RESCALE_LAYER", 0)  # RWKV-7 has none
    notes = (f"peer: rwkv {version('rwkv')} pip package, strategy {strategy!r}, "
             + ("RWKV_V7_ON=1, " if v7 else "")
             + f"RWKV_JIT_ON={jit}, RWKV_CUDA_ON=0 (WKV as the package's per-token loop)"
             + (f", RESCALE_LAYER={rescale}" if rescale else ""),
             "one sequence at a time (the package takes no batch)")
    return model, notes


def workload(cell: Cell, zoo_model: Any, inputs: Inputs) -> Workload:
    """Forward or generate with the package (it cannot train)."""
    check_mode(cell.model, zoo_model, cell.mode)
    if cell.mode == "train":
        raise BenchError("the rwkv pip package is inference-only: no train mode (try --against hf)")
    tokens, flops = accounting(zoo_model, cell.mode, cell.batch, cell.seqlen)
    model, notes = pip_model(zoo_model, torch.device(cell.device))
    v7 = _is_rwkv7(zoo_model)
    rows = inputs.input_ids.tolist()  # the package takes a list of token ids

    if cell.mode == "forward":
        # full_output=True: logits at every position, as the zoo (and transformers) compute them.
        def run():
            with switches(v7):
                return torch.stack([model.forward(row, None, full_output=True)[0]
                                    for row in rows])

        return Workload(run, tokens, flops,
                        notes=(*notes, "logits at every position (full_output=True)"))

    with switches(v7):
        states = [list(model.forward(row, None)) for row in rows]  # [last logits (V,), state]

    def run():
        with switches(v7):
            for last_and_state in states:
                token = int(last_and_state[0].argmax())
                last_and_state[:] = model.forward([token], last_and_state[1])
        return torch.stack([logits for logits, _ in states])[:, None]  # (B, 1, V)

    return Workload(run, tokens, flops,
                    notes=(*notes, f"decodes {cell.new_tokens} timed tokens after the prompt"))
