"""The GRPO/RLOO recipe on a tiny random Llama and a toy verifiable task: the reward rises with both
baselines, the KL stays finite, LoRA uses the disabled adapter as reference, Ctrl-C and resume give
the straight run, two processes run, bad combinations are refused."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from affinage.config import dump_yaml
from affinage.recipes import grpo as grpo_recipe
from affinage.recipes.grpo import GRPOConfig

from .rl_helpers import make_cfg, single_thread, train_rows, write_toy_task


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture
def toy_task(tmp_path):
    return write_toy_task(tmp_path)


@pytest.mark.parametrize(
    ("advantage", "aggregation", "scale"),
    [("grpo", "grpo", "true"), ("rloo", "dapo", "true"), ("grpo", "dr_grpo", "false")],
)
def test_reward_rises_with_a_finite_kl(tiny_model_dir, toy_task, tmp_path, advantage, aggregation, scale):
    out = tmp_path / "run"
    cfg = make_cfg(GRPOConfig, tiny_model_dir, toy_task, out, "train.max_steps=25", "rollout.prompts_per_step=4",
                   "rollout.samples_per_prompt=4", "train.batch_size=16", f"advantage={advantage}",
                   f"loss_aggregation={aggregation}", f"scale_advantages={scale}")
    grpo_recipe.train(cfg)
    rows = train_rows(out)
    assert len(rows) == 25
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.1, (first, last)  # random answers score about 0.1
    for key in ("reward", "reward_std", "kl", "kl_loss", "entropy", "clip_fraction", "policy_loss",
                "answer_length", "groups_with_signal"):
        assert all(r[key] is not None and math.isfinite(r[key]) for r in rows), key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[-1]["kl"] > 0
    # one pass, one minibatch: on-policy, the ratio is exactly 1 and nothing is clipped
    assert all(r["clip_fraction"] == 0 and r["ratio"] == pytest.approx(1.0) for r in rows)


def test_lora_several_epochs_reference_is_the_disabled_adapter(tiny_model_dir, toy_task, tmp_path):
    out = tmp_path / "run"
    cfg = make_cfg(GRPOConfig, tiny_model_dir, toy_task, out, "train.max_steps=3", "rollout.prompts_per_step=2",
                   "rollout.samples_per_prompt=4", "adapter.method=lora", "adapter.r=4", "epochs_per_rollout=3",
                   "minibatches=2", "train.batch_size=2", "train.lr=5e-2", "rollout.log_samples=8")
    final = grpo_recipe.train(cfg)
    rows = train_rows(out)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as its base
    assert rows[-1]["kl"] > 0
    # later minibatches of a rollout see a policy that moved: the ratio leaves 1
    assert any(abs(r["ratio"] - 1) > 1e-4 for r in rows)
    assert (final / "adapter" / "adapter_config.json").exists()
    logged = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 3 * 8
    # each prompt's group of 4 answers is consecutive: one prompt per group
    assert all(len({row["prompt"] for row in logged[k : k + 4]}) == 1 for k in range(0, 24, 4))


def test_ctrl_c_then_resume_equals_straight_run(tiny_model_dir, toy_task, tmp_path, monkeypatch):
    extra = ("train.max_steps=4", "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4")
    straight = tmp_path / "straight"
    grpo_recipe.train(make_cfg(GRPOConfig, tiny_model_dir, toy_task, straight, *extra))
    resumed = tmp_path / "resumed"
    real_log = grpo_recipe.MetricLogger.log

    def interrupt_after_2(self, row):
        real_log(self, row)
        if row.get("step") == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(grpo_recipe.MetricLogger, "log", interrupt_after_2)
    with pytest.raises(SystemExit):
        grpo_recipe.train(make_cfg(GRPOConfig, tiny_model_dir, toy_task, resumed, *extra))
    monkeypatch.setattr(grpo_recipe.MetricLogger, "log", real_log)
    grpo_recipe.train(make_cfg(GRPOConfig, tiny_model_dir, toy_task, resumed, *extra, "run.resume=true"))
    a, b = train_rows(straight), train_rows(resumed)
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b, strict=True):
        for key in ("reward", "kl", "policy_loss", "answer_length"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), key


def test_bad_combinations_are_refused(tiny_model_dir, toy_task, tmp_path):
    from affinage.errors import ConfigError

    with pytest.raises(ConfigError, match="rollout.samples_per_prompt"):
        make_cfg(GRPOConfig, tiny_model_dir, toy_task, tmp_path, "rollout.samples_per_prompt=1")
    with pytest.raises(ConfigError, match="scale_advantages"):
        make_cfg(GRPOConfig, tiny_model_dir, toy_task, tmp_path, "advantage=rloo", "scale_advantages=false")
    with pytest.raises(ConfigError, match="advantage"):
        make_cfg(GRPOConfig, tiny_model_dir, toy_task, tmp_path, "advantage=ppo")


@pytest.mark.slow
def test_two_processes_run(tiny_model_dir, toy_task, tmp_path):
    """torchrun with 2 ranks (gloo): each samples half the prompts; metrics are global means."""
    out = tmp_path / "two"
    cfg = make_cfg(GRPOConfig, tiny_model_dir, toy_task, out, "train.max_steps=3", "rollout.prompts_per_step=4",
                   "rollout.samples_per_prompt=2", "rollout.log_samples=4")
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(dump_yaml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "affinage", "grpo", str(cfg_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout + result.stderr
    rows = train_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # rank 0 logs its 2 prompts x 2 answers = 4 samples per step; the means cover both ranks
    logged = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(logged) == 3 * 4
    assert all(math.isfinite(r["kl"]) and 0 <= r["reward"] <= 1 for r in rows)
    assert (out / "final" / "model.safetensors").exists()
