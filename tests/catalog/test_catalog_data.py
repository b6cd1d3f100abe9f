"""The shipped catalog: every entry valid, every model of the paper present, key facts right."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from harness.catalog import TASKS, default_catalog_dir, load_catalog, task_name

CATALOG_DIR = Path(__file__).resolve().parents[2] / "catalog"

# The 77 models of Amatriain et al.'s May-2023 catalog, by our id.
AMATRIAIN_IDS = """
albert alexatm-20b alpaca alphafold anthropic-assistant bart bert big-bird blenderbot3 bloom
chatgpt chinchilla clip cm3 ctrl dall-e dall-e-2 deberta decision-transformer dialogpt distilbert
dq-bart dolly e5 electra ernie flamingo flan-t5 flan-palm galactica gato glam glide glm
global-context-vit gopher gophercite gpt gpt-2 gpt-3 gpt-3.5 gpt-j gpt-neo gpt-neox-20b htlm
imagen instructgpt instructor jurassic-1 lamda llama mbart megatron minerva mt-nlg
openassistant-llama opt palm pegasus pythia roberta seeker sparrow stable-diffusion
swin-transformer switch t0 t5 trajectory-transformer transformer-xl turing-nlg ul2 vicuna vit
wu-dao-2 xlm-roberta xlnet
""".split()
ADDED_IDS = ["transformer", "rwkv", "mosaicbert", "pangu-pi", "llama-2", "llama-3", "mistral",
             "mamba",
             "mamba2", "rwkv5", "rwkv6", "rwkv7"]
RUNNABLE = {"transformer": "transformer", "bert": "bert", "gpt": "gpt", "gpt-2": "gpt",
            "mamba": "mamba", "mamba2": "mamba2",
            "roberta": "roberta", "mosaicbert": "mosaic-bert", "rwkv": "rwkv",
            "rwkv5": "rwkv5", "rwkv6": "rwkv6", "rwkv7": "rwkv7", "pangu-pi": "pangu-pi",
            "llama": "llama", "llama-2": "llama", "llama-3": "llama", "mistral": "llama",
            "gpt-neox-20b": "gpt-neox", "pythia": "gpt-neox", "bloom": "bloom",
            "opt": "opt", "gpt-j": "gpt-j", "gpt-neo": "gpt-neo", "t5": "t5", "flan-t5": "t5",
            "bart": "bart", "albert": "albert", "mbart": "bart", "pegasus": "bart",
            "ctrl": "ctrl",
            # published checkpoints of these networks, under their own names
            "distilbert": "bert", "xlm-roberta": "roberta", "dialogpt": "gpt",
            "dolly": "gpt-neox", "vicuna": "llama", "t0": "t5", "e5": "bert",
            "alpaca": "llama"}


@pytest.fixture(scope="module")
def catalog():
    return load_catalog(CATALOG_DIR)


def test_the_package_finds_the_shipped_catalog():
    assert default_catalog_dir().resolve() == CATALOG_DIR


def test_every_entry_is_valid(catalog):
    assert [str(p) for p in catalog.problems] == []
    assert len(catalog.entries) == len(list(CATALOG_DIR.glob("*.yaml")))


@pytest.mark.parametrize("path", sorted(CATALOG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_file_name_is_the_id_and_tasks_are_known(path):
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert data["id"] == path.stem
    assert all(task_name(t) in TASKS for t in data["pretraining_task"])


def test_every_model_of_the_paper_and_our_additions_is_there(catalog):
    assert len(AMATRIAIN_IDS) == 77 and len(set(AMATRIAIN_IDS)) == 77
    assert sorted(catalog.ids()) == sorted(AMATRIAIN_IDS + ADDED_IDS)


def test_runnable_entries_name_their_zoo_implementation(catalog):
    runnable = {e.id: e.zoo for e in catalog.entries if e.runnable}
    assert runnable == RUNNABLE
    for entry_id in RUNNABLE:
        entry = catalog.get(entry_id)
        published = {p.count for p in entry.params}
        assert entry.variants and all(v.params is None or v.params in published
                                       for v in entry.variants.values())
        assert {"tiny", "small"} <= set(catalog.variant_names(RUNNABLE[entry_id]))


def test_every_family_resolves_to_a_root_or_a_known_group(catalog):
    groups = {"Control Transformers", "Diffusion", "SE(3) Transformer"}
    for entry in catalog.entries:
        assert catalog.family_root(entry) is not None or entry.family in groups, entry.id


def test_roberta_card_facts(catalog):
    roberta = catalog.get("roberta")
    assert (roberta.family, roberta.architecture, roberta.date) == ("BERT", "encoder", "2019-07")
    assert roberta.pretraining_task == ["MLM (dynamic masking)"]
    assert [p.count for p in roberta.params] == [125_000_000, 355_000_000]
    assert "Facebook AI" in roberta.lab
    assert roberta.paper.url == "https://arxiv.org/abs/1907.11692"


def test_errors_flagged_in_the_reference_are_corrected_and_noted(catalog):
    alphafold = catalog.get("alphafold")
    assert alphafold.date == "2021-07" and "ALBERT" in alphafold.notes
    assert alphafold.pretraining_task == ["protein structure prediction"]
    bert = catalog.get("bert")
    assert "BART" in bert.notes and "bidirectional" in bert.extension.lower()
    assert [p.count for p in bert.params] == [110_000_000, 340_000_000]  # printed "340MT"
    assert catalog.get("electra").date == "2020-03"
    assert catalog.get("gato").pretraining_task[0].startswith("LM")  # printed MLM
    assert catalog.get("cm3").parent == "htlm" and "HTML" in catalog.get("cm3").notes
    for entry_id in ("ctrl", "transformer-xl", "pythia"):  # blank fields in the paper
        assert catalog.get(entry_id).notes, entry_id


def test_fine_tuned_models_are_marked(catalog):
    fine_tuned = {e.id for e in catalog.entries if e.fine_tuned}
    assert {"alpaca", "dolly", "e5", "flan-t5", "flan-palm", "instructor", "t0",
            "vicuna", "openassistant-llama"} == fine_tuned
