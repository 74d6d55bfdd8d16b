"""Preference data: row validation, exclusions with counts, answer-only labels, the concatenated
collate, Llama 2 margins, KTO rows and their mismatched KL sequences."""

from __future__ import annotations

import json

import pytest
import torch

from affinage.data.preference import (
    EMPTY_ANSWER,
    EMPTY_COMPLETION,
    IDENTICAL,
    IDENTICAL_TRUNCATED,
    LLAMA2_MARGINS,
    NO_ANSWER_TOKEN,
    PreferenceDataConfig,
    PreferencePair,
    collate_pairs,
    collate_pairs_shared_prompt,
    collate_unpaired,
    load_preference_data,
    parse_pair,
    parse_unpaired,
    tokenize_pair,
)
from affinage.data.tokenize import IGNORE_INDEX
from affinage.errors import DataError


def write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def labelled_text(tokenizer, example):
    return tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------


def test_string_pair_with_strength_and_category():
    pair = parse_pair({"prompt": "hi", "chosen": "hello", "rejected": "go away", "strength": "Slightly-better",
                       "category": "helpfulness", "language": "en"}, "f, row 1")
    assert isinstance(pair, PreferencePair)
    assert pair.prompt == [{"role": "user", "content": "hi"}]
    assert pair.chosen == [{"role": "assistant", "content": "hello"}]
    assert pair.rejected == [{"role": "assistant", "content": "go away"}]
    assert pair.strength == "slightly_better" and pair.category == "helpfulness"
    assert pair.meta == {"language": "en"}


def test_multi_turn_prompt_and_message_answers():
    prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a"},
              {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    pair = parse_pair({"prompt": prompt, "chosen": [{"role": "assistant", "content": "good"}],
                       "rejected": [{"from": "gpt", "value": "bad"}]}, "w")
    assert pair.prompt == prompt
    assert pair.rejected == [{"role": "assistant", "content": "bad"}]


def test_implicit_prompt_is_the_shared_prefix():
    user = {"role": "user", "content": "q"}
    pair = parse_pair({"chosen": [user, {"role": "assistant", "content": "yes"}],
                       "rejected": [user, {"role": "assistant", "content": "no"}]}, "w")
    assert pair.prompt == [user]
    assert pair.chosen == [{"role": "assistant", "content": "yes"}]


def test_identical_and_empty_pairs_are_excluded_not_errors():
    assert parse_pair({"prompt": "x", "chosen": "same  answer", "rejected": " same answer "}, "w") == IDENTICAL
    assert parse_pair({"prompt": "x", "chosen": "", "rejected": "b"}, "w") == EMPTY_ANSWER
    assert parse_pair({"prompt": "x", "chosen": "a", "rejected": [{"role": "assistant", "content": "  "}]}, "w") == EMPTY_ANSWER


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "x", "chosen": "a"}, "'rejected' is missing"),
        ({"prompt": "x", "chosen": "a", "rejected": 3}, "must be a string"),
        ({"prompt": "x", "chosen": "a", "rejected": "b", "strength": "much better"}, "unknown strength 'much better'"),
        ({"prompt": "x", "chosen": "a", "rejected": "b", "margin": "big"}, "'margin' must be a number"),
        ({"chosen": "a", "rejected": "b"}, "missing key 'prompt'"),
        ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
          "chosen": "a", "rejected": "b"}, "ends with an assistant message"),
        ({"prompt": "x", "chosen": [{"role": "user", "content": "a"}], "rejected": "b"}, "role assistant"),
    ],
)
def test_malformed_rows_name_the_place(row, message):
    with pytest.raises(DataError, match=message) as info:
        parse_pair(row, "prefs.jsonl, row 7")
    assert "prefs.jsonl, row 7" in str(info.value)


def test_unpaired_rows():
    row = parse_unpaired({"prompt": "p", "completion": "c", "label": "false"}, "w")
    assert row.desirable is False and row.completion == [{"role": "assistant", "content": "c"}]
    assert parse_unpaired({"prompt": "p", "completion": " ", "label": True}, "w") == EMPTY_COMPLETION
    with pytest.raises(DataError, match="'label' must be true"):
        parse_unpaired({"prompt": "p", "completion": "c", "label": "maybe"}, "w")


# ----------------------------------------------------------------------------------------------
# Tokens
# ----------------------------------------------------------------------------------------------


def test_only_the_answer_is_labelled_even_after_earlier_assistant_turns(tiny_tokenizer):
    """The prompt's own assistant turn ("b") is context, not trained; the answer and its end of turn are."""
    pair = parse_pair({"prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                  {"role": "user", "content": "c"}], "chosen": "good", "rejected": "bad"}, "w")
    tp = tokenize_pair(tiny_tokenizer, pair, max_length=512, system_prompt="sys")
    assert labelled_text(tiny_tokenizer, tp.chosen) == "good<|im_end|>"
    assert labelled_text(tiny_tokenizer, tp.rejected) == "bad<|im_end|>"
    text = tiny_tokenizer.decode(tp.chosen.input_ids)
    assert text.startswith("<|im_start|>system\nsys<|im_end|>") and "assistant\nb<|im_end|>" in text


def test_truncation_exclusions(tiny_tokenizer):
    pair = parse_pair({"prompt": "p" * 30, "chosen": "same start, then A", "rejected": "same start, then B"}, "w")
    prompt_text = tiny_tokenizer.apply_chat_template(pair.prompt, tokenize=False, add_generation_prompt=True)
    prompt_tokens = len(tiny_tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    assert tokenize_pair(tiny_tokenizer, pair, max_length=prompt_tokens) == NO_ANSWER_TOKEN
    assert tokenize_pair(tiny_tokenizer, pair, max_length=prompt_tokens + 5) == IDENTICAL_TRUNCATED
    assert not isinstance(tokenize_pair(tiny_tokenizer, pair, max_length=200), str)


def test_collate_pairs_concatenates_chosen_then_rejected(tiny_tokenizer):
    pairs = [tokenize_pair(tiny_tokenizer, parse_pair({"prompt": f"q{i}", "chosen": "yes" * (i + 1), "rejected": "no"}, "w"),
                           max_length=256) for i in range(3)]
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 6
    for i, p in enumerate(pairs):
        for row, side in ((i, p.chosen), (i + 3, p.rejected)):
            n = len(side)
            assert batch["input_ids"][row, :n].tolist() == side.input_ids
            assert batch["attention_mask"][row].sum().item() == n
            assert (batch["labels"][row, n:] == IGNORE_INDEX).all()


def test_shared_prompt_collate_layout(tiny_tokenizer):
    """Row = chosen tokens + the rejected tokens after the shared prefix; positions restart at the
    prefix; rejected-only tokens see the prefix and themselves, never the chosen-only tokens; one
    target per answer token of each side, the first rejected-only one predicted from the prefix end."""
    pair = tokenize_pair(tiny_tokenizer, parse_pair({"prompt": "hi", "chosen": "yes please", "rejected": "yes no"}, "w"),
                         max_length=128)
    c, r = pair.chosen, pair.rejected
    shared = next(i for i, (a, b) in enumerate(zip(c.input_ids, r.input_ids, strict=False)) if a != b)
    batch = collate_pairs_shared_prompt([pair], tiny_tokenizer.pad_token_id)
    n_c, length = len(c), len(c) + len(r) - shared
    assert batch["input_ids"][0, :length].tolist() == c.input_ids + r.input_ids[shared:]
    assert batch["position_ids"][0, :length].tolist() == list(range(n_c)) + list(range(shared, len(r)))
    mask = batch["attention_mask"][0, 0]
    assert mask[n_c, : shared].all() and not mask[n_c, shared:n_c].any() and mask[n_c, n_c]
    assert mask[n_c - 1, : n_c].all() and not mask[n_c - 1, n_c:].any()  # chosen is plainly causal
    assert batch["chosen_weight"].sum().item() == c.num_trainable
    assert batch["rejected_weight"].sum().item() == r.num_trainable
    first_rejected_only = (batch["chosen_weight"] == 0).nonzero()[0].item()
    assert batch["predictor_col"][first_rejected_only].item() == shared - 1
    assert batch["target_ids"][first_rejected_only].item() == r.input_ids[shared]


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def test_load_counts_exclusions_and_splits(tmp_path, tiny_tokenizer):
    rows = [{"prompt": f"question {i}", "chosen": f"precise answer {i}", "rejected": f"vague {i}",
             "strength": "better", "category": "helpfulness" if i % 2 else "safety"} for i in range(40)]
    rows += [{"prompt": "x", "chosen": "same", "rejected": "same"}] * 3
    rows += [{"prompt": "x", "chosen": "", "rejected": "b"}] * 2
    path = write(tmp_path / "prefs.jsonl", rows)
    data = load_preference_data(PreferenceDataConfig(train=[str(path)], validation_fraction=0.25), tiny_tokenizer)
    assert data.kind == "pairs"
    assert data.report.dropped == {IDENTICAL: 3, EMPTY_ANSWER: 2}
    assert len(data.train) + len(data.validation) == 40
    assert 3 <= len(data.validation) <= 20  # a stable hash, not an exact quarter
    f = data.report.files[0]
    assert (f.rows, f.train, f.validation) == (45, len(data.train), len(data.validation))
    again = load_preference_data(PreferenceDataConfig(train=[str(path)], validation_fraction=0.25), tiny_tokenizer)
    assert [p.chosen.input_ids for p in again.validation] == [p.chosen.input_ids for p in data.validation]
    assert sum(data.counts_by("category").values()) == len(data.train)


def test_load_errors(tmp_path, tiny_tokenizer):
    sft = write(tmp_path / "sft.jsonl", [{"messages": [{"role": "user", "content": "a"}]}])
    with pytest.raises(DataError, match="not a preference row"):
        load_preference_data(PreferenceDataConfig(train=[str(sft)]), tiny_tokenizer)
    unpaired = write(tmp_path / "kto.jsonl", [{"prompt": "p", "completion": "c", "label": True}])
    with pytest.raises(DataError, match="only train with loss=kto"):
        load_preference_data(PreferenceDataConfig(train=[str(unpaired)]), tiny_tokenizer)
    mixed = write(tmp_path / "mixed.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"},
                                             {"prompt": "p", "completion": "c", "label": True}])
    with pytest.raises(DataError, match="mixed.jsonl, row 2"):
        load_preference_data(PreferenceDataConfig(train=[str(mixed)]), tiny_tokenizer, unpaired=True)
    only_bad = write(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "same", "rejected": "same"}])
    with pytest.raises(DataError, match="1 excluded: chosen and rejected answers are identical"):
        load_preference_data(PreferenceDataConfig(train=[str(only_bad)]), tiny_tokenizer)


def test_kto_from_pairs_and_unpaired_rows(tmp_path, tiny_tokenizer):
    pairs = write(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(3)])
    rows = write(tmp_path / "rows.jsonl", [{"prompt": "r", "completion": "fine", "label": True},
                                           {"prompt": "s", "completion": "nope", "label": 0}])
    data = load_preference_data(PreferenceDataConfig(train=[str(pairs), str(rows)]), tiny_tokenizer, unpaired=True)
    assert data.kind == "unpaired"
    assert [e.desirable for e in data.train] == [True, False] * 3 + [True, False]
    answers = [labelled_text(tiny_tokenizer, e.completion) for e in data.train]
    kl_answers = [labelled_text(tiny_tokenizer, e.kl) for e in data.train]
    # every KL sequence keeps its own prompt and takes another example's answer: a permutation
    # of the answers with no fixed point
    assert sorted(kl_answers) == sorted(answers)
    assert all(k != a for k, a in zip(kl_answers, answers, strict=True))
    for e in data.train:
        prompt_part = tiny_tokenizer.decode(e.completion.input_ids).split("<|im_start|>assistant")[0]
        assert tiny_tokenizer.decode(e.kl.input_ids).startswith(prompt_part)
    batch = collate_unpaired(data.train[:4], tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 8 and batch["desirable"].tolist() == [True, False, True, False]


def test_llama2_margins(tiny_tokenizer):
    """Table 28 of Llama 2: small 1, 2/3, 1/3, 0; large 3, 2, 1, 0. A numeric margin in the row wins."""
    assert list(LLAMA2_MARGINS["small"].values()) == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert list(LLAMA2_MARGINS["large"].values()) == [3, 2, 1, 0]
    pair = tokenize_pair(tiny_tokenizer, parse_pair({"prompt": "p", "chosen": "a", "rejected": "b", "strength": "unsure"}, "w"), max_length=64)
    assert pair.strength == "negligibly_better" and pair.margin_value("large") == 0.0
    pair.strength = "significantly_better"
    assert pair.margin_value("large") == 3.0 and pair.margin_value("none") == 0.0
    pair.margin = 0.25
    assert pair.margin_value("small") == 0.25


def test_csv_pairs(tmp_path, tiny_tokenizer):
    path = tmp_path / "prefs.csv"
    path.write_text('prompt,chosen,rejected,margin,strength\nhello,hi there,go away,0.5,better\n')
    data = load_preference_data(PreferenceDataConfig(train=[str(path)]), tiny_tokenizer)
    assert data.train[0].margin == 0.5 and data.train[0].strength == "better"
    assert torch.tensor(data.train[0].chosen.input_ids).numel() > 0
