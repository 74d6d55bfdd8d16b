"""The safety taxonomy: default coverage, MLCommons mapping, parsing of classifier output, files."""

from __future__ import annotations

from pathlib import Path

import pytest

from affinage.errors import ConfigError
from affinage.safety.taxonomy import MLCOMMONS_HAZARDS, Category, Taxonomy

ROOT = Path(__file__).resolve().parents[2]


def test_default_covers_the_required_categories_with_definitions_and_codes():
    tax = Taxonomy.default()
    assert tax.names == ["criminal", "hate", "violence", "self_harm", "child_sexual", "privacy", "expert_advice"]
    for c in tax.categories:
        assert len(c.definition) > 40 and c.mlcommons
        assert all(code in MLCOMMONS_HAZARDS for code in c.mlcommons)
    # Chemical, biological and cyber attacks belong to violence and weapons.
    assert {"chemical", "biological", "cyber"} <= set(tax.get("violence").definition.lower().replace(",", " ").split())
    # The Llama Guard 3 codes we rely on map back to the right category.
    assert tax.from_mlcommons("S9") == "violence"  # indiscriminate weapons
    assert tax.from_mlcommons("s11") == "self_harm"
    assert tax.from_mlcommons("S4") == "child_sexual"
    assert tax.from_mlcommons("S7") == "privacy"
    assert tax.from_mlcommons("S6") == "expert_advice"
    assert tax.from_mlcommons("S13") is None  # elections: not in the default taxonomy
    assert tax.to_mlcommons("hate") == ["S10", "S5"]
    assert len(MLCOMMONS_HAZARDS) == 14


def test_normalise_accepts_names_titles_and_codes():
    tax = Taxonomy.default()
    assert tax.normalise("Self-Harm") == "self_harm"
    assert tax.normalise("  self harm. ") == "self_harm"
    assert tax.normalise("Privacy violations") == "privacy"
    assert tax.normalise("S1") == "violence"
    assert tax.normalise("weather") is None
    assert tax.normalise("") is None


def test_parse_categories_in_order_of_appearance_without_partial_words():
    tax = Taxonomy.default()
    assert tax.parse_categories("unsafe\nviolence, S11") == ["violence", "self_harm"]
    assert tax.parse_categories("S10,S2") == ["hate", "criminal"]
    # 'hateful' and 'S12' (not mapped) are not matches; duplicates collapse.
    assert tax.parse_categories("hateful text S12") == []
    assert tax.parse_categories("privacy privacy S7") == ["privacy"]
    assert tax.parse_categories("Category: expert advice") == ["expert_advice"]


def test_subset_and_prompt_block():
    tax = Taxonomy.default().subset(["self_harm", "violence"])
    assert tax.names == ["violence", "self_harm"]  # the taxonomy's order is kept
    assert tax.prompt_block().splitlines()[0].startswith("- violence: Helping hurt")
    with pytest.raises(ConfigError, match="unknown safety category 'weapons'"):
        Taxonomy.default().subset(["weapons"])


def test_load_example_file_with_an_extra_category():
    tax = Taxonomy.load(ROOT / "examples" / "safety_taxonomy.yaml")
    assert tax.names[-1] == "elections"
    assert tax.from_mlcommons("S13") == "elections"
    assert Taxonomy.from_settings(str(ROOT / "examples" / "safety_taxonomy.yaml"), ["elections"]).names == ["elections"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("categories: []\n", "non-empty list"),
        ("categories:\n  - {name: Bad Name, definition: x}\n", "lowercase"),
        ("categories:\n  - {name: a, definition: x, mlcommons: [S99]}\n", "unknown MLCommons code"),
        ("categories:\n  - {name: a, definition: x}\n  - {name: a, definition: y}\n", "listed twice"),
        ("categories:\n  - {name: a, definition: x, colour: red}\n", "unknown key"),
        ("categories:\n  - {name: a}\n", "needs a definition"),
        ("other: 1\n", "one key, 'categories'"),
    ],
)
def test_bad_taxonomy_files_name_the_problem(tmp_path, text, message):
    path = tmp_path / "tax.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        Taxonomy.load(path)


def test_category_is_immutable_and_rows_round_trip():
    tax = Taxonomy.default()
    again = Taxonomy.from_rows(tax.to_rows())
    assert again == tax
    with pytest.raises(AttributeError):
        tax.categories[0].name = "x"  # type: ignore[misc]
    assert isinstance(tax.categories[0], Category)
