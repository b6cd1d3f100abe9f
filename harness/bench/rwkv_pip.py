"""The official `rwkv` pip package as a peer (`catalog bench --against rwkv-pip`): BlinkDL's
ChatRWKV inference code, RWKV-4, in the configuration its authors ship.

The zoo model's weights are written as an official .pth file (`zoo.convert.rwkv_to_official`)
and loaded by the package; the package takes no batch, so each sequence of the cell's inputs
(handed over, see harness.bench.workload) runs on its own. Inference only: no train mode.
"""

from __future__ import annotations

import importlib
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from harness.bench.workload import BenchError, Cell, Inputs, Workload, accounting, check_mode
from harness.environment import environment_defaults
from zoo.convert import rwkv_to_official

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
# The package reads its switches from the environment, when it is imported, when it loads a model
# and in every forward call: they are set around each of those (`switches`), never for good, at
# a cost of microseconds against the milliseconds of a call. TorchScript on is its default and the
# configuration its authors ship; its CUDA kernel is compiled at import with nvcc and ninja,
# which a machine need not have, so WKV runs as its PyTorch loop; RWKV-4, not RWKV-7.
SWITCHES = {"RWKV_JIT_ON": "1", "RWKV_CUDA_ON": "0", "RWKV_V7_ON": "0"}


def switches():
    """The package's switches in os.environ for the duration of a block."""
    return environment_defaults(SWITCHES, override=True)


def _package():
    try:
        return importlib.import_module("rwkv.model")
    except ImportError:
        raise BenchError("this peer needs the 'rwkv' package (pip install it, or the project's "
                         "test extra)") from None


def pip_model(zoo_model: Any, device: torch.device):
    """(rwkv.model.RWKV loaded from the zoo weights written as an official .pth, notes)."""
    c = zoo_model.config
    if c.layer_norm_eps != 1e-5:
        raise BenchError(f"the rwkv pip package fixes LayerNorm eps at 1e-5; this config has "
                         f"{c.layer_norm_eps}")
    dtype = next(zoo_model.parameters()).dtype
    strategy = f"{device} {_PRECISIONS[dtype]}"  # "cpu fp32", "cuda fp16", "cuda:1 bf16"
    with tempfile.TemporaryDirectory() as folder, switches():
        package = _package()
        path = Path(folder) / "rwkv-4.pth"
        official = rwkv_to_official(zoo_model.state_dict())
        torch.save({key: tensor.cpu() for key, tensor in official.items()}, path)
        del official
        model = package.RWKV(model=str(path), strategy=strategy, verbose=False)
    jit = int(package.MyModule is torch.jit.ScriptModule)  # imported before with other switches?
    notes = (f"peer: rwkv {version('rwkv')} pip package, strategy {strategy!r}, "
             f"RWKV_JIT_ON={jit}, RWKV_CUDA_ON=0 (WKV as the package's per-token loop)"
             + (f", RESCALE_LAYER={model.RESCALE_LAYER}" if model.RESCALE_LAYER else ""),
             "one sequence at a time (the package takes no batch)")
    return model, notes


def workload(cell: Cell, zoo_model: Any, inputs: Inputs) -> Workload:
    """Forward or generate with the package (it cannot train)."""
    check_mode(cell.model, zoo_model, cell.mode)
    if cell.mode == "train":
        raise BenchError("the rwkv pip package is inference-only: no train mode (try --against hf)")
    tokens, flops = accounting(zoo_model, cell.mode, cell.batch, cell.seqlen)
    model, notes = pip_model(zoo_model, torch.device(cell.device))
    rows = inputs.input_ids.tolist()  # the package takes a list of token ids

    if cell.mode == "forward":
        # full_output=True: logits at every position, as the zoo (and transformers) compute them.
        def run():
            with switches():
                return torch.stack([model.forward(row, None, full_output=True)[0]
                                    for row in rows])

        return Workload(run, tokens, flops,
                        notes=(*notes, "logits at every position (full_output=True)"))

    with switches():
        states = [list(model.forward(row, None)) for row in rows]  # [last logits (V,), state]

    def run():
        with switches():
            for last_and_state in states:
                token = int(last_and_state[0].argmax())
                last_and_state[:] = model.forward([token], last_and_state[1])
        return torch.stack([logits for logits, _ in states])[:, None]  # (B, 1, V)

    return Workload(run, tokens, flops,
                    notes=(*notes, f"decodes {cell.new_tokens} timed tokens after the prompt"))
