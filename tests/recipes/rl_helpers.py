"""Shared by the RL recipe tests: a toy verifiable task, config building, metric reading."""

from __future__ import annotations

import contextlib
import json

import torch

from affinage.config import load_config
from affinage.engine.metrics import read_metrics

REWARDS_PY = '''
def letters(prompt, completion):
    """The toy task: the share of lowercase ASCII letters in an 8-token answer (about 0.1 at random)."""
    return sum(c.isascii() and c.islower() for c in completion) / 8.0


def constant(prompt, completion, row):
    return float(row["bonus"])
'''


@contextlib.contextmanager
def single_thread():
    """Tiny models gain nothing from threads; one thread keeps timings steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_toy_task(tmp_path):
    """A prompts file (with a per-row column for reward functions) and a rewards module."""
    prompts = tmp_path / "prompts.jsonl"
    with prompts.open("w") as fh:
        for i in range(32):
            fh.write(json.dumps({"prompt": f"question {i}: say something", "bonus": 1.0}) + "\n")
    module = tmp_path / "toy_rewards.py"
    module.write_text(REWARDS_PY)
    return prompts, module


def make_cfg(cls, model_dir, toy_task, out, *extra):
    prompts, module = toy_task
    return load_config(cls, None, [
        f"model.name={model_dir}", "model.dtype=float32", "adapter.method=full", f"data.train=[{prompts}]",
        f"run.output_dir={out}", "run.progress=false", "train.lr=1e-2", "rollout.max_new_tokens=8",
        f"reward.sources=[{{function: '{module}:letters'}}]", "train.batch_size=8", *extra,
    ])


def train_rows(out):
    return [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
