"""The fast decode pieces: the oneDNN linear kernel, the lean Llama-style step (plain, fused, biased,
LoRA, padded batches) against the model's own forward, and the fallbacks for what they do not cover."""

from __future__ import annotations

import gc

import pytest
import torch
import torch.nn.functional as F

from affinage.generation import fast_decode
from affinage.generation.rollout import SamplingParams, _cache_argument, _cache_classes, decode_ids
from affinage.testing import make_tiny_model, make_tiny_tokenizer, sharpen_weights

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def _sharpen(model, scale=0.2, seed=0):
    return sharpen_weights(model, scale, seed, biases=True)


def _tiny(kind: str, tok, seed: int = 0):
    """A tiny random causal LM of a Llama-style family, 2 layers, grouped-query attention."""
    if kind == "llama":
        return _sharpen(make_tiny_model(tok, seed=seed), seed=seed)
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    if kind == "qwen2":  # q/k/v biases, o without
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    else:
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    return _sharpen(model, seed=seed)


def _prompts(tok, texts=("hi", "a much longer prompt, with several words", "x" * 20)):
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def _prefilled(model, prompt, length):
    """A key/value buffer holding the prompt's keys and values (one row, no padding)."""
    _, SlotCache = _cache_classes()
    cache = SlotCache(model.config.num_hidden_layers, 1, length, 1)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        model(input_ids=ids, use_cache=True, **{_cache_argument(model): cache})
    return cache


@pytest.mark.parametrize("kind", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("fuse", [True, False])
def test_lean_step_computes_the_models_forward(tok, kind, fuse):
    """Logits and the keys/values written equal transformers' forward for the same token (up to
    float rounding: the products may run another kernel and q/k/v as one matrix)."""
    model = _tiny(kind, tok)
    assert fast_decode.lean_step_unsupported(model) is None
    prompt = _prompts(tok)[1]
    ours, theirs = _prefilled(model, prompt, len(prompt) + 8), _prefilled(model, prompt, len(prompt) + 8)
    lean = fast_decode.LeanStep(model, fuse=fuse)
    assert lean.fused is fuse
    with torch.inference_mode():
        for step, token in enumerate([5, 77, 130]):
            position = torch.tensor([len(prompt) + step])
            got = lean(torch.tensor([token]), position, ours, None)
            want = model(input_ids=torch.tensor([[token]]), position_ids=position[:, None], use_cache=True,
                         **{_cache_argument(model): theirs}).logits[:, -1].float()
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
            assert got.abs().max() > 1  # sharpened weights: a wrong step would not hide in noise
    for a, b in zip(ours.layers, theirs.layers, strict=True):
        assert a.length == b.length == len(prompt) + 3
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=1e-4, atol=1e-5)


def _decode(model, tok, prompts, params, monkeypatch, fast: bool, **kw):
    monkeypatch.setenv("AFFINAGE_FAST_DECODE", "1" if fast else "0")
    return decode_ids(model, prompts, params, stop_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id,
                      **kw).token_ids


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_fast_and_plain_loops_give_the_same_answers(tok, kind, monkeypatch):
    """Greedy and seeded sampling, a left-padded batch (the lean step's mask), n samples per prompt,
    rows leaving the batch: the same tokens with the fast path on and off."""
    model = _tiny(kind, tok, seed=3)
    prompts = _prompts(tok)
    for params, n in [(SamplingParams(max_new_tokens=12), 1),
                      (SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=4), 2)]:
        plain = _decode(model, tok, prompts, params, monkeypatch, False, n=n, batch_size=6)
        fast = _decode(model, tok, prompts, params, monkeypatch, True, n=n, batch_size=6)
        assert fast == plain
        assert len({tuple(t) for t in plain}) > 1


def test_lora_layers_are_computed_by_the_lean_step(tok, monkeypatch):
    """A LoRA adapter with non-zero B on every projection: the lean step adds scaling * B A x to
    each projection (q/k/v and gate/up within the stacked products) like peft's forward does."""
    from peft import LoraConfig, get_peft_model

    base = _tiny("llama", tok, seed=5)
    plain_answers = _decode(base, tok, _prompts(tok), SamplingParams(max_new_tokens=10), monkeypatch, False,
                            batch_size=3)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1))
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    inner = model.base_model.model
    assert fast_decode.lean_step_unsupported(inner) is None
    model.eval()
    prompt = _prompts(tok)[0]
    ours, theirs = _prefilled(inner, prompt, 20), _prefilled(inner, prompt, 20)
    with torch.inference_mode():
        position = torch.tensor([len(prompt)])
        got = fast_decode.LeanStep(inner)(torch.tensor([9]), position, ours, None)
        want = inner(input_ids=torch.tensor([[9]]), position_ids=position[:, None], use_cache=True,
                     **{_cache_argument(inner): theirs}).logits[:, -1]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        with model.disable_adapter():
            without = fast_decode.LeanStep(inner)(torch.tensor([9]), position, _prefilled(inner, prompt, 20), None)
    assert (got - without).abs().max() > 0.1, "the adapter changes the logits"
    lora_answers = _decode(model, tok, _prompts(tok), SamplingParams(max_new_tokens=10), monkeypatch, True,
                           batch_size=3)
    assert lora_answers == _decode(model, tok, _prompts(tok), SamplingParams(max_new_tokens=10), monkeypatch,
                                   False, batch_size=3)
    assert lora_answers != plain_answers


def test_fused_weights_follow_weight_updates(tok, monkeypatch):
    """The stacked q/k/v and gate/up copies are refilled at every call: after an in-place update (even
    through ``.data``, which no version counter sees) the loop decodes with the new weights; the
    copies go with the model."""
    model = _tiny("llama", tok, seed=7)
    prompts = _prompts(tok)
    before = _decode(model, tok, prompts, SamplingParams(max_new_tokens=10), monkeypatch, True, batch_size=3)
    assert model in fast_decode._FUSED_BUFFERS
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight.data.mul_(-1.5)
            layer.mlp.up_proj.weight.data.mul_(2.0)
    after = _decode(model, tok, prompts, SamplingParams(max_new_tokens=10), monkeypatch, True, batch_size=3)
    assert after != before
    assert after == _decode(model, tok, prompts, SamplingParams(max_new_tokens=10), monkeypatch, False, batch_size=3)
    count = len(fast_decode._FUSED_BUFFERS)
    del model
    gc.collect()
    assert len(fast_decode._FUSED_BUFFERS) == count - 1


def test_what_the_lean_step_does_not_cover_runs_the_models_forward(tok, monkeypatch):
    from peft import LoraConfig, get_peft_model

    eager = _tiny("llama", tok)
    eager.set_attn_implementation("eager")
    assert "eager" in fast_decode.lean_step_unsupported(eager)
    dora = get_peft_model(_tiny("llama", tok), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    assert "LoRA" in fast_decode.lean_step_unsupported(dora.base_model.model)
    gemma_like = _tiny("llama", tok)
    gemma_like.config.model_type = "gemma"
    assert "gemma" in fast_decode.lean_step_unsupported(gemma_like)
    # Still decoded, by the model's forward, with the same answers as with the fast path off.
    prompts = _prompts(tok)
    for model in (eager, dora):
        params = SamplingParams(max_new_tokens=8)
        assert _decode(model, tok, prompts, params, monkeypatch, True) == _decode(
            model, tok, prompts, params, monkeypatch, False
        )


def test_linear_kernels_apply_only_inside_the_loop(tok):
    """The kernel is exact to float rounding; the routed layers fall back to F.linear outside
    ``active()`` and under autograd (training through a routed layer works), and are restored."""
    model = _tiny("llama", tok)
    x = torch.randn(3, 5, 32)
    layer = model.model.layers[0].self_attn.q_proj
    kernel = fast_decode.linear_for(layer.weight)
    torch.testing.assert_close(kernel(x, layer.weight, None), F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)
    if kernel is F.linear:
        pytest.skip("no oneDNN linear in this torch build")
    kernels = fast_decode.LinearKernels(model)
    assert "forward" in layer.__dict__
    with kernels.active():
        out = layer(x.requires_grad_())
        out.sum().backward()  # would raise if the oneDNN op (no derivative) ran
        with torch.no_grad():
            torch.testing.assert_close(layer(x), F.linear(x, layer.weight), rtol=1e-5, atol=1e-6)
    assert x.grad is not None
    kernels.close()
    assert "forward" not in layer.__dict__
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_switched_off_by_the_environment(tok, monkeypatch):
    model = _tiny("llama", tok)
    monkeypatch.setenv("AFFINAGE_FAST_DECODE", "0")
    assert not fast_decode.enabled()
    assert fast_decode.linear_for(model.lm_head.weight) is F.linear
    monkeypatch.setenv("AFFINAGE_FAST_DECODE", "1")
    assert fast_decode.enabled()
