"""Peers (harness.bench.hf, harness.bench.rwkv_pip): transformers and the rwkv pip package run
with the zoo's weights.

Each peer is built from a tiny zoo model whose weights are all made non-trivial first (the
official inits leave biases, LayerNorms and several RWKV matrices at constants, which would
hide a mis-mapped tensor), then its workload is compared with the zoo's workload of the same
cell: same logits (<= 1e-4 in fp32), same loss, same decoded steps, same token and FLOP counts.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import weakref

import pytest
import torch
from conftest import installed, max_diff, randomized

from harness.bench import implementations, ours
from harness.bench.cell import build_model
from harness.bench.implementations import PEERS
from harness.bench.workload import BenchError, Cell, draw_inputs
from harness.models import variant_fields
from zoo import convert

# The tests that run a peer need its package; the others run without them.
needs_peers = pytest.mark.skipif(not (installed("transformers") and installed("rwkv")),
                                 reason="the peers need transformers and rwkv (the test extra)")
# The rwkv package's TorchScript (its default, which the peer keeps) is deprecated in torch 2.x.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

CPU = torch.device("cpu")
BATCH, SEQLEN, STEPS = 2, 16, 3
MODES = {"bert": ("forward", "train"), "roberta": ("forward", "train"),
         "albert": ("forward", "train"), "ctrl": ("forward", "train", "generate"),
         "gpt": ("forward", "train", "generate"), "rwkv": ("forward", "train", "generate"),
         "llama": ("forward", "train", "generate"), "mamba": ("forward", "train", "generate"),
         "mamba2": ("forward", "train", "generate"), "gpt-neox": ("forward", "train", "generate"),
         "bloom": ("forward", "train", "generate"), "opt": ("forward", "train", "generate"),
         "gpt-j": ("forward", "train", "generate"), "gpt-neo": ("forward", "train", "generate"),
         "t5": ("forward", "train", "generate"), "bart": ("forward", "train", "generate"),
         "rwkv5": ("forward", "generate"),
         "rwkv6": ("forward", "generate"), "rwkv7": ("forward", "generate")}
CASES = [(impl, name, mode) for impl, names in PEERS.items() for name in names
         for mode in MODES[name] if not (impl == "rwkv-pip" and mode == "train")]
NO_DROPOUT = {"gpt": {"dropout": 0.0}, "bert": {"dropout": 0.0, "attn_dropout": 0.0},
              "roberta": {"dropout": 0.0, "attn_dropout": 0.0}, "rwkv": {}, "llama": {},
              "mamba": {}, "mamba2": {}, "gpt-neox": {}, "bloom": {}, "rwkv5": {}, "rwkv6": {},
              "rwkv7": {}, "opt": {"dropout": 0.0, "attn_dropout": 0.0}, "gpt-j": {},
              "gpt-neo": {"window": 4},  # a window the 16 tokens pass, so local layers differ
              "t5": {"dropout": 0.0},
              "bart": {"dropout": 0.0, "attn_dropout": 0.0, "act_dropout": 0.0},
              "albert": {"classifier_dropout": 0.0}, "ctrl": {"dropout": 0.0}}


@pytest.fixture(autouse=True)
def rwkv_pip_switches(monkeypatch):
    """Each test imports the pip package afresh (its switches are read at import), from an
    environment without them."""
    for switch in ("RWKV_JIT_ON", "RWKV_CUDA_ON", "RWKV_V7_ON"):
        monkeypatch.delenv(switch, raising=False)
    monkeypatch.delitem(sys.modules, "rwkv.model", raising=False)


def cell(name: str, impl: str = "zoo", mode: str = "forward", batch: int = BATCH,
         seqlen: int = SEQLEN) -> Cell:
    return Cell(name, "tiny", impl, mode, seqlen, batch, "float32", "cpu", None, 0, 1, STEPS,
                fields=variant_fields(name, "tiny"))


def tiny(name: str, seqlen: int = SEQLEN, **overrides):
    """The bench's tiny zoo model of `name` (fp32, CPU), with config `overrides`, randomized."""
    model, notes = build_model(cell(name, seqlen=seqlen))
    if overrides:
        torch.manual_seed(0)
        model = type(model)(dataclasses.replace(model.config, **overrides))
    return randomized(model), notes


def peer_workload(impl: str, name: str, model, mode: str, batch: int = BATCH,
                  seqlen: int = SEQLEN, inputs=None):
    """The peer's workload of a cell, on `inputs` (drawn for the cell when not given)."""
    inputs = inputs or draw_inputs(model, mode, batch, seqlen, CPU)
    peer_cell = cell(name, impl, mode, batch, seqlen)
    return implementations.get(impl).workload(peer_cell, model, inputs)


def both(impl: str, name: str, model, mode: str, batch: int = BATCH, seqlen: int = SEQLEN):
    """(peer workload, zoo workload) of one cell, handed the same inputs."""
    inputs = draw_inputs(model, mode, batch, seqlen, CPU)
    peer = peer_workload(impl, name, model, mode, batch, seqlen, inputs)
    return peer, ours.eager(cell(name, "zoo", mode, batch, seqlen), model, inputs)


def test_the_peer_table():
    assert PEERS == {"hf": ("albert", "bart", "bert", "bloom", "ctrl", "gpt", "gpt-j", "gpt-neo",
                            "gpt-neox", "llama", "mamba", "mamba2", "opt", "roberta", "rwkv",
                            "t5"),
                     "rwkv-pip": ("rwkv", "rwkv5", "rwkv6", "rwkv7")}


@needs_peers
@pytest.mark.parametrize("impl,name,mode", CASES)
def test_peer_runs_like_the_zoo_with_the_same_weights(impl, name, mode):
    model, _ = tiny(name, **(NO_DROPOUT[name] if mode == "train" else {}))
    peer, ours = both(impl, name, model, mode)
    assert (peer.tokens, peer.flops) == (ours.tokens, ours.flops)
    assert peer.notes and peer.notes[0].startswith("peer: ")
    vocab = model.config.vocab_size
    if mode == "forward":
        logits = peer.run()
        assert logits.shape == (BATCH, SEQLEN, vocab)
        assert max_diff(logits, ours.run()) <= 1e-4
    elif mode == "generate":  # greedy on the same weights: the same tokens, the same logits
        assert peer.notes[-1] == f"decodes {STEPS} timed tokens after the prompt"
        for _ in range(STEPS):
            logits = peer.run()
            assert logits.shape == (BATCH, 1, vocab)
            assert max_diff(logits, ours.run()) <= 1e-4
    else:  # the same loss on the same targets, then AdamW steps that lower it
        losses = [peer.run().item() for _ in range(STEPS)]
        assert abs(losses[0] - ours.run().item()) <= 1e-4
        assert losses[-1] < losses[0]


@needs_peers
def test_gpt1_runs_as_openai_gpt_with_eager_attention():
    model, _ = tiny("gpt", pre_ln=False)
    peer, ours = both("hf", "gpt", model, "forward")
    assert "OpenAIGPTLMHeadModel" in peer.notes[0] and "attention: eager" in peer.notes[1]
    assert max_diff(peer.run(), ours.run()) <= 1e-4
    with pytest.raises(BenchError, match="no KV cache"):
        peer_workload("hf", "gpt", model, "generate")


@needs_peers
def test_a_t5_v11_peer_keeps_its_own_output_layer():
    """transformers 5 builds T5's output tied to the embedding whatever the config says: the
    peer unties it, and the zoo's untied weights come back from it unchanged."""
    model, _ = tiny("t5", feed_forward="gated-gelu", tie_embeddings=False, scale_output=False)
    peer, ours = both("hf", "t5", model, "forward")
    assert max_diff(peer.run(), ours.run()) <= 1e-4


@needs_peers
@pytest.mark.parametrize("kind", ["mbart", "pegasus"])
@pytest.mark.parametrize("mode", ["forward", "train", "generate"])
def test_bart_with_mbart_or_pegasus_switches_runs_their_class(kind, mode):
    from zoo.convert.bart import ARCHITECTURE, KINDS

    model, _ = tiny("bart", scale_embedding=True, **KINDS[kind], **NO_DROPOUT["bart"])
    peer, ours = both("hf", "bart", model, mode)
    assert ARCHITECTURE[kind] in peer.notes[0]
    for _ in range(STEPS if mode == "generate" else 1):
        assert max_diff(peer.run(), ours.run()) <= 1e-4


@needs_peers
def test_gpt2_reports_sdpa_attention():
    peer, _ = both("hf", "gpt", tiny("gpt")[0], "forward")
    assert "GPT2LMHeadModel" in peer.notes[0] and peer.notes[1] == "attention: sdpa"


@needs_peers
@pytest.mark.parametrize("mode", ["forward", "train"])
def test_bert_without_the_nsp_head_is_bert_for_masked_lm(mode):
    model, _ = tiny("bert", next_sentence_head=False, **NO_DROPOUT["bert"])
    peer, ours = both("hf", "bert", model, mode)
    assert "BertForMaskedLM" in peer.notes[0]
    assert max_diff(peer.run(), ours.run()) <= 1e-4


@needs_peers
@pytest.mark.parametrize("name,seqlen", [("gpt", 1030), ("bert", 80), ("roberta", 70)])
def test_a_lengthened_position_table(name, seqlen):
    model, notes = tiny(name, seqlen)
    assert notes and "position table extended" in notes[0]
    peer, ours = both("hf", name, model, "forward", batch=1, seqlen=seqlen)
    assert max_diff(peer.run(), ours.run()) <= 1e-4


@needs_peers
@pytest.mark.parametrize("mode", ["forward", "generate"])
def test_llama_with_a_window_runs_as_mistral(mode):
    """A sliding window of 5 over a 16-token prompt: transformers' MistralForCausalLM masks the
    same keys (forward) and its cache decodes the same logits (generate)."""
    model, _ = tiny("llama", window=5)
    peer, ours = both("hf", "llama", model, mode)
    assert "MistralForCausalLM" in peer.notes[0] and peer.notes[1] == "attention: sdpa"
    for _ in range(STEPS if mode == "generate" else 1):
        assert max_diff(peer.run(), ours.run()) <= 1e-4


@needs_peers
def test_llama_decodes_past_max_seq_len_and_mamba_says_how_it_scans():
    """RoPE has no table: decoding goes on past max_seq_len, where GPT-2's peer stops."""
    model, _ = tiny("llama", max_seq_len=SEQLEN)
    peer, ours = both("hf", "llama", model, "generate")
    assert "LlamaForCausalLM" in peer.notes[0]
    for _ in range(STEPS):
        assert max_diff(peer.run(), ours.run()) <= 1e-4
    peer = peer_workload("hf", "mamba", tiny("mamba")[0], "forward")
    assert "MambaForCausalLM" in peer.notes[0]
    assert peer.notes[1] == ("selective scan: transformers' per-token PyTorch loop "
                             "(no mamba_ssm kernels)")


@needs_peers
def test_mamba2_with_groups_matches_and_says_how_it_scans():
    """Two groups (B, C and the gated norm per group), and a chunk_size the exporter hands on:
    both scan the 16-token prompt in two chunks of 8 and give the same logits, then decode the
    same steps."""
    model, _ = tiny("mamba2", n_groups=2, d_state=8, chunk_size=8)
    for mode in ("forward", "generate"):
        peer, ours = both("hf", "mamba2", model, mode)
        assert "Mamba2ForCausalLM" in peer.notes[0]
        assert peer.notes[1] == ("SSD scan: transformers' chunked PyTorch SSD, chunks of 8; the "
                                 "one-token recurrence for decoding (no mamba_ssm or "
                                 "causal-conv1d kernels)")
        for _ in range(STEPS if mode == "generate" else 1):
            assert max_diff(peer.run(), ours.run()) <= 1e-4


@needs_peers
@pytest.mark.parametrize("mode", ["forward", "generate"])
def test_a_tiny_mamba2_cell_runs_against_hf(mode):
    """The whole cell, as `catalog bench mamba2 --against hf` measures it in its subprocess."""
    from harness.bench import cell as cells

    ours, theirs = (cells.measure(cell("mamba2", impl, mode)) for impl in ("zoo", "hf"))
    assert theirs["params"] == ours["params"] and theirs["routes"] is None
    assert theirs["flops_per_token"] == ours["flops_per_token"]
    assert theirs["tokens_per_s"] > 0 and theirs["peak_mem_bytes"] > 0
    assert any(note.startswith("SSD scan: transformers' chunked PyTorch SSD, chunks of 256")
               for note in theirs["notes"])


@needs_peers
def test_gpt2_decoding_stops_at_the_position_table():
    model, _ = tiny("gpt", max_seq_len=SEQLEN + 2)
    peer = peer_workload("hf", "gpt", model, "generate")
    peer.run()
    peer.run()
    with pytest.raises(BenchError, match="position table"):
        peer.run()


@needs_peers
def test_the_rwkv_pip_package_runs_its_official_configuration():
    peer, _ = both("rwkv-pip", "rwkv", tiny("rwkv")[0], "forward")
    assert "strategy 'cpu fp32', RWKV_JIT_ON=1, RWKV_CUDA_ON=0" in peer.notes[0]


@needs_peers
def test_rwkv7_runs_beside_rwkv4_in_one_process():
    """RWKV_V7_ON=1 at import turns the package into RWKV-7's: the peer imports a second copy
    for it, and RWKV-4's keeps working after it."""
    seven, _ = both("rwkv-pip", "rwkv7", tiny("rwkv7")[0], "forward")
    assert "strategy 'cpu fp32', RWKV_V7_ON=1, RWKV_JIT_ON=1" in seven.notes[0]
    four, ours = both("rwkv-pip", "rwkv", tiny("rwkv")[0], "forward")
    assert "RWKV_V7_ON" not in four.notes[0] and max_diff(four.run(), ours.run()) <= 1e-4
    assert "RWKV_V7_ON" not in os.environ
    with pytest.raises(BenchError, match="needs a channel mix"):
        peer_workload("rwkv-pip", "rwkv7", tiny("rwkv7", d_ff=0)[0], "forward")


@needs_peers
@pytest.mark.parametrize("impl,name", [("hf", "gpt"), ("hf", "rwkv"), ("hf", "llama"),
                                       ("hf", "gpt-neox"), ("hf", "mamba"), ("hf", "mamba2"),
                                       ("rwkv-pip", "rwkv")])
def test_the_peer_keeps_no_reference_to_the_zoo_model(impl, name):
    """bench.measure drops the zoo model once the peer is built: its memory must go."""
    model, _ = tiny(name)
    peer = peer_workload(impl, name, model, "forward")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
    peer.run()


@needs_peers
def test_a_mis_mapped_weight_is_caught(monkeypatch):
    """The inverse mapping is checked by converting the peer back with zoo.convert."""
    inverse = convert.EXPORTERS["gpt"]

    def swapped_ln(c, zoo):
        config, state = inverse(c, zoo)
        w = "transformer.h.0.ln_1.weight"
        state[w] = state[w].flip(0)
        return config, state

    monkeypatch.setitem(convert.EXPORTERS, "gpt", swapped_ln)
    with pytest.raises(BenchError, match=r"'blocks\.0\.ln_1\.weight' differs"):
        peer_workload("hf", "gpt", tiny("gpt")[0], "forward")


@pytest.mark.parametrize("impl,name,mode,message", [
    ("torch-compile", "gpt", "forward", "unknown peer"),
    ("hf", "pangu-pi", "forward", "no implementation of 'pangu-pi'"),
    ("rwkv-pip", "gpt", "forward", "no implementation of 'gpt'"),
    ("hf", "gpt", "sample", "unknown mode"),
    ("hf", "bert", "generate", "encoder"),
    ("hf", "roberta", "generate", "encoder"),
    ("rwkv-pip", "rwkv", "train", "inference-only"),
])
def test_unsupported_cells_are_refused(impl, name, mode, message):
    model, _ = tiny(name if name in MODES else "gpt")
    with pytest.raises(BenchError, match=message):
        peer_workload(impl, name, model, mode)


@needs_peers
def test_configs_transformers_cannot_express_are_refused():
    with pytest.raises(BenchError, match="d_ff"):
        peer_workload("hf", "gpt", tiny("gpt", pre_ln=False, d_ff=100)[0], "forward")
    with pytest.raises(BenchError, match="eps"):
        peer_workload("rwkv-pip", "rwkv", tiny("rwkv", layer_norm_eps=1e-6)[0], "forward")


@needs_peers
def test_the_rwkv_pip_switches_are_set_only_while_the_package_imports(monkeypatch):
    monkeypatch.setenv("RWKV_CUDA_ON", "1")  # a user's own value comes back afterwards
    peer_workload("rwkv-pip", "rwkv", tiny("rwkv")[0], "forward")
    assert "RWKV_JIT_ON" not in os.environ and os.environ["RWKV_CUDA_ON"] == "1"


def test_the_inputs_do_not_depend_on_what_was_drawn_before():
    model, _ = tiny("bert")
    first = draw_inputs(model, "train", BATCH, SEQLEN, CPU)
    torch.rand(1000)
    again = draw_inputs(model, "train", BATCH, SEQLEN, CPU)
    assert first.forward.keys() == again.forward.keys()
    assert all(torch.equal(first.forward[k], again.forward[k]) for k in first.forward)
    assert torch.equal(first.targets, again.targets)


@needs_peers
@pytest.mark.parametrize("name,impl", [("gpt", "hf"), ("rwkv", "rwkv-pip")])
def test_a_cell_hands_the_same_inputs_to_ours_and_to_the_peer(monkeypatch, name, impl):
    """harness.bench.cell.measure draws the inputs once, in one place, and hands them over."""
    from harness.bench import cell as cells

    seen = {}
    for target in ("harness.bench.ours:eager", implementations.IMPLEMENTATIONS[impl].target):
        module, _, function = target.partition(":")
        original = getattr(sys.modules.get(module) or __import__(module, fromlist=["_"]),
                           function)

        def spy(c, model, inputs, original=original):
            seen[c.impl] = inputs
            return original(c, model, inputs)

        monkeypatch.setattr(f"{module}.{function}", spy)
    for which in ("zoo", impl):
        cells.measure(cell(name, which))
    ours_ids, peer_ids = seen["zoo"].input_ids, seen[impl].input_ids
    assert ours_ids is not peer_ids and torch.equal(ours_ids, peer_ids)


def test_a_cell_that_shared_its_cores_says_so(monkeypatch):
    """The load meter around the timed runs goes into the record (contention, in cores), and a
    reading of BUSY_CORES or more into its notes."""
    from harness.bench import cell as cells

    cores = len(cells.usable_cores())
    for reading, noted in ((0.8, True), (0.04, False), (None, False)):
        monkeypatch.setattr(cells.LoadMeter, "others", lambda self, r=reading: r)
        result = cells.measure(cell("gpt"))
        assert result["contention"] == reading
        busy = [n for n in result["notes"] if n.startswith("the machine was busy")]
        whose = "the core's" if cores == 1 else f"the {cores} cores'"
        assert busy == ([f"the machine was busy: other work took 0.80 of {whose} time during "
                         "the timed runs; measure it again"] if noted else [])


def test_a_training_cell_says_which_routes_its_step_takes():
    """A training step takes the plain activations (gradients), oneDNN's products where the
    linears take oneDNN (F.linear elsewhere) and the dropout kernel; the forward's notes say the
    inference routes."""
    model, _ = tiny("gpt")
    inputs = draw_inputs(model, "train", BATCH, SEQLEN, CPU)
    train = ours.eager(cell("gpt", mode="train"), model, inputs).notes
    forward = ours.eager(cell("gpt"), model, draw_inputs(model, "forward", BATCH, SEQLEN, CPU))
    import zoo.fast

    linears = ("linears: oneDNN matmul for the forward and both gradients (zoo.fast)"
               if zoo.fast.many_rows_kernel() == "onednn" else "linears: F.linear")
    assert train[:2] == (linears, "feed-forward: activation as a separate op")
    assert forward.notes[0] != "linears: F.linear"  # the linear route's words
