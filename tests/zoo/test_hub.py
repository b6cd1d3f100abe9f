"""Published checkpoints by hub id and by kind: `zoo.convert.resolve` (local paths as they are,
hub ids through huggingface_hub's cache, offline here: nothing touches the network),
`detect_model` (config.json's model_type or architectures; an official RWKV .pth's version) and
`read_shapes` (the tensors' shapes from the files' headers)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import one_line
from tiny_checkpoints import gpt2_folder, hub_cache_entry, offline_hub

import zoo
from zoo.convert import CheckpointError, detect_model, resolve
from zoo.convert.detect import read_shapes

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2") / "tiny-gpt2")


# ------------------------------------------------------------------------------------ resolve


def test_an_existing_path_is_returned_as_it_is(gpt2):
    assert resolve(gpt2) == gpt2 and resolve(str(gpt2)) == gpt2
    weights = gpt2 / "model.safetensors"
    assert resolve(str(weights)) == weights
    with pytest.raises(CheckpointError, match="a revision .* applies to hub ids"):
        resolve(gpt2, revision="main")


@pytest.mark.parametrize("given, message", [
    ("/no/such/folder", "/no/such/folder: no such file or folder"),
    ("./runs/missing", "./runs/missing: no such file or folder"),
    ("a/b/c", "a/b/c: no such file or folder"),  # two slashes: a path, never an id
    ("RWKV-4-169M.pth", "RWKV-4-169M.pth: no such file or folder"),
    ("gpt2!!", "gpt2!!: no such file or folder, and not a Hugging Face hub id"),
    ("owner/bad--name", "not a Hugging Face hub id"),
])
def test_a_missing_path_or_a_malformed_id_is_one_line(given, message):
    with pytest.raises(CheckpointError) as caught:
        resolve(given)
    assert message in one_line(caught)


@pytest.mark.parametrize("repo_id", ["gpt2", "someone/tiny-gpt2"])
def test_a_cached_hub_id_loads_offline_with_the_logits_of_its_folder(gpt2, tmp_path,
                                                                      monkeypatch, repo_id):
    cache = offline_hub(tmp_path, monkeypatch)
    snapshot = hub_cache_entry(cache, repo_id, gpt2, COMMIT)
    assert resolve(repo_id) == snapshot
    assert resolve(repo_id, revision=COMMIT) == snapshot
    by_id, by_folder = zoo.from_pretrained("gpt", repo_id), zoo.from_pretrained("gpt", gpt2)
    ids = torch.randint(0, by_folder.config.vocab_size, (2, 9))
    with torch.no_grad():
        assert torch.equal(by_id(ids).logits, by_folder(ids).logits)
    assert detect_model(repo_id) == "gpt"


def test_an_id_at_a_revision_reads_that_revisions_snapshot(gpt2, tmp_path, monkeypatch):
    """Pythia's intermediate checkpoints are branches (step1000, ...): `id@branch` reads that
    branch's snapshot, as revision= does, and the main one stays the id's."""
    cache = offline_hub(tmp_path, monkeypatch)
    main = hub_cache_entry(cache, "someone/tiny-gpt2", gpt2, COMMIT)
    other = gpt2_folder(tmp_path / "step3000", seed=1)
    step = hub_cache_entry(cache, "someone/tiny-gpt2", other, "f" * 40, ref="step3000")
    assert resolve("someone/tiny-gpt2") == main
    assert resolve("someone/tiny-gpt2@step3000") == step
    assert resolve("someone/tiny-gpt2", revision="step3000") == step
    assert resolve("someone/tiny-gpt2@step3000", revision="step3000") == step
    assert resolve(f"someone/tiny-gpt2@{COMMIT}") == main
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        at_step = zoo.from_pretrained("gpt", "someone/tiny-gpt2@step3000")(ids).logits
        assert torch.equal(at_step, zoo.from_pretrained("gpt", other)(ids).logits)
        assert not torch.equal(at_step, zoo.from_pretrained("gpt", gpt2)(ids).logits)
    assert detect_model("someone/tiny-gpt2@step3000") == "gpt"


@pytest.mark.parametrize("given, revision, message", [
    ("someone/tiny-gpt2@", None, "an id@revision needs both"),
    ("@step3000", None, "an id@revision needs both"),
    ("someone/tiny-gpt2@step1", "step2", "names revision 'step1', and 'step2' was asked for"),
    ("someone/tiny-gpt2@step9", None, "someone/tiny-gpt2: no such file or folder, and not in "
                                      "the Hugging Face cache"),
])
def test_a_bad_revision_is_one_line(gpt2, tmp_path, monkeypatch, given, revision, message):
    cache = offline_hub(tmp_path, monkeypatch)
    hub_cache_entry(cache, "someone/tiny-gpt2", gpt2, COMMIT)
    with pytest.raises(CheckpointError) as caught:
        resolve(given, revision)
    assert message in one_line(caught)


def test_an_id_not_in_the_cache_offline_says_where_it_looked_and_how_to_fetch_it(
        tmp_path, monkeypatch):
    cache = offline_hub(tmp_path, monkeypatch)
    with pytest.raises(CheckpointError) as caught:
        zoo.from_pretrained("gpt", "someone/not-cached")
    message = one_line(caught)
    for fragment in ("someone/not-cached: no such file or folder, and not in the Hugging Face "
                     "cache", str(cache),
                     "HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE=0", "hf download someone/not-cached"):
        assert fragment in message


# -------------------------------------------------------------------------------- detect_model


def write_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("config, name", [
    ({"model_type": "gpt2"}, "gpt"), ({"model_type": "openai-gpt"}, "gpt"),
    ({"model_type": "bert"}, "bert"), ({"model_type": "roberta"}, "roberta"),
    ({"model_type": "llama"}, "llama"), ({"model_type": "mistral"}, "llama"),
    ({"model_type": "mamba"}, "mamba"), ({"model_type": "mamba2"}, "mamba2"),
    ({"model_type": "rwkv"}, "rwkv"),
    ({"architectures": ["BertModel"]}, "bert"),  # old configs without model_type
    ({"architectures": ["GPT2LMHeadModel"]}, "gpt"),
    ({"architectures": ["Mamba2ForCausalLM"]}, "mamba2"),
    ({"architectures": ["MambaForCausalLM"]}, "mamba"),
])
def test_the_model_of_a_folder_is_read_from_its_config(tmp_path, config, name):
    assert detect_model(write_config(tmp_path / "ckpt", **config)) == name


@pytest.mark.parametrize("content, message", [
    (json.dumps({"model_type": "electra"}), "model_type 'electra' is not a model the zoo loads; "
                                           "supported: Hugging Face folders of gpt2"),
    (json.dumps({"architectures": ["ElectraForMaskedLM"]}),
     "architectures ElectraForMaskedLM is not a model the zoo loads"),
    (json.dumps({}), "no model_type nor architectures is not a model the zoo loads"),
    ("{not json", "invalid JSON"),
    (json.dumps(["a", "list"]), "not a JSON object (a list)"),
])
def test_an_unknown_or_garbage_config_is_one_line(tmp_path, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(CheckpointError) as caught:
        detect_model(tmp_path)
    assert message in one_line(caught)
    assert "rwkv7" in one_line(caught) or "JSON" in message


@pytest.mark.parametrize("name, to_official", [
    ("rwkv", "rwkv_to_official"), ("rwkv5", "rwkv5_to_official"),
    ("rwkv6", "rwkv6_to_official"), ("rwkv7", "rwkv7_to_official")])
def test_the_version_of_an_official_rwkv_file_is_read_off_its_keys(tmp_path, name, to_official):
    import zoo.convert
    from harness.models import build_variant

    state = getattr(zoo.convert, to_official)(build_variant(name, "tiny").state_dict())
    torch.save(state, tmp_path / "model.pth")
    assert detect_model(tmp_path / "model.pth") == name


def test_a_bare_file_that_is_not_rwkv_asks_for_the_model(gpt2, tmp_path):
    from safetensors.torch import load_file

    torch.save(load_file(gpt2 / "model.safetensors"), tmp_path / "weights.bin")
    with pytest.raises(CheckpointError) as caught:
        detect_model(tmp_path / "weights.bin")
    assert "recognised only as an official RWKV .pth; name the zoo model" in one_line(caught)


# --------------------------------------------------------------------------------- read_shapes


@pytest.mark.parametrize("layout", ["safetensors", "bin", "sharded"])
def test_shapes_come_from_the_headers_without_the_weights(tmp_path, layout):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2,
                                     n_head=2)
    model = transformers.GPT2LMHeadModel(config)
    options = {"safe_serialization": layout != "bin"}
    if layout == "sharded":
        options["max_shard_size"] = "20KB"
    model.save_pretrained(tmp_path, **options)
    config_dict, shapes, source = read_shapes(tmp_path)
    assert config_dict["model_type"] == "gpt2"
    assert source.name.endswith("index.json") == (layout == "sharded")
    state = model.state_dict()
    for key, tensor in shapes.items():
        assert tensor.is_meta and tensor.shape == state[key].shape, key
    assert set(shapes) >= {k for k in state if k != "lm_head.weight"}  # the tied head aside


def test_a_truncated_weights_file_is_one_line(gpt2, tmp_path):
    data = (gpt2 / "model.safetensors").read_bytes()
    for file in ("config.json", "vocab.json", "merges.txt"):
        (tmp_path / file).write_bytes((gpt2 / file).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    for read in (read_shapes, lambda p: zoo.from_pretrained("gpt", p)):
        with pytest.raises(CheckpointError) as caught:
            read(tmp_path)
        assert "model.safetensors: cannot read weights" in one_line(caught)
