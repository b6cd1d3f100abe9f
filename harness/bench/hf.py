"""The Hugging Face transformers peer (`catalog bench --against hf`): GPT2LMHeadModel (GPT-2) or
OpenAIGPTLMHeadModel (GPT-1), BertForPreTraining (or BertForMaskedLM without the NSP head),
AlbertForPreTraining (or AlbertForMaskedLM without the SOP head), RobertaForMaskedLM,
RwkvForCausalLM, LlamaForCausalLM (or MistralForCausalLM with a sliding window),
GPTNeoXForCausalLM, BloomForCausalLM, OPTForCausalLM, GPTJForCausalLM, GPTNeoForCausalLM,
CTRLLMHeadModel,
MambaForCausalLM, Mamba2ForCausalLM, T5ForConditionalGeneration, BartForConditionalGeneration
(MBart... or PegasusForConditionalGeneration for a zoo.bart config with their switches).

The peer gets THE SAME WEIGHTS as the zoo model of the cell and the same sizes, eps,
activation, dropout and position table, so that a difference in speed or memory is a
difference between implementations: `zoo.convert.EXPORTERS` writes the zoo model as a Hugging
Face config and state dict, and the forward converter (`zoo.convert.CONVERTERS`), run on the
built peer, must give back the zoo config and weights exactly. Every cell is checked that way,
not only the tiny configurations the tests compare logits on. The workload is the zoo's:
the same inputs (handed over, see harness.bench.workload), the same token counts, the zoo's
analytic FLOPs (so MFU compares), the same loss and AdamW step for training.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from importlib.metadata import version
from typing import Any

import torch
import torch.nn.functional as F

from harness.bench.workload import (
    BenchError,
    Cell,
    Inputs,
    Workload,
    accounting,
    check_mode,
)
from harness.optim import adamw
from zoo.convert import CONVERTERS, EXPORTERS, CheckpointError, StateDict
from zoo.model import lm_loss


def _transformers():
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise BenchError("this peer needs the 'transformers' package (pip install it, or the "
                         "project's test extra)") from None


def workload(cell: Cell, zoo_model: Any, inputs: Inputs) -> Workload:
    """The transformers workload of the cell, with `zoo_model`'s weights, dtype and device."""
    check_mode(cell.model, zoo_model, cell.mode)
    if cell.model == "gpt" and not zoo_model.config.pre_ln and cell.mode == "generate":
        raise BenchError("transformers' OpenAIGPTLMHeadModel (GPT-1) has no KV cache: "
                         "no generate mode")
    tokens, flops = accounting(zoo_model, cell.mode, cell.batch, cell.seqlen)
    model = hf_model(cell.model, zoo_model, cell.length)
    kind = type(model).__name__
    notes = [f"peer: transformers {version('transformers')} {kind}"]
    if cell.model == "rwkv":
        from transformers.models.rwkv import modeling_rwkv

        loop = modeling_rwkv.rwkv_cuda_kernel is None or not next(model.parameters()).is_cuda
        notes.append(f"WKV: transformers' {'per-token PyTorch loop' if loop else 'CUDA kernel'}")
    elif cell.model == "mamba":
        notes.append(f"selective scan: {_mamba_route(model)}")
    elif cell.model == "mamba2":
        notes.append(f"SSD scan: {_mamba2_route(model)}")
    else:  # sdpa where transformers has it (not for OpenAI GPT, BLOOM, GPT-Neo: eager only)
        notes.append(f"attention: {model.config._attn_implementation}")
    forward = dict(inputs.forward)
    nsp_labels = forward.pop("next_sentence_label", None)  # a loss input, as in the zoo
    if "src_ids" in forward:  # the encoder-decoder, under transformers' names
        forward = {transformers_name: forward[name] for name, transformers_name in SEQ2SEQ.items()
                   if name in forward}
    # the decoders: no cache kept in a forward
    causal = getattr(zoo_model, "causal_lm", False) or "decoder_input_ids" in forward

    def logits():
        """(LM or masked-LM logits, next-sentence or sentence-order logits or None)."""
        out = model(**forward, **({"use_cache": False} if causal else {}))
        if hasattr(out, "seq_relationship_logits"):  # BertForPreTraining
            return out.prediction_logits, out.seq_relationship_logits
        if hasattr(out, "sop_logits"):  # AlbertForPreTraining
            return out.prediction_logits, out.sop_logits
        return out.logits, None

    if cell.mode == "forward":
        model.eval()

        def run():
            with torch.no_grad():
                return logits()[0]

    elif cell.mode == "train":
        model.train()
        optimizer = adamw(model.parameters(), lr=1e-4)

        def run():
            optimizer.zero_grad(set_to_none=True)
            lm, nsp = logits()
            loss = lm_loss(lm, inputs.targets)
            if nsp is not None and nsp_labels is not None:
                loss = loss + F.cross_entropy(nsp.float(), nsp_labels.flatten())
            loss.backward()
            optimizer.step()
            return loss

    elif cell.model == "rwkv":
        run = _rwkv_decoder(model, inputs.input_ids)
        notes.append("decodes one sequence at a time: transformers' one-token RWKV step with a "
                     "state broadcasts a batch of B to (B, B, d)")
    elif "decoder_input_ids" in forward:  # the source is the prompt, as in the zoo's cell
        run = _seq2seq_decoder(model, forward["input_ids"])
        notes.append("KV cache: transformers' EncoderDecoderCache; the source encoded once")
    elif cell.model in ("mamba", "mamba2"):  # as GenerationMixin decodes them: a token a step
        run = _cache_decoder(model, inputs.input_ids, None)
        notes.append("state: transformers' cache (conv and SSM states per layer)")
    else:  # every attention decoder (check_mode has refused the encoders' generate mode)
        # A learned position table (GPT-2's, OPT's: the peer's is the zoo model's size) ends
        # decoding; RoPE and ALiBi have no table to run out of.
        table = type(zoo_model).position_table
        limit = getattr(zoo_model.config, table) if table else None
        run = _cache_decoder(model, inputs.input_ids, limit)
        notes.append("KV cache: transformers' DynamicCache")
    if cell.mode == "generate":
        notes.append(f"decodes {cell.new_tokens} timed tokens after the prompt")
    return Workload(run, tokens, flops, notes=tuple(notes))


# the encoder-decoder's inputs: the zoo's name -> transformers'
SEQ2SEQ = {"src_ids": "input_ids", "tgt_ids": "decoder_input_ids", "src_mask": "attention_mask",
           "tgt_mask": "decoder_attention_mask"}


def hf_model(name: str, zoo_model: Any, length: int):
    """A transformers model holding `zoo_model`'s weights, in its dtype and on its device, for
    inputs of up to `length` positions."""
    hf = _transformers()
    try:
        config, state = EXPORTERS[name](zoo_model.config, zoo_model.state_dict())
    except CheckpointError as exc:  # a config the Hugging Face class cannot express
        raise BenchError(str(exc)) from None
    model_type, (architecture,) = config.pop("model_type"), config.pop("architectures")
    if name == "rwkv":  # context_length only bounds transformers' optional CUDA kernel
        config["context_length"] = max(config["context_length"], length)
    if name in ("gpt-j", "ctrl"):  # n_positions only sizes transformers' table of sines
        config["n_positions"] = max(config["n_positions"], length)
    # sdpa where transformers has it; OpenAI GPT, BLOOM and GPT-Neo run eager attention only
    # (BLOOM adds ALiBi to the scores in its own baddbmm; GPT-Neo has eager and FlashAttention-2,
    # which needs CUDA and the flash-attn package), and the recurrent models have none
    attention = model_type not in ("openai-gpt", "bloom", "gpt_neo", "rwkv", "mamba", "mamba2")
    options = {"attn_implementation": "sdpa"} if attention else {}
    hf_config = hf.AutoConfig.for_model(model_type, **config, **options)
    weight = next(zoo_model.parameters())
    with torch.device(weight.device):
        model = getattr(hf, architecture)(hf_config).to(weight.dtype)
    if "embed_out.weight" in state and "embed_out.weight" not in model.state_dict():
        # GPT-NeoX's head: embed_out in files, lm_head in transformers 5's module
        state["lm_head.weight"] = state.pop("embed_out.weight")
    if name == "t5" and "lm_head.weight" in state:
        # transformers 5 builds T5's output tied to the embedding whatever the config says,
        # and unties it only when loading a file whose output differs: untie it here too
        model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.lm_head.weight))
    copy_weights(model, state)
    resized = {"rwkv": ("context_length",), "gpt-j": ("max_seq_len",),
               "ctrl": ("max_seq_len",)}.get(name, ())
    check_same_model(name, model, zoo_model, ignore=resized)
    return model


def copy_weights(model: torch.nn.Module, state: StateDict) -> None:
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


def check_same_model(name: str, model: Any, zoo_model: Any, ignore: tuple[str, ...] = ()) -> None:
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


def cache_kwargs(model: Any, past: Any) -> dict[str, Any]:
    """The keyword a transformers model takes its KV cache under: `cache` in recent releases
    (5.24 deprecates `past_key_values`, to be removed in 5.40), `past_key_values` in older ones."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: past}


def returned_cache(out: Any) -> Any:
    """The KV cache a transformers model returned, under either name (see cache_kwargs)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _mamba_route(model: Any) -> str:
    """How transformers' MambaForCausalLM scans: mamba_ssm's CUDA kernels where that package
    is installed and the model is on a GPU, else its PyTorch reference (a loop over tokens)."""
    cuda = next(model.parameters()).is_cuda
    if cuda and importlib.util.find_spec("mamba_ssm") is not None:
        return "mamba_ssm's CUDA kernels"
    return "transformers' per-token PyTorch loop (no mamba_ssm kernels)"


def _mamba2_route(model: Any) -> str:
    """How transformers' Mamba2ForCausalLM scans: mamba_ssm's Triton kernels where that package
    is installed and the model is on a GPU, else its PyTorch reference: the chunked SSD (what
    transformers 4 called `torch_forward`) in chunks of the config's chunk_size, and the
    one-token recurrence for decoding on the cache."""
    chunk = model.config.chunk_size
    cuda = next(model.parameters()).is_cuda
    if cuda and importlib.util.find_spec("mamba_ssm") is not None:
        return f"mamba_ssm's Triton kernels, chunks of {chunk}"
    return (f"transformers' chunked PyTorch SSD, chunks of {chunk}; the one-token recurrence "
            "for decoding (no mamba_ssm or causal-conv1d kernels)")


def _cache_decoder(model: Any, prompt: torch.Tensor, limit: int | None):
    """Greedy decoding on transformers' cache (a KV cache, or Mamba's states), one token per
    sequence per run; `limit` is the position table's length, if the model has one."""
    model.eval()
    with torch.no_grad():
        out = model(prompt, use_cache=True)
    # The last position's logits only: the prompt's would stay alive as decoding memory.
    state: dict[str, Any] = {"logits": out.logits[:, -1:].clone(),
                             "past": returned_cache(out), "length": prompt.size(1)}
    del out

    def run():
        if limit is not None and state["length"] >= limit:  # an index error (CUDA: an assert)
            raise BenchError(f"decoding past the {limit} positions of the position table")
        with torch.no_grad():
            out = model(state["logits"].argmax(dim=-1), use_cache=True,
                        **cache_kwargs(model, state["past"]))
        state["logits"], state["past"] = out.logits, returned_cache(out)
        state["length"] += 1
        return out.logits

    return run


def _seq2seq_decoder(model: Any, source: torch.Tensor):
    """Greedy decoding on transformers' encoder-decoder cache, one token per sequence per run,
    from the zoo's start token (0) after encoding `source` once, as harness.bench.ours does."""
    model.eval()
    start = torch.zeros(source.size(0), 1, dtype=torch.long, device=source.device)
    with torch.no_grad():
        out = model(input_ids=source, decoder_input_ids=start, use_cache=True)
    state: dict[str, Any] = {"logits": out.logits[:, -1:].clone(), "past": returned_cache(out),
                             "encoded": (out.encoder_last_hidden_state,)}
    del out

    def run():
        with torch.no_grad():
            out = model(encoder_outputs=state["encoded"], use_cache=True,
                        decoder_input_ids=state["logits"].argmax(dim=-1),
                        **cache_kwargs(model, state["past"]))
        state["logits"], state["past"] = out.logits, returned_cache(out)
        return out.logits

    return run


def _rwkv_decoder(model: Any, prompt: torch.Tensor):
    """Greedy decoding on transformers' RWKV state. The prompt is read as a batch; decoding
    goes one sequence at a time on that sequence's slice of the state (see `workload`)."""
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
