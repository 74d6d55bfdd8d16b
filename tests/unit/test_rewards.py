"""Reward sources: functions by spec, reward models through the standard interface, weighted sums,
Llama 2's helpfulness/safety combination, the unfinished-answer penalty, errors that name the fix."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from affinage.errors import ConfigError, DataError, ModelError
from affinage.rewards import (
    FunctionReward,
    ModelReward,
    Rewards,
    RewardsConfig,
    RewardSourceConfig,
    Sample,
    llama2_combine,
    load_function,
)
from affinage.testing import make_tiny_tokenizer

FUNCS = '''
def length(prompt, completion):
    return len(completion)


def uses_row(prompt, completion, row):
    return 10.0 if row.get("answer") in completion else 0.0


def echo_prompt(prompt, completion):
    return float(len(prompt))


def bad(prompt, completion):
    return "high"


def nan(prompt, completion):
    return float("nan")
'''


@pytest.fixture
def funcs(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(FUNCS)
    return path


def samples():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]
    return [
        Sample(prompt, "4", {"answer": "4"}),
        Sample(prompt, "five", {"answer": "4"}, finished=False),
    ]


def test_function_rewards_by_file_path_with_and_without_row(funcs):
    assert FunctionReward(f"{funcs}:length", "length")(samples()) == [1.0, 4.0]
    assert FunctionReward(f"{funcs}:uses_row", "row")(samples()) == [10.0, 0.0]
    # the prompt handed to a function is the last user message
    assert FunctionReward(f"{funcs}:echo_prompt", "p")(samples()) == [len("What is 2+2?")] * 2
    assert load_function("math:sqrt")(4.0) == 2.0  # an importable module


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("no_colon", ConfigError, "module:function"),
        ("missing/file.py:f", ConfigError, "does not exist"),
        ("not_a_module_xyz:f", ConfigError, "cannot import module"),
        ("{funcs}:nope", ConfigError, "has no function 'nope'.*length"),
    ],
)
def test_bad_function_specs_name_the_fix(funcs, spec, error, match):
    with pytest.raises(error, match=match):
        load_function(spec.format(funcs=funcs))


def test_function_returning_a_non_number_is_named(funcs):
    with pytest.raises(DataError, match="bad returned 'high'.*finite number"):
        FunctionReward(f"{funcs}:bad", "bad")(samples())
    with pytest.raises(DataError, match="finite number"):
        FunctionReward(f"{funcs}:nan", "nan")(samples())


@pytest.fixture
def reward_model_dir(tmp_path):
    tok = make_tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    path = tmp_path / "rm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_model_reward_is_the_standard_interface_score(reward_model_dir):
    """Batched, right-padded scores equal logits[:, 0] of each conversation scored alone."""
    rm = ModelReward(str(reward_model_dir), "rm", batch_size=2)
    batch = samples() + [Sample([{"role": "user", "content": "hello there, a longer prompt"}], "a longer answer")]
    scores = rm(batch)
    tok = rm.tokenizer
    for sample, score in zip(batch, scores, strict=True):
        text = tok.apply_chat_template([*sample.prompt, {"role": "assistant", "content": sample.completion}], tokenize=False)
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            alone = rm.model(input_ids=ids).logits[0, 0].item()
        assert score == pytest.approx(alone, abs=1e-5)
    assert len(set(scores)) == 3


def test_model_reward_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist.*affinage rm"):
        ModelReward(str(tmp_path / "nothing"), "rm")


def test_llama2_combination_by_value():
    """sigmoid(-2) = 0.119 < 0.15 -> safety; sigmoid(0) = 0.5 -> helpfulness unless tagged unsafe."""
    helpful = torch.tensor([1.0, 1.0, 1.0])
    safety = torch.tensor([-2.0, 0.0, 0.0])
    unsafe = torch.tensor([False, False, True])
    torch.testing.assert_close(llama2_combine(helpful, safety, unsafe), torch.tensor([-2.0, 1.0, 0.0]))
    # threshold between sigmoid(-2) and sigmoid(0)
    torch.testing.assert_close(llama2_combine(helpful, safety, unsafe, threshold=0.1), torch.tensor([1.0, 1.0, 0.0]))


def test_rewards_weighted_sum_llama2_and_penalty(funcs, reward_model_dir):
    batch = samples()
    cfg = RewardsConfig(sources=[
        RewardSourceConfig(function=f"{funcs}:length", weight=0.5),
        RewardSourceConfig(function=f"{funcs}:uses_row", weight=2.0, name="correct"),
    ], unfinished_penalty=3.0)
    scores = Rewards(cfg)(batch)
    assert scores.parts == {"length": [1.0, 4.0], "correct": [10.0, 0.0]}
    # 0.5 * 1 + 2 * 10 = 20.5 ; 0.5 * 4 + 0 - 3 (unfinished) = -1
    assert scores.total == pytest.approx([20.5, -1.0])

    cfg = RewardsConfig(
        sources=[RewardSourceConfig(model=str(reward_model_dir), name="helpfulness"),
                 RewardSourceConfig(function=f"{funcs}:length", name="safety"),
                 RewardSourceConfig(function=f"{funcs}:uses_row", name="bonus", weight=0.1)],
        combine="llama2",
    )
    batch = [Sample(s.prompt, s.completion, {**s.row, "unsafe": i == 1}) for i, s in enumerate(samples())]
    scores = Rewards(cfg)(batch)
    help_scores = scores.parts["helpfulness"]
    # sample 0: safety 1 -> sigmoid 0.73 >= 0.15, not tagged -> helpfulness, + 0.1 * 10
    # sample 1: tagged unsafe -> safety score (4), + 0.1 * 0
    assert scores.total == pytest.approx([help_scores[0] + 1.0, 4.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sources": []}, "at least one source"),
        ({"sources": [RewardSourceConfig()]}, r"sources\[0\].*exactly one"),
        ({"sources": [RewardSourceConfig(model="a", function="b:c")]}, "exactly one"),
        ({"sources": [RewardSourceConfig(function="nocolon")]}, "module:function"),
        ({"sources": [RewardSourceConfig(function="a:f"), RewardSourceConfig(function="b:f")]}, "duplicate names"),
        ({"sources": [RewardSourceConfig(function="a:f")], "combine": "llama2"}, "helpfulness.*names no source"),
        ({"sources": [RewardSourceConfig(function="a:f", weight=math.inf)]}, "finite"),
    ],
)
def test_config_validation_names_the_key(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RewardsConfig(**kwargs).validate()
