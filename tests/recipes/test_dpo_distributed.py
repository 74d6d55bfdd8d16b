"""Two processes (DDP over gloo on CPU, started by torchrun) follow the same DPO trajectory as one
process with the same global batch, including the reference log-probabilities precomputed in
shards and gathered."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from affinage.config import dump_yaml
from affinage.recipes import dpo as dpo_recipe

from .test_dpo_recipe import make_cfg, train_rows, write_pairs


@pytest.mark.slow
def test_two_processes_match_one(tiny_model_dir, tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", n=32)
    valid = write_pairs(tmp_path / "valid.jsonl", n=7, seed=3)  # odd: one process evaluates one pair more
    one, two = tmp_path / "one", tmp_path / "two"
    common = ("train.max_steps=3", "precompute_reference=true",
              f"data.validation=[{valid}]")
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs, one, "train.batch_size=4", *common,
                              f"reference_cache_dir={tmp_path / 'cache1'}"))

    cfg = make_cfg(tiny_model_dir, pairs, two, "train.batch_size=2", *common, f"reference_cache_dir={tmp_path / 'cache2'}")
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(dump_yaml(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29527",
           "-m", "affinage", "dpo", str(cfg_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stdout + result.stderr

    r1, r2 = train_rows(one), train_rows(two)
    assert len(r1) == len(r2) == 3
    for key in ("loss", "margins"):
        assert [r[key] for r in r2] == pytest.approx([r[key] for r in r1], abs=5e-5), key
    # at step 1 policy == reference: every margin is 0 up to rounding, so accuracy is a coin toss
    assert [r["accuracies"] for r in r2[1:]] == [r["accuracies"] for r in r1[1:]]
    from affinage.engine.metrics import read_metrics

    e1 = [r for r in read_metrics(one / "metrics.jsonl") if r["split"] == "eval"]
    e2 = [r for r in read_metrics(two / "metrics.jsonl") if r["split"] == "eval"]
    assert e2[-1]["loss"] == pytest.approx(e1[-1]["loss"], abs=5e-5)
    # the caches written by 1 and by 2 processes hold the same reference log-probabilities
    c1 = load_file(next((tmp_path / "cache1").glob("*.safetensors")))
    c2 = load_file(next((tmp_path / "cache2").glob("*.safetensors")))
    for split in c1:
        torch.testing.assert_close(c2[split], c1[split], atol=1e-5, rtol=1e-6)  # sums of ~100 nats: fp32 ulps
    w1 = load_file(one / "final" / "adapter" / "adapter_model.safetensors")
    w2 = load_file(two / "final" / "adapter" / "adapter_model.safetensors")
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-4, rtol=1e-3)
