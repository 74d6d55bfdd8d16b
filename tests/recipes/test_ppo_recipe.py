"""The PPO recipe end to end on a tiny random Llama and a toy verifiable task: the reward rises, the
KL stays finite, unfinished answers are penalised as configured, LoRA with a reward-model critic,
Ctrl-C and resume give the straight run, and the final model loads with transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForSequenceClassification

from affinage.recipes import ppo as ppo_recipe
from affinage.recipes.ppo import PPOConfig

from .rl_helpers import make_cfg, single_thread, train_rows, write_toy_task


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture
def toy_task(tmp_path):
    return write_toy_task(tmp_path)


def test_ppo_raises_the_reward_with_a_finite_kl(tiny_model_dir, toy_task, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(PPOConfig, tiny_model_dir, toy_task, out, "train.max_steps=30", "rollout.prompts_per_step=8",
                   "epochs_per_rollout=2", "minibatches=2", "train.batch_size=4", "kl_coef=0.01")
    final = ppo_recipe.train(cfg)
    rows = train_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.3, (first, last)  # a random policy scores about 0.1, the best 1
    for key in ("reward", "reward_std", "kl", "entropy", "clip_fraction", "approx_kl", "value_loss",
                "policy_loss", "answer_length", "finished", "kl_coef", "grad_norm", "rollout_tokens_per_s"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in rows), key
    assert all(r["answer_length"] <= 8 for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert max(r["kl"] for r in rows) > 0
    # The rollouts log holds what the policy wrote, with the same rewards the function gives.
    logged = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 30 * 2
    for row in logged[:4]:
        assert row["reward"] == pytest.approx(sum(c.isascii() and c.islower() for c in row["completion"]) / 8.0)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model(torch.tensor([[5, 6, 7]])).logits.isfinite().all()


def test_unfinished_answers_are_penalised_as_configured(tiny_model_dir, toy_task, tmp_path):
    """A constant reward of 1 less 0.5 for answers cut at max_new_tokens: a stop string that is
    common in random bytes makes some answers finish within the 4-token budget and others not."""
    out = tmp_path / "run"
    module = toy_task[1]
    cfg = make_cfg(PPOConfig, tiny_model_dir, toy_task, out, "train.max_steps=2", "rollout.prompts_per_step=16",
                   "rollout.max_new_tokens=4", f"reward.sources=[{{function: '{module}:constant'}}]",
                   "reward.unfinished_penalty=0.5", "rollout.stop=[e, a, o, i, t, ' ']", "rollout.log_samples=16",
                   "train.batch_size=16")
    ppo_recipe.train(cfg)
    logged = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 32
    for row in logged:
        assert row["reward"] == (1.0 if row["finished"] else 0.5)
        assert row["finished"] or row["tokens"] == 4
    assert {row["finished"] for row in logged} == {True, False}
    rows = train_rows(out)
    for r in rows:  # the logged mean reward is 1 - 0.5 * (share unfinished)
        assert r["reward"] == pytest.approx(1.0 - 0.5 * (1.0 - r["finished"]))


def test_lora_policy_with_a_reward_model_critic_and_reward(tiny_model_dir, tiny_tokenizer, toy_task, tmp_path):
    """A reward model directory is both a reward source and the critic's starting point; the
    reference is the LoRA policy with its adapter disabled."""
    rm_dir = tmp_path / "rm"
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(rm_dir)
    tiny_tokenizer.save_pretrained(rm_dir)
    out = tmp_path / "run"
    module = toy_task[1]
    cfg = make_cfg(PPOConfig, tiny_model_dir, toy_task, out, "train.max_steps=3", "rollout.prompts_per_step=4",
                   "adapter.method=lora", "adapter.r=4", f"value.model={rm_dir}", "value.lr=1e-3",
                   f"reward.sources=[{{model: {rm_dir}, weight: 0.5, name: rm}}, {{function: '{module}:letters'}}]")
    final = ppo_recipe.train(cfg)
    rows = train_rows(out)
    assert len(rows) == 3
    for r in rows:
        assert math.isfinite(r["kl"]) and math.isfinite(r["value_loss"]) and r["reward/rm"] is not None
        # the combined reward is 0.5 * rm + letters, averaged over the same answers
        assert r["reward"] == pytest.approx(0.5 * r["reward/rm"] + r["reward/letters"], abs=1e-5)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # LoRA starts as the identity
    assert (final / "adapter" / "adapter_config.json").exists()


def test_ctrl_c_then_resume_equals_straight_run(tiny_model_dir, toy_task, tmp_path, monkeypatch):
    """4 steps straight == 2 steps, Ctrl-C, resume, 2 steps: same metrics (rollouts are seeded by the
    step), the same adaptive KL coefficient (restored from the checkpoint) and the same value head."""
    extra = ("train.max_steps=4", "rollout.prompts_per_step=4", "adaptive_kl=true", "kl_target=0.01", "kl_horizon=10",
             "adapter.method=lora", "adapter.r=4", "train.lr=3e-2")  # LoRA + a value head on the policy
    straight = tmp_path / "straight"
    ppo_recipe.train(make_cfg(PPOConfig, tiny_model_dir, toy_task, straight, *extra))

    resumed = tmp_path / "resumed"
    real_log = ppo_recipe.MetricLogger.log

    def interrupt_after_2(self, row):
        real_log(self, row)
        if row.get("step") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ppo_recipe.MetricLogger, "log", interrupt_after_2)
    with pytest.raises(SystemExit) as info:
        ppo_recipe.train(make_cfg(PPOConfig, tiny_model_dir, toy_task, resumed, *extra))
    assert info.value.code == 130
    monkeypatch.setattr(ppo_recipe.MetricLogger, "log", real_log)
    ppo_recipe.train(make_cfg(PPOConfig, tiny_model_dir, toy_task, resumed, *extra, "run.resume=true"))

    a, b = train_rows(straight), train_rows(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert len({r["kl_coef"] for r in a}) > 1  # the controller moved beta
    for ra, rb in zip(a, b, strict=True):
        for key in ("reward", "kl", "kl_coef", "value_loss", "value_mean", "policy_loss", "answer_length"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), key
    assert a[-1]["value_mean"] != 0  # the head (zero at the start) learnt something


def test_config_errors_name_the_key(tiny_model_dir, toy_task, tmp_path):
    from affinage.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout.temperature"):
        make_cfg(PPOConfig, tiny_model_dir, toy_task, tmp_path, "rollout.temperature=0")
    with pytest.raises(ConfigError, match="adapter.dropout"):
        make_cfg(PPOConfig, tiny_model_dir, toy_task, tmp_path, "adapter.method=lora", "adapter.dropout=0.1")
    with pytest.raises(ConfigError, match="train.grad_accum"):
        make_cfg(PPOConfig, tiny_model_dir, toy_task, tmp_path, "train.grad_accum=2")
    with pytest.raises(ConfigError, match=r"reward.sources\[0\]"):
        make_cfg(PPOConfig, tiny_model_dir, toy_task, tmp_path, "reward.sources=[{weight: 2}]")
    with pytest.raises(ConfigError, match="adapter.method"):
        make_cfg(PPOConfig, tiny_model_dir, toy_task, tmp_path, "adapter.method=prompt_tuning")
