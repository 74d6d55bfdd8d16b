"""`affinage estimate` on the quickstart and the real SmolLM2-135M: the counts it reports equal what
the SFT recipe itself reports for the same config (parameters, trainable parameters, tokens, steps)."""

from __future__ import annotations

from affinage.config import SFTConfig, load_config
from affinage.planning.estimate import EstimateOptions, Hardware, estimate_config

HARDWARE = Hardware(device="cpu", name="test CPU", dtype="bfloat16", matmul_flops=2e11, bandwidth=2e10, threads=2,
                    memory_bytes=24 * 1024**3, power_w=20.0, power_note="given", measured=False)


def test_quickstart_estimate_matches_the_recipe_counts():
    cfg = load_config(SFTConfig, "examples/quickstart.yaml", ["model.dtype=bfloat16"])
    report = estimate_config(cfg, EstimateOptions(), hardware=HARDWARE)
    # what `affinage sft examples/quickstart.yaml` prints: 352 + 44 rows, 60,404 train tokens of which
    # 40,899 trained, 4,884,480 / 139,399,488 parameters trainable with LoRA r=16 on all linear layers
    assert report.data["train_examples"] == 352 and report.data["validation_examples"] == 44
    assert report.data["train_tokens"] == 60_404 and report.data["trained_tokens"] == 40_899
    assert report.steps == 44  # 352 examples / batch 8, one epoch
    assert report.model["params"] == 134_515_008
    lora, full, prompt = report.methods
    assert (lora.method, full.method, prompt.method) == ("lora", "full", "prompt_tuning")
    assert lora.trainable_params == 4_884_480 and full.trainable_params == 134_515_008
    assert prompt.trainable_params == 20 * 576
    # packed rows: one epoch processes exactly the data's tokens; 6N per token dominates full fine-tuning
    assert report.data["tokens processed (with padding)"] == 60_404
    n_matmul = report.model["body_params"] + report.model["head_params"]
    assert 6 * report.model["body_params"] * 60_404 < full.flops["train"] < 6 * n_matmul * 60_404 * 1.1
    assert full.memory["optimizer (AdamW)"] == 8 * 134_515_008
    assert full.memory["weights"] == 4 * 134_515_008 and lora.memory["weights"] == 2 * 134_515_008
