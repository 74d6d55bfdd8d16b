"""The DPO recipe end to end on a tiny random Llama: it learns a planted preference, its LoRA
reference is the adapter-disabled policy (no second model), cached reference log-probabilities
equal live ones, accumulation 4x1 == 1x4, Ctrl-C + resume == a straight run, final/ loads."""

from __future__ import annotations

import gc
import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from affinage.config import config_class_for, load_config
from affinage.data.collate import collate_padded
from affinage.data.preference import PreferenceDataConfig, collate_pairs, load_preference_data
from affinage.engine.metrics import read_metrics
from affinage.errors import ConfigError
from affinage.models.adapters import apply_adapter, copy_model, disabled_adapter
from affinage.recipes import dpo as dpo_recipe
from affinage.recipes.dpo import DPOConfig, concatenated_logps

WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads; on a busy 2-core machine a second thread makes every
    small matrix product wait for it (measured: 24 s instead of 2.6 s for one run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_pairs(path, n=32, seed=0):
    """Planted preference: chosen answers start with 'yes', rejected ones with 'no'."""
    rng = random.Random(seed)
    with path.open("w") as fh:
        for i in range(n):
            prompt = f"q{i} " + " ".join(rng.choices(WORDS, k=rng.randint(2, 5)))
            body = " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
            other = " ".join(rng.choices(WORDS, k=rng.randint(1, 4)))
            fh.write(json.dumps({"prompt": prompt, "chosen": f"yes {body}", "rejected": f"no {other}",
                                 "strength": "better"}) + "\n")
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return write_pairs(tmp_path / "pairs.jsonl")


def make_cfg(model_dir, pairs_file, out, *extra) -> DPOConfig:
    return load_config(
        DPOConfig,
        None,
        [
            f"model.name={model_dir}", f"data.train=[{pairs_file}]", f"run.output_dir={out}",
            "run.progress=false", "model.dtype=float32", "adapter.method=lora", "train.lr=5e-3",
            "train.warmup_steps=0", "train.warmup_ratio=0", "data.max_length=96", "beta=0.5", *extra,
        ],
    )


def train_rows(out):
    return [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "train"]


def test_dpo_raises_margin_and_accuracy(tiny_model_dir, pairs_file, tmp_path):
    """Step 1 starts at the reference (LoRA B = 0): loss log 2, margin 0. After training the
    held-out pairs are ranked right and the implicit reward margin is clearly positive."""
    valid = write_pairs(tmp_path / "valid.jsonl", n=12, seed=1)
    out = tmp_path / "run"
    final = dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, out, "train.max_steps=16",
                                      f"data.validation=[{valid}]", "run.eval_every=8"))
    rows = train_rows(out)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert rows[0]["margins"] == pytest.approx(0.0, abs=1e-5)
    for key in ("chosen_rewards", "rejected_rewards", "margins", "accuracies", "chosen_logps", "rejected_logps",
                "lr", "grad_norm", "examples_per_s"):
        assert rows[-1][key] is not None, key
    evals = [r for r in read_metrics(out / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [8, 16]
    assert evals[-1]["margins"] > 0.5 and evals[-1]["accuracies"] >= 0.9
    assert evals[-1]["margins"] > evals[0]["margins"]
    assert evals[-1]["loss"] < math.log(2) - 0.2
    # final/ loads with plain transformers and prefers the chosen answers more than the start did
    trained = AutoModelForCausalLM.from_pretrained(final).eval()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    tokenizer = _tokenizer(final)
    data = load_preference_data(PreferenceDataConfig(train=[str(valid)], max_length=96), tokenizer)
    batch = collate_pairs(data.train, tokenizer.pad_token_id)
    with torch.no_grad():
        lp_trained, _ = concatenated_logps(trained, batch)
        lp_start, _ = concatenated_logps(start, batch)
    b = len(data.train)
    gap_trained = (lp_trained[:b] - lp_trained[b:]) - (lp_start[:b] - lp_start[b:])
    assert (gap_trained > 0).float().mean() >= 0.9


def _tokenizer(path):
    from affinage.models.loading import load_tokenizer

    return load_tokenizer(str(path))


def test_logps_sum_answer_tokens_under_both_paddings(tiny_model, tiny_tokenizer, pairs_file):
    """Right and left padding give the same per-row log-probabilities (positions from the attention
    mask), equal to each row run alone; the prompt does not count."""
    data = load_preference_data(PreferenceDataConfig(train=[str(pairs_file)], max_length=96), tiny_tokenizer)
    rows = [p.chosen for p in data.train[:4]] + [p.rejected for p in data.train[:4]]
    tiny_model.eval()
    with torch.no_grad():
        right, n_right = concatenated_logps(tiny_model, collate_padded(rows, tiny_tokenizer.pad_token_id))
        left, _ = concatenated_logps(tiny_model, collate_padded(rows, tiny_tokenizer.pad_token_id, padding_side="left"))
        alone = torch.stack([concatenated_logps(tiny_model, collate_padded([r], tiny_tokenizer.pad_token_id))[0][0] for r in rows])
        logits = tiny_model(torch.tensor([rows[0].input_ids])).logits[0].log_softmax(-1)
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    assert n_right.tolist() == [r.num_trainable for r in rows]
    # by hand for row 0: sum over t of log p(token t+1 | ..t) where token t+1 is an answer token
    by_hand = sum(logits[t, rows[0].input_ids[t + 1]].item() for t in range(len(rows[0]) - 1) if rows[0].labels[t + 1] != -100)
    assert right[0].item() == pytest.approx(by_hand, abs=1e-4)


def test_shared_prompt_layout_equals_padded_pairs(tiny_model, tiny_tokenizer, tmp_path):
    """One row per pair (prompt computed once, rejected answer masked from the chosen one) gives the
    log-probabilities, counts and gradients of the plain [2B, T] layout, including answers that
    start alike, one answer being a prefix of the other, and multi-turn prompts with a system message."""
    from affinage.config import AdapterConfig
    from affinage.data.preference import collate_pairs_shared_prompt
    from affinage.recipes.dpo import shared_prompt_logps, use_hidden_states_head

    rows = [
        {"prompt": "hello there", "chosen": "yes abc def", "rejected": "yes"},
        {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}],
         "chosen": "alpha", "rejected": "beta gamma delta epsilon"},
        {"prompt": "x", "chosen": "same start A", "rejected": "same start B longer"},
    ]
    path = tmp_path / "edge.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    data = load_preference_data(PreferenceDataConfig(train=[str(path)], max_length=96), tiny_tokenizer)
    policy = apply_adapter(tiny_model, AdapterConfig(method="lora", r=4))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    weights = torch.randn(6, generator=torch.Generator().manual_seed(1))

    def run(forward, batch):
        policy.zero_grad(set_to_none=True)
        logps, lengths = forward(policy, batch)
        (logps * weights).sum().backward()
        return logps.detach(), lengths, {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    plain = run(concatenated_logps, collate_pairs(data.train, tiny_tokenizer.pad_token_id))
    for fused in (False, True):
        if fused:
            use_hidden_states_head(policy)
        shared = run(shared_prompt_logps, collate_pairs_shared_prompt(data.train, tiny_tokenizer.pad_token_id))
        torch.testing.assert_close(shared[0], plain[0], atol=1e-4, rtol=1e-6)
        assert shared[1].tolist() == plain[1].tolist()
        for name, grad in plain[2].items():
            torch.testing.assert_close(shared[2][name], grad, atol=1e-4 * grad.abs().max().item(), rtol=1e-3)


def test_hidden_states_head_gives_the_same_logps_and_gradients(tiny_model, tiny_tokenizer, pairs_file):
    """With the frozen head applied by frozen_head_logps (no logits kept), log-probabilities and the
    LoRA gradients equal those of the plain forward; restoring the head gives logits again."""
    from affinage.config import AdapterConfig
    from affinage.recipes.dpo import restore_head, use_hidden_states_head

    policy = apply_adapter(tiny_model, AdapterConfig(method="lora", r=4))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3)
    data = load_preference_data(PreferenceDataConfig(train=[str(pairs_file)], max_length=96), tiny_tokenizer)
    batch = collate_pairs(data.train[:3], tiny_tokenizer.pad_token_id)
    weights = torch.randn(6, generator=torch.Generator().manual_seed(0))

    def logps_and_grads():
        policy.zero_grad(set_to_none=True)
        logps, lengths = concatenated_logps(policy, batch)
        (logps * weights).sum().backward()
        return logps.detach(), lengths, {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}

    plain, lengths, grads = logps_and_grads()
    assert use_hidden_states_head(policy)
    fused, fused_lengths, fused_grads = logps_and_grads()
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-6)  # sums of ~120 nats: fp32 ulps
    assert fused_lengths.tolist() == lengths.tolist()
    for name in grads:  # fp32 sums over ~100 tokens in another order: compare at the gradient's scale
        scale = grads[name].abs().max().item()
        torch.testing.assert_close(fused_grads[name], grads[name], atol=1e-4 * scale, rtol=1e-3)
    restore_head(policy)
    assert policy(torch.tensor([[5, 6, 7]])).logits.shape[-1] == len(tiny_tokenizer)
    full = copy_model(tiny_model)
    for param in full.parameters():
        param.requires_grad_(True)
    assert not use_hidden_states_head(full)  # a trainable head keeps the plain path


def test_lora_reference_is_the_disabled_adapter_and_no_copy(tiny_model, tiny_tokenizer, pairs_file, tiny_model_dir,
                                                             tmp_path, monkeypatch):
    """The adapter-disabled policy gives a frozen copy's log-probabilities, even with a trained
    adapter; and a LoRA run never builds a second model (the only Llama alive is the policy's)."""
    from affinage.config import AdapterConfig

    reference = copy_model(tiny_model)
    policy = apply_adapter(tiny_model, AdapterConfig(method="lora", r=4))
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # a trained adapter: the policy now differs from the base
    data = load_preference_data(PreferenceDataConfig(train=[str(pairs_file)], max_length=96), tiny_tokenizer)
    batch = collate_pairs(data.train[:4], tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        with disabled_adapter(policy):
            disabled, _ = concatenated_logps(policy, batch)
        frozen, _ = concatenated_logps(reference, batch)
        active, _ = concatenated_logps(policy, batch)
    torch.testing.assert_close(disabled, frozen, atol=1e-6, rtol=0)
    assert (active - frozen).abs().max() > 1e-2

    def no_copy(model):
        raise AssertionError("a LoRA run must not copy the model")

    monkeypatch.setattr("affinage.models.adapters.copy_model", no_copy)
    alive = []
    real_log = dpo_recipe.MetricLogger.log

    def count_models(self, row):
        real_log(self, row)
        gc.collect()
        alive.append(sum(isinstance(o, LlamaForCausalLM) for o in gc.get_objects()))

    monkeypatch.setattr(dpo_recipe.MetricLogger, "log", count_models)
    del reference, policy
    gc.collect()
    before = sum(isinstance(o, LlamaForCausalLM) for o in gc.get_objects())  # the fixture's model
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, tmp_path / "lora", "train.max_steps=2"))
    assert alive and max(alive) == before + 1


def test_cached_reference_equals_live(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    """Full fine-tuning: a frozen copy (live) or log-probs precomputed and cached on disk give the
    same losses and weights; a second run reads the cache; other data means another fingerprint."""
    common = ("adapter.method=full", "train.max_steps=3", "train.lr=1e-3", "train.batch_size=4")
    cache = tmp_path / "cache"
    live, cached = tmp_path / "live", tmp_path / "cached"
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, live, *common))
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, cached, *common, "precompute_reference=true",
                              f"reference_cache_dir={cache}"))
    l_live, l_cached = train_rows(live), train_rows(cached)
    assert [r["loss"] for r in l_cached] == pytest.approx([r["loss"] for r in l_live], abs=1e-5)
    # margins are beta * log-ratios of sequences (~50 nats): fp32 rounding in another batch layout ~1e-5
    assert [r["margins"] for r in l_cached] == pytest.approx([r["margins"] for r in l_live], abs=5e-5)
    w_live, w_cached = load_file(live / "final" / "model.safetensors"), load_file(cached / "final" / "model.safetensors")
    for name in w_live:  # after 3 Adam steps of 1e-3; a near-zero gradient amplifies fp32 noise
        torch.testing.assert_close(w_cached[name], w_live[name], atol=1e-4, rtol=1e-3)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1

    # a second run reads the cache instead of running the reference forward again
    calls = []
    real = dpo_recipe.cached_reference_logps

    def spy(model, splits, collate, forward, *args, **kwargs):
        def counting(m, b):
            calls.append(1)
            return forward(m, b)

        return real(model, splits, collate, counting, *args, **kwargs)

    monkeypatch.setattr(dpo_recipe, "cached_reference_logps", spy)
    again = tmp_path / "again"
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, again, *common, "precompute_reference=true",
                              f"reference_cache_dir={cache}"))
    assert not calls
    assert [r["loss"] for r in train_rows(again)] == pytest.approx([r["loss"] for r in l_cached], abs=1e-7)
    other = write_pairs(tmp_path / "other.jsonl", seed=5)
    dpo_recipe.train(make_cfg(tiny_model_dir, other, tmp_path / "other", *common, "precompute_reference=true",
                              f"reference_cache_dir={cache}"))
    assert calls and len(list(cache.glob("*.safetensors"))) == 2


def test_accumulation_4x1_equals_1x4(tiny_model_dir, pairs_file, tmp_path):
    """Per-pair losses divided by the global number of pairs: 4 micro-batches of 1 pair give the
    same losses, metrics and weights as 1 micro-batch of 4 (full fine-tuning, frozen-copy reference)."""
    a, b = tmp_path / "a", tmp_path / "b"
    common = ("adapter.method=full", "train.max_steps=3", "train.lr=1e-3")
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, a, "train.batch_size=4", "train.grad_accum=1", *common))
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, b, "train.batch_size=1", "train.grad_accum=4", *common))
    ra, rb = train_rows(a), train_rows(b)
    assert [r["loss"] for r in ra] == pytest.approx([r["loss"] for r in rb], abs=1e-5)
    assert [r["accuracies"] for r in ra] == [r["accuracies"] for r in rb]
    # margins and log-probs are sums over sequences (~50 nats): fp32 rounding differs with padding
    for key in ("margins", "chosen_logps"):
        assert [r[key] for r in ra] == pytest.approx([r[key] for r in rb], abs=5e-5), key
    assert ra[-1]["loss"] < ra[0]["loss"]
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], atol=1e-4, rtol=1e-3)


def test_ctrl_c_then_resume_equals_straight_run(tiny_model_dir, pairs_file, tmp_path, monkeypatch):
    n, k = 5, 2
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, straight, f"train.max_steps={n}"))
    real_log = dpo_recipe.MetricLogger.log

    def interrupt(self, row):
        real_log(self, row)
        if row.get("split") == "train" and row["step"] == k:
            raise KeyboardInterrupt

    monkeypatch.setattr(dpo_recipe.MetricLogger, "log", interrupt)
    with pytest.raises(SystemExit) as info:
        dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, resumed, f"train.max_steps={n}"))
    assert info.value.code == 130
    monkeypatch.setattr(dpo_recipe.MetricLogger, "log", real_log)
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, resumed, f"train.max_steps={n}", "run.resume=true"))
    assert [r["loss"] for r in train_rows(resumed)] == pytest.approx([r["loss"] for r in train_rows(straight)], abs=1e-6)
    ws = load_file(straight / "final" / "adapter" / "adapter_model.safetensors")
    wr = load_file(resumed / "final" / "adapter" / "adapter_model.safetensors")
    for name in ws:
        torch.testing.assert_close(ws[name], wr[name], atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", ["kto", "simpo"])
def test_other_losses_learn_the_preference(tiny_model_dir, pairs_file, tmp_path, loss):
    """KTO (pairs split into desirable/undesirable answers, with mismatched KL sequences) and the
    reference-free SimPO both separate chosen from rejected rewards."""
    out = tmp_path / loss
    dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, out, f"loss={loss}", "train.max_steps=10",
                              "beta=null" if loss == "simpo" else "beta=0.5"))
    rows = train_rows(out)
    assert rows[-1]["margins"] > rows[0]["margins"] + 0.1
    assert rows[-1]["loss"] < rows[0]["loss"]
    if loss == "kto":
        assert rows[0]["kl"] is not None and "accuracies" not in rows[0]  # unpaired: no per-pair accuracy


@pytest.mark.parametrize(
    ("adapter", "starts_at_reference"),
    [(["adapter.method=dora"], True), (["adapter.method=freeze", "adapter.trainable=[layers\\.1\\.]"], True),
     (["adapter.method=prompt_tuning", "adapter.num_virtual_tokens=4"], False)],
)
def test_other_adapters(tiny_model_dir, pairs_file, tmp_path, adapter, starts_at_reference):
    """DoRA and prompt tuning use the adapter-disabled policy as reference, layer freezing a frozen
    copy; DoRA and freezing start exactly at the reference (loss log 2), prompt tuning does not
    (its soft prompt is not in the reference). All learn and write final/."""
    out = tmp_path / "run"
    final = dpo_recipe.train(make_cfg(tiny_model_dir, pairs_file, out, "train.max_steps=4", *adapter))
    losses = [r["loss"] for r in train_rows(out)]
    assert (losses[0] == pytest.approx(math.log(2), abs=1e-5)) == starts_at_reference
    assert losses[-1] < losses[0]
    assert (final / "config.json").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["label_smoothing=0.1"], "only used by loss=cdpo or loss=robust"),
        (["loss=cdpo"], "must be in \\(0, 0.5\\)"),
        (["loss=simpo", "precompute_reference=true"], "uses no reference model"),
        (["loss=dpop"], "must be one of"),
        (["adapter.method=freeze"], "needs patterns"),
        (["beta=-1"], "must be positive"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DPOConfig, None, ["data.train=[x.jsonl]", *overrides])


def test_loss_choices_match_the_loss_names():
    from typing import get_args

    from affinage.losses.preference import PreferenceLossName

    assert set(get_args(dpo_recipe.LossChoice)) == {n.value for n in PreferenceLossName}


@pytest.mark.parametrize("name", ["dpo.yaml", "rm_helpfulness.yaml", "rm_safety.yaml"])
def test_example_configs_load(name):
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / name
    cls = config_class_for(path)
    cfg = load_config(cls, path)
    for file in cfg.data.train + cfg.data.validation:
        assert (Path(__file__).parents[2] / file).is_file(), file


def test_missing_sft_output_says_what_to_run(pairs_file, tmp_path):
    from affinage.errors import ModelError

    with pytest.raises(ModelError, match="Run that stage first"):
        dpo_recipe.train(make_cfg(tmp_path / "runs" / "quickstart" / "final", pairs_file, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
