"""GPT-1 and GPT-2: decoder-only Transformers trained as left-to-right language models.

GPT-1: Radford et al. 2018, "Improving Language Understanding by Generative Pre-Training".
GPT-2: Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (section 2.3).

Differences from the parent, the original Transformer (zoo/transformer.py):
  - no encoder and no cross-attention: a stack of causally masked self-attention blocks;
  - learned absolute position embeddings instead of sinusoids, no sqrt(d_model) embedding scale;
  - GELU instead of ReLU in the feed-forward layer, in its tanh form (the original code of both
    papers, and Hugging Face's "gelu_new", which its OpenAI GPT also uses for afn="gelu");
  - the output head is the token embedding matrix (tied), without a bias.

GPT-2 then changes GPT-1 in three places, selected here by `GPTConfig.pre_ln`:
  - LayerNorm moves to the input of each sub-block (pre-LN), so the residual stream itself is
    never normalised, and one more LayerNorm (`ln_f`) follows the last block;
  - the weights of the two projections that write into the residual stream are initialised
    with std 0.02 / sqrt(2 * n_layer), as the stream sums 2 * n_layer of them;
  - (data, not code) a byte-level BPE vocabulary of 50257 and a context of 1024 tokens
    (GPT-1: 40478 and 512, set by the catalog's `gpt-1` variant).
The two block wirings are written out as two classes below; the config picks one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from zoo.layers import (
    FeedForward,
    KVCache,
    MultiHeadAttention,
    causal_padding_mask,
    tied_head,
)
from zoo.model import Output, ZooModel, check_config, generate


@dataclass(frozen=True)
class GPTConfig:
    """Defaults: GPT-2 124M ("117M" in the paper), Hugging Face's `gpt2`."""

    vocab_size: int = 50257
    max_seq_len: int = 1024  # learned position embeddings: the longest input the model takes
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None  # None: 4 * d_model, as in both papers; 0: no MLP (mixer-only)
    pre_ln: bool = True  # True: GPT-2 (pre-LN + ln_f + scaled residual init); False: GPT-1
    activation: str = "gelu_tanh"  # a key of zoo.layers.ACTIVATIONS
    dropout: float = 0.1  # embedding, attention-probability and residual dropout alike
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        check_config(self)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)


class PostLNBlock(nn.Module):
    """GPT-1's block: normalise after each residual addition (as in the original Transformer).

        n = LN1(x + Attn(x));  h = LN2(n + MLP(n))
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.attn = MultiHeadAttention(config.d_model, config.n_head, dropout=config.dropout)
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config.d_model, config.d_ff, config.activation) if config.d_ff \
            else None
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        # A padding mask, when given, already holds the causal mask (causal_padding_mask).
        a = self.attn(x, attn_mask=attn_mask, is_causal=attn_mask is None, cache=cache)
        n = self.ln_1(x + self.drop(a))
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return n
        return self.ln_2(n + self.drop(self.mlp(n)))


class PreLNBlock(nn.Module):
    """GPT-2's block: normalise each sub-block's input; the residual stream stays un-normalised.

        a = x + Attn(LN1(x));  h = a + MLP(LN2(a))
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.attn = MultiHeadAttention(config.d_model, config.n_head, dropout=config.dropout)
        self.ln_2 = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.mlp = FeedForward(config.d_model, config.d_ff, config.activation) if config.d_ff \
            else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                cache: KVCache | None) -> torch.Tensor:
        a = self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=attn_mask is None, cache=cache)
        x = x + self.drop(a)
        if self.mlp is None:  # d_ff = 0: the block is its attention alone
            return x
        return x + self.drop(self.mlp(self.ln_2(x)))


class GPT(ZooModel):
    config_class = GPTConfig
    position_table = "max_seq_len"
    causal_lm = True

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)  # also the output head
        self.wpe = nn.Embedding(config.max_seq_len, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        block_class = PreLNBlock if config.pre_ln else PostLNBlock  # GPT-2 or GPT-1 wiring
        self.blocks = nn.ModuleList(block_class(config) for _ in range(config.n_layer))
        # Pre-LN leaves the residual stream un-normalised, so GPT-2 normalises it once at the end;
        # GPT-1's stream is already the output of a LayerNorm.
        self.ln_f = (nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.pre_ln
                     else None)
        self.apply(self._init_weights)
        if config.pre_ln:
            # GPT-2: the residual stream is a sum of 2 * n_layer projections; scaling their init
            # by 1/sqrt(2 * n_layer) keeps its variance at initialisation independent of depth.
            std = config.init_std / math.sqrt(2 * config.n_layer)
            for block in self.blocks:
                nn.init.normal_(block.attn.out_proj.weight, mean=0.0, std=std)
                if block.mlp is not None:
                    nn.init.normal_(block.mlp.fc_out.weight, mean=0.0, std=std)
        self.lm_head = tied_head(self.wte)  # the output head is the token embedding (tied)

    def _init_weights(self, module: nn.Module) -> None:
        # Both papers: N(0, 0.02) for matrices and embeddings, zero biases, unit LayerNorm gains.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids: torch.Tensor, cache: list[KVCache] | None = None,
                      attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T): GPT-2's after ln_f, GPT-1's the
        last block's output (Hugging Face's GPT2Model / OpenAIGPTModel). With `cache` (one
        KVCache per layer, filled in place) the inputs continue the cached positions.
        `attention_mask` (B, cached + T), 1 = token and 0 = padding, hides padded keys; as in
        Hugging Face, positions are counted from the start of the row, padding included."""
        T = input_ids.size(1)
        past = cache[0].length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(f"{past + T} positions exceed the model's maximum of "
                             f"{self.config.max_seq_len} (learned position embeddings)")
        pos = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        x = self.drop(self.wte(input_ids) + self.wpe(pos))  # (B, T, C)
        attn_mask = None
        if attention_mask is not None:
            attn_mask = causal_padding_mask(attention_mask, T, past, x.dtype)  # (B, 1, T, S)
        for i, block in enumerate(self.blocks):
            x = block(x, attn_mask, cache[i] if cache is not None else None)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None,
                cache: list[KVCache] | None = None, use_cache: bool = False,
                attention_mask: torch.Tensor | None = None) -> Output:
        """Logits (B, T, vocab) for `input_ids` (B, T), the tied head on `hidden_states` (which
        describes `cache` and `attention_mask`). `targets` (B, T) are the next tokens, aligned
        with the positions (-100 = ignored). With `use_cache` and no `cache`, a new one is
        started; it is returned in `Output.cache`."""
        if cache is None and use_cache:
            cache = [KVCache() for _ in self.blocks]
        logits = self.logits(self.hidden_states(input_ids, cache, attention_mask))  # (B, T, V)
        loss = self.lm_loss(logits, targets) if targets is not None else None
        return Output(logits=logits, loss=loss, cache=cache)

    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 eos_id: int | None = None) -> torch.Tensor:
        """(B, T + new) tokens: greedy by default, sampled when temperature > 0 (see
        zoo.model.generate); each step feeds one token on top of the KV cache."""
        def step(tokens: torch.Tensor, cache: list[KVCache] | None) -> Output:
            return self(tokens, cache=cache, use_cache=True)

        return generate(step, input_ids, max_new_tokens, temperature, top_k, generator, eos_id)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random token ids, never padded (`padded` is ignored): a causal LM reads a right-padded
        batch correctly without a mask (no real token sees a later pad), and benchmarks then
        time the plain causal attention path, which pretraining and generation use."""
        ids = torch.randint(0, self.config.vocab_size, (batch, seqlen), device=device)
        return {"input_ids": ids}

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token at context `seqlen`:
            2 * (n_layer * (4 d^2 + 2 d d_ff) + vocab * d)   [QKV, out, MLP; tied head]
          + 4 * n_layer * d * (seqlen + 1) / 2             [causal QK^T and AV, average context]
        Biases, LayerNorms, softmax and the embedding lookups are left out."""
        c = self.config
        d = c.d_model
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + c.vocab_size * d
        return 2.0 * matmul_weights + 4.0 * c.n_layer * c.d_model * (seqlen + 1) / 2
