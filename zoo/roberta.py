"""RoBERTa: BERT's architecture, trained better (Liu et al. 2019, "RoBERTa: A Robustly
Optimized BERT Pretraining Approach", arXiv 1907.11692).

The encoder, blocks and masked-LM head are BERT's (zoo/bert.py); only these change:
  - position ids come from the input ids, as in fairseq: with mask = (ids != pad),
    pos = cumsum(mask) * mask + pad_token_id, so real tokens take positions pad+1, pad+2, ...
    (counting real tokens only) and padding takes position `pad_token_id`, whose row is a
    padding row (zero at init, no gradient). Hence 514 = 512 + 2 position rows;
  - one token type only (no segment pairs), since there is no next-sentence objective: no
    pooler and no NSP head;
  - byte-level BPE vocabulary of 50265 tokens, pad id 1, LayerNorm eps 1e-5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.bert import Bert, BertConfig, BertEmbeddings, random_padded_ids


@dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """Defaults are RoBERTa-base (the BERT-Base shape)."""

    vocab_size: int = 50265
    max_position_embeddings: int = 514  # 512 positions after the pad_token_id + 1 offset
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1  # <pad>; <s> = 0, </s> = 2
    next_sentence_head: bool = False

    @property
    def max_seq_len(self) -> int:
        return self.max_position_embeddings - self.pad_token_id - 1


class RobertaEmbeddings(BertEmbeddings):
    def __init__(self, config: RobertaConfig):
        super().__init__(config)
        # Padding tokens look up row `pad_token_id`: a padding row, like the word embeddings'.
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.d_model,
                                                padding_idx=config.pad_token_id)

    def position_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        """fairseq's make_positions: count real tokens, offset past the pad id."""
        mask = (input_ids != self.config.pad_token_id).long()  # (B, T)
        return torch.cumsum(mask, dim=1) * mask + self.config.pad_token_id  # (B, T)


class Roberta(Bert):
    config_class = RobertaConfig
    embeddings_class = RobertaEmbeddings

    def dummy_inputs(self, batch: int, seqlen: int, device: torch.device | str = "cpu",
                     padded: bool = False) -> dict:
        """Random ids; with `padded`, padding (pad id 1) at the tail of every sequence but the
        first, and the matching mask. No token types (RoBERTa has one)."""
        ids, mask = random_padded_ids(batch, seqlen, self.config.vocab_size,
                                      self.config.pad_token_id, device, padded)
        return {"input_ids": ids, "attention_mask": mask} if padded else {"input_ids": ids}
