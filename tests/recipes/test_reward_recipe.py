"""The reward-model recipe on a tiny random Llama: it learns a planted preference (full, LoRA and
frozen-backbone), reports accuracy per strength bucket and category, and final/ loads with
AutoModelForSequenceClassification and gives the same scores as training and `rm score`."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from affinage.config import load_config
from affinage.data.collate import collate_padded
from affinage.data.preference import LLAMA2_MARGINS, PreferenceDataConfig, collate_pairs, load_preference_data
from affinage.engine.metrics import read_metrics
from affinage.errors import ConfigError
from affinage.recipes import reward as rm_recipe
from affinage.recipes.reward import RewardConfig

GOOD = "great fine nice clear exact right".split()
BAD = "awful wrong vague broken poor bad".split()
TOPICS = "login quota storage jobs gpu python".split()
STRENGTHS = ["significantly_better", "better", "slightly_better"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads (see tests/recipes/test_dpo_recipe.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pairs(path, n, seed):
    """Planted preference: chosen answers are made of GOOD words, rejected ones of BAD words."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            topic = rng.choice(TOPICS)
            fh.write(json.dumps({
                "prompt": f"{topic} question {i}?",
                "chosen": " ".join(rng.choices(GOOD, k=rng.randint(2, 4))),
                "rejected": " ".join(rng.choices(BAD, k=rng.randint(2, 4))),
                "strength": STRENGTHS[i % 3], "category": "safety" if i % 2 else "helpfulness",
            }) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    return write_pairs(tmp_path / "train.jsonl", 48, 0), write_pairs(tmp_path / "valid.jsonl", 24, 1)


def make_cfg(model_dir, files, out, *extra) -> RewardConfig:
    train, valid = files
    return load_config(RewardConfig, None, [
        f"model.name={model_dir}", f"data.train=[{train}]", f"data.validation=[{valid}]", f"run.output_dir={out}",
        "run.progress=false", "model.dtype=float32", "train.lr=3e-3", "train.warmup_ratio=0", "train.batch_size=8",
        "data.max_length=64", *extra,
    ])


def eval_rows(out):
    return [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "eval"]


def hf_scores(final, pairs_path):
    """Rewards by plain transformers: the saved model and tokenizer, padded batch, no affinage code
    beyond building the token ids."""
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    data = load_preference_data(PreferenceDataConfig(train=[str(pairs_path)], max_length=64), tokenizer)
    batch = collate_pairs(data.train, tokenizer.pad_token_id)
    with torch.no_grad():
        rewards = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    b = len(data.train)
    return rewards[:b], rewards[b:], data, model, tokenizer


def test_full_rm_learns_the_planted_preference_and_final_loads(tiny_model_dir, files, tmp_path):
    out = tmp_path / "rm"
    final = rm_recipe.train(make_cfg(tiny_model_dir, files, out, "adapter.method=full", "train.max_steps=18",
                                     "run.eval_every=6", "margin=small"))
    evals = eval_rows(out)
    assert [r["step"] for r in evals] == [6, 12, 18]
    last = evals[-1]
    assert last["accuracies"] >= 0.9 and last["margins"] > 1.0
    assert last["pairs"] == 24
    for s in STRENGTHS:
        assert last[f"accuracy/strength/{s}"] is not None
    assert last["accuracy/category/safety"] is not None and last["accuracy/category/helpfulness"] is not None
    report = json.loads((out / "eval.json").read_text())
    assert report["accuracies"] == pytest.approx(last["accuracies"])

    # final/ is a plain sequence classifier; its scores reproduce the recipe's validation metrics
    from transformers import AutoConfig

    assert json.loads((final / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    assert AutoConfig.from_pretrained(final).num_labels == 1
    chosen, rejected, data, model, tokenizer = hf_scores(final, files[1])
    assert (chosen > rejected).float().mean().item() == pytest.approx(last["accuracies"])
    assert (chosen - rejected).mean().item() == pytest.approx(last["margins"], abs=1e-4)
    # and the reward is read at the last real token (padding uses a token that never occurs in text)
    assert tokenizer.pad_token_id not in (tokenizer.eos_token_id, tokenizer.bos_token_id)
    seq = data.train[0].chosen
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([seq.input_ids])).last_hidden_state[0, -1]
        alone = model.score(hidden)[0]
    assert alone.item() == pytest.approx(chosen[0].item(), abs=1e-5)


def test_rm_score_command_matches_transformers(tiny_model_dir, files, tmp_path):
    from typer.testing import CliRunner

    from affinage.cli import _register_commands, app

    final = rm_recipe.train(make_cfg(tiny_model_dir, files, tmp_path / "rm", "adapter.method=full", "train.max_steps=4"))
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"prompt": "login question 0?", "completion": "great nice"}) + "\n"
                       + json.dumps({"messages": [{"role": "user", "content": "gpu question 1?"},
                                                  {"role": "assistant", "content": "awful"}]}) + "\n")
    _register_commands()
    runner = CliRunner()
    scored_pairs = tmp_path / "scored_pairs.jsonl"
    result = runner.invoke(app, ["rm", "score", str(final), "--input", str(files[1]), "--output", str(scored_pairs),
                                 "--max-length", "64", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in scored_pairs.read_text().splitlines()]
    chosen, rejected, *_ = hf_scores(final, files[1])
    assert [r["chosen_reward"] for r in rows] == pytest.approx(chosen.tolist(), abs=1e-5)
    assert [r["reward_margin"] for r in rows] == pytest.approx((chosen - rejected).tolist(), abs=1e-5)
    assert rows[0]["prompt"] == json.loads(files[1].read_text().splitlines()[0])["prompt"]  # input kept

    out = tmp_path / "scored.jsonl"
    result = runner.invoke(app, ["rm", "score", str(final), "-i", str(answers), "-o", str(out), "--max-length", "64",
                                 "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(isinstance(r["reward"], float) for r in scored)
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "login question 0?"},
                                          {"role": "assistant", "content": "great nice"}], tokenize=False)
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert model(input_ids=ids).logits[0, 0].item() == pytest.approx(scored[0]["reward"], abs=1e-5)


@pytest.mark.parametrize("method", ["lora", "freeze"])
def test_lora_and_frozen_backbone(tiny_model_dir, files, tmp_path, method):
    """LoRA (SEQ_CLS, head in modules_to_save) and a frozen backbone (head only) both learn; the
    frozen run leaves every backbone weight as it was; both save a loadable classifier."""
    out = tmp_path / method
    extra = ["adapter.method=lora", "adapter.r=8", "train.lr=1e-2"] if method == "lora" else \
        ["adapter.method=freeze", "adapter.trainable=[]", "train.lr=3e-2"]
    final = rm_recipe.train(make_cfg(tiny_model_dir, files, out, *extra, "train.max_steps=18"))
    last = eval_rows(out)[-1]
    assert last["accuracies"] >= 0.75, last
    weights = load_file(final / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    if method == "freeze":
        for name, value in start.items():
            if name.startswith("model."):
                torch.testing.assert_close(weights[name], value, atol=0, rtol=0)
    else:
        assert (final / "adapter" / "adapter_config.json").is_file()
        changed = [n for n, v in start.items() if n.startswith("model.") and "proj" in n and not torch.equal(weights[n], v)]
        assert changed  # LoRA merged into the backbone
        assert not any("lora" in n or "modules_to_save" in n for n in weights)
    chosen, rejected, *_ = hf_scores(final, files[1])
    assert (chosen > rejected).float().mean().item() == pytest.approx(last["accuracies"])


def test_pair_loss_uses_the_llama2_margin(tiny_model, tiny_tokenizer, files):
    """The recipe's loss equals -log sigmoid(r_w - r_l - m) with m from Llama 2's table for each
    pair's strength (computed here from the rewards of the same forward pass)."""
    from affinage.recipes.reward import load_reward_model, pair_loss, rewards_of

    data = load_preference_data(PreferenceDataConfig(train=[str(files[0])], max_length=64), tiny_tokenizer)
    pairs = data.train[:6]
    batch = collate_pairs(pairs, tiny_tokenizer.pad_token_id)
    tiny_model.save_pretrained(files[0].parent / "m")
    tiny_tokenizer.save_pretrained(files[0].parent / "m")
    from affinage.config import ModelConfig

    model = load_reward_model(ModelConfig(name=str(files[0].parent / "m")), dtype=torch.float32,
                              pad_token_id=tiny_tokenizer.pad_token_id).eval()
    with torch.no_grad():
        rewards = rewards_of(model, batch)
        for scale in ("none", "large"):
            out = pair_loss(model, batch, pairs, margin_scale=scale, center=None)
            margins = [0.0 if scale == "none" else LLAMA2_MARGINS[scale][p.strength] for p in pairs]
            expected = [-math.log(1 / (1 + math.exp(-(rewards[i] - rewards[i + 6] - m).item())))
                        for i, m in enumerate(margins)]
            assert out.losses.tolist() == pytest.approx(expected, abs=1e-5)


def test_accumulation_4x1_equals_1x4(tiny_model_dir, files, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("adapter.method=full", "train.max_steps=3", "train.lr=1e-3")
    rm_recipe.train(make_cfg(tiny_model_dir, files, a, "train.batch_size=4", "train.grad_accum=1", *common))
    rm_recipe.train(make_cfg(tiny_model_dir, files, b, "train.batch_size=1", "train.grad_accum=4", *common))
    la = [r["loss"] for r in read_metrics(a / "metrics.jsonl") if r["split"] == "train"]
    lb = [r["loss"] for r in read_metrics(b / "metrics.jsonl") if r["split"] == "train"]
    assert la == pytest.approx(lb, abs=1e-5)
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-4, rtol=1e-3)


def test_scoring_pads_like_training(tiny_model_dir, tiny_tokenizer, files, tmp_path):
    """Scores of a padded batch equal scores one at a time (no padding at all)."""
    from affinage.recipes.reward import score_conversations

    final = rm_recipe.train(make_cfg(tiny_model_dir, files, tmp_path / "rm", "adapter.method=full", "train.max_steps=2"))
    model = AutoModelForSequenceClassification.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    convs = [([{"role": "user", "content": f"q{i}"}], [{"role": "assistant", "content": "nice " * (i + 1)}]) for i in range(5)]
    batched = score_conversations(model, tokenizer, convs, batch_size=5, max_length=64)
    alone = [score_conversations(model, tokenizer, [c], batch_size=1, max_length=64)[0] for c in convs]
    assert batched == pytest.approx(alone, abs=1e-5)
    assert collate_padded  # the same collate as training


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter.method=prompt_tuning"], "not supported for reward models"),
        (["adapter.merge=false"], "must be true for reward models"),
        (["margin=huge"], "must be one of"),
        (["data.validation_fraction=0.2", "data.validation=[v.jsonl]"], "cannot be combined"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(RewardConfig, None, ["data.train=[x.jsonl]", *overrides])
