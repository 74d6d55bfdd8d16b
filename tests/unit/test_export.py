"""Export: LoRA merge parity, the written directory, int8 quantisation figures, GGUF round trip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from affinage import export as export_module
from affinage.config import AdapterConfig
from affinage.errors import ConfigError, ModelError
from affinage.export import (
    HELD_OUT_TEXT,
    ExportOptions,
    check_gguf,
    compare_logits,
    encode_texts,
    export,
    find_source,
    hf_to_gguf_rope_rows,
    quantize_int8,
    sequence_logits,
    write_gguf,
)
from affinage.models import apply_adapter, load_model, save_final
from affinage.testing import make_tiny_model


def _strong(model):
    """Weights large enough that logits span several units (0.02 init gives logits ~0.4 that any
    tolerance would accept, making parity checks pass trivially)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.fixture
def base_dir(tmp_path, tiny_tokenizer):
    path = tmp_path / "base"
    _strong(make_tiny_model(tiny_tokenizer)).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def _lora(base_dir, method="lora"):
    """A LoRA (or DoRA) model on the base whose B matrices are random, so the adapter changes logits
    (peft starts B at zero, where merged == base whatever the merge does)."""
    model = apply_adapter(load_model(str(base_dir), dtype="float32"),
                          AdapterConfig(method=method, r=4, alpha=8, target_modules=["all-linear"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def _logits(model, tokenizer):
    return sequence_logits(model, encode_texts(tokenizer, export_module.check_texts(tokenizer)))


# ----------------------------------------------------------------------------------------------
# Merge and parity
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("merge", [True, False])
def test_lora_run_exports_merged_weights_matching_the_adapter(tmp_path, base_dir, tiny_tokenizer, merge):
    """The exported directory, loaded by plain transformers, gives the logits of base + adapter (peft)
    within 1e-4, while the adapter moves them by far more than that from the base."""
    peft_model = _lora(base_dir)
    with torch.no_grad():
        reference = _logits(peft_model, tiny_tokenizer)
        with peft_model.disable_adapter():
            base = _logits(peft_model, tiny_tokenizer)
    assert compare_logits(reference, base)["max_abs_diff"] > 0.1  # the adapter matters
    save_final(peft_model, tiny_tokenizer, tmp_path / "run" / "final", merge=merge)

    manifest = export(str(tmp_path / "run"), tmp_path / "out")
    out = tmp_path / "out"
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert not any("lora" in name for name, _ in exported.named_parameters())
    assert compare_logits(reference, _logits(exported, tiny_tokenizer))["max_abs_diff"] < 1e-4
    assert manifest["source"]["kind"] == "run" and manifest["source"]["weights_were_merged"] is merge
    assert manifest["adapter"]["peft_type"] == "LORA" and manifest["adapter"]["r"] == 4
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] < 1e-4
    assert manifest["parity"]["reference"] == "base + adapter (peft)"
    # Tokenizer, chat template and generation config travel with the weights.
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == tiny_tokenizer.chat_template
    assert tokenizer("Ça va")["input_ids"] == tiny_tokenizer("Ça va")["input_ids"]
    assert GenerationConfig.from_pretrained(out).eos_token_id == tiny_tokenizer.eos_token_id
    written = json.loads((out / "export_manifest.json").read_text())
    assert written["parity"] == manifest["parity"]
    assert "model.safetensors" in written["files"] and len(written["files"]["model.safetensors"]["sha256"]) == 64
    assert not list(tmp_path.glob(".out.*"))  # no temporary leftovers


def test_dora_adapter_directory_with_base(tmp_path, base_dir, tiny_tokenizer):
    peft_model = _lora(base_dir, "dora")
    reference = _logits(peft_model, tiny_tokenizer)
    peft_model.save_pretrained(tmp_path / "adapter")
    src = find_source(str(tmp_path / "adapter"), None)
    assert src.kind == "adapter" and src.weights == str(base_dir)  # named by adapter_config.json
    manifest = export(str(tmp_path / "adapter"), tmp_path / "out", ExportOptions(base=str(base_dir)))
    assert manifest["adapter"]["dora"] is True
    exported = load_model(str(tmp_path / "out"), dtype="float32")
    assert compare_logits(reference, _logits(exported, tiny_tokenizer))["max_abs_diff"] < 1e-4


def test_plain_model_export_and_bf16_storage(tmp_path, base_dir, tiny_tokenizer):
    """A plain model exports as is; bf16 storage passes within its tolerance, and the reloaded weights
    really are bf16 with logits within that tolerance but not bit-exact."""
    manifest = export(str(base_dir), tmp_path / "out", ExportOptions(dtype="bfloat16"))
    assert manifest["dtype"] == "bfloat16" and manifest["adapter"] is None
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    parity = manifest["parity"]
    assert 0 < parity["max_abs_diff"] <= export_module.PARITY_TOLERANCE["bfloat16"]
    assert parity["tolerance"] == export_module.PARITY_TOLERANCE["bfloat16"]


def test_parity_failure_raises_and_writes_nothing(tmp_path, base_dir):
    with pytest.raises(ModelError, match="parity failed"):
        export(str(base_dir), tmp_path / "out", ExportOptions(dtype="bfloat16", tolerance=1e-9))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.*"))


def test_prompt_tuning_cannot_be_merged(tmp_path, base_dir, tiny_tokenizer):
    model = apply_adapter(load_model(str(base_dir), dtype="float32"),
                          AdapterConfig(method="prompt_tuning", num_virtual_tokens=4))
    save_final(model, tiny_tokenizer, tmp_path / "final")
    with pytest.raises(ModelError, match="cannot be\\s+merged"):
        export(str(tmp_path / "final"), tmp_path / "out")


def test_bad_options_and_paths(tmp_path, base_dir):
    with pytest.raises(ConfigError, match="gguf"):
        export(str(base_dir), tmp_path / "out", ExportOptions(gguf="q4"))
    with pytest.raises(ConfigError, match="dtype"):
        export(str(base_dir), tmp_path / "out", ExportOptions(dtype="int4"))
    with pytest.raises(ConfigError, match="--output"):
        export(str(base_dir), base_dir)
    with pytest.raises(ModelError, match="no such directory"):
        export(str(tmp_path / "missing"), tmp_path / "out")
    with pytest.raises(ConfigError, match="--int8"):
        export(str(base_dir), tmp_path / "out", ExportOptions(eval_text="x.txt"))


# ----------------------------------------------------------------------------------------------
# int8
# ----------------------------------------------------------------------------------------------


def test_int8_quantisation_runs_and_its_delta_is_reported(tmp_path, base_dir, tiny_tokenizer):
    """The manifest's fp32 perplexity is exp(total next-token NLL / predicted tokens) on the held-out
    text, recomputed here; the int8 model's delta is reported, small but not zero."""
    manifest = export(str(base_dir), tmp_path / "out", ExportOptions(int8=True, decode_tokens=4))
    q = manifest["int8"]
    model = load_model(str(base_dir), dtype="float32")
    rows = [tiny_tokenizer(t)["input_ids"] for t in HELD_OUT_TEXT]
    nll, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            logits = model(torch.tensor([row])).logits[0]
            nll += float(torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(row[1:]), reduction="sum"))
            count += len(row) - 1
    assert q["held_out_tokens"] == count
    assert q["perplexity_fp32"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert q["perplexity_delta"] == pytest.approx(q["perplexity_int8"] - q["perplexity_fp32"])
    assert q["perplexity_delta"] != 0 and abs(q["perplexity_delta_relative"]) < 0.05
    assert 0 < q["kl_fp32_int8"] < 0.05 and q["top1_agreement"] > 0.8
    assert q["quantized_linear_layers"] == 2 * 7  # q k v o gate up down per layer; the head stays fp32
    # hidden 32, 2 kv heads of 8, MLP 64: q, o 32x32; k, v 16x32; gate, up, down 32x64; 4 bytes each.
    assert q["quantized_weight_bytes_fp32"] == 2 * 4 * (2 * 32 * 32 + 2 * 16 * 32 + 3 * 32 * 64)
    assert q["quantized_weight_bytes_int8"] * 4 == q["quantized_weight_bytes_fp32"]
    for key in ("prefill_tokens_per_s_fp32", "prefill_tokens_per_s_int8", "decode_tokens_per_s_fp32",
                "decode_tokens_per_s_int8"):
        assert q[key] > 0


def test_quantize_int8_replaces_linear_layers_and_keeps_the_original(base_dir, tiny_tokenizer):
    model = load_model(str(base_dir), dtype="float32")
    before = _logits(model, tiny_tokenizer)
    int8 = quantize_int8(model, skip=["^lm_head$", "down_proj"])
    plain = {name for name, m in int8.named_modules() if type(m) is torch.nn.Linear}
    assert plain == {"lm_head", "model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}
    kinds = {type(m).__module__ for m in int8.modules() if type(m).__name__ == "Linear" and type(m) is not torch.nn.Linear}
    assert len(kinds) == 1 and "quantized" in kinds.pop()
    assert all(type(m) is torch.nn.Linear for m in model.modules() if type(m).__name__ == "Linear")
    with pytest.raises(ConfigError, match="nothing to quantise"):
        quantize_int8(model, skip=[".*"])
    diff = compare_logits(before, _logits(int8, tiny_tokenizer))
    assert diff["max_abs_diff"] > 0  # really quantised
    assert diff["mean_kl"] < 0.05 and diff["top1_agreement"] > 0.8  # and still the same model


# ----------------------------------------------------------------------------------------------
# GGUF
# ----------------------------------------------------------------------------------------------


def test_rope_rows_reorder_by_value_and_transformers_undoes_it():
    """One head of size 4: rows (r0, r1, r2, r3) pair (r0, r2) and (r1, r3) in transformers and must
    become adjacent pairs for llama.cpp: (r0, r2, r1, r3)."""
    weight = torch.arange(4.0)[:, None].repeat(1, 3)  # row i holds i
    assert hf_to_gguf_rope_rows(weight, 1)[:, 0].tolist() == [0.0, 2.0, 1.0, 3.0]
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = torch.randn(2 * 8, 5)  # 2 heads of 8
    processor = LlamaTensorProcessor(config={"num_attention_heads": 4, "num_key_value_heads": 2})
    restored = processor.process(hf_to_gguf_rope_rows(w, 2).numpy(), "blk.0.attn_k.weight").weights
    assert torch.equal(torch.from_numpy(restored), w)


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_round_trip_through_transformers(tmp_path, tiny_tokenizer, tied):
    """Our GGUF, loaded back by transformers, gives the same logits (f32: to rounding; f16: within
    0.1) and the same tokenizer; the metadata holds the llama.cpp keys with the model's values."""
    import gguf

    model = _strong(make_tiny_model(tiny_tokenizer, tie_word_embeddings=tied))
    path = tmp_path / "tiny-f32.gguf"
    info = write_gguf(model, tiny_tokenizer, path, ftype="f32")
    result = check_gguf(path, model, tiny_tokenizer)
    assert result["logits"]["max_abs_diff"] < 1e-4 and result["logits"]["logit_scale"] > 1
    tok = result["tokenizer"]
    assert tok["identical_ids"] == tok["texts"] and tok["chat_template_equal"] and tok["special_ids_equal"]
    assert result["config"]["tie_word_embeddings"] is tied

    reader = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    config = model.config
    assert fields["general.architecture"] == "llama"
    assert fields["llama.context_length"] == config.max_position_embeddings
    assert fields["llama.embedding_length"] == config.hidden_size
    assert fields["llama.block_count"] == config.num_hidden_layers
    assert fields["llama.feed_forward_length"] == config.intermediate_size
    assert fields["llama.attention.head_count"] == config.num_attention_heads
    assert fields["llama.attention.head_count_kv"] == config.num_key_value_heads
    assert fields["llama.rope.freq_base"] == pytest.approx(config.rope_parameters["rope_theta"])
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.rms_norm_eps)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert len(fields["tokenizer.ggml.tokens"]) == len(tiny_tokenizer)
    assert fields["tokenizer.ggml.token_type"][:3] == [3, 3, 3]  # the special tokens are CONTROL
    assert fields["tokenizer.ggml.eos_token_id"] == tiny_tokenizer.eos_token_id
    assert fields["tokenizer.ggml.bos_token_id"] == tiny_tokenizer.bos_token_id
    assert fields["tokenizer.chat_template"] == tiny_tokenizer.chat_template
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) is (not tied)
    assert {"token_embd.weight", "output_norm.weight", "blk.1.attn_q.weight", "blk.1.ffn_down.weight"} <= names
    assert info["tensors"] == len(names)

    f16 = write_gguf(model, tiny_tokenizer, tmp_path / "tiny-f16.gguf", ftype="f16")
    assert f16["bytes"] < 0.6 * info["bytes"]
    assert 0 < check_gguf(tmp_path / "tiny-f16.gguf", model, tiny_tokenizer)["logits"]["max_abs_diff"] < 0.1


def test_gguf_without_rope_reordering_would_be_caught(tmp_path, tiny_tokenizer, monkeypatch):
    """The round-trip check can fail: skip the q/k reordering and the logits move."""
    model = _strong(make_tiny_model(tiny_tokenizer))
    monkeypatch.setattr(export_module, "hf_to_gguf_rope_rows", lambda w, n: w)
    write_gguf(model, tiny_tokenizer, tmp_path / "bad.gguf", ftype="f32")
    assert check_gguf(tmp_path / "bad.gguf", model, tiny_tokenizer)["logits"]["max_abs_diff"] > 1e-2


def test_export_with_gguf_and_the_cli(tmp_path, base_dir):
    from typer.testing import CliRunner

    from affinage.cli import _register_commands, app

    _register_commands()
    result = CliRunner().invoke(app, ["export", str(base_dir), "--output", str(tmp_path / "out"), "--gguf", "f16"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "export_manifest.json").read_text())
    assert manifest["gguf"]["passed"] and manifest["gguf"]["file"] == "model-f16.gguf"
    gguf_file = tmp_path / "out" / "gguf" / "model-f16.gguf"
    assert gguf_file.stat().st_size == manifest["files"]["gguf/model-f16.gguf"]["bytes"]
    bad = CliRunner().invoke(app, ["export", str(base_dir), "--output", str(tmp_path / "o2"), "--gguf", "q4"])
    assert isinstance(bad.exception, ConfigError)


def test_gguf_refuses_other_architectures(tmp_path, tiny_tokenizer):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ModelError, match="qwen2"):
        write_gguf(Qwen2ForCausalLM(config), tiny_tokenizer, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_find_source_kinds(tmp_path, base_dir, tiny_tokenizer):
    assert find_source(str(base_dir)).kind == "model"
    assert find_source("smollm2-135m-instruct").kind == "model"
    final = tmp_path / "run" / "final"
    save_final(_lora(base_dir), tiny_tokenizer, final, merge=True)
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name: some/base\n")
    src = find_source(str(tmp_path / "run"))
    # merged weights in final/: the base comes from the run's config, before the adapter's own record
    assert src.kind == "run" and src.weights_are_merged and src.weights == "some/base"
    assert find_source(str(tmp_path / "run"), base=str(base_dir)).weights == str(base_dir)
    assert find_source(str(final)).kind == "final"


def test_merged_run_whose_base_is_gone_exports_final_as_is(tmp_path, base_dir, tiny_tokenizer):
    peft_model = _lora(base_dir)
    reference = _logits(peft_model, tiny_tokenizer)
    save_final(peft_model, tiny_tokenizer, tmp_path / "run" / "final", merge=True)
    (tmp_path / "run" / "config.yaml").write_text(f"model:\n  name: {tmp_path / 'gone'}\n")
    manifest = export(str(tmp_path / "run"), tmp_path / "out")
    assert any("could not be loaded" in note for note in manifest["notes"])
    assert manifest["adapter"] is None
    exported = load_model(str(tmp_path / "out"), dtype="float32")
    assert compare_logits(reference, _logits(exported, tiny_tokenizer))["max_abs_diff"] < 1e-4
