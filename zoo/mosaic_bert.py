"""MosaicBERT: Portes et al. 2023, "MosaicBERT: A Bidirectional Encoder Optimized for Fast
Pretraining" (arXiv 2312.17482); reference code mosaicml/examples, benchmarks/bert/src.

A BERT encoder (post-LN layers, exact GELU, LayerNorm eps 1e-12, MLM head tied to the word
embeddings) with these differences from BERT:
  - no position embeddings: every attention head adds a symmetric ALiBi bias
    -slope_h * |i - j| to its scores (Press et al.'s slopes), so there is no maximum length;
  - the feed-forward layer is a GeGLU: GELU(x W_gate) * (x W_lin), no bias on that projection;
  - padding tokens are removed before the layers run ("unpadding"): the real tokens of a batch
    are packed into one (nnz, C) tensor, every per-token op (embeddings, LayerNorms, GeGLU,
    MLM head) runs on it, and only attention re-pads to (B, T, C). Outputs are scattered back
    into zeros, so padded positions read exactly 0;
  - vocabulary 30528 (bert-base-uncased's 30522 padded to a multiple of 64), no NSP head, no
    pooler in the masked-LM model (`pooler=True` adds BERT's for classification).
Attention is the shared MultiHeadAttention's (same q/k/v/out weights) with ALiBi + padding as an
additive float mask, computed in blocks of query rows so that the (n_head, T, T) bias is never
built whole (see AlibiAttention); the reference fuses the q/k/v projections into one Wqkv (same
parameters) and runs them on packed tokens, whereas here q/k/v/out run on the re-padded
(B, T, C) tensor, so only the attention sub-layer pays for padding. The reference's
FlashAttention/Triton kernels are a speed detail.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.layers import MultiHeadAttention, alibi_slopes, bert_init
from zoo.model import Output, ZooModel, check_config


@dataclass(frozen=True)
class MosaicBertConfig:
    vocab_size: int = 30528  # 30522 WordPiece ids padded to a multiple of 64
    type_vocab_size: int = 2
    pad_token_id: int = 0
    n_layer: int = 12
    d_model: int = 768
    n_head: int = 12
    d_ff: int = 3072  # GeGLU intermediate size I (the gate projection is d_model x 2I)
    dropout: float = 0.1  # embeddings and residual branches (BERT's hidden_dropout_prob)
    attn_dropout: float = 0.0  # MosaicBERT trains without attention dropout
    layer_norm_eps: float = 1e-12
    init_std: float = 0.02
    pooler: bool = False  # BertForMaskedLM has none; True adds BERT's tanh pooler
    unpad: bool = True  # run per-token ops on the packed real tokens (forward can override)

    def __post_init__(self) -> None:
        check_config(self)


def alibi_bias(n_head: int, seqlen: int, device=None, dtype=None) -> torch.Tensor:
    """Symmetric ALiBi for a bidirectional encoder: bias[h, i, j] = -slope_h * |i - j|.
    Returns (n_head, T, T)."""
    slopes = torch.tensor(alibi_slopes(n_head), device=device, dtype=torch.float32)
    return alibi_rows(slopes, 0, seqlen, seqlen).to(dtype or torch.float32)


def alibi_rows(slopes: torch.Tensor, start: int, end: int, seqlen: int) -> torch.Tensor:
    """Query rows start..end-1 of the ALiBi bias for `slopes` (n_head,): (n_head, end - start, T)
    float32, equal to those rows of alibi_bias."""
    pos = torch.arange(seqlen, device=slopes.device)
    distance = (pos[None, :] - pos[start:end, None]).abs().float()  # (rows, T)
    return -slopes[:, None, None] * distance


def padding_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """The reference's padding term, (1 - mask) * -10000 on padded keys: (B, 1, 1, T), or None
    without a mask."""
    if attention_mask is None:
        return None
    return ((1.0 - attention_mask.to(dtype)) * -10000.0)[:, None, None, :]


# The chunked attention picks its number of query rows per chunk so that one chunk's bias,
# (B or 1, n_head, rows, T) at 4 bytes an entry, stays within ATTN_CHUNK_BYTES; rows are a
# multiple of MIN_ATTN_CHUNK and at least that many (so at very long T a chunk may exceed it).
ATTN_CHUNK_BYTES = 64 * 2**20
MIN_ATTN_CHUNK = 64


def attention_chunk_size(seqlen: int, n_head: int, batch: int = 1) -> int:
    """Query rows per attention chunk; `batch` is 1 when there is no padding (the bias is then
    shared by the whole batch)."""
    rows = ATTN_CHUNK_BYTES // (4 * n_head * seqlen * batch)
    rows = max(MIN_ATTN_CHUNK, rows // MIN_ATTN_CHUNK * MIN_ATTN_CHUNK)
    return min(rows, seqlen)


class AlibiBias:
    """One forward's attention bias, ALiBi + padding, handed out a block of query rows at a time:
    rows(s, e) is (B or 1, n_head, e - s, T), the same values as rows s..e-1 of
    MosaicBert.attention_bias. When a single chunk covers every query it is built once and shared
    by all layers, as the full bias was; otherwise every chunk is built anew when needed."""

    def __init__(self, n_head: int, seqlen: int, padding: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device, chunk_size: int | None = None):
        self.slopes = torch.tensor(alibi_slopes(n_head), device=device, dtype=torch.float32)
        self.seqlen, self.padding, self.dtype = seqlen, padding, dtype
        batch = 1 if padding is None else padding.size(0)
        self.chunk_size = chunk_size or attention_chunk_size(seqlen, n_head, batch)
        self._whole: torch.Tensor | None = None

    def chunks(self) -> list[tuple[int, int]]:
        """The [start, end) query ranges; the last may be shorter."""
        T, c = self.seqlen, self.chunk_size
        return [(s, min(s + c, T)) for s in range(0, T, c)]

    def rows(self, start: int, end: int) -> torch.Tensor:
        whole = start == 0 and end == self.seqlen
        if whole and self._whole is not None:
            return self._whole
        bias = alibi_rows(self.slopes, start, end, self.seqlen).to(self.dtype)[None]
        if self.padding is not None:
            bias = bias + self.padding  # (B, nh, rows, T)
        if whole:
            self._whole = bias
        return bias


@dataclass
class Packing:
    """Where the real tokens of a padded (B, T) batch live in the packed (nnz, ...) tensor."""

    indices: torch.Tensor  # (nnz,) flat positions b * T + t of the tokens whose mask is 1
    batch: int
    seqlen: int

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor) -> Packing:
        indices = attention_mask.flatten().nonzero().squeeze(1)
        return cls(indices, *attention_mask.shape)

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, ...) -> (nnz, ...)."""
        return x.flatten(0, 1)[self.indices]

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        """(nnz, ...) -> (B, T, ...), zeros at padded positions."""
        full = x.new_zeros(self.batch * self.seqlen, *x.shape[1:])
        full.index_copy_(0, self.indices, x)  # in place: no clone of the zeros
        return full.view(self.batch, self.seqlen, *x.shape[1:])


class GeGLU(nn.Module):
    """The gated feed-forward layer: wo(Dropout(GELU(x W_gate) * (x W_lin))). One projection
    without bias produces both halves: the first d_ff columns are the gate."""

    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.d_ff = d_ff
        self.gated_layers = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.wo = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, linear = self.gated_layers(x).split(self.d_ff, dim=-1)  # (..., I) each
        return self.wo(self.dropout(F.gelu(gate) * linear))  # exact (erf) GELU


class AlibiAttention(MultiHeadAttention):
    """The shared MultiHeadAttention (same weights) with MosaicBERT's additive bias.

    Why chunks: an additive mask must be materialised for SDPA, and the whole ALiBi bias is
    (n_head, T, T), 2 GiB in float32 at T = 8192 with 8 heads (times B with padding). So q, k and v
    are projected once, and the queries are processed in blocks of rows [s, e), each with only
    its (B or 1, n_head, e - s, T) slice of the bias; the outputs go into one preallocated tensor.
    With a single chunk (short sequences) this is the plain computation. With several chunks and
    autograd on, each chunk is checkpointed: its bias (which SDPA's backward would keep) and
    attention weights are rebuilt in the backward pass, so nothing T x T outlives its chunk.
    Given a full bias tensor instead of an AlibiBias, it runs MultiHeadAttention's plain path."""

    def forward(self, x: torch.Tensor, attn_bias: AlibiBias | torch.Tensor) -> torch.Tensor:
        if isinstance(attn_bias, torch.Tensor):  # (B or 1, nh, T, T): the plain path
            return super().forward(x, attn_mask=attn_bias)
        B, T, C = x.shape
        q, k, v = (self._heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        dropout = self.dropout if self.training else 0.0
        chunks = attn_bias.chunks()
        recompute = len(chunks) > 1 and torch.is_grad_enabled()
        y = q.new_empty(B, T, C)  # heads already merged, as out_proj takes them
        for start, end in chunks:
            args = (q, k, v, attn_bias, start, end, dropout)
            y[:, start:end] = (checkpoint(self._attend, *args, use_reentrant=False) if recompute
                               else self._attend(*args))
        return self.out_proj(y)

    def _attend(self, q, k, v, attn_bias: AlibiBias, start: int, end: int,
                dropout: float) -> torch.Tensor:
        """Attention of queries start..end-1 over all keys: (B, end - start, C)."""
        y = self.attend(q[:, :, start:end], k, v, attn_bias.rows(start, end), dropout,
                        is_causal=False, new_key_length=False)  # (B, nh, r, hs)
        return y.transpose(1, 2).flatten(2)


class Block(nn.Module):
    """Post-LN layer as in BERT: x = LN(x + Dropout(Attn(x))); x = LN(x + GeGLU(x)).
    `x` is (B, T, C), or (nnz, C) with a `packing`, in which case only attention re-pads."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.attn = AlibiAttention(config.d_model, config.n_head, bias=True,
                                   dropout=config.attn_dropout)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.ln_attn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.ffn = GeGLU(config.d_model, config.d_ff, config.dropout)
        self.ln_ffn = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, attn_bias: AlibiBias | torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        """`attn_bias`: ALiBi + padding, built a chunk at a time (AlibiBias) or whole,
        (B or 1, nh, T, T)."""
        h = x if packing is None else packing.unpack(x)  # (B, T, C)
        h = self.attn(h, attn_bias)
        h = h if packing is None else packing.pack(h)
        x = self.ln_attn(x + self.attn_dropout(h))
        # The reference puts its dropout inside the GeGLU (before wo), none after it.
        x = self.ln_ffn(x + self.ffn(x))
        return x


class MosaicBert(ZooModel):
    config_class = MosaicBertConfig
    head_keys = ("head_dense.", "head_ln.", "lm_head.", "pooler.")

    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.config = config
        C = config.d_model
        self.wte = nn.Embedding(config.vocab_size, C, padding_idx=config.pad_token_id)
        self.wtt = nn.Embedding(config.type_vocab_size, C)  # token types; no position table
        self.ln_emb = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.drop_emb = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.pooler = nn.Linear(C, C) if config.pooler else None
        # MLM head: Dense -> GELU -> LN (eps fixed at 1e-12 in the reference) -> tied decoder.
        self.head_dense = nn.Linear(C, C)
        self.head_ln = nn.LayerNorm(C, eps=1e-12)
        self.lm_head = nn.Linear(C, config.vocab_size)  # weight tied below, own bias
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        with torch.no_grad():  # the tied decoder's init must not un-zero the padding row
            self.wte.weight[config.pad_token_id].zero_()
        # Attention in query chunks (AlibiAttention) by default; False builds the whole
        # (B or 1, nh, T, T) bias with attention_bias, as a reference for the chunked path.
        self.chunked_attention = True
        self.attn_chunk_size: int | None = None  # query rows per chunk; None: attention_chunk_size

    def _init_weights(self, module: nn.Module) -> None:
        bert_init(module, std=self.config.init_std)

    def attention_bias(self, attention_mask: torch.Tensor | None, seqlen: int,
                       dtype: torch.dtype) -> torch.Tensor:
        """The whole bias, ALiBi plus the reference's padding mask, (1 - mask) * -10000 on padded
        keys: (B, nh, T, T), or (1, nh, T, T) without a mask. Only the plain path
        (chunked_attention False) builds it."""
        device = self.wte.weight.device
        bias = alibi_bias(self.config.n_head, seqlen, device, dtype)[None]  # (1, nh, T, T)
        padding = padding_bias(attention_mask, dtype)
        return bias if padding is None else bias + padding  # (B, nh, T, T)

    def _packed_hidden_states(self, input_ids, attention_mask, token_type_ids, unpad):
        """Final hidden states, packed (nnz, C) with their Packing, or (B, T, C) with None."""
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        unpad = self.config.unpad if unpad is None else unpad
        packing = Packing.from_mask(attention_mask) if unpad and attention_mask is not None \
            else None
        if packing is not None:  # embed only the real tokens
            input_ids, token_type_ids = packing.pack(input_ids), packing.pack(token_type_ids)
        x = self.drop_emb(self.ln_emb(self.wte(input_ids) + self.wtt(token_type_ids)))
        if self.chunked_attention:
            attn_bias = AlibiBias(self.config.n_head, T, padding_bias(attention_mask, x.dtype),
                                  x.dtype, self.wte.weight.device, self.attn_chunk_size)
        else:
            attn_bias = self.attention_bias(attention_mask, T, x.dtype)
        for block in self.blocks:
            x = block(x, attn_bias, packing)
        return x, packing

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      token_type_ids: torch.Tensor | None = None,
                      unpad: bool | None = None) -> torch.Tensor:
        """The encoder's last hidden states (B, T, C), before the MLM head's transform; zeros at
        padded positions when unpadded."""
        x, packing = self._packed_hidden_states(input_ids, attention_mask, token_type_ids, unpad)
        return x if packing is None else packing.unpack(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The MLM head: Dense -> GELU (exact erf) -> LayerNorm -> the tied decoder, (..., V)."""
        return self.lm_head(self.head_ln(F.gelu(self.head_dense(hidden))))

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """BERT's pooler: tanh(Dense(h[:, 0])), (B, C). Needs `pooler=True`."""
        if self.pooler is None:
            raise ValueError("this MosaicBert has no pooler; build it with pooler=True")
        return torch.tanh(self.pooler(hidden[:, 0]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, targets: torch.Tensor | None = None,
                unpad: bool | None = None) -> Output:
        """MLM logits (B, T, V) for `input_ids` (B, T); `attention_mask` (B, T) is 1 on real
        tokens. `unpad` (default: the config's) packs the real tokens; their logits equal the
        padded computation's and padded positions' logits are 0. `targets` hold the original
        ids at masked positions and -100 elsewhere."""
        x, packing = self._packed_hidden_states(input_ids, attention_mask, token_type_ids, unpad)
        logits = self.logits(x)  # (nnz, V) or (B, T, V): the head runs on real tokens only
        if packing is not None:
            logits = packing.unpack(logits)
        loss = self.lm_loss(logits, targets) if targets is not None else None
        return Output(logits=logits, loss=loss)

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random ids; with `padded`, right padding: row b keeps seqlen - b * seqlen // (2 * batch)
        tokens (row 0 is full, the last about half-plus), so the unpadded path has work to skip."""
        lengths = torch.tensor([seqlen - (b * seqlen // (2 * batch) if padded else 0)
                                for b in range(batch)], device=device)
        attention_mask = (torch.arange(seqlen, device=device)[None] < lengths[:, None]).long()
        input_ids = torch.randint(1, self.config.vocab_size, (batch, seqlen), device=device)
        input_ids = input_ids.masked_fill(attention_mask == 0, self.config.pad_token_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def flops_per_token(self, seqlen: int) -> float:
        """Forward FLOPs per (real) token: 2 x the matrix-multiply weights, i.e. per layer
        q/k/v/out (4 d^2) and the GeGLU (2 d I + I d), plus the MLM head's dense (d^2) and the
        tied decoder (V d); plus bidirectional attention, 4 * n_layer * d * T (scores and
        weighted values over T keys). Embedding lookups, the pooler (once per sequence, when
        present) and elementwise ops are not counted."""
        c = self.config
        per_layer = 4 * c.d_model**2 + 3 * c.d_model * c.d_ff
        head = c.d_model**2 + c.vocab_size * c.d_model
        return 2.0 * (c.n_layer * per_layer + head) + 4.0 * c.n_layer * c.d_model * seqlen
