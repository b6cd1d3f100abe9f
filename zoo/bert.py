"""BERT: the Transformer's encoder, pretrained bidirectionally (Devlin et al. 2018,
"BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
arXiv 1810.04805).

Differences from the parent Transformer encoder (Vaswani et al. 2017):
  - learned absolute position embeddings (512 rows) instead of sinusoids, plus a token-type
    (segment A/B) embedding; the sum goes through a LayerNorm (eps 1e-12) and dropout, and the
    embeddings are not scaled by sqrt(d_model);
  - exact (erf) GELU in the feed-forward layer instead of ReLU;
  - two pretraining heads: masked-LM (Dense -> GELU -> LayerNorm -> a decoder tied to the word
    embeddings with its own bias) and next-sentence prediction (a 2-way Linear on the pooler,
    tanh(Dense(h[CLS]))).
The blocks stay post-LN: x = LN(x + Dropout(Sublayer(x))). Weights are drawn from N(0, 0.02),
biases zero, LayerNorms 1/0, and the padding row of the word embeddings is zero, as in the
reference implementation (Hugging Face `BertForPreTraining`).

`forward` returns the masked-LM logits (B, T, V) in `Output.logits`; the next-sentence logits
come from `pretraining_logits`, and `next_sentence_label` adds the NSP term to the loss.
`hidden_states` gives the encoder's output (B, T, C), what Hugging Face's `BertModel` returns
as `last_hidden_state` (e.g. for sentence embeddings from a checkpoint without its heads).

DistilBERT (Sanh et al. 2019, "DistilBERT, a distilled version of BERT", arXiv 1910.01108) is
this network with half the layers, no token-type table (`type_vocab_size=0`) and no pooler or
NSP head; its folders load into it (zoo.convert.bert).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.layers import ACTIVATIONS, FeedForward, MultiHeadAttention, bert_init, tied_head
from zoo.model import Output, ZooModel, check_config

INIT_STD = 0.02  # BERT's initializer_range


@dataclass(frozen=True)
class BertConfig:
    """Defaults are BERT-Base (uncased): L=12, H=768, A=12, WordPiece vocabulary of 30522."""

    vocab_size: int = 30522
    max_position_embeddings: int = 512  # rows of the learned position table
    type_vocab_size: int = 2  # segment A / segment B; 0: no token-type table (DistilBERT)
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    d_ff: int = 3072
    activation: str = "gelu"  # feed-forward and MLM head: a key of zoo.layers.ACTIVATIONS
    dropout: float = 0.1  # embeddings and both residual branches
    attn_dropout: float = 0.1  # on the attention probabilities
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0  # [PAD]; its word-embedding row starts at zero and gets no gradient
    next_sentence_head: bool = True  # pooler + NSP classifier (False: BertForMaskedLM's layout)

    def __post_init__(self) -> None:
        check_config(self)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of "
                             f"{', '.join(ACTIVATIONS)}")

    @property
    def max_seq_len(self) -> int:
        """The longest input the position table covers."""
        return self.max_position_embeddings


class BertEmbeddings(nn.Module):
    """word + position + token type (where the model has token types) -> LayerNorm -> dropout,
    `width` wide (default d_model)."""

    def __init__(self, config: BertConfig, width: int | None = None):
        super().__init__()
        self.config = config
        d = width or config.d_model
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, d)
        self.token_type_embeddings = (nn.Embedding(config.type_vocab_size, d)
                                      if config.type_vocab_size else None)
        self.ln = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """0, 1, ..., T-1 for every sequence, padding or not."""
        return torch.arange(input_ids.size(1), device=input_ids.device)[None, :]  # (1, T)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
        if input_ids.size(1) > self.config.max_seq_len:
            raise ValueError(f"sequence length {input_ids.size(1)} exceeds the "
                             f"{self.config.max_seq_len} positions this model has")
        x = (self.word_embeddings(input_ids)
             + self.position_embeddings(self.position_ids(input_ids)))  # (B, T, C)
        if self.token_type_embeddings is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)  # everything is segment A
            x = x + self.token_type_embeddings(token_type_ids)
        elif token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("this model has no token types (type_vocab_size 0); "
                             "give no token_type_ids, or all zeros")
        return self.dropout(self.ln(x))


class Block(nn.Module):
    """One post-LN encoder layer, as in the original Transformer."""

    def __init__(self, config: BertConfig):
        super().__init__()
        d, eps = config.d_model, config.layer_norm_eps
        self.attn = MultiHeadAttention(d, config.n_head, bias=True, dropout=config.attn_dropout)
        self.ln_attn = nn.LayerNorm(d, eps=eps)
        self.ffn = FeedForward(d, config.d_ff, activation=config.activation)
        self.ln_ffn = nn.LayerNorm(d, eps=eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        # Post-LN: the residual sum is normalised, so the stream never grows unnormalised.
        x = self.ln_attn(x + self.dropout(self.attn(x, attn_mask=attn_mask)))  # bidirectional
        x = self.ln_ffn(x + self.dropout(self.ffn(x)))
        return x


class MaskedLMHead(nn.Module):
    """Dense -> GELU -> LayerNorm -> decoder. The decoder's weight is the word-embedding table
    (tied: `tie` makes it so, once the model is initialised); only its bias belongs to the head,
    and the decoder shares it (as Hugging Face's `cls.predictions.decoder.bias`). The Dense
    maps d_model to the embeddings' `width` (default d_model)."""

    def __init__(self, config: BertConfig, width: int | None = None):
        super().__init__()
        width = width or config.d_model
        self.activation = config.activation  # the feed-forward's: exact GELU in BERT
        self.dense = nn.Linear(config.d_model, width)
        self.ln = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.decoder: nn.Linear | None = None

    def tie(self, word_embeddings: nn.Embedding) -> None:
        self.decoder = tied_head(word_embeddings, self.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = self.ln(ACTIVATIONS[self.activation](self.dense(h)))
        return self.decoder(h)  # (B, T, V)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) with 1 for real tokens and 0 for padding -> a bool (B, 1, 1, T) key mask that
    broadcasts over heads and queries. Padded queries still attend to the real tokens (their
    outputs are ignored downstream), so only an all-padding sequence has a fully masked row."""
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class Bert(ZooModel):
    config_class = BertConfig
    position_table = "max_position_embeddings"
    head_keys = ("lm_head.", "pooler.", "nsp_head.")  # the masked-LM head; the NSP head
    embeddings_class = BertEmbeddings  # RoBERTa swaps in its own position ids

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = self.embeddings_class(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.lm_head = MaskedLMHead(config)
        if config.next_sentence_head:
            self.pooler = nn.Linear(config.d_model, config.d_model)  # tanh(Dense(h[CLS]))
            self.nsp_head = nn.Linear(config.d_model, 2)  # 0 = B follows A, 1 = B is random
        self.apply(self._init_weights)
        self.lm_head.tie(self.embeddings.word_embeddings)  # after the init: see tied_head

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        bert_init(module, std=INIT_STD)
        if isinstance(module, MaskedLMHead):
            nn.init.zeros_(module.bias)

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states (B, T, C) of `input_ids` (B, T): the last block's output, before
        the masked-LM head's transform (Hugging Face's BertModel). `attention_mask` (B, T) is 1
        for tokens and 0 for padding."""
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, C)
        mask = padding_mask(attention_mask)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                next_sentence_label: torch.Tensor | None = None) -> Output:
        """Masked-LM logits (B, T, V). With `targets` (original ids at masked positions, -100
        elsewhere) the loss is their mean cross-entropy; `next_sentence_label` (B,) then adds
        BERT's NSP cross-entropy, as in pretraining (it is ignored without `targets`, as
        `BertForPreTraining` needs both labels for its loss)."""
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        logits = self.logits(h)
        loss = None
        if targets is not None:
            loss = self.lm_loss(logits, targets)
            if next_sentence_label is not None:
                nsp_logits = self.next_sentence_logits(h)
                loss = loss + F.cross_entropy(nsp_logits.float(), next_sentence_label.flatten())
        return Output(logits=logits, loss=loss)

    def next_sentence_logits(self, h: torch.Tensor) -> torch.Tensor:
        """NSP logits (B, 2) from the final hidden states (B, T, C): a 2-way classifier on the
        pooled [CLS] vector (ALBERT's sentence order, through `pair_logits`)."""
        if not self.config.next_sentence_head:
            raise ValueError(f"this model was built without the pooler and {self.pair_task} "
                             "head (config.next_sentence_head is False)")
        pooled = torch.tanh(self.pooler(h[:, 0]))  # (B, C)
        return self.pair_logits(pooled)

    pair_task = "next-sentence"  # what the sentence-pair classifier predicts

    def pair_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """The sentence-pair classifier on the pooled [CLS] vector (B, C): (B, 2)."""
        return self.nsp_head(pooled)

    def pretraining_logits(self, input_ids: torch.Tensor,
                           attention_mask: torch.Tensor | None = None,
                           token_type_ids: torch.Tensor | None = None,
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both pretraining outputs from one pass: masked-LM logits (B, T, V) and NSP logits
        (B, 2) (Hugging Face's `prediction_logits` and `seq_relationship_logits`)."""
        h = self.hidden_states(input_ids, attention_mask, token_type_ids)
        return self.logits(h), self.next_sentence_logits(h)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random sentence pairs; segment B covers the second half of the real tokens (token
        types only where the model has them). With `padded`, sequence b has T - b*T//(2B) real
        tokens (the first one is full length), then padding, and an attention mask; otherwise
        every token is real and there is no mask.
        With the NSP head, random NSP labels too (used only when `targets` are given)."""
        ids, mask = random_padded_ids(batch, seqlen, self.config.vocab_size,
                                      self.config.pad_token_id, device, padded)
        half = mask.sum(dim=1, keepdim=True) // 2  # (B, 1)
        second = torch.arange(seqlen, device=device)[None, :] >= half  # (B, T)
        token_type_ids = (second & mask.bool()).long()
        inputs = {"input_ids": ids}
        if self.config.type_vocab_size:
            inputs["token_type_ids"] = token_type_ids
        if padded:
            inputs["attention_mask"] = mask
        if self.config.next_sentence_head:
            inputs["next_sentence_label"] = torch.randint(0, 2, (batch,), device=device)
        return inputs

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per token of `forward` (the masked-LM logits):
        2 * (n_layer * (4 d^2 + 2 d d_ff) + d^2 + V d)   weight matmuls: Q, K, V, output
                                                          projections, FFN, MLM dense, decoder
        + 4 * n_layer * d * T                             bidirectional attention scores and
                                                          weighted sum over T keys.
        The pooler and NSP classifier run once per sequence and only for the NSP loss
        (2 (d^2 + 2d) / T per token), so they are left out."""
        c = self.config
        d = c.d_model
        matmul_weights = c.n_layer * (4 * d * d + 2 * d * c.d_ff) + d * d + c.vocab_size * d
        return 2.0 * matmul_weights + 4.0 * c.n_layer * d * seqlen


def random_padded_ids(batch: int, seqlen: int, vocab_size: int, pad_token_id: int,
                      device: torch.device | str, padded: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random non-pad token ids (B, T) whose tails are padding, and the matching 0/1 mask:
    sequence b keeps T - b*T//(2B) real tokens (all T when not `padded`)."""
    ids = torch.randint(0, vocab_size - 1, (batch, seqlen), device=device)
    ids = ids + (ids >= pad_token_id).long()  # skip the pad id: real tokens never look like pads
    lengths = seqlen - torch.arange(batch, device=device) * seqlen // (2 * batch)  # (B,)
    if not padded:
        lengths = torch.full_like(lengths, seqlen)
    mask = (torch.arange(seqlen, device=device)[None, :] < lengths[:, None]).long()  # (B, T)
    return ids.masked_fill(mask == 0, pad_token_id), mask
