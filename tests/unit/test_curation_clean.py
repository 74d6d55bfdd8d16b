"""Cleaning step: mojibake repaired, NFC, control characters, stray HTML and whitespace, code untouched."""

from __future__ import annotations

import unicodedata

import pytest

from affinage.curation.base import StepContext
from affinage.curation.clean import CleanOptions, CleanStep, normalize_whitespace, strip_html
from affinage.curation.lengths import LengthMeter
from affinage.curation.record import Record

pytest.importorskip("ftfy")


def _record(answer: str, question: str = "Question?") -> Record:
    return Record("s", "f, row 1", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


@pytest.fixture
def step(tmp_path):
    return CleanStep(CleanOptions(), StepContext(tmp_path, LengthMeter()))


def test_mojibake_is_repaired(step):
    # "été à Paris" encoded as UTF-8 and decoded as Windows-1252 gives "Ã©tÃ© Ã  Paris".
    broken = "été à Paris".encode().decode("cp1252")
    assert broken != "été à Paris"
    record = _record(f"Il fait beau en {broken}.")
    assert step(record) is None
    assert record.messages[1]["content"] == "Il fait beau en été à Paris."
    assert step.changes["unicode repaired"] == 1


def test_nfc_control_characters_and_whitespace(step):
    decomposed = unicodedata.normalize("NFD", "café")  # "cafe" + combining acute accent
    assert len(decomposed) == 5
    record = _record(f"Un {decomposed}\x07 au\u200b lait.  \r\n\r\n\r\n\r\nMerci   ")
    step(record)
    assert record.messages[1]["content"] == "Un café au lait.\n\nMerci"
    assert step.changes["control characters removed"] == 1
    assert step.changes["whitespace normalised"] == 1


def test_html_is_stripped_outside_code_only():
    text = "<p>Use <b>sacct</b>&amp;co.</p><br>Then run `echo '<div>'`:\n```html\n<p>kept</p>\n```"
    assert strip_html(text.split("Then")[0]) == "Use sacct&co.\n\n"  # </p> and <br> end lines
    from affinage.curation.record import map_prose

    cleaned = map_prose(text, strip_html)
    assert "`echo '<div>'`" in cleaned and "<p>kept</p>" in cleaned  # code keeps its tags
    assert "<b>" not in cleaned and "&amp;" not in cleaned


def test_placeholders_and_unknown_tags_survive():
    assert strip_html("Write to <EMAIL> about <jobid>") == "Write to <EMAIL> about <jobid>"


def test_indentation_is_kept():
    assert normalize_whitespace("  indented\n    more  \n") == "indented\n    more"


def test_row_left_empty_is_removed(step):
    assert step(_record("<br><p></p>  ")) == "empty after cleaning"
