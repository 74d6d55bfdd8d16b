"""Adapters: trainable counts by value, save_final round trips, disabled adapters, atomic writes."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from affinage.config import AdapterConfig
from affinage.errors import ModelError
from affinage.models.adapters import (
    apply_adapter,
    copy_model,
    count_parameters,
    disabled_adapter,
    save_final,
    unwrap_to_base,
)
from affinage.testing import make_tiny_model
from affinage.utils.fs import atomic_directory, atomic_write_text


def _ids(tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode("Un comté de 24 mois.", add_special_tokens=False)])


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _linear_shapes(model) -> list[tuple[str, int, int]]:
    """(name, in, out) of every nn.Linear but the output head: what peft's all-linear targets."""
    return [
        (name, mod.in_features, mod.out_features)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name != "lm_head"
    ]


def _perturb_lora(model, seed: int = 0) -> None:
    """peft initialises lora_B to zero (a no-op adapter); give every adapter weight a value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))


def _state_copy(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# Trainable parameter counts
# ----------------------------------------------------------------------------------------------


def test_full_trains_everything_and_counts_tied_once(tiny_model):
    for param in tiny_model.parameters():
        param.requires_grad_(False)
    model = apply_adapter(tiny_model, AdapterConfig(method="full"))
    assert model is tiny_model
    unique = {p.data_ptr(): p.numel() for p in tiny_model.state_dict().values()}
    assert count_parameters(model) == (sum(unique.values()), sum(unique.values()))


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_lora_and_dora_counts(tiny_model, method):
    r = 4
    shapes = _linear_shapes(tiny_model)
    _, total_before = count_parameters(tiny_model)
    model = apply_adapter(tiny_model, AdapterConfig(method=method, r=r, alpha=8))
    # LoRA adds A [r, in] and B [out, r] per linear layer; DoRA also a magnitude vector [out].
    expected = sum(r * (i + o) for _, i, o in shapes)
    if method == "dora":
        expected += sum(o for _, _, o in shapes)
    trainable, total = count_parameters(model)
    assert trainable == expected
    assert total == total_before + expected
    assert all(("lora_" in n) == p.requires_grad for n, p in model.named_parameters())


def test_lora_named_targets(tiny_model):
    r = 2
    shapes = [s for s in _linear_shapes(tiny_model) if s[0].endswith(("q_proj", "v_proj"))]
    model = apply_adapter(tiny_model, AdapterConfig(method="lora", r=r, target_modules=["q_proj", "v_proj"]))
    assert count_parameters(model)[0] == sum(r * (i + o) for _, i, o in shapes)


def test_lora_unknown_target_lists_linear_layers(tiny_model):
    with pytest.raises(ModelError, match=r"adapter.target_modules.*q_proj"):
        apply_adapter(tiny_model, AdapterConfig(method="lora", target_modules=["qkv"]))


def test_prompt_tuning_counts_and_text_init(tiny_model, tiny_tokenizer):
    n = 7
    embeddings = tiny_model.get_input_embeddings().weight.detach().clone()
    cfg = AdapterConfig(method="prompt_tuning", num_virtual_tokens=n, prompt_init_text="Bonjour")
    model = apply_adapter(tiny_model, cfg, tokenizer=tiny_tokenizer)
    assert count_parameters(model)[0] == n * tiny_model.config.hidden_size
    ids = tiny_tokenizer.encode("Bonjour", add_special_tokens=False)  # 7 bytes, then repeated
    ids = (ids * 2)[:n]
    prompt = model.prompt_encoder["default"].embedding.weight
    torch.testing.assert_close(prompt.detach(), embeddings[ids].to(prompt.dtype))
    # The virtual tokens are prepended: the logits cover them too.
    assert model(input_ids=_ids(tiny_tokenizer)).logits.shape[1] == _ids(tiny_tokenizer).shape[1] + n


def test_prompt_tuning_text_needs_tokenizer(tiny_model):
    with pytest.raises(ModelError, match="needs the tokenizer"):
        apply_adapter(tiny_model, AdapterConfig(method="prompt_tuning", prompt_init_text="hi"))


def test_prompt_tuning_without_text_samples_vocabulary(tiny_model):
    vocab = tiny_model.get_input_embeddings().weight.detach()
    model = apply_adapter(tiny_model, AdapterConfig(method="prompt_tuning", num_virtual_tokens=3))
    prompt = model.prompt_encoder["default"].embedding.weight.detach()
    for row in prompt:  # each row is a copy of some vocabulary embedding
        assert torch.isclose(vocab, row).all(dim=1).any()


def test_freeze_counts_and_errors(tiny_model):
    patterns = [r"layers\.1\.", r"^model\.norm"]
    expected = sum(
        p.numel() for n, p in tiny_model.named_parameters() if "layers.1." in n or n.startswith("model.norm")
    )
    model = apply_adapter(tiny_model, AdapterConfig(method="freeze", trainable=patterns))
    assert count_parameters(model)[0] == expected > 0
    with pytest.raises(ModelError, match=r"matches no parameter; names look like: model\.embed_tokens"):
        apply_adapter(tiny_model, AdapterConfig(method="freeze", trainable=["transformer.h"]))
    with pytest.raises(ModelError, match="invalid regular expression"):
        apply_adapter(tiny_model, AdapterConfig(method="freeze", trainable=["("]))


def test_gradient_checkpointing_with_lora_backpropagates(tiny_model, tiny_tokenizer):
    model = apply_adapter(tiny_model, AdapterConfig(method="lora", r=2), gradient_checkpointing=True)
    assert tiny_model.is_activation_checkpointing and tiny_model.config.use_cache is False
    model.train()
    ids = _ids(tiny_tokenizer)
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)


# ----------------------------------------------------------------------------------------------
# Disabling and unwrapping
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_disabled_adapter_runs_the_base_model(tiny_model, tiny_tokenizer, method):
    ids = _ids(tiny_tokenizer)
    base_logits = _logits(tiny_model, ids)
    model = apply_adapter(tiny_model, AdapterConfig(method=method, r=2, num_virtual_tokens=3))
    _perturb_lora(model)
    adapted = _logits(model, ids)[:, -ids.shape[1] :]
    assert (adapted - base_logits).abs().max() > 1e-3
    with disabled_adapter(model) as ref:
        torch.testing.assert_close(_logits(ref, ids), base_logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(_logits(model, ids)[:, -ids.shape[1] :], adapted)
    assert unwrap_to_base(model) is model.get_base_model()


def test_disabled_adapter_refuses_plain_models(tiny_model):
    assert unwrap_to_base(tiny_model) is tiny_model
    with pytest.raises(ValueError, match="no peft adapter"), disabled_adapter(tiny_model):
        pass


def test_copy_model_is_frozen_and_independent(tiny_model):
    ref = copy_model(tiny_model)
    assert count_parameters(ref)[0] == 0 and not ref.training
    with torch.no_grad():
        next(tiny_model.parameters()).add_(1.0)
    assert not torch.equal(next(ref.parameters()), next(tiny_model.parameters()))


# ----------------------------------------------------------------------------------------------
# save_final
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_save_final_merged_loads_with_transformers(tmp_path, tiny_model, tiny_tokenizer, method):
    model = apply_adapter(tiny_model, AdapterConfig(method=method, r=4, alpha=8))
    _perturb_lora(model)
    ids = _ids(tiny_tokenizer)
    expected = _logits(model, ids)
    before = _state_copy(model)

    out = save_final(model, tiny_tokenizer, tmp_path / "final", merge=True)

    # The training model is untouched: same tensors bit for bit, adapter not merged.
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    torch.testing.assert_close(_logits(model, ids), expected, atol=0, rtol=0)

    merged = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(merged, ids), expected, atol=1e-5, rtol=0)
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    assert not any("lora" in k for k in merged.state_dict())
    assert AutoTokenizer.from_pretrained(out).chat_template == tiny_tokenizer.chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tiny_tokenizer.eos_token_id
    assert not (out / "README.md").exists()

    # The adapter loads with peft onto a fresh copy of the base model.
    reloaded = PeftModel.from_pretrained(make_tiny_model(tiny_tokenizer), out / "adapter")
    torch.testing.assert_close(_logits(reloaded, ids), expected, atol=1e-5, rtol=0)


def test_save_final_unmerged_writes_base_and_adapter(tmp_path, tiny_model, tiny_tokenizer):
    ids = _ids(tiny_tokenizer)
    base_logits = _logits(tiny_model, ids)
    model = apply_adapter(tiny_model, AdapterConfig(method="lora", r=4))
    _perturb_lora(model)
    expected = _logits(model, ids)
    out = save_final(model, tiny_tokenizer, tmp_path / "final", merge=False)
    base = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(base, ids), base_logits, atol=1e-6, rtol=0)
    assert "PeftModel.from_pretrained" in (out / "README.md").read_text()
    with_adapter = PeftModel.from_pretrained(base, out / "adapter")
    torch.testing.assert_close(_logits(with_adapter, ids), expected, atol=1e-5, rtol=0)


def test_save_final_prompt_tuning(tmp_path, tiny_model, tiny_tokenizer):
    ids = _ids(tiny_tokenizer)
    base_logits = _logits(tiny_model, ids)
    model = apply_adapter(tiny_model, AdapterConfig(method="prompt_tuning", num_virtual_tokens=4))
    expected = _logits(model, ids)
    out = save_final(model, tiny_tokenizer, tmp_path / "final")
    base = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(_logits(base, ids), base_logits, atol=1e-6, rtol=0)
    assert "cannot be merged" in (out / "README.md").read_text()
    with_prompt = PeftModel.from_pretrained(base, out / "adapter")
    torch.testing.assert_close(_logits(with_prompt, ids), expected, atol=1e-5, rtol=0)


def test_save_final_full_model_replaces_existing_dir(tmp_path, tiny_model, tiny_tokenizer):
    out = tmp_path / "final"
    out.mkdir()
    (out / "stale.txt").write_text("old run")
    model = apply_adapter(tiny_model, AdapterConfig(method="full"))
    save_final(model, tiny_tokenizer, out)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporary siblings left
    ids = _ids(tiny_tokenizer)
    torch.testing.assert_close(_logits(AutoModelForCausalLM.from_pretrained(out), ids), _logits(model, ids))


# ----------------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------------


def test_atomic_directory_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("one")
        assert not target.exists()  # nothing visible until the block ends
    assert (target / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("two")
        raise RuntimeError("interrupted")
    assert (target / "a.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_text(tmp_path):
    path = atomic_write_text(tmp_path / "sub" / "f.txt", "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    atomic_write_text(path, "again")
    assert path.read_text() == "again" and [p.name for p in path.parent.iterdir()] == ["f.txt"]
