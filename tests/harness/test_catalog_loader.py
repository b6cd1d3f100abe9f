"""Loading, validating and querying catalogs written to a temporary folder."""

from __future__ import annotations

import pytest
from conftest import valid_entry

from harness.catalog import (
    CatalogError,
    format_count,
    load_catalog,
    parse_count,
    sort_entries,
    task_name,
)


@pytest.mark.parametrize("text, count", [
    ("125M", 125_000_000), ("1.5B", 1_500_000_000), ("1.6T", 1_600_000_000_000),
    ("66m", 66_000_000), (340_000_000, 340_000_000), ("12K", 12_000), ("7", 7),
])
def test_parse_count(text, count):
    assert parse_count(text) == count


@pytest.mark.parametrize("bad", ["12X", "", "M", "-5M", 0, True, "1.5 billion"])
def test_parse_count_rejects(bad):
    with pytest.raises(ValueError):
        parse_count(bad)


@pytest.mark.parametrize("count, text", [
    (125_000_000, "125M"), (1_500_000_000, "1.5B"), (124_439_808, "124M"),
    (1_600_000_000_000, "1.6T"), (1_630_000_000, "1.63B"), (900, "900"), (None, ""),
])
def test_format_count(count, text):
    assert format_count(count) == text


def test_task_name_drops_the_qualifier():
    assert task_name("MLM (dynamic masking)") == "MLM"
    assert task_name("causal LM") == "causal LM"


def test_a_valid_catalog_loads_without_problems(write_catalog):
    catalog = load_catalog(write_catalog(gpt=valid_entry("gpt")))
    assert catalog.problems == ()
    assert sorted(catalog.ids()) == ["gpt", "transformer"]
    assert catalog.get("gpt").params[0].count == 100_000_000


def only_problem(catalog):
    assert len(catalog.problems) == 1, [str(p) for p in catalog.problems]
    return catalog.problems[0]


def test_malformed_yaml_names_file_and_line_and_the_rest_still_load(write_catalog):
    folder = write_catalog(gpt=valid_entry("gpt"), broken="id: broken\nname: [unclosed\n")
    catalog = load_catalog(folder)
    problem = only_problem(catalog)
    assert problem.file.name == "broken.yaml" and "invalid YAML" in problem.message
    assert "line" in problem.message
    assert sorted(catalog.ids()) == ["gpt", "transformer"]


@pytest.mark.parametrize("fields, field, says", [
    ({"date": "2019"}, "date", "YYYY-MM"),
    ({"date": "2019-13"}, "date", "YYYY-MM"),
    ({"architecture": "encoder/decoder"}, "architecture", "'encoder-decoder'"),
    ({"pretraining_task": ["MLLM"]}, "pretraining_task", "did you mean 'MLM'"),
    ({"pretraining_task": []}, "pretraining_task", "at least 1"),
    ({"params": [{"label": "base", "count": "12X"}]}, "params[0].count", "K/M/B/T"),
    ({"paper": {"title": "t", "url": "not a url"}}, "paper.url", "URL"),
    ({"colour": "red"}, "colour", "unknown field"),
    ({"id": "Bad Id"}, "id", "slug"),
])
def test_schema_errors_name_the_field_and_what_is_valid(write_catalog, fields, field, says):
    catalog = load_catalog(write_catalog(gpt=valid_entry("gpt", **fields)))
    problem = only_problem(catalog)
    assert (problem.file.name, problem.field) == ("gpt.yaml", field)
    assert says in problem.message
    assert catalog.ids() == ["transformer"]


def test_a_missing_field_is_reported(write_catalog):
    entry = valid_entry("gpt")
    del entry["lab"]
    problem = only_problem(load_catalog(write_catalog(gpt=entry)))
    assert (problem.field, problem.message) == ("lab", "missing (required)")


@pytest.mark.parametrize("text, says", [
    ("", "empty file"), ("- a\n- list\n", "found a list"), ("just text\n", "found a str")])
def test_files_that_are_not_mappings(write_catalog, text, says):
    problem = only_problem(load_catalog(write_catalog(odd=text)))
    assert problem.file.name == "odd.yaml" and says in problem.message


def test_a_file_that_is_not_utf8(write_catalog):
    folder = write_catalog()
    (folder / "binary.yaml").write_bytes(b"id: \xff\xfe\x00")
    problem = only_problem(load_catalog(folder))
    assert problem.file.name == "binary.yaml" and "not UTF-8" in problem.message


def test_id_must_match_the_file_name(write_catalog):
    problem = only_problem(load_catalog(write_catalog(gpt=valid_entry("gpt2"))))
    assert problem.field == "id" and "'gpt'" in problem.message


def test_cross_entry_checks(write_catalog):
    catalog = load_catalog(write_catalog(
        a=valid_entry("a", family="Bertt"),
        b=valid_entry("b", parent="nobody"),
        c=valid_entry("c", zoo="c"),
        d=valid_entry("d", zoo="d", variants={"big": {"params": "7B", "n_layer": 48}}),
    ))
    found = {(p.file.stem, p.field) for p in catalog.problems}
    assert found == {("a", "family"), ("b", "parent"), ("c", "variants"),
                     ("d", "variants.big.params")}
    # Cross-entry problems are reported, but the entries still load.
    assert len(catalog.entries) == 5
    assert catalog.get("d").variants["big"].config == {"n_layer": 48}


def test_missing_or_empty_folder_is_an_error(tmp_path):
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nowhere")
    with pytest.raises(CatalogError, match="no \\*.yaml files"):
        load_catalog(tmp_path)
    (tmp_path / "a.yaml").write_text("name: a\n")
    with pytest.raises(CatalogError, match="a.yaml is a file; give the folder"):
        load_catalog(tmp_path / "a.yaml")


@pytest.fixture
def small_catalog(write_catalog):
    return load_catalog(write_catalog(
        bert=valid_entry("bert", name="BERT", family="BERT", architecture="encoder", date="2018-10",
                         pretraining_task=["MLM", "NSP"], lab="Google",
                         params=[{"label": "base", "count": "110M"},
                                 {"label": "large", "count": "340M"}]),
        roberta=valid_entry("roberta", name="RoBERTa", family="BERT", parent="bert",
                            architecture="encoder", date="2019-07", lab="Facebook AI",
                            pretraining_task=["MLM (dynamic masking)"], zoo="roberta",
                            variants={"base": {"params": "125M"}},
                            params=[{"label": "base", "count": "125M"}],
                            application="Language understanding"),
        gpt=valid_entry("gpt", name="GPT", family="GPT", date="2018-06", lab="OpenAI",
                        params=[{"label": "gpt-1", "count": "117M"}]),
        t5=valid_entry("t5", name="T5", family="T5", architecture="encoder-decoder",
                       date="2019-10", pretraining_task=["DAE"], params=[],
                       extension="Text-to-text translation of every task"),
    ))


def ids(entries):
    return sorted(e.id for e in entries)


def test_family_matches_architecture_or_lineage_case_insensitively(small_catalog):
    assert ids(small_catalog.select(family="decoder")) == ["gpt"]
    assert ids(small_catalog.select(family="ENCODER")) == ["bert", "roberta"]
    assert ids(small_catalog.select(family="Encoder/Decoder")) == ["t5", "transformer"]
    assert ids(small_catalog.select(family="bert")) == ["bert", "roberta"]
    with pytest.raises(CatalogError, match="unknown family or architecture 'Bertt'.*'BERT'"):
        small_catalog.select(family="Bertt")


def test_other_filters(small_catalog):
    assert ids(small_catalog.select(task="mlm")) == ["bert", "roberta"]
    assert ids(small_catalog.select(task="NSP")) == ["bert"]
    assert ids(small_catalog.select(lab="google")) == ["bert"]
    assert ids(small_catalog.select(since=2019)) == ["roberta", "t5"]
    assert ids(small_catalog.select(until=2017)) == ["transformer"]
    assert ids(small_catalog.select(since=2018, until=2018)) == ["bert", "gpt"]
    assert ids(small_catalog.select(runnable=True)) == ["roberta"]
    assert "roberta" not in ids(small_catalog.select(runnable=False))
    assert ids(small_catalog.select(query="translation text")) == ["t5"]
    assert ids(small_catalog.select(query="LANGUAGE understanding")) == ["roberta"]
    assert small_catalog.select(lab="nobody") == []


def test_bad_filter_values(small_catalog):
    with pytest.raises(CatalogError, match="unknown task 'MLLM'.*did you mean 'MLM'"):
        small_catalog.select(task="MLLM")
    with pytest.raises(CatalogError, match="--since 2021 is after --until 2019"):
        small_catalog.select(since=2021, until=2019)
    with pytest.raises(CatalogError, match="unknown sort key"):
        sort_entries(small_catalog.entries, "size")


def test_sorting(small_catalog):
    entries = small_catalog.entries
    assert [e.id for e in sort_entries(entries, "date")] == [
        "transformer", "gpt", "bert", "roberta", "t5"]
    assert [e.id for e in sort_entries(entries, "name")] == [
        "bert", "gpt", "roberta", "t5", "transformer"]
    # Largest first, unknown sizes last.
    assert [e.id for e in sort_entries(entries, "params")] == [
        "bert", "roberta", "gpt", "transformer", "t5"]
    assert [e.id for e in sort_entries(entries, "date", descending=True)][0] == "t5"


def test_get_by_id_or_name_and_suggestions(small_catalog):
    assert small_catalog.get("RoBERTa").id == "roberta"
    with pytest.raises(CatalogError, match="unknown model id 'robert'; did you mean roberta"):
        small_catalog.get("robert")


def test_lineage(small_catalog):
    roberta = small_catalog.get("roberta")
    assert small_catalog.family_root(roberta).id == "bert"
    assert [e.id for e in small_catalog.family_members(roberta)] == ["bert"]
    assert [e.id for e in small_catalog.ancestry(roberta)] == ["bert"]


def test_variant_lookup_across_entries_of_one_zoo_model(write_catalog):
    catalog = load_catalog(write_catalog(
        gpt=valid_entry("gpt", zoo="gpt", variants={"gpt-1": {"params": "100M", "n_layer": 12}}),
        gpt2=valid_entry("gpt2", zoo="gpt", variants={"small": {"n_layer": 4}}),
    ))
    assert catalog.problems == ()
    assert catalog.variant("gpt", "gpt-1").config == {"n_layer": 12}
    assert catalog.variant("gpt", "small").config == {"n_layer": 4}
    with pytest.raises(CatalogError, match="no variant 'smal'.*did you mean 'small'"):
        catalog.variant("gpt", "smal")
    with pytest.raises(CatalogError, match="no catalog entry runs zoo model 'bert'"):
        catalog.variant("bert", "small")


def test_variant_names_are_unique_per_zoo_model(write_catalog):
    catalog = load_catalog(write_catalog(
        a=valid_entry("a", zoo="gpt", variants={"small": {"n_layer": 4}}),
        b=valid_entry("b", zoo="gpt", variants={"small": {"n_layer": 6}}),
    ))
    problem = only_problem(catalog)
    assert (problem.file.stem, problem.field) == ("b", "variants.small")
    assert "unique" in problem.message
