"""Tiny published-style checkpoints for the tests of hub ids, checkpoint tokenizers, `catalog
generate`, `catalog eval CHECKPOINT` and `catalog bench --checkpoint`: folders written by Hugging
Face's `save_pretrained` from tiny random configs, with a tiny tokenizer trained here (nothing
is downloaded), and a Hugging Face cache entry laid out as huggingface_hub lays it out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

# Text the tiny tokenizers are trained on (and that the tests encode): words, punctuation,
# digits and a few non-ASCII characters, so that merges cross every kind of byte.
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "A model reads a sequence of tokens and predicts the next one.",
    "Attention mixes positions; the recurrence keeps a state of fixed size.",
    "Numbers like 1234 and 3.14 appear too, as do names: Zoë, Müller, Ångström.",
    "Héllo wörld! Ça va? 東京 and naïve café, 2024-01-01.",
] * 4
SENTENCES = ["The quick brown fox.", "  leading spaces and trailing  ", "Zoë's café costs €3.50!",
             "東京 tokens, naïve\tand\nnew lines", "<|endoftext|> is special", ""]
EOT = "<|endoftext|>"


def write_byte_level_bpe(folder: Path, vocab_size: int = 320, special_tokens: tuple = (EOT,),
                         settings: dict | None = None) -> dict:
    """GPT-2-style vocab.json + merges.txt (byte-level BPE over every byte, `special_tokens`
    first: <|endoftext|> = 0) and a tokenizer_config.json, by default the one GPT-2 ships,
    else `settings`; returns the vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))  # vocab.json, merges.txt
    gpt2 = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT,
            "tokenizer_class": "GPT2Tokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_prefix_space": False, "model_max_length": 64, **(settings or gpt2)}))
    return tok.get_vocab()


def write_t5_unigram(folder: Path) -> int:
    """A tokenizer.json laid out as T5's (a Unigram model; whitespace split, then "▁" before
    each word; "</s>" after every text) with <pad> = 0, </s> = 1, <unk> = 2, and the
    tokenizer_config.json naming T5Tokenizer; returns the vocabulary's size. The pieces are
    written out, not trained (the Unigram trainer is not deterministic): every character of
    the training text, and each of its words with "▁" before it, likelier than its letters.
    (T5's released files also normalise with SentencePiece's precompiled character map, which
    needs a SentencePiece model to build.)"""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    words = sorted({word for line in TRAINING_TEXT for word in line.split()})
    characters = sorted({c for line in TRAINING_TEXT for c in line if not c.isspace()})
    pieces = ([("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
              + [(c, -5.0) for c in characters] + [("▁" + w, -6.0) for w in words])
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>", "extra_ids": 0,
        "tokenizer_class": "T5Tokenizer"}))
    return tok.get_vocab_size()


def write_wordpiece_vocab(folder: Path, do_lower_case: bool = True) -> None:
    """BERT's vocab.txt ([PAD] [UNK] [CLS] [SEP] [MASK], characters, ##-pieces, words) and a
    tokenizer_config.json saying whether to lower-case."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=do_lower_case)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        show_progress=False)
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    vocab = sorted(tok.get_vocab().items(), key=lambda item: item[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token, _ in vocab),
                                      encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "do_lower_case": do_lower_case, "tokenizer_class": "BertTokenizer"}))


def gpt2_folder(folder: Path, *, tokenizer: bool = True, seed: int = 0,
                n_positions: int = 64, safe_serialization: bool = True) -> Path:
    """A GPT2LMHeadModel folder from a tiny random config (2 layers, width 32), with the tiny
    byte-level tokenizer's files unless `tokenizer` is False; <|endoftext|> is id 0."""
    import torch

    transformers = pytest.importorskip("transformers")
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = len(write_byte_level_bpe(folder)) if tokenizer else 320
    if not tokenizer:
        for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
            (folder / name).unlink(missing_ok=True)
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=32,
                                     n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(folder, safe_serialization=safe_serialization)
    return folder


# A tiny random config of each architecture decoder_folder writes (byte-level BPE sized vocab).
DECODER_SIZES = {
    "GPTNeoX": dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=2, max_position_embeddings=64),  # Pythia's layout
    "Bloom": dict(hidden_size=32, n_layer=2, n_head=4),  # ALiBi, an embedding LayerNorm
    "OPT": dict(hidden_size=32, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=64),  # learned positions, ReLU
    "GPTJ": dict(n_embd=32, n_layer=2, n_head=2, rotary_dim=8, n_positions=64),  # interleaved RoPE
    "GPTNeo": dict(hidden_size=32, num_layers=2, num_heads=2, max_position_embeddings=64,
                   window_size=4, attention_types=[[["global", "local"], 1]]),  # a local layer
    "CTRL": dict(n_embd=32, n_layer=2, n_head=4, dff=64, n_positions=64),  # split sinusoids
}
# the causal-LM class of each architecture, where it is not {architecture}ForCausalLM
DECODER_CLASSES = {"CTRL": "CTRLLMHeadModel"}


def decoder_folder(folder: Path, architecture: str, seed: int = 0) -> Path:
    """A transformers `{architecture}ForCausalLM` folder ("GPTNeoX", "Bloom", "OPT", "GPTJ",
    "GPTNeo"; CTRL's CTRLLMHeadModel)
    from a tiny random config, with the tiny byte-level tokenizer's files; <|endoftext|> is id
    0, BOS and EOS (as Pythia's is). OPT's tokenizer starts every text with it (add_bos_token),
    as OPT's released folders do with </s>."""
    import torch

    transformers = pytest.importorskip("transformers")
    vocab_size = len(write_byte_level_bpe(folder))
    if architecture == "OPT":
        settings = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**settings,
                                                                  "add_bos_token": True}))
    torch.manual_seed(seed)
    config = getattr(transformers, f"{architecture}Config")(
        vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, **DECODER_SIZES[architecture])
    cls = DECODER_CLASSES.get(architecture, f"{architecture}ForCausalLM")
    getattr(transformers, cls)(config).eval().save_pretrained(folder)
    return folder


def t5_folder(folder: Path, seed: int = 0) -> Path:
    """A T5ForConditionalGeneration folder from a tiny random config (2 + 2 layers, width 32),
    with T5's ids: <pad> = 0 is the decoder's start, </s> = 1 its end (write_t5_unigram's
    tokenizer). Its weights are drawn 5 times wider than T5's initialisation, whose tiny model
    writes one token over and over."""
    import torch

    transformers = pytest.importorskip("transformers")
    vocab_size = write_t5_unigram(folder)
    torch.manual_seed(seed)
    config = transformers.T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=64,
                                   num_layers=2, num_heads=4, eos_token_id=1, pad_token_id=0,
                                   decoder_start_token_id=0,
                                   initializer_factor=5.0)
    transformers.T5ForConditionalGeneration(config).eval().save_pretrained(folder)
    return folder


def bart_folder(folder: Path, seed: int = 0) -> Path:
    """A BartForConditionalGeneration folder from a tiny random config (2 + 2 layers, width 32)
    with BART's byte-level BPE files: vocab.json and merges.txt trained here with <s> = 0,
    <pad> = 1, </s> = 2 and <unk> = 3 first, and the tokenizer_config.json naming
    BartTokenizer (whose texts are <s> ... </s>). Weights drawn 5 times wider than BART's
    initialisation, whose tiny model writes one token over and over."""
    import torch

    transformers = pytest.importorskip("transformers")
    vocab = write_byte_level_bpe(folder, special_tokens=("<s>", "<pad>", "</s>", "<unk>"),
                                 settings={"bos_token": "<s>", "eos_token": "</s>",
                                           "sep_token": "</s>", "cls_token": "<s>",
                                           "unk_token": "<unk>", "pad_token": "<pad>",
                                           "mask_token": "<unk>",
                                           "tokenizer_class": "BartTokenizer"})
    torch.manual_seed(seed)
    config = transformers.BartConfig(
        vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
        decoder_ffn_dim=64, max_position_embeddings=64, init_std=0.1, bos_token_id=0,
        pad_token_id=1, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None)
    transformers.BartForConditionalGeneration(config).eval().save_pretrained(folder)
    return folder


def bert_folder(folder: Path) -> Path:
    """A BertForMaskedLM folder from a tiny random config, with a WordPiece vocab.txt."""
    transformers = pytest.importorskip("transformers")
    write_wordpiece_vocab(folder)
    vocab_size = len((folder / "vocab.txt").read_text(encoding="utf-8").splitlines())
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=64)
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    return folder


def hub_cache_entry(cache: Path, repo_id: str, source: Path,
                    commit: str = "0123456789abcdef0123456789abcdef01234567",
                    ref: str = "main") -> Path:
    """`source`'s files as huggingface_hub caches repository `repo_id` at `commit` on branch
    `ref`: models--owner--name/{blobs, snapshots/COMMIT/..., refs/REF}. (The hub links snapshot
    files to blobs; copies read the same.) Returns the snapshot folder."""
    import shutil

    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        shutil.copy2(file, snapshot / file.name)
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / ref).write_text(commit)
    return snapshot


def offline_hub(tmp_path: Path, monkeypatch) -> Path:
    """An empty Hugging Face cache in a temporary folder, read offline: HF_HUB_CACHE and
    HF_HUB_OFFLINE=1 in the environment (for subprocesses), and in huggingface_hub's
    constants, which it reads once at import (this process may have imported it already)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# llama.cpp's names for a LlamaForCausalLM's tensors (inside blk.N for the blocks)
_GGUF_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
               "self_attn.o_proj": "attn_output", "post_attention_layernorm": "ffn_norm",
               "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
_GGUF_GLOBAL = {"model.embed_tokens.weight": "token_embd.weight",
                "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def llama3_rope_divisors(head_size: int, theta: float, factor: float, original: int,
                         low: float = 1.0, high: float = 4.0) -> list[float]:
    """What llama.cpp's convert_hf_to_gguf.py stores as rope_freqs for Llama 3.1's scaling:
    one divisor per frequency (1 for short wavelengths, the factor for long ones, blended
    between)."""
    divisors = []
    for i in range(0, head_size, 2):
        wavelength = 2 * math.pi * theta ** (i / head_size)  # of frequency theta^(-i/hs)
        if wavelength < original / high:
            divisors.append(1.0)
        elif wavelength > original / low:
            divisors.append(factor)
        else:
            smooth = (original / wavelength - low) / (high - low)
            divisors.append(1 / ((1 - smooth) / factor + smooth))
    return divisors


def llama_gguf(path: Path, qtype: str = "F32", *, seed: int = 0, tied: bool = False,
               architecture: str = "llama", extra_tensors: dict | None = None,
               llama3: tuple[float, int] | None = None):
    """A GGUF file as llama.cpp's convert_hf_to_gguf.py writes one from a tiny random
    LlamaForCausalLM (2 layers, width 64, 4 query heads and 2 kv heads, the tiny byte-level BPE
    as its `gpt2`-type tokenizer): the settings as metadata, the tensors under llama.cpp's
    names, q and k rows in Meta's interleaved RoPE order, the matrices stored as `qtype` (F32,
    F16, Q8_0, Q4_0); with `llama3` = (factor, original context), Llama 3.1's RoPE scaling,
    stored as llama.cpp stores it (rope_freqs). Returns (path, the Hugging Face model)."""
    import gguf
    import numpy as np
    import torch

    transformers = pytest.importorskip("transformers")
    vocab = write_byte_level_bpe(path.parent / f"{path.stem}-tokenizer")
    merges = [line for line in (path.parent / f"{path.stem}-tokenizer" / "merges.txt")
              .read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    torch.manual_seed(seed)
    rope = {"rope_type": "default", "rope_theta": 10_000.0}
    if llama3 is not None:
        rope = {"rope_type": "llama3", "rope_theta": 10_000.0, "factor": llama3[0],
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": llama3[1]}
        extra_tensors = {**(extra_tensors or {}), "rope_freqs.weight": np.array(
            llama3_rope_divisors(16, 10_000.0, *llama3), dtype=np.float32)}
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=64, intermediate_size=96,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128,
                                      tie_word_embeddings=tied, rope_parameters=rope)
    model = transformers.LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(96)
    writer.add_rope_dimension_count(16)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10_000.0)
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if token == EOT else 1 for token in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[EOT])
    writer.add_eos_token_id(vocab[EOT])

    def permute(weight, n_head):  # Hugging Face's rotate-half rows -> Meta's interleaved ones
        return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
                .swapaxes(1, 2).reshape(weight.shape))

    quant = gguf.GGMLQuantizationType[qtype]
    for key, tensor in model.state_dict().items():
        if tied and key == "lm_head.weight":
            continue
        parts = key.split(".")
        name = _GGUF_GLOBAL.get(key) or \
            f"blk.{parts[2]}.{_GGUF_BLOCK['.'.join(parts[3:-1])]}.weight"
        array = tensor.numpy().astype(np.float32)
        if name.endswith("attn_q.weight"):
            array = permute(array, 4)
        elif name.endswith("attn_k.weight"):
            array = permute(array, 2)
        if array.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            stored = gguf.quants.quantize(array, quant)
            writer.add_tensor(name, stored, raw_shape=stored.shape, raw_dtype=quant)
        else:
            writer.add_tensor(name, array)
    for name, array in (extra_tensors or {}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path, model
