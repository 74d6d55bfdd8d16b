"""Quality heuristics (Gopher repetition measures, symbols, restated prompts) and token-length filters."""

from __future__ import annotations

import pytest

from affinage.curation.base import StepContext
from affinage.curation.lengths import Histogram, LengthMeter
from affinage.curation.quality import (
    LengthOptions,
    LengthStep,
    QualityOptions,
    QualityStep,
    duplicate_line_share,
    duplicate_ngram_share,
    restates,
    symbol_share,
    top_ngram_share,
)
from affinage.curation.record import Record


def _record(answer: str, question: str = "How do I list my jobs on the cluster?") -> Record:
    return Record("s", "f, row 1", [{"role": "user", "content": question}, {"role": "assistant", "content": answer}])


def test_duplicate_line_share_by_value():
    # Lines a, b, a, a: the 3rd and 4th repeat an earlier line -> 2 of 4.
    assert duplicate_line_share("a\nb\na\na") == pytest.approx(0.5)
    assert duplicate_line_share("one line") == 0.0


def test_top_ngram_share_by_value():
    words = "ab cd ab cd x".split()
    # 2-gram (ab, cd) occurs twice; it holds 4 characters each time: 8 of the 9 word characters.
    assert top_ngram_share(words, 2) == pytest.approx(8 / 9)
    assert top_ngram_share("a b c d".split(), 2) == 0.0  # no 2-gram repeats


def test_duplicate_ngram_share_by_value():
    words = "a b c d e a b c d e zz".split()
    # The 5-gram (a..e) occurs twice and covers the first ten words (10 characters of 12).
    assert duplicate_ngram_share(words, 5) == pytest.approx(10 / 12)


def test_symbol_share_and_restating():
    assert symbol_share("@@ ab") == pytest.approx(2 / 4)
    assert symbol_share("Hello, world!") == 0.0  # common punctuation is not a symbol
    assert restates("The maximum walltime?", "What is the maximum walltime?", 0.9)
    assert not restates("Seven days on the long partition.", "What is the maximum walltime?", 0.9)


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        ("Yes", "answer shorter than 2 words"),
        ("\n".join(["Please wait."] * 5), "repeated lines"),
        (" ".join(["run the job"] * 12), "repeated 2-gram"),
        ("@@@ ### $$$ %%% ^^^ &&& *** ~~~", "too many symbols"),
        ("How do I list my jobs on the cluster?", "answer restates the prompt"),
        ("Run `squeue -u $USER`; it lists your pending and running jobs with their state.", None),
        ("```\n{}();{}();{}();[][][]\n```\nThis code is fine: symbols inside code do not count.", None),
    ],
)
def test_quality_step(tmp_path, answer, reason):
    step = QualityStep(QualityOptions(), StepContext(tmp_path, LengthMeter()))
    assert step(_record(answer)) == reason


def test_length_step_counts_chat_tokens(tmp_path, tiny_tokenizer):
    # The tiny tokenizer has one token per byte: the ChatML rendering of the row is its token count.
    meter = LengthMeter(tiny_tokenizer)
    record = _record("Run squeue.", question="Jobs?")
    rendered = "<|im_start|>user\nJobs?<|im_end|>\n<|im_start|>assistant\nRun squeue.<|im_end|>\n"
    # Each special token is one token; every other character here is one byte, hence one token.
    specials = rendered.count("<|im_start|>") + rendered.count("<|im_end|>")
    expected = len(rendered.replace("<|im_start|>", "").replace("<|im_end|>", "")) + specials
    assert meter.measure(record) == expected
    step = LengthStep(LengthOptions(max_tokens=expected - 1), StepContext(tmp_path, meter))
    assert step(record) == f"longer than {expected - 1} tokens"
    step = LengthStep(LengthOptions(min_tokens=expected, max_tokens=expected, min_answer_tokens=12),
                      StepContext(tmp_path, meter))
    assert step(record) == "answer shorter than 12 tokens"  # "Run squeue." is 11 bytes


def test_histogram_bins():
    h = Histogram()
    for value in (0, 7, 8, 100, 20000):
        h.add(value)
    assert h.counts[0] == 2 and h.counts[1] == 1 and h.counts[4] == 1 and h.counts[-1] == 1  # 100 is in [64, 128)
    assert h.total == 5 and h.max == 20000 and h.mean == pytest.approx(20115 / 5)
