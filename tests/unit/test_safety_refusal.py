"""The refusal classifier: held-out accuracy on the project's answers, not string matching alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from affinage.errors import DataError
from affinage.safety.refusal import (
    JudgeRefusalClassifier,
    NgramRefusalClassifier,
    RefusalConfig,
    RefusalDetector,
    cue_features,
    default_refusal_classifier,
)
from affinage.safety.refusal_data import REFUSAL_EXAMPLES

ROOT = Path(__file__).resolve().parents[2]
SAFETY = ROOT / "examples" / "data" / "safety"


def held_out_answers() -> tuple[list[str], list[bool]]:
    """The example data's refusals and non-refusals: written apart from the built-in training set."""
    texts, labels = [], []
    for path in sorted((SAFETY / "answers").glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        texts += data["refusals"]
        labels += [True] * len(data["refusals"])
        for answers in [*data["compliance"].values(), data.get("compliance_generic", [])]:
            texts += answers
            labels += [False] * len(answers)
    for path in sorted((SAFETY / "prompts").glob("b*_*.jsonl")):  # borderline and benign answers
        for line in path.read_text(encoding="utf-8").splitlines():
            texts.append(json.loads(line)["answer"])
            labels.append(False)
    return texts, labels


def test_held_out_precision_and_recall():
    texts, labels = held_out_answers()
    assert not set(texts) & {t for _, t, _ in REFUSAL_EXAMPLES}  # truly held out
    predicted = default_refusal_classifier().is_refusal(texts)
    tp = sum(p and g for p, g in zip(predicted, labels, strict=True))
    fp = sum(p and not g for p, g in zip(predicted, labels, strict=True))
    fn = sum(g and not p for p, g in zip(predicted, labels, strict=True))
    # Measured 0.984 / 0.920 (184 of 200 refusals, 3 false alarms among 1,280 other answers, 5 languages).
    assert tp / (tp + fp) >= 0.9 and tp / (tp + fn) >= 0.9


def test_not_string_matching_alone():
    clf = default_refusal_classifier()
    # Cue words inside helpful answers do not make a refusal; a refusal without the usual cues does.
    helpful = "I cannot find a bug in your code; the loop runs 10 times and prints 0 to 9."
    refusal = "That is not something I will do."
    s_helpful, s_refusal = clf.scores([helpful, refusal])
    assert s_helpful < 0.5 < s_refusal
    assert cue_features(helpful)[0] == 1.0  # the decline cue fired, and was outweighed


def test_fit_save_load_round_trip(tmp_path):
    clf = NgramRefusalClassifier.fit(["I can't help with that.", "Sure, here it is: 42."], [True, False], steps=50)
    path = tmp_path / "refusal.json"
    clf.save(path)
    again = NgramRefusalClassifier.load(path)
    texts = ["Sorry, I can't.", "Here is the recipe."]
    assert again.scores(texts) == pytest.approx(clf.scores(texts))
    with pytest.raises(DataError, match="refusals and non-refusals"):
        NgramRefusalClassifier.fit(["a", "b"], [True, True])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a refusal classifier"):
        NgramRefusalClassifier.load(tmp_path / "bad.json")


def test_detector_with_extra_training_rows(tmp_path):
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"response": "Computer says no.", "refusal": True}) + "\n")
    detector = RefusalDetector(RefusalConfig(train=[str(extra)]))
    assert detector.detect(["q"], ["Computer says no."]) == [True]
    extra.write_text(json.dumps({"response": "x"}) + "\n")
    with pytest.raises(DataError, match='"refusal"'):
        RefusalDetector(RefusalConfig(train=[str(extra)]))


def test_judge_score_is_the_softmax_of_yes_against_no(tiny_model, tiny_tokenizer):
    judge = JudgeRefusalClassifier(tiny_model, tiny_tokenizer)
    # Byte-level: " no" / " yes" part at 'n' / 'y' after "Answer: ".
    assert (judge.no_id, judge.yes_id) == (tiny_tokenizer.convert_tokens_to_ids("n"), tiny_tokenizer.convert_tokens_to_ids("y"))
    [score] = judge.scores_for(["q"], ["I won't."])
    conv_text = "User: q\nAgent: I won't."
    text = tiny_tokenizer.apply_chat_template(
        [{"role": "user", "content": judge.PROMPT.format(conversation=conv_text)}], tokenize=False, add_generation_prompt=True)
    ids = tiny_tokenizer(text + "Answer: ", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = tiny_model(ids).logits[0, -1]
    expected = torch.softmax(torch.stack([logits[judge.yes_id], logits[judge.no_id]]), 0)[0].item()
    assert score == pytest.approx(expected, rel=1e-5)
