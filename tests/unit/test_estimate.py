"""`affinage estimate`: FLOP formulas against torch's FlopCounterMode, memory components against the
tensors a real training step allocates, token counts against the data loader, time and energy by
value. Tiny random Llama models, fp32, fixed hardware figures (nothing is timed)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from affinage.config import AdapterConfig, SFTConfig, load_config
from affinage.data.collate import collate_packed, collate_padded
from affinage.data.sft import load_sft_data
from affinage.data.tokenize import TokenizedExample
from affinage.engine.optim import build_optimizer
from affinage.models.adapters import apply_adapter
from affinage.models.packed_attention import use_packed_attention
from affinage.planning.estimate import (
    EstimateOptions,
    Hardware,
    Pass,
    activation_bytes_per_token_layer,
    architecture,
    estimate_config,
    forward_flops,
    sft_pass,
    train_flops,
    trainable_of,
    training_memory,
)
from affinage.recipes.sft import causal_lm_loss_sum
from affinage.testing import make_tiny_model
from tests.recipes.test_sft_recipe import write_conversations

HARDWARE = Hardware(device="cpu", name="test CPU", dtype="float32", matmul_flops=1e11, bandwidth=1e10, threads=2,
                    memory_bytes=8 * 1024**3, power_w=20.0, power_note="given", measured=False)


def examples() -> list[TokenizedExample]:
    """Three examples of 10, 16 and 7 tokens; the trained labels are the last 4, 4 and 3 tokens.

    With the shifted loss, position j is kept when labels[j + 1] is trained: j in 5..8, 11..14 and
    3..5; their union over the padded batch is {3, 4, 5, 6, 7, 8, 11, 12, 13, 14}: 10 positions.
    """
    out = []
    for n, trained in ((10, 4), (16, 4), (7, 3)):
        ids = [10 + (7 * i) % 200 for i in range(n)]
        out.append(TokenizedExample(ids, [-100] * (n - trained) + ids[n - trained:]))
    return out


def test_architecture_counts_by_value(tiny_model):
    """make_tiny_model: d=32, 2 layers, 4 heads of 8, 2 KV heads (kv_dim 16), d_ff=64, V=259, tied.

    Per layer: q 32x32 + k 32x16 + v 32x16 + o 32x32 + gate, up, down 3 x 32x64 = 9216 weights;
    body = 2 x 9216 = 18432; head = embedding = 32 x 259 = 8288 (one tensor); norms: 2 x 2 x 32 + 32.
    """
    arch = architecture(tiny_model)
    assert (arch.layers, arch.d_model, arch.d_ff, arch.kv_dim, arch.vocab) == (2, 32, 64, 16, 259)
    assert arch.body == 18432 and arch.head == 8288 and arch.embedding == 8288 and arch.tied
    assert arch.params == 18432 + 8288 + 160 == sum(p.numel() for p in tiny_model.parameters())


def test_sft_pass_layouts():
    padded = sft_pass(examples(), packed=False)
    assert padded == Pass(rows=3, tokens=3 * 16, head_tokens=3 * 10, attention=3 * 16**2)
    packed = sft_pass(examples(), packed=True)
    assert packed == Pass(rows=1, tokens=33, head_tokens=4 + 4 + 3, attention=10**2 + 16**2 + 7**2)
    soft = sft_pass(examples(), packed=False, virtual_tokens=5)
    assert soft == Pass(rows=3, tokens=3 * 21, head_tokens=30, attention=3 * 21**2)


def counted_flops(model, batch, offset: int = 0) -> int:
    """Forward + backward FLOPs of the recipe's loss, as torch counts them.

    torch counts matrix products; its CPU attention kernels are registered here with torch's own
    forward formula (QK^T and the weighted sum of V: 4 B T^2 d per layer) and, for the backward, the
    gradients of those two products (twice the forward). torch's formula for the GPU kernels'
    backward also counts flash attention's recomputation of the scores, which PaLM's 12 L d T
    convention leaves out.
    """
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *args, **kwargs: sdpa_flop_count(q, k, v),
        aten._scaled_dot_product_flash_attention_for_cpu_backward:
            lambda grad_out, q, k, v, *args, **kwargs: 2 * sdpa_flop_count(q, k, v),
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        loss, _ = causal_lm_loss_sum(model, batch, offset)
        loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("method", ["full", "lora", "prompt_tuning"])
def test_training_flops_equal_torch_flop_counter(tiny_tokenizer, method):
    """The padded batch of :func:`examples`: 3 rows of 16 tokens, 30 head positions, 3 x 16^2 pairs.

    full: 6 x 18432 x 48 + 6 x 8288 x 30 + 12 x 2 x 32 x 768 = 5,308,416 + 1,491,840 + 589,824
    = 7,390,080. LoRA (r=4, every linear layer: 2048 adapter weights per layer) and prompt tuning
    (5 soft tokens: 3 rows of 21) follow the frozen-backbone formula: 4N per token, 6 N_adapter,
    minus layer 0's query/key/value input gradients, which nothing needs.
    """
    model = make_tiny_model(tiny_tokenizer)
    cfg = AdapterConfig(method=method, r=4, num_virtual_tokens=5)
    t = trainable_of(copy.deepcopy(model), cfg)
    arch = architecture(model)
    wrapped = apply_adapter(model, cfg)
    wrapped.train()
    p = sft_pass(examples(), packed=False, virtual_tokens=t.virtual_tokens)
    expected = train_flops(arch, p, t)
    if method == "full":
        assert expected == 7_390_080
    if method == "lora":
        assert t.adapter == 2 * 2048
    assert counted_flops(wrapped, collate_padded(examples(), tiny_tokenizer.pad_token_id), t.virtual_tokens) == expected


@pytest.mark.parametrize("method", ["dora", "freeze"])
def test_approximate_flop_formulas(tiny_tokenizer, method):
    """DoRA forms B A each pass for its weight norm, counted as 4 r sum(in x out): within 0.5% here.
    freeze counts the backward from the head down to the lowest trained layer by whole layers: an
    upper bound. Here only layer 1's MLP trains, so layer 1's attention (and the MLP's gate/up input
    gradients) never run backward: 4,631,808 counted for 3,747,072 run (+24%)."""
    model = make_tiny_model(tiny_tokenizer)
    cfg = AdapterConfig(method=method, r=4, trainable=[r"layers\.1\.mlp"])
    t = trainable_of(copy.deepcopy(model), cfg)
    arch = architecture(model)
    wrapped = apply_adapter(model, cfg)
    wrapped.train()
    expected = train_flops(arch, sft_pass(examples(), packed=False), t)
    measured = counted_flops(wrapped, collate_padded(examples(), tiny_tokenizer.pad_token_id))
    if method == "dora":
        assert measured == pytest.approx(expected, rel=5e-3)
    else:
        assert (expected, measured) == (4_631_808, 3_747_072)


def test_packed_flops_equal_torch_flop_counter(tiny_tokenizer):
    """Packed rows attend within each example: attention pairs 10^2 + 16^2 + 7^2 = 405, not 33^2."""
    model = make_tiny_model(tiny_tokenizer)
    use_packed_attention(model)
    t = trainable_of(copy.deepcopy(model), AdapterConfig(method="full"))
    model.train()
    p = sft_pass(examples(), packed=True)
    expected = 6 * 18432 * 33 + 6 * 8288 * 11 + 12 * 2 * 32 * 405
    assert train_flops(architecture(model), p, t) == expected
    assert counted_flops(model, collate_packed(examples())) == expected


def test_forward_flops_and_gradient_checkpointing_by_value(tiny_model):
    arch = architecture(tiny_model)
    p = Pass(rows=2, tokens=20, head_tokens=6, attention=200)
    forward = 2 * 18432 * 20 + 2 * 8288 * 6 + 4 * 2 * 32 * 200
    assert forward_flops(arch, p) == forward
    t = trainable_of(copy.deepcopy(tiny_model), AdapterConfig(method="full"))
    # checkpointing recomputes the layers' forward once more (not the head)
    assert train_flops(arch, p, t, checkpointing=True) - train_flops(arch, p, t) == 2 * 18432 * 20 + 4 * 2 * 32 * 200


@pytest.mark.parametrize("method", ["full", "lora"])
def test_memory_components_equal_real_tensors(tiny_tokenizer, method):
    """Weights, gradients and AdamW states of one real optimizer step, fp32: the estimate's bytes
    equal the tensors'. LoRA (r=8): 2 layers x (q 8x(32+32) + k 8x(32+16) + v 8x48 + o 8x64 + gate,
    up, down 3 x 8x(32+64)) = 2 x 4096 = 8192 trainable fp32 parameters; AdamW keeps 2 fp32 per
    trainable parameter."""
    model = make_tiny_model(tiny_tokenizer)
    cfg = AdapterConfig(method=method, r=8)
    arch, t = architecture(model), trainable_of(copy.deepcopy(model), cfg)
    wrapped = apply_adapter(model, cfg)
    wrapped.train()
    optimizer = build_optimizer(wrapped, load_config(SFTConfig, None, ["data.train=[x.jsonl]"]).train)
    loss, _ = causal_lm_loss_sum(wrapped, collate_padded(examples(), tiny_tokenizer.pad_token_id))
    loss.backward()
    optimizer.step()
    memory = training_memory(arch, t, weights_bytes=4, compute_bytes=4, peak=sft_pass(examples(), packed=False),
                             reference="none").components
    trainable = [p for p in wrapped.parameters() if p.requires_grad]
    frozen = [p for p in wrapped.parameters() if not p.requires_grad]
    if method == "lora":
        assert t.trainable == 8192
        assert memory["weights"] == sum(p.nbytes for p in frozen)
        assert memory["adapter weights"] == sum(p.nbytes for p in trainable) == 8192 * 4
    else:
        assert memory["weights"] == sum(p.nbytes for p in trainable) == 26880 * 4
    assert memory["gradients"] == sum(p.grad.nbytes for p in trainable)
    states = sum(s.nbytes for st in optimizer.state.values() for k, s in st.items() if k in ("exp_avg", "exp_avg_sq"))
    assert memory["optimizer (AdamW)"] == states == 2 * t.trainable * 4
    assert "reference copy" not in memory
    with_copy = training_memory(arch, t, weights_bytes=4, compute_bytes=4, peak=Pass(1, 1, 1, 1), reference="frozen copy")
    assert with_copy.components["reference copy"] == arch.params * 4


def saved_bytes_per_token_layer(tokenizer, method: str, dtype: torch.dtype) -> float:
    """Bytes autograd keeps for the backward per token and layer: the difference between a 3-layer and
    a 1-layer model on the same padded batch, halved. Parameters and autocast's low-precision copies
    of them (tensors shaped like a weight matrix; counted as their own memory component) are left out."""
    batch = collate_padded(examples(), tokenizer.pad_token_id)
    saved = []
    for layers in (1, 3):
        model = make_tiny_model(tokenizer, hidden_size=64, num_layers=layers)
        weights = torch.float32 if method == "full" else dtype
        wrapped = apply_adapter(model.to(weights), AdapterConfig(method=method, r=8))
        wrapped.train()
        params = {p.untyped_storage().data_ptr() for p in wrapped.parameters()}
        shapes = {tuple(p.shape) for p in wrapped.parameters() if p.dim() == 2}
        seen: dict[int, int] = {}

        def pack(x, _seen=seen, _params=params, _shapes=shapes):
            storage = x.untyped_storage()
            if storage.data_ptr() not in _params and tuple(x.shape) not in _shapes:
                _seen[storage.data_ptr()] = storage.nbytes()
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), \
                torch.autocast("cpu", dtype=dtype, enabled=dtype != weights):
            causal_lm_loss_sum(wrapped, batch)
        saved.append(sum(seen.values()))
    return (saved[1] - saved[0]) / 2 / batch["input_ids"].numel()


@pytest.mark.parametrize(("method", "dtype"), [("full", torch.float32), ("lora", torch.float32),
                                               ("full", torch.bfloat16), ("lora", torch.bfloat16)])
def test_activation_bytes_per_token_layer_match_saved_tensors(tiny_tokenizer, method, dtype):
    """d=64, d_ff=128, kv_dim=32: (7 x 64 + 2 x 32 + 4 x 128) = 1024 elements x 4 bytes (fp32);
    bf16 full fine-tuning keeps fp32 weights (mixed precision): 1024 x 2 + 16 x 64 + 4 x 32 = 3200;
    bf16 LoRA adds fp32 copies of the adapted inputs: 2048 + 4 x (3 x 64 + 64 + 2 x 64 + 128) = 4096.
    Measured ratios on this model are 1.03 to 1.19 (0.91 to 1.12 on SmolLM2-135M)."""
    model = make_tiny_model(tiny_tokenizer, hidden_size=64)
    arch, t = architecture(model), trainable_of(model, AdapterConfig(method=method, r=8))
    compute = torch.tensor([], dtype=dtype).element_size()
    weights = 4 if method == "full" else compute
    formula = activation_bytes_per_token_layer(arch, t, weights_bytes=weights, compute_bytes=compute)
    assert formula == {("full", 4): 4096, ("lora", 4): 4096, ("full", 2): 3200, ("lora", 2): 4096}[(method, compute)]
    measured = saved_bytes_per_token_layer(tiny_tokenizer, method, dtype)
    assert 0.8 < measured / formula < 1.25


@pytest.fixture
def sft_yaml(tmp_path, tiny_model_dir):
    train = write_conversations(tmp_path / "train.jsonl", n=40)
    val = write_conversations(tmp_path / "val.jsonl", n=6, seed=3)

    def make(*overrides: str) -> SFTConfig:
        return load_config(SFTConfig, None, [
            f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.train=[{train}]",
            f"data.validation=[{val}]", "data.max_length=128", "train.batch_size=4", "train.grad_accum=2",
            "run.eval_every=2", *overrides,
        ])

    return make


def test_tokens_counted_equal_the_data(sft_yaml, tiny_model_dir):
    from affinage.models.loading import load_tokenizer

    cfg = sft_yaml()
    report = estimate_config(cfg, EstimateOptions(), hardware=HARDWARE)
    data = load_sft_data(cfg.data, load_tokenizer(str(tiny_model_dir)))
    assert report.data["train_tokens"] == sum(len(ex.input_ids) for ex in data.train)
    assert report.data["trained_tokens"] == sum(ex.num_trainable for ex in data.train)
    assert report.data["train_examples"] == len(data.train) == 40
    assert report.steps == 40 // (4 * 2)  # one epoch of global batches of 8
    # packed rows have no padding: one epoch processes exactly the tokens of the 40 examples
    assert report.data["tokens processed (with padding)"] == report.data["train_tokens"]
    assert not report.data["sampled"]
    sampled = estimate_config(cfg, EstimateOptions(sample_rows=12), hardware=HARDWARE)
    assert sampled.data["sampled"] and sampled.data["scale"] == pytest.approx(46 / 12, rel=0.1)
    assert sampled.data["train_tokens"] == pytest.approx(report.data["train_tokens"], rel=0.2)


def test_time_energy_and_co2_by_value(sft_yaml):
    options = EstimateOptions(efficiency=0.5, power_w=100.0, grid_intensity=400.0, pue=1.5)
    report = estimate_config(sft_yaml("adapter.method=full"), options, hardware=HARDWARE)
    full = report.methods[0]
    assert full.configured and full.method == "full" and full.label == "full"
    steps = report.steps
    per_step = full.flops["train"] / steps / (1e11 * 0.5) + 26880 * 64 / 1e10  # passes + the AdamW update
    assert full.time_s["per_step"] == pytest.approx(per_step)
    evaluations = 3  # run.eval_every=2 over 5 steps: after steps 2 and 4, and at the end
    assert full.flops["evaluation"] > 0 and report.steps == 5
    assert full.time_s["evaluation"] == pytest.approx(full.flops["evaluation"] / (1e11 * 0.5))
    assert full.time_s["total"] == pytest.approx(per_step * steps + full.time_s["evaluation"])
    kwh = full.time_s["total"] / 3600 * 100.0 * 1.5 / 1000
    assert full.energy_kwh == pytest.approx(kwh) and full.co2_kg == pytest.approx(kwh * 400.0 / 1000)
    # each evaluation is one forward pass over the 6 validation examples
    one_eval = full.flops["evaluation"] / evaluations
    assert one_eval == pytest.approx(forward_flops(architecture(make_tiny_model()), sum(
        (sft_pass([ex], packed=True) for ex in _val_examples(sft_yaml)), Pass(0, 0, 0, 0, 0))))
    assert [m.method for m in report.methods] == ["full", "lora", "prompt_tuning"]
    lora = report.methods[1]
    assert lora.memory["optimizer (AdamW)"] == 2 * 4 * lora.trainable_params < full.memory["optimizer (AdamW)"]
    assert report.data["fraction_of_compute_optimal"] == pytest.approx(
        report.data["tokens processed (with padding)"] / (20 * 26880))


def _val_examples(make) -> list[TokenizedExample]:
    from affinage.models.loading import load_tokenizer

    cfg = make()
    return load_sft_data(cfg.data, load_tokenizer(cfg.model.name)).validation


def write_pairs(path, n=12):
    with path.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"prompt": f"question {i} about alpha beta", "chosen": f"good answer {i} " * 2,
                                 "rejected": f"bad {i}"}) + "\n")
    return path


def test_dpo_reference_variants(tmp_path, tiny_model_dir):
    from affinage.recipes.dpo import DPOConfig

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cfg = load_config(DPOConfig, None, [f"model.name={tiny_model_dir}", "model.dtype=float32",
                                        f"data.train=[{pairs}]", "train.batch_size=2", "adapter.method=full"])
    report = estimate_config(cfg, EstimateOptions(), hardware=HARDWARE)
    by = {m.label: m for m in report.methods}
    copy_, pre = by["full, ref: frozen copy"], by["full, ref: precomputed"]
    lora, lora_pre = by["lora r=16, ref: adapter disabled"], by["lora r=16, ref: precomputed"]
    assert copy_.configured and [m.configured for m in report.methods].count(True) == 1
    assert copy_.memory["reference copy"] == 26880 * 4 and "reference copy" not in pre.memory
    assert "reference copy" not in lora.memory
    # the reference is the same frozen forward pass whether it is a copy or the adapter switched off
    assert copy_.flops["reference"] == lora.flops["reference"] > 0
    assert copy_.flops["train"] == pre.flops["train"] and "reference" not in pre.flops
    # precomputing costs one forward pass over the data once: less than one per step when steps > 1 epoch
    assert pre.flops["precompute"] > 0 and lora_pre.flops["precompute"] == pre.flops["precompute"]
    assert pre.peak_memory_bytes < copy_.peak_memory_bytes
    assert any(m.label.startswith("prompt tuning") for m in report.methods)


def test_reward_model_estimate(tmp_path, tiny_model_dir):
    """A reward model: the LM head is replaced by a d x 1 score head, which runs at every position
    of the padded [2B, T] batch of chosen and rejected rows."""
    from affinage.recipes.reward import RewardConfig

    pairs = write_pairs(tmp_path / "pairs.jsonl")
    cfg = load_config(RewardConfig, None, [f"model.name={tiny_model_dir}", "model.dtype=float32",
                                           f"data.train=[{pairs}]", "train.batch_size=2"])
    report = estimate_config(cfg, EstimateOptions(), hardware=HARDWARE)
    assert report.model["head_params"] == 32 and report.model["params"] == 26880 + 32
    full = report.methods[0]
    assert full.method == "full" and full.trainable_params == 26880 + 32 and "logits" not in full.memory
    assert report.steps == 6 and report.data["train_examples"] == 12


def test_grpo_estimate_counts_rollouts(tmp_path, tiny_model_dir):
    from affinage.recipes.grpo import GRPOConfig

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"what is {i} + {i}?"}) + "\n" for i in range(8)))
    cfg = load_config(GRPOConfig, None, [
        f"model.name={tiny_model_dir}", "model.dtype=float32", f"data.train=[{prompts}]", "train.max_steps=3",
        "rollout.prompts_per_step=2", "rollout.samples_per_prompt=4", "rollout.max_new_tokens=8",
        "rollout.batch_size=8", "reward.sources=[{function: examples/rewards.py:short_and_correct}]",
    ])
    report = estimate_config(cfg, EstimateOptions(), hardware=HARDWARE)
    lora, full = report.methods[0], report.methods[1]
    assert report.steps == 3 and lora.reference == "adapter disabled" and full.reference == "frozen copy"
    assert lora.flops["generation"] > 0 and lora.flops["reference"] > 0
    assert full.memory["reference copy"] == 26880 * 4
    # KV cache: 8 sequences x (longest prompt + 8 new tokens) x 2 (K, V) x 2 layers x 16 x 4 bytes
    width = lora.memory["KV cache (rollout)"] / (8 * 2 * 2 * 16 * 4)
    assert width == int(width) and width > 8


def test_cli_writes_json(tmp_path, sft_yaml, tiny_model_dir):
    from typer.testing import CliRunner

    from affinage.cli import _register_commands, app

    _register_commands()
    train = write_conversations(tmp_path / "t.jsonl", n=8)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"stage": "sft", "model": {"name": str(tiny_model_dir), "dtype": "float32"},
                                      "data": {"train": [str(train)]}, "train": {"batch_size": 2}}))
    out = tmp_path / "estimate.json"
    result = CliRunner().invoke(app, ["estimate", str(config), "train.max_steps=3", "--json", str(out),
                                      "--matmul-flops", "1e11", "--bandwidth", "1e10", "--grid-intensity", "60"])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["steps"] == 3 and data["hardware"]["matmul_flops"] == 1e11 and not data["hardware"]["measured"]
    assert [m["method"] for m in data["methods"]] == ["lora", "full", "prompt_tuning"]
    assert all(math.isclose(m["co2_kg"], m["energy_kwh"] * 60 / 1000) for m in data["methods"])
    assert "Estimated cost per method" in result.output
