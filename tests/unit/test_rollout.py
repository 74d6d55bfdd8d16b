"""The KV-cache decode loop: batching invariance, parity with model.generate, seeds, n samples,
stop tokens and strings, top-k/top-p/temperature, the sampled distribution, row dropping, adapters."""

from __future__ import annotations

import pytest
import torch

from affinage.errors import ConfigError
from affinage.generation.rollout import (
    SamplingParams,
    apply_repetition_penalty,
    decode_ids,
    fast_decode_supported,
    filter_top_k_top_p,
)
from affinage.testing import make_tiny_model, make_tiny_tokenizer, sharpen_weights

TEXTS = ["hi", "a much longer prompt, with several words in it", "x" * 30, "medium length", "why?"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return make_tiny_tokenizer()


def _sharpen(model, scale=0.2, seed=0):
    return sharpen_weights(model, scale, seed, biases=False)


@pytest.fixture(scope="module")
def model(tok):
    return _sharpen(make_tiny_model(tok))


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=False) for t in TEXTS]


@pytest.fixture(scope="module")
def prompt_ids(tok, prompts):
    return [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]


def run(model, tok, prompt_ids, params, **kw):
    kw.setdefault("stop_token_ids", [tok.eos_token_id])
    return decode_ids(model, prompt_ids, params, pad_token_id=tok.pad_token_id, **kw)


GREEDY = SamplingParams(max_new_tokens=16)


def test_batched_left_padded_greedy_equals_unbatched(model, tok, prompt_ids):
    batched = run(model, tok, prompt_ids, GREEDY, batch_size=len(prompt_ids))
    alone = [run(model, tok, [p], GREEDY).token_ids[0] for p in prompt_ids]
    assert batched.token_ids == alone
    assert len({tuple(t) for t in alone}) > 1, "answers should depend on the prompt"
    assert batched.new_tokens == sum(len(t) for t in alone)


def test_greedy_matches_model_generate(model, tok, prompt_ids):
    ours = run(model, tok, prompt_ids, GREEDY, batch_size=2).token_ids
    for p, mine in zip(prompt_ids, ours, strict=True):
        out = model.generate(
            torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=16,
            do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        theirs = out[0, len(p):].tolist()
        if tok.eos_token_id in theirs:
            theirs = theirs[: theirs.index(tok.eos_token_id) + 1]
        assert mine == theirs


def test_repetition_penalty_matches_model_generate(model, tok, prompt_ids):
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1.5)
    ours = run(model, tok, prompt_ids[:3], params, batch_size=3).token_ids
    for p, mine in zip(prompt_ids[:3], ours, strict=True):
        out = model.generate(
            torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long), max_new_tokens=12,
            do_sample=False, repetition_penalty=1.5, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )
        assert mine == out[0, len(p) :].tolist()[: len(mine)]
    assert ours != run(model, tok, prompt_ids[:3], GREEDY).token_ids  # the penalty changes something


def test_repetition_penalty_by_value():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    torch.testing.assert_close(apply_repetition_penalty(logits, seen, 2.0), torch.tensor([[1.0, -4.0, 1.0]]))


def test_seed_reproduces_and_leaves_global_state_alone(model, tok, prompt_ids):
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=7)
    torch.manual_seed(123)
    first = run(model, tok, prompt_ids, params, batch_size=2).token_ids
    after = torch.rand(1)
    torch.manual_seed(123)
    again = run(model, tok, prompt_ids, params, batch_size=2).token_ids
    assert again == first
    assert torch.equal(torch.rand(1), after), "a seeded call must not draw from the global generator"
    other = run(model, tok, prompt_ids, SamplingParams(max_new_tokens=12, temperature=1.0, seed=8), batch_size=2)
    assert other.token_ids != first


def test_n_samples_per_prompt_are_grouped_and_differ(model, tok, prompt_ids):
    n = 4
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=0)
    out = run(model, tok, prompt_ids[:3], params, n=n, batch_size=8)
    assert len(out.token_ids) == 3 * n and len(out.finished) == 3 * n
    for i in range(3):
        group = {tuple(t) for t in out.token_ids[i * n : (i + 1) * n]}
        assert len(group) > 1, "samples of one prompt should differ"
    # n copies of a prompt in the batch give the same distribution as sharing one prefill: greedy
    # samples are all equal to the single greedy answer.
    greedy = run(model, tok, prompt_ids[:2], GREEDY, n=3, batch_size=6).token_ids
    single = run(model, tok, prompt_ids[:2], GREEDY).token_ids
    assert greedy == [single[0]] * 3 + [single[1]] * 3


def test_sampled_first_token_follows_the_softmax(model, tok, prompt_ids):
    """800 samples of the first token at temperature 0.7 against softmax(logits / 0.7)."""
    p = prompt_ids[0]
    with torch.no_grad():
        logits = model(torch.tensor([p])).logits[0, -1].float()
    probs = (logits / 0.7).softmax(-1)
    out = run(model, tok, [p], SamplingParams(max_new_tokens=1, temperature=0.7, seed=3), n=800, batch_size=800,
              stop_token_ids=[])
    counts = torch.bincount(torch.tensor([t[0] for t in out.token_ids]), minlength=len(probs)).float()
    top = probs.argsort(descending=True)[:5]
    for t in top:  # frequencies within 4 standard deviations of the expected ones
        expected = 800 * probs[t].item()
        assert abs(counts[t].item() - expected) < 4 * (expected * (1 - probs[t].item())) ** 0.5 + 1


def test_top_k_and_top_p_restrict_the_support(model, tok, prompt_ids):
    p = prompt_ids[1]
    with torch.no_grad():
        logits = model(torch.tensor([p])).logits[0, -1].float()
    order = logits.argsort(descending=True)
    first = lambda params: {t[0] for t in run(model, tok, [p], params, n=200, batch_size=200, stop_token_ids=[]).token_ids}  # noqa: E731
    assert first(SamplingParams(max_new_tokens=1, temperature=2.0, top_k=3, seed=1)) <= set(order[:3].tolist())
    probs = logits.softmax(-1)[order]
    nucleus = int((probs.cumsum(0) - probs < 0.5).sum())  # tokens whose preceding mass is below 0.5
    assert first(SamplingParams(max_new_tokens=1, temperature=1.0, top_p=0.5, seed=1)) <= set(order[:nucleus].tolist())
    # top-k 1 is greedy
    sampled = run(model, tok, prompt_ids, SamplingParams(max_new_tokens=8, temperature=1.0, top_k=1, seed=0)).token_ids
    assert sampled == run(model, tok, prompt_ids, SamplingParams(max_new_tokens=8)).token_ids


def test_filter_top_k_top_p_by_value():
    # probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.7 keeps the first two (mass before the third is 0.8)
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = filter_top_k_top_p(logits, 0, 0.7).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    assert filter_top_k_top_p(logits, 3, 1.0).isfinite().tolist() == [[True, True, True, False]]
    assert filter_top_k_top_p(logits, 0, 0.5).isfinite().tolist() == [[True, False, False, False]]


def test_stop_tokens_finish_rows_and_dropping_rows_changes_nothing(model, tok, prompt_ids):
    """Make a token the greedy answers produce a stop token: rows end at different steps."""
    free = run(model, tok, prompt_ids, GREEDY, stop_token_ids=[]).token_ids
    stop = free[0][3]
    expected = []
    for row in free:
        expected.append(row[: row.index(stop) + 1] if stop in row else row)
    assert len({len(r) for r in expected}) > 1
    for compact in (True, False):
        out = run(model, tok, prompt_ids, GREEDY, stop_token_ids=[stop], batch_size=5, compact=compact)
        assert out.token_ids == expected
        assert out.finished == [stop in row for row in free]


def test_max_new_tokens_and_unfinished_flag(model, tok, prompt_ids):
    out = run(model, tok, prompt_ids, SamplingParams(max_new_tokens=5), stop_token_ids=[])
    assert all(len(t) == 5 for t in out.token_ids)
    assert out.finished == [False] * len(prompt_ids)


def test_stop_strings_end_the_row(model, tok, prompt_ids):
    free = run(model, tok, prompt_ids[:1], SamplingParams(max_new_tokens=20), stop_token_ids=[]).token_ids[0]
    text = tok.decode(free)
    start = next(i for i in range(2, len(text) - 1) if text[i : i + 2].isascii() and text[i : i + 2].strip())
    stop = text[start : start + 2]
    out = run(model, tok, prompt_ids[:1], SamplingParams(max_new_tokens=20, stop=(stop,)), tokenizer=tok, stop_token_ids=[])
    got = out.token_ids[0]
    assert stop in tok.decode(got) and stop not in tok.decode(got[:-1])  # ends at the completing token
    assert out.finished == [True] and out.stopped_by_string == [True]
    with pytest.raises(ConfigError, match="tokenizer"):
        run(model, tok, prompt_ids[:1], SamplingParams(max_new_tokens=4, stop=("x",)))


def test_eager_attention_gives_the_same_answers(tok, prompt_ids):
    sdpa = _sharpen(make_tiny_model(tok, seed=1), seed=1)
    eager = _sharpen(make_tiny_model(tok, seed=1), seed=1)
    eager.set_attn_implementation("eager")
    a = run(sdpa, tok, prompt_ids, GREEDY, batch_size=5).token_ids
    b = run(eager, tok, prompt_ids, GREEDY, batch_size=5).token_ids
    assert a == b


def test_lora_model_decodes_like_its_base(tok, prompt_ids):
    from peft import LoraConfig, get_peft_model

    base = _sharpen(make_tiny_model(tok, seed=2), seed=2)
    expected = run(base, tok, prompt_ids, GREEDY, batch_size=5).token_ids
    wrapped = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert run(wrapped, tok, prompt_ids, GREEDY, batch_size=5).token_ids == expected
    wrapped.train()
    run(wrapped, tok, prompt_ids[:1], GREEDY)
    assert wrapped.training, "decode_ids restores the caller's train/eval mode"


def test_unsupported_models_are_named(tok):
    from peft import PromptTuningConfig, get_peft_model

    prompt_tuned = get_peft_model(make_tiny_model(tok), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2))
    assert "prompt tuning" in fast_decode_supported(prompt_tuned)
    sliding = make_tiny_model(tok)
    sliding.config.layer_types = ["sliding_attention", "full_attention"]
    assert "sliding" in fast_decode_supported(sliding)
    assert fast_decode_supported(make_tiny_model(tok)) is None
    with pytest.raises(ConfigError, match="cannot run this model"):
        decode_ids(prompt_tuned, [[1, 2]], GREEDY, stop_token_ids=[], pad_token_id=0)
    assert decode_ids(make_tiny_model(tok), [], GREEDY, stop_token_ids=[], pad_token_id=0).token_ids == []


def test_vllm_engine_names_the_extra_or_the_gpu_it_needs():
    from affinage.generation.vllm_engine import VLLMRollouts

    with pytest.raises(ConfigError, match=r"affinage\[vllm\]|CUDA GPU"):
        VLLMRollouts("smollm2-135m-instruct", dtype=torch.float32)


def test_stream_decode_yields_the_same_tokens_and_stops_when_closed(model, tok, prompt_ids):
    from affinage.generation.rollout import stream_decode

    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=5)
    for p in prompt_ids[:3]:
        streamed = list(stream_decode(model, p, params, stop_token_ids=[tok.eos_token_id], pad_token_id=tok.pad_token_id))
        assert streamed == run(model, tok, [p], params).token_ids[0]
    model.train()
    stream = stream_decode(model, prompt_ids[0], SamplingParams(max_new_tokens=500), stop_token_ids=[],
                           pad_token_id=tok.pad_token_id)
    first = [next(stream), next(stream)]
    assert not model.training  # decoding runs in eval mode
    stream.close()  # stops at once: no 500-token decode behind the caller's back
    assert model.training and len(first) == 2
    model.eval()
