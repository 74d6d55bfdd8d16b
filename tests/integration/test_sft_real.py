"""A few LoRA steps of the SFT recipe on the real SmolLM2-135M-Instruct, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from affinage.engine.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "How do I see my jobs in the queue on Mont-Blanc?"


def test_lora_sft_on_the_real_model(tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": QUESTION},
                      {"role": "assistant", "content": "Run `squeue -u $USER` on a login node of Mont-Blanc."}]}
    ] * 8
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "affinage", "sft", str(ROOT / "examples" / "quickstart.yaml"),
        f"data.train=[{data}]", "data.validation=[]", f"run.output_dir={out}", "train.max_steps=8",
        "train.batch_size=2", "train.grad_accum=1", "train.lr=2e-3", "train.warmup_steps=0", "samples=[]",
        "run.progress=false", "run.save_every=null", "run.eval_every=null",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]
    assert len(losses) == 8
    assert losses[-1] < 0.7 * losses[0]  # one repeated answer is learnt quickly

    # final/ is a plain transformers model whose greedy answer now uses the trained command
    tok = AutoTokenizer.from_pretrained(out / "final")
    model = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32)
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    answer = tok.decode(generated[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "squeue" in answer
