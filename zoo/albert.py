"""ALBERT: BERT with far fewer parameters, by factorising the embedding and sharing one layer
across the depth.

Paper: Lan et al. 2019, "ALBERT: A Lite BERT for Self-supervised Learning of Language
Representations", arXiv 1909.11942 (the model: section 3.1, its sizes: Table 1). Reference:
google-research/albert and Hugging Face's AlbertForPreTraining, whose folders zoo.convert reads.

The network is BERT's (zoo/bert.py): post-LN encoder blocks, learned positions and token types,
a masked-LM head tied to the word embeddings. Section 3.1 changes three things:
  - factorised embedding parameterisation: tokens, positions and token types are embedded at a
    small width E (128) and projected to the hidden width H by one Linear, so the vocabulary
    costs V E + E H parameters instead of V H. The masked-LM head works back down: Dense
    H -> E, activation, LayerNorm at E, then the tied E -> V decoder;
  - cross-layer parameter sharing: ONE block (attention and feed-forward) is applied L times,
    so the parameter count does not grow with depth, while the compute does as BERT's;
  - inter-sentence coherence loss: sentence-order prediction (SOP) instead of BERT's
    next-sentence prediction. The classifier is the same shape on the same pooled [CLS]
    vector (tanh(Dense(h[CLS]))), with dropout before it; its label is 0 when the two segments
    come in their original order and 1 when they are swapped. `next_sentence_label` carries
    it, as BERT's NSP label.
The released models (version 2, as transformers' AlbertConfig defaults) use the tanh
approximation of GELU, no dropout in the encoder (section 4.7 found that it hurts) and 0.1
before the SOP classifier. Sizes follow Table 1: feed-forward 4H, H/64 heads, E = 128, a
30,000-word SentencePiece vocabulary.

Parameter count (V words, P positions, 2 token types, E, H = d_model, f = d_ff):
    (V + P + 2) E + 2 E            embeddings and their LayerNorm
    + E H + H                      the projection to H
    + 4 H^2 + 2 H f + f + 9 H      the one shared block (Q, K, V, out, two LayerNorms, FFN)
    + H E + 3 E + V                masked-LM head: Dense, LayerNorm, decoder bias
    + H^2 + 3 H + 2                pooler and SOP classifier
which is 11,813,810 for ALBERT-base (L = 12, H = 768), as transformers counts it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.bert import Bert, BertConfig, BertEmbeddings, Block, MaskedLMHead, padding_mask
from zoo.model import ZooModel


@dataclass(frozen=True)
class AlbertConfig(BertConfig):
    """Defaults: ALBERT-base (version 2): L=12, H=768, E=128, 12 heads."""

    vocab_size: int = 30000  # SentencePiece; <pad> = 0, [CLS] = 2, [SEP] = 3
    embedding_size: int = 128  # E: the width tokens, positions and token types are embedded at
    activation: str = "gelu_tanh"  # Hugging Face's gelu_new, as the released configs
    dropout: float = 0.0  # embeddings and both residual branches (none in the released models)
    attn_dropout: float = 0.0
    classifier_dropout: float = 0.1  # before the sentence-order classifier
    next_sentence_head: bool = True  # pooler + sentence-order classifier


class AlbertEmbeddings(BertEmbeddings):
    """BERT's embeddings at width E, then one Linear up to d_model."""

    def __init__(self, config: AlbertConfig):
        super().__init__(config, width=config.embedding_size)
        self.project = nn.Linear(config.embedding_size, config.d_model)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        return self.project(super().forward(input_ids, token_type_ids))  # (B, T, d_model)


class Albert(Bert):
    config_class = AlbertConfig
    head_keys = ("lm_head.", "pooler.", "sop_head.")  # the masked-LM head; the SOP head

    def __init__(self, config: AlbertConfig):
        ZooModel.__init__(self)  # BERT's parts, built here: one block instead of n_layer
        self.config = config
        self.embeddings = AlbertEmbeddings(config)
        self.block = Block(config)  # shared: every one of the n_layer layers runs it
        self.lm_head = MaskedLMHead(config, width=config.embedding_size)
        if config.next_sentence_head:
            self.pooler = nn.Linear(config.d_model, config.d_model)  # tanh(Dense(h[CLS]))
            self.sop_drop = nn.Dropout(config.classifier_dropout)
            self.sop_head = nn.Linear(config.d_model, 2)  # 0 = in order, 1 = swapped
        self.apply(self._init_weights)  # BERT's: N(0, 0.02), zero biases and head bias
        self.lm_head.tie(self.embeddings.word_embeddings)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, d_model): the shared block applied n_layer times to the
        projected embeddings (Hugging Face's AlbertModel `last_hidden_state`)."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        mask = padding_mask(attention_mask)
        for _ in range(self.config.n_layer):
            x = self.block(x, mask)
        return x

    pair_task = "sentence-order"

    def pair_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """Sentence-order logits (B, 2) from the pooled [CLS] vector, dropout before them."""
        return self.sop_head(self.sop_drop(pooled))

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token of `forward` (the masked-LM logits), E = embedding_size:
        2 * (E d + n_layer * (4 d^2 + 2 d d_ff) + d E + V E)   projection, the shared block
                                                               run n_layer times, MLM dense,
                                                               decoder
        + 4 * n_layer * d * T                                  attention over T keys.
        Sharing saves parameters, not compute: every layer multiplies as BERT's does. The
        pooler and SOP classifier (once per sequence) are left out, as in BERT's count."""
        c = self.config
        d, E = c.d_model, c.embedding_size
        matmul_weights = (2 * E * d + c.n_layer * (4 * d * d + 2 * d * c.d_ff)
                          + c.vocab_size * E)
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * seqlen
