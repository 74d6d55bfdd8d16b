"""The SFT recipe end to end on a tiny random Llama: accumulation invariance, resume, Ctrl-C,
the run directory, and the final model loading with transformers."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from affinage.config import SFTConfig, load_config
from affinage.engine.metrics import read_metrics
from affinage.recipes import sft as sft_recipe

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()


def write_conversations(path, n=24, seed=0):
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            q = " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
            messages = [{"role": "user", "content": f"q{i} {q}"}, {"role": "assistant", "content": a}]
            if i % 4 == 0:
                messages += [{"role": "user", "content": "and then?"}, {"role": "assistant", "content": q}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return path


@pytest.fixture
def train_file(tmp_path):
    return write_conversations(tmp_path / "train.jsonl")


def make_cfg(model_dir, train_file, out, *extra) -> SFTConfig:
    return load_config(
        SFTConfig,
        None,
        [
            f"model.name={model_dir}",
            f"data.train=[{train_file}]",
            f"run.output_dir={out}",
            "run.progress=false",
            "model.dtype=float32",
            "adapter.method=full",
            "train.lr=1e-3",
            "train.warmup_steps=1",
            "data.max_length=128",
            *extra,
        ],
    )


def train_losses(out):
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]


def final_weights(out):
    return load_file(out / "final" / "model.safetensors")


@pytest.mark.parametrize("packing", ["on", "off"])
def test_accumulation_4x1_equals_1x4(tiny_model_dir, train_file, tmp_path, packing):
    """4 micro-batches of 1 give the same losses and weights as 1 batch of 4.

    With per-micro-batch mean losses this fails whenever examples have different numbers of
    trained tokens; normalising by the global token count makes the two gradients identical.
    """
    a = tmp_path / "a"
    b = tmp_path / "b"
    common = ("train.max_steps=4", f"data.packing={packing}")
    sft_recipe.train(make_cfg(tiny_model_dir, train_file, a, "train.batch_size=4", "train.grad_accum=1", *common))
    sft_recipe.train(make_cfg(tiny_model_dir, train_file, b, "train.batch_size=1", "train.grad_accum=4", *common))
    la, lb = train_losses(a), train_losses(b)
    assert len(la) == 4 and la[0] > 0
    assert la == pytest.approx(lb, abs=1e-5)
    assert la[-1] < la[0]  # and it learns
    wa, wb = final_weights(a), final_weights(b)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-5, rtol=1e-4)


def test_run_directory_and_final_model(tiny_model_dir, train_file, tmp_path):
    out = tmp_path / "run"
    valid = write_conversations(tmp_path / "valid.jsonl", n=6, seed=1)
    cfg = make_cfg(
        tiny_model_dir, train_file, out, "adapter.method=lora", "train.max_steps=5", "run.save_every=2",
        "run.keep_last=2", "run.eval_every=2", f"data.validation=[{valid}]",
    )
    final = sft_recipe.train(cfg)
    saved = load_config(SFTConfig, out / "config.yaml")
    assert saved == cfg
    rows = read_metrics(out / "metrics.jsonl")
    train_rows = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4, 5]
    for key in ("step", "epoch", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"):
        assert all(r[key] is not None for r in train_rows), key
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4, 5]
    assert evals[-1]["perplexity"] == pytest.approx(torch.tensor(evals[-1]["loss"]).exp().item(), rel=1e-6)
    # checkpoints at 2 and 4 and the end (5); the last two kept; no temporary directories left
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-4", "step-5"]
    # final/ loads with plain transformers; the adapter is beside it
    model = AutoModelForCausalLM.from_pretrained(final)
    assert (final / "adapter" / "adapter_config.json").exists()
    assert model(torch.tensor([[5, 6, 7]])).logits.isfinite().all()


def test_refuses_to_overwrite_an_earlier_run(tiny_model_dir, train_file, tmp_path):
    from affinage.errors import ConfigError

    out = tmp_path / "run"
    sft_recipe.train(make_cfg(tiny_model_dir, train_file, out, "train.max_steps=1"))
    with pytest.raises(ConfigError, match="run.resume=true"):
        sft_recipe.train(make_cfg(tiny_model_dir, train_file, out, "train.max_steps=1"))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_ctrl_c_then_resume_equals_straight_run(tiny_model_dir, train_file, tmp_path, monkeypatch, method):
    """N steps straight == k steps, Ctrl-C (checkpoint), resume, N-k steps: same losses and weights."""
    n, k = 6, 3
    straight = tmp_path / "straight"
    sft_recipe.train(make_cfg(tiny_model_dir, train_file, straight, f"train.max_steps={n}", f"adapter.method={method}"))

    resumed = tmp_path / "resumed"
    real_log = sft_recipe.MetricLogger.log

    def interrupt_after_k(self, row):
        real_log(self, row)
        if row.get("split") == "train" and row["step"] == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(sft_recipe.MetricLogger, "log", interrupt_after_k)
    with pytest.raises(SystemExit) as info:
        sft_recipe.train(make_cfg(tiny_model_dir, train_file, resumed, f"train.max_steps={n}", f"adapter.method={method}"))
    assert info.value.code == 130
    assert (resumed / "checkpoints" / f"step-{k}" / "model.safetensors").exists()
    assert not (resumed / "final").exists()
    monkeypatch.setattr(sft_recipe.MetricLogger, "log", real_log)

    sft_recipe.train(
        make_cfg(tiny_model_dir, train_file, resumed, f"train.max_steps={n}", f"adapter.method={method}", "run.resume=true")
    )
    ls, lr_ = train_losses(straight), train_losses(resumed)
    assert len(ls) == n and len(lr_) == n
    assert lr_ == pytest.approx(ls, abs=1e-6)
    ws, wr = final_weights(straight), final_weights(resumed)
    for name in ws:
        torch.testing.assert_close(ws[name], wr[name], atol=1e-6, rtol=0)


def test_tensorboard_and_mlflow_receive_the_logged_metrics(tiny_model_dir, train_file, tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    mlflow = pytest.importorskip("mlflow")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # a local file store (mlflow-skinny has no SQL backend; users point this at their server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    sft_recipe.train(make_cfg(tiny_model_dir, train_file, out, "train.max_steps=3", "run.report_to=[tensorboard,mlflow]"))
    losses = train_losses(out)

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tb_losses = [e.value for e in events.Scalars("train/loss")]
    assert tb_losses == pytest.approx(losses, rel=1e-6)

    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs(experiment_ids=[e.experiment_id for e in client.search_experiments()])
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(losses, rel=1e-6)
    assert run.data.params["train.lr"] == "0.001"


@pytest.mark.parametrize(
    ("method", "extra"),
    [
        ("dora", ()),
        ("prompt_tuning", ("adapter.num_virtual_tokens=4", "train.lr=3e-2")),
        ("freeze", ("adapter.trainable=[layers\\.1\\.,norm]",)),
    ],
)
def test_every_adapter_method_trains_and_saves(tiny_model_dir, train_file, tmp_path, method, extra):
    out = tmp_path / method
    cfg = make_cfg(tiny_model_dir, train_file, out, f"adapter.method={method}", "train.max_steps=8",
                   "train.batch_size=4", "train.scheduler=constant", *extra)
    final = sft_recipe.train(cfg)
    losses = train_losses(out)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # training lowers the loss
    AutoModelForCausalLM.from_pretrained(final)  # final/ loads as it is


def test_prompt_tuning_loss_matches_peft_forward(tiny_model, tiny_tokenizer):
    """With soft prompts prepended, ``logits_to_keep`` must be shifted by their number: the summed
    loss equals the one computed from peft's full-logit forward pass."""
    from affinage.config import AdapterConfig
    from affinage.data.collate import collate_padded
    from affinage.data.tokenize import TokenizedExample
    from affinage.models import apply_adapter

    model = apply_adapter(tiny_model, AdapterConfig(method="prompt_tuning", num_virtual_tokens=3), tokenizer=tiny_tokenizer)
    ex = [TokenizedExample(input_ids=[5, 6, 7, 8, 9], labels=[-100, -100, 7, 8, 9]),
          TokenizedExample(input_ids=[10, 11, 12], labels=[-100, 11, 12])]
    batch = collate_padded(ex, pad_token_id=tiny_tokenizer.pad_token_id)
    ours, count = sft_recipe.causal_lm_loss_sum(model, batch, position_offset=3)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 3:]  # [B, T, V]
    targets = batch["labels"][:, 1:]
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    assert count.item() == 5
    assert ours.item() == pytest.approx(reference.item(), rel=1e-5)
