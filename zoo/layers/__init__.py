"""Primitives shared unchanged by at least two zoo models. Layers take plain numbers, never a
config."""

from zoo.layers.attention import (
    KVCache,
    MultiHeadAttention,
    Visibility,
    WindowKVCache,
    attend,
    causal_mask,
    causal_padding_mask,
    causal_sdpa,
    hidden_key_bias,
    key_padding_bias,
    math_attention,
    merge_masks,
    sdpa,
    window_mask,
    window_visibility,
)
from zoo.layers.conv import causal_depthwise_conv, new_token_mask
from zoo.layers.feedforward import ACTIVATIONS, FeedForward
from zoo.layers.heads import tied_head
from zoo.layers.init import bert_init
from zoo.layers.matrix_wkv import (
    head_group_norm,
    matrix_wkv_chunked,
    matrix_wkv_recurrent,
    run_matrix_wkv,
)
from zoo.layers.norms import RMSNorm
from zoo.layers.positions import (
    alibi_slopes,
    apply_rope,
    partial_rope,
    rope_frequencies,
    rope_tables,
    split_sinusoids,
)
from zoo.layers.rwkv_state import MatrixRWKVState
from zoo.layers.shift import token_shift

__all__ = ["ACTIVATIONS", "FeedForward", "KVCache", "MatrixRWKVState", "MultiHeadAttention",
           "RMSNorm", "Visibility", "WindowKVCache", "alibi_slopes", "apply_rope", "attend",
           "bert_init", "causal_depthwise_conv",
           "causal_mask", "causal_padding_mask", "causal_sdpa", "head_group_norm",
           "hidden_key_bias", "key_padding_bias", "math_attention", "matrix_wkv_chunked",
           "matrix_wkv_recurrent", "merge_masks", "new_token_mask", "partial_rope",
           "rope_frequencies", "rope_tables", "run_matrix_wkv", "sdpa", "tied_head",
           "token_shift", "window_mask", "window_visibility", "split_sinusoids"]
