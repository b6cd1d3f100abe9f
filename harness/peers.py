"""Peers: other libraries' implementations that `catalog bench --against` times beside the zoo's.

  hf        Hugging Face transformers: GPT2LMHeadModel (GPT-2) or OpenAIGPTLMHeadModel (GPT-1),
            BertForPreTraining (or BertForMaskedLM without the NSP head), RobertaForMaskedLM,
            RwkvForCausalLM;
  rwkv-pip  the official `rwkv` pip package (BlinkDL's ChatRWKV inference code), RWKV-4.

A peer gets THE SAME WEIGHTS as the zoo model of the cell (built from the bench seed) and the
same sizes, eps, activation, dropout and position table, so that a difference in speed or
memory is a difference between implementations. The zoo weights are written into the peer by
an inverse of zoo.convert's converters; then the forward converter is run on the peer's config
and weights and must give back the zoo config and state dict exactly. Every cell is checked
that way, not only the tiny configurations the tests compare logits on.

A peer workload mirrors `harness.bench.zoo_workload`: the same inputs, drawn from the RNG in the
same order (a peer cell sees the token ids and targets of the matching zoo cell), the same token
counts, the zoo's analytic FLOPs (so MFU compares), the same loss and AdamW step for training.
"""

from __future__ import annotations

import importlib
import inspect
import os
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness.bench import MODES, BenchError, Workload, accounting
from zoo.convert import (
    BERT_BLOCK_KEYS,
    BERT_EMBEDDING_KEYS,
    CONVERTERS,
    GPT_CONV1D,
    StateDict,
    rwkv_official_to_hf,
)
from zoo.model import lm_loss

PEERS: dict[str, tuple[str, ...]] = {  # peer -> the zoo models it implements
    "hf": ("bert", "gpt", "roberta", "rwkv"),
    "rwkv-pip": ("rwkv",),
}


def peer_workload(impl: str, name: str, zoo_model, mode: str, batch: int, seqlen: int,
                  device: torch.device, new_tokens: int) -> Workload:
    """The workload of peer `impl` for zoo model `name`, with `zoo_model`'s weights, dtype and
    device (see the module docstring). BenchError for a combination that cannot run."""
    _check_supported(impl, name, zoo_model, mode)
    # Drawn first and in zoo_workload's order, so the RNG gives both cells the same tensors.
    inputs = zoo_model.dummy_inputs(batch, seqlen, device)
    targets = None
    if mode == "train":
        targets = torch.randint(0, zoo_model.config.vocab_size, (batch, seqlen), device=device)
    tokens, flops = accounting(zoo_model, mode, batch, seqlen)
    if impl == "hf":
        run, notes = _hf_run(name, zoo_model, mode, inputs, targets, seqlen)
    else:
        run, notes = _rwkv_pip_run(zoo_model, mode, inputs["input_ids"], device)
    if mode == "generate":
        notes += (f"decodes {new_tokens} timed tokens after the prompt",)
    return Workload(run, tokens, flops, notes=notes)


def _check_supported(impl: str, name: str, zoo_model, mode: str) -> None:
    if impl not in PEERS:
        raise BenchError(f"unknown peer {impl!r}; known: {', '.join(PEERS)}")
    if name not in PEERS[impl]:
        raise BenchError(f"peer {impl!r} has no implementation of {name!r}; "
                         f"it has: {', '.join(PEERS[impl])}")
    if mode not in MODES:
        raise BenchError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if mode == "generate" and not getattr(zoo_model, "causal_lm", False):
        raise BenchError(f"{name} is an encoder: generate mode needs a model that decodes")
    if impl == "rwkv-pip" and mode == "train":
        raise BenchError("the rwkv pip package is inference-only: no train mode (try --against hf)")
    if impl == "hf" and name == "gpt" and not zoo_model.config.pre_ln and mode == "generate":
        raise BenchError("transformers' OpenAIGPTLMHeadModel (GPT-1) has no KV cache: "
                         "no generate mode")


def _require(package: str):
    """Import a peer's library, or say which one to install."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise BenchError(f"this peer needs the {package.split('.')[0]!r} package "
                         "(pip install it, or the project's test extra)") from None


# --- Hugging Face transformers ----------------------------------------------------------------

# zoo activation -> GPT2Config.activation_function / OpenAIGPTConfig.afn (whose "gelu" is the
# tanh form); the inverse of zoo.convert's tables.
_GPT2_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
_OPENAI_ACTIVATIONS = {"gelu_tanh": "gelu", "relu": "relu"}


def _hf_config(name: str, c, seqlen: int):
    """(transformers model class, its config) equivalent to the zoo config `c`."""
    hf = _require("transformers")

    if name == "gpt":
        table = _GPT2_ACTIVATIONS if c.pre_ln else _OPENAI_ACTIVATIONS
        if c.activation not in table:
            raise BenchError(f"transformers' {'GPT-2' if c.pre_ln else 'OpenAI GPT'} has no "
                             f"{c.activation!r} activation")
        common = dict(vocab_size=c.vocab_size, n_positions=c.max_seq_len, n_embd=c.d_model,
                      n_layer=c.n_layer, n_head=c.n_head, resid_pdrop=c.dropout,
                      embd_pdrop=c.dropout, attn_pdrop=c.dropout,
                      layer_norm_epsilon=c.layer_norm_eps, initializer_range=c.init_std)
        if c.pre_ln:
            return hf.GPT2LMHeadModel, hf.GPT2Config(
                **common, n_inner=c.d_ff, activation_function=table[c.activation],
                bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
        if c.d_ff != 4 * c.d_model:
            raise BenchError(f"transformers' OpenAI GPT fixes d_ff at 4 * d_model; this config "
                             f"has d_ff {c.d_ff}")
        return hf.OpenAIGPTLMHeadModel, hf.OpenAIGPTConfig(**common, afn=table[c.activation])
    if name in ("bert", "roberta"):
        if name == "roberta" and c.next_sentence_head:
            raise BenchError("transformers' RobertaForMaskedLM has no next-sentence head")
        config_class = hf.RobertaConfig if name == "roberta" else hf.BertConfig
        config = config_class(
            vocab_size=c.vocab_size, hidden_size=c.d_model, num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head, intermediate_size=c.d_ff, hidden_act="gelu",
            hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.attn_dropout,
            max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
            layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id,
            attn_implementation="sdpa")
        if name == "roberta":
            return hf.RobertaForMaskedLM, config
        return (hf.BertForPreTraining if c.next_sentence_head else hf.BertForMaskedLM), config
    # RWKV-4. context_length only bounds transformers' optional CUDA kernel: cover the input.
    return hf.RwkvForCausalLM, hf.RwkvConfig(
        vocab_size=c.vocab_size, context_length=max(c.context_length, seqlen),
        hidden_size=c.d_model, num_hidden_layers=c.n_layer, attention_hidden_size=c.d_model,
        intermediate_size=4 * c.d_model, layer_norm_epsilon=c.layer_norm_eps, rescale_every=0,
        tie_word_embeddings=False)


def _gpt_state_to_hf(c, zoo: StateDict) -> StateDict:
    """zoo.gpt -> GPT2LMHeadModel / OpenAIGPTLMHeadModel: fuse q, k, v into c_attn and transpose
    nn.Linear (out, in) weights into Conv1D (in, out). The head is tied to the embedding."""
    gpt1 = not c.pre_ln
    hf = {("tokens_embed.weight" if gpt1 else "wte.weight"): zoo["wte.weight"],
          ("positions_embed.weight" if gpt1 else "wpe.weight"): zoo["wpe.weight"]}
    for i in range(c.n_layer):
        src, dst = f"blocks.{i}.", f"h.{i}."
        qkv = [f"{src}attn.{p}_proj" for p in "qkv"]
        hf[dst + "attn.c_attn.weight"] = torch.cat([zoo[m + ".weight"] for m in qkv]).t()
        hf[dst + "attn.c_attn.bias"] = torch.cat([zoo[m + ".bias"] for m in qkv])
        for p in ("weight", "bias"):
            for ln in ("ln_1", "ln_2"):
                hf[f"{dst}{ln}.{p}"] = zoo[f"{src}{ln}.{p}"]
            for conv, linear in GPT_CONV1D.items():
                tensor = zoo[f"{src}{linear}.{p}"]
                hf[f"{dst}{conv}.{p}"] = tensor.t() if p == "weight" else tensor
    if not gpt1:
        hf |= {"ln_f.weight": zoo["ln_f.weight"], "ln_f.bias": zoo["ln_f.bias"]}
    return {"transformer." + key: tensor for key, tensor in hf.items()}


def _bert_state_to_hf(c, zoo: StateDict, roberta: bool) -> StateDict:
    """zoo.bert / zoo.roberta -> Bert* / RobertaForMaskedLM: zoo.convert's tables read
    backwards. The MLM decoder is tied to the word embeddings (and its bias to the head's)."""
    prefix = "roberta." if roberta else "bert."
    modules = {zoo_name: prefix + hf_name for zoo_name, hf_name in BERT_EMBEDDING_KEYS.items()}
    for i in range(c.n_layer):
        modules |= {f"blocks.{i}.{zoo_name}": f"{prefix}encoder.layer.{i}.{hf_name}"
                    for zoo_name, hf_name in BERT_BLOCK_KEYS.items()}
    if roberta:
        modules |= {"lm_head.dense": "lm_head.dense", "lm_head.ln": "lm_head.layer_norm",
                    "lm_head.bias": "lm_head.bias"}
    else:
        modules |= {"lm_head.dense": "cls.predictions.transform.dense",
                    "lm_head.ln": "cls.predictions.transform.LayerNorm",
                    "lm_head.bias": "cls.predictions.bias"}
        if c.next_sentence_head:
            modules |= {"pooler": "bert.pooler.dense", "nsp_head": "cls.seq_relationship"}
    hf = {}
    for zoo_name, hf_name in modules.items():
        if zoo_name.endswith((".weight", "lm_head.bias")):  # a single tensor
            hf[hf_name] = zoo[zoo_name]
        else:  # a Linear or a LayerNorm
            for p in ("weight", "bias"):
                hf[f"{hf_name}.{p}"] = zoo[f"{zoo_name}.{p}"]
    return hf


def _official_rwkv_state(zoo: StateDict) -> StateDict:
    """The official RWKV-4 .pth layout: the zoo's key names, with time_mix_* as (1, 1, d)."""
    return {key: tensor.reshape(1, 1, -1) if ".time_mix_" in key else tensor
            for key, tensor in zoo.items()}


def _copy_weights(model: torch.nn.Module, state: StateDict) -> None:
    """Copy `state` into `model`'s tensors. Each of the model's weights must be given, or be
    tied to (share its storage with) one that is."""
    target = model.state_dict()
    with torch.no_grad():
        for key, tensor in state.items():
            if key not in target or target[key].shape != tensor.shape:
                raise BenchError(f"peer weight {key!r} {tuple(tensor.shape)} does not match "
                                 f"{type(model).__name__}")
            target[key].copy_(tensor)
    given = {target[key].data_ptr() for key in state}
    left = [key for key, t in target.items() if key not in state and t.data_ptr() not in given]
    if left:
        raise BenchError(f"{type(model).__name__} weight {left[0]!r} has no zoo counterpart")


def _check_same_model(name: str, model, zoo_model, ignore: tuple[str, ...] = ()) -> None:
    """Convert the peer back with zoo.convert: it must give the zoo config and weights exactly."""
    fields, back = CONVERTERS[name](model.config.to_dict(), model.state_dict())
    for field, value in fields.items():
        if field not in ignore and getattr(zoo_model.config, field) != value:
            raise BenchError(f"the {name} peer has {field}={value!r}; the zoo model has "
                             f"{getattr(zoo_model.config, field)!r}")
    zoo = zoo_model.state_dict()
    for key in set(zoo) | set(back):
        if key not in zoo or key not in back or not torch.equal(zoo[key], back[key]):
            raise BenchError(f"the {name} peer's weight {key!r} differs from the zoo model's")


def _hf_model(name: str, zoo_model, seqlen: int):
    """A transformers model holding `zoo_model`'s weights, in its dtype and on its device."""
    model_class, config = _hf_config(name, zoo_model.config, seqlen)
    weight = next(zoo_model.parameters())
    with torch.device(weight.device):
        model = model_class(config).to(weight.dtype)
    c, zoo = zoo_model.config, zoo_model.state_dict()
    if name == "gpt":
        state = _gpt_state_to_hf(c, zoo)
    elif name in ("bert", "roberta"):
        state = _bert_state_to_hf(c, zoo, roberta=name == "roberta")
    else:
        state = {rwkv_official_to_hf(key): t for key, t in _official_rwkv_state(zoo).items()}
    _copy_weights(model, state)
    _check_same_model(name, model, zoo_model, ignore=("context_length",))
    return model


def _hf_run(name: str, zoo_model, mode: str, inputs: dict, targets, seqlen: int):
    """(run, notes) of the transformers peer."""
    model = _hf_model(name, zoo_model, seqlen)
    kind = type(model).__name__
    notes = [f"peer: transformers {version('transformers')} {kind}"]
    if name == "rwkv":
        from transformers.models.rwkv import modeling_rwkv

        loop = modeling_rwkv.rwkv_cuda_kernel is None or not next(model.parameters()).is_cuda
        notes.append(f"WKV: transformers' {'per-token PyTorch loop' if loop else 'CUDA kernel'}")
    else:  # sdpa where transformers has it (not for OpenAI GPT: eager only)
        notes.append(f"attention: {model.config._attn_implementation}")
    nsp_labels = inputs.pop("next_sentence_label", None)  # a loss input, as in the zoo
    causal = name in ("gpt", "rwkv")

    def logits():
        """(LM or masked-LM logits, next-sentence logits or None)."""
        out = model(**inputs, **({"use_cache": False} if causal else {}))
        if hasattr(out, "prediction_logits"):  # BertForPreTraining
            return out.prediction_logits, out.seq_relationship_logits
        return out.logits, None

    if mode == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                return logits()[0]

    elif mode == "train":
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            lm, nsp = logits()
            loss = lm_loss(lm, targets)
            if nsp is not None and nsp_labels is not None:
                loss = loss + F.cross_entropy(nsp.float(), nsp_labels.flatten())
            loss.backward()
            optimizer.step()
            return loss

    elif name == "gpt":
        run = _hf_gpt_decoder(model, inputs["input_ids"])
        notes.append("KV cache: transformers' DynamicCache")
    else:
        run = _hf_rwkv_decoder(model, inputs["input_ids"])
        notes.append("decodes one sequence at a time: transformers' one-token RWKV step with a "
                     "state broadcasts a batch of B to (B, B, d)")
    return run, tuple(notes)


def hf_cache_kwargs(model, past: Any) -> dict[str, Any]:
    """The keyword a transformers model takes its KV cache under: `cache` in recent releases
    (5.24 deprecates `past_key_values`, to be removed in 5.40), `past_key_values` in older ones."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: past}


def hf_returned_cache(out: Any) -> Any:
    """The KV cache a transformers model returned, under either name (see hf_cache_kwargs)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _hf_gpt_decoder(model, prompt: torch.Tensor):
    """Greedy decoding on transformers' KV cache, one token per sequence per run."""
    model.eval()
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    # The last position's logits only: the prompt's would stay alive as decoding memory.
    state: dict[str, Any] = {"logits": out.logits[:, -1:].clone(),
                             "past": hf_returned_cache(out), "length": prompt.size(1)}
    del out

    def run():
        if state["length"] >= model.config.n_positions:  # an index error (CUDA: an assert)
            raise BenchError(f"decoding past the {model.config.n_positions} positions of the "
                             "position table")
        with torch.no_grad():
            out = model(state["logits"].argmax(dim=-1), use_cache=True,
                        **hf_cache_kwargs(model, state["past"]))
        state["logits"], state["past"] = out.logits, hf_returned_cache(out)
        state["length"] += 1
        return out.logits

    return run


def _hf_rwkv_decoder(model, prompt: torch.Tensor):
    """Greedy decoding on transformers' RWKV state. The prompt is read as a batch; decoding
    goes one sequence at a time on that sequence's slice of the state (see _hf_run)."""
    model.eval()
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    # Copies: views would keep the prompt's (B, T, V) logits alive as decoding memory.
    rows = [{"logits": out.logits[b:b + 1, -1:].clone(),
             "state": [s[b:b + 1].clone() for s in out.state]} for b in range(prompt.size(0))]
    del out

    def run():
        with torch.no_grad():
            for row in rows:
                step = model(row["logits"].argmax(dim=-1), state=row["state"], use_cache=True)
                row["logits"], row["state"] = step.logits, step.state
        return torch.cat([row["logits"] for row in rows])  # (B, 1, V)

    return run


# --- the rwkv pip package ------------------------------------------------------------------

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _rwkv_pip_model(zoo_model, device: torch.device):
    """(rwkv.model.RWKV loaded from the zoo weights written as an official .pth, notes)."""
    c = zoo_model.config
    if c.layer_norm_eps != 1e-5:
        raise BenchError(f"the rwkv pip package fixes LayerNorm eps at 1e-5; this config has "
                         f"{c.layer_norm_eps}")
    dtype = next(zoo_model.parameters()).dtype
    strategy = f"{device} {_PRECISIONS[dtype]}"  # "cpu fp32", "cuda fp16", "cuda:1 bf16"
    # The package reads its switches at import. TorchScript on is its default and the
    # configuration its authors ship; its CUDA kernel is compiled at import with nvcc and ninja,
    # which a machine need not have, so WKV runs as its PyTorch loop; RWKV-4, not RWKV-7.
    os.environ.update(RWKV_JIT_ON="1", RWKV_CUDA_ON="0", RWKV_V7_ON="0")
    rwkv_model = _require("rwkv.model")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rwkv-4.pth"
        official = _official_rwkv_state(zoo_model.state_dict())
        torch.save({key: tensor.cpu() for key, tensor in official.items()}, path)
        del official
        model = rwkv_model.RWKV(model=str(path), strategy=strategy, verbose=False)
    jit = int(rwkv_model.MyModule is torch.jit.ScriptModule)  # the module may predate our switch
    notes = (f"peer: rwkv {version('rwkv')} pip package, strategy {strategy!r}, "
             f"RWKV_JIT_ON={jit}, RWKV_CUDA_ON=0 (WKV as the package's per-token loop)"
             + (f", RESCALE_LAYER={model.RESCALE_LAYER}" if model.RESCALE_LAYER else ""),
             "one sequence at a time (the package takes no batch)")
    return model, notes


def _rwkv_pip_run(zoo_model, mode: str, input_ids: torch.Tensor, device: torch.device):
    """(run, notes) of the rwkv pip package: forward or generate (it cannot train)."""
    model, notes = _rwkv_pip_model(zoo_model, device)
    rows = input_ids.tolist()  # the package takes a list of token ids

    if mode == "forward":
        # full_output=True: logits at every position, as the zoo (and transformers) compute them.
        def run():
            return torch.stack([model.forward(row, None, full_output=True)[0] for row in rows])

        return run, (*notes, "logits at every position (full_output=True)")

    states = [list(model.forward(row, None)) for row in rows]  # [last logits (V,), state]

    def run():
        for last_and_state in states:
            token = int(last_and_state[0].argmax())
            last_and_state[:] = model.forward([token], last_and_state[1])
        return torch.stack([logits for logits, _ in states])[:, None]  # (B, 1, V)

    return run, notes
