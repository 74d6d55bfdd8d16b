"""Two processes (DDP over gloo on CPU, started by torchrun) follow the same loss trajectory as one
process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from affinage.config import dump_yaml
from affinage.recipes import sft as sft_recipe

from .test_sft_recipe import make_cfg, train_losses, write_conversations


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, tmp_path):
    train_file = write_conversations(tmp_path / "train.jsonl", n=32)
    one = tmp_path / "one"
    two = tmp_path / "two"
    steps = ("train.max_steps=4", "adapter.method=lora", "train.lr=5e-3")
    sft_recipe.train(make_cfg(tiny_model_dir, train_file, one, "train.batch_size=4", *steps))

    cfg = make_cfg(tiny_model_dir, train_file, two, "train.batch_size=2", *steps)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(dump_yaml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
        "-m", "affinage", "sft", str(cfg_path),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout + result.stderr  # really two ranks, not one

    l1, l2 = train_losses(one), train_losses(two)
    assert len(l1) == len(l2) == 4
    assert l2 == pytest.approx(l1, abs=1e-5)
    w1 = load_file(one / "final" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(two / "final" / "adapter" / "adapter_model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-5, rtol=1e-4)
