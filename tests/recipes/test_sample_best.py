"""Rejection sampling on a tiny model: the kept answer is the best of N by reward, unfinished answers
are never kept when required, the output is an SFT dataset the SFT loader reads, and the CLI verbs
ppo / grpo / sample-best run from a YAML file."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from affinage.config import load_config
from affinage.recipes.sample_best import SampleBestConfig, best_of_n, run

from .rl_helpers import REWARDS_PY, single_thread, train_rows, write_toy_task


@pytest.fixture(autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture
def toy_task(tmp_path):
    return write_toy_task(tmp_path)


def letters(completion: str) -> float:
    namespace: dict = {}
    exec(REWARDS_PY, namespace)  # the same function the config names
    return namespace["letters"]("", completion)


def make_cfg(model_dir, toy_task, out, *extra):
    prompts, module = toy_task
    return load_config(SampleBestConfig, None, [
        f"model.name={model_dir}", "model.dtype=float32", f"data.train=[{prompts}]", "data.max_examples=12",
        f"reward.sources=[{{function: '{module}:letters'}}]", "generation.max_new_tokens=8",
        "generation.temperature=1.0", "n=4", f"output={out / 'best.jsonl'}", "progress=false",
        f"all_candidates={out / 'all.jsonl'}", *extra,
    ])


def test_keeps_the_best_of_n_as_an_sft_dataset(tiny_model_dir, tiny_tokenizer, toy_task, tmp_path):
    path = run(make_cfg(tiny_model_dir, toy_task, tmp_path, "require_finished=false"))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 12
    for row in rows:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        answer = row["messages"][-1]["content"]
        assert row["reward"] == pytest.approx(letters(answer))
        assert row["reward"] == max(row["rewards"]) and len(row["rewards"]) == 4
    summary = json.loads((tmp_path / "best.summary.json").read_text())
    assert summary["reward_best_of_n"] >= summary["reward_mean_of_n"]
    assert summary["reward_best_of_n"] > summary["reward_single_sample"]  # N = 4 random answers differ
    candidates = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert len(candidates) == 48
    # The SFT loader reads the output as a conversation dataset.
    from affinage.config import DataConfig
    from affinage.data.sft import load_sft_data

    data = load_sft_data(DataConfig(train=[str(path)], max_length=256), tiny_tokenizer)
    assert len(data.train) == 12


def test_unfinished_answers_are_never_kept(tiny_model_dir, toy_task, tmp_path):
    path = run(make_cfg(tiny_model_dir, toy_task, tmp_path, "generation.stop=[e, a, ' ']"))
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    candidates = [json.loads(line) for line in (tmp_path / "all.jsonl").read_text().splitlines()]
    assert {c["finished"] for c in candidates} == {True, False}
    summary = json.loads((tmp_path / "best.summary.json").read_text())
    assert summary["kept"] + summary["skipped_unfinished"] == 12
    for row in kept:
        group = [c for c in candidates if c["messages"][0] == row["messages"][0]]
        finished = [c["reward"] for c in group if c["finished"]]
        assert finished and row["reward"] == max(finished)


def test_best_of_n_at_inference_picks_the_top_reward(tiny_model_dir, toy_task):
    from affinage.generation.sampling import GenerationOptions
    from affinage.models.loading import load_model, load_tokenizer
    from affinage.recipes.sample_best import load_rewards_from_specs

    model, tok = load_model(str(tiny_model_dir), dtype="float32"), load_tokenizer(str(tiny_model_dir))
    rewards = load_rewards_from_specs([f"2*{toy_task[1]}:letters"])
    prompts = [[{"role": "user", "content": "hi"}], [{"role": "user", "content": "another one"}]]
    options = GenerationOptions(max_new_tokens=8, temperature=1.0, seed=0)
    results = best_of_n(model, tok, prompts, rewards, 6, options, require_finished=False)
    for res in results:
        assert len(res.texts) == 6
        assert res.best_reward == max(res.rewards) == pytest.approx(2 * letters(res.best))


def test_cli_verbs_run_from_yaml(tiny_model_dir, toy_task, tmp_path):
    from affinage.cli import _register_commands, app

    _register_commands()
    prompts, module = toy_task
    common = {
        "model": {"name": str(tiny_model_dir), "dtype": "float32"}, "adapter": {"method": "full"},
        "data": {"train": [str(prompts)]}, "reward": {"sources": [{"function": f"{module}:letters"}]},
        "rollout": {"max_new_tokens": 4, "prompts_per_step": 2}, "train": {"max_steps": 1},
    }
    runner = CliRunner()
    for verb, extra in (("ppo", {}), ("grpo", {"rollout": {"max_new_tokens": 4, "prompts_per_step": 2, "samples_per_prompt": 2}})):
        cfg = {**common, **extra, "stage": verb, "run": {"output_dir": str(tmp_path / verb), "progress": False}}
        path = tmp_path / f"{verb}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        result = runner.invoke(app, [verb, str(path)])
        assert result.exit_code == 0, result.output
        assert len(train_rows(tmp_path / verb)) == 1
        assert (tmp_path / verb / "final" / "model.safetensors").exists()
    cfg = {"stage": "sample_best", "model": common["model"], "data": {"train": [str(prompts)], "max_examples": 2},
           "reward": common["reward"], "generation": {"max_new_tokens": 4, "temperature": 1.0}, "n": 2,
           "require_finished": False, "output": str(tmp_path / "sb" / "best.jsonl"), "progress": False}
    path = tmp_path / "sb.yaml"
    path.write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["sample-best", str(path), "n=3"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "sb" / "best.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(r["rewards"]) == 3 for r in rows)  # the override reached the config


def test_best_of_verb_writes_the_best_answer_per_row(tiny_model_dir, toy_task, tmp_path):
    from affinage.cli import _register_commands, app

    _register_commands()
    prompts, module = toy_task
    out = tmp_path / "answers.jsonl"
    result = CliRunner().invoke(app, [
        "best-of", str(tiny_model_dir), "--input", str(prompts), "--output", str(out), "-n", "3",
        "--reward", f"{module}:letters", "--max-new-tokens", "8", "--temperature", "1.0", "--seed", "0",
        "--dtype", "float32",
    ])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 32 and rows[0]["prompt"] == "question 0: say something" and rows[0]["bonus"] == 1.0
    for row in rows:
        assert row["reward"] == max(row["rewards"]) == pytest.approx(letters(row["completion"]))
    bad = CliRunner().invoke(app, ["best-of", str(tiny_model_dir), "-p", "hi", "--reward", f"{module}:letters",
                                   "--temperature", "0"])
    assert bad.exit_code != 0 and "needs sampling" in str(bad.exception)
