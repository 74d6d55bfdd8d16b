"""``sdpa_packed``: one causal attention per packed example gives what each example gives alone."""

from __future__ import annotations

import json

import pytest
import torch

from affinage.models.packed_attention import PACKED_SDPA, packed_lengths, use_packed_attention
from affinage.testing import make_tiny_model

LENGTHS = [5, 9, 3]


def _packed_row(vocab: int, lengths=LENGTHS, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    examples = [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]
    input_ids = torch.cat(examples)[None]  # [1, sum(n_i)]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]  # restarts at 0 per example
    return examples, input_ids, position_ids


def test_packed_lengths_reads_restarts_and_rejects_other_layouts():
    assert packed_lengths(torch.tensor([[0, 1, 2, 0, 1, 0]])) == [3, 2, 1]
    assert packed_lengths(torch.tensor([[0, 1, 2, 3]])) == [4]
    assert packed_lengths(torch.tensor([[0, 0, 0]])) == [1, 1, 1]
    assert packed_lengths(None) is None
    assert packed_lengths(torch.tensor([[1, 2, 3]])) is None  # decoding continues a cached sequence
    assert packed_lengths(torch.tensor([[0, 1, 3]])) is None  # a gap: not a packed row
    assert packed_lengths(torch.tensor([[1, 1, 0, 1]])) is None  # left padding as generate() numbers it
    assert packed_lengths(torch.tensor([[0, 1], [0, 1]])) is None  # several rows


def test_packed_row_matches_each_example_alone_forward_and_backward(tiny_tokenizer, monkeypatch):
    # Reference: each example run on its own with plain sdpa (no packing at all). The packed row
    # through sdpa_packed must give the same logits at every position and the same gradients.
    import affinage.models.packed_attention as packed_attention

    calls = []
    original = packed_attention._attend_per_example
    monkeypatch.setattr(packed_attention, "_attend_per_example", lambda *a: calls.append(a[3]) or original(*a))
    reference = make_tiny_model(tiny_tokenizer)
    packed = make_tiny_model(tiny_tokenizer)
    assert use_packed_attention(packed)
    assert packed.config._attn_implementation == PACKED_SDPA
    examples, input_ids, position_ids = _packed_row(len(tiny_tokenizer))

    alone = [reference(input_ids=ex[None], use_cache=False).logits[0] for ex in examples]
    alone_logits = torch.cat(alone)  # [sum(n_i), V]
    alone_logits.square().mean().backward()
    out = packed(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0]
    out.square().mean().backward()

    assert calls == [LENGTHS] * packed.config.num_hidden_layers  # the per-example path ran in every layer
    torch.testing.assert_close(out, alone_logits, atol=1e-5, rtol=1e-4)
    for (name, p_ref), p_packed in zip(reference.named_parameters(), packed.parameters(), strict=True):
        torch.testing.assert_close(p_packed.grad, p_ref.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_packed_row_matches_transformers_dense_block_mask(tiny_tokenizer):
    dense = make_tiny_model(tiny_tokenizer)
    packed = make_tiny_model(tiny_tokenizer)
    use_packed_attention(packed)
    _, input_ids, position_ids = _packed_row(len(tiny_tokenizer), lengths=[7, 1, 12, 4], seed=3)
    expected = dense(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    got = packed(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_other_inputs_fall_back_to_sdpa_exactly(tiny_tokenizer, monkeypatch):
    # Padded batches, a padded single row and cached generation take transformers' own sdpa path:
    # bit-identical results, and the per-example path never runs.
    import affinage.models.packed_attention as packed_attention

    plain = make_tiny_model(tiny_tokenizer)
    packed = make_tiny_model(tiny_tokenizer)
    use_packed_attention(packed)
    monkeypatch.setattr(packed_attention, "_attend_per_example", lambda *a: pytest.fail("per-example path taken"))
    ids = torch.randint(3, len(tiny_tokenizer), (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    assert torch.equal(packed(input_ids=ids, attention_mask=mask).logits, plain(input_ids=ids, attention_mask=mask).logits)
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": tiny_tokenizer.pad_token_id}
    assert torch.equal(packed.generate(ids, attention_mask=mask, **kwargs), plain.generate(ids, attention_mask=mask, **kwargs))
    # One row, packed positions, but a 2-D mask that hides a padding token: the dense path must run.
    _, row, position_ids = _packed_row(len(tiny_tokenizer))
    pad_mask = torch.ones_like(row)
    pad_mask[0, 3] = 0
    got = packed(input_ids=row, position_ids=position_ids, attention_mask=pad_mask, use_cache=False).logits
    want = plain(input_ids=row, position_ids=position_ids, attention_mask=pad_mask, use_cache=False).logits
    assert torch.equal(got, want)


def test_only_sdpa_models_switch_and_saved_config_does_not_name_it(tiny_tokenizer, tmp_path):
    eager = make_tiny_model(tiny_tokenizer)
    eager.set_attn_implementation("eager")
    assert not use_packed_attention(eager)
    assert eager.config._attn_implementation == "eager"

    model = make_tiny_model(tiny_tokenizer)
    use_packed_attention(model)
    model.save_pretrained(tmp_path)
    assert PACKED_SDPA not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_recipe_trains_packed_rows_with_sdpa_packed(method, tiny_model_dir, tmp_path, monkeypatch):
    # The recipe switches a packing run to sdpa_packed; its loss then equals a run with packing off
    # (padded batches, transformers' sdpa), step by step.
    import affinage.models.packed_attention as packed_attention
    from affinage.config import SFTConfig, load_config
    from affinage.recipes.sft import train

    calls = []
    original = packed_attention._attend_per_example
    monkeypatch.setattr(packed_attention, "_attend_per_example", lambda *a: calls.append(1) or original(*a))
    rows = [
        {"messages": [{"role": "user", "content": f"question {i} " * (1 + i % 4)},
                      {"role": "assistant", "content": f"answer {i} " * (2 + i % 3)}]}
        for i in range(8)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    losses = {}
    for packing in ("on", "off"):
        out = tmp_path / f"run-{packing}"
        cfg = load_config(SFTConfig, overrides=[
            f"model.name={tiny_model_dir}", "model.dtype=float32", f"adapter.method={method}",
            f"data.train=[{data}]", f"data.packing={packing}", "train.max_steps=2", "train.batch_size=4",
            "train.lr=1e-3", f"run.output_dir={out}", "run.progress=false",
        ])
        train(cfg)
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        losses[packing] = [m["loss"] for m in metrics if m.get("split") == "train"]
        if packing == "on":
            assert calls, "sdpa_packed was not used for packed rows"
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)
