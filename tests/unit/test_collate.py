"""Padded and packed batches: pad==eos keeps the EOS label, and packing never crosses examples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from affinage.data.collate import collate_packed, collate_padded, num_trainable_tokens
from affinage.data.formats import Example
from affinage.data.tokenize import IGNORE_INDEX, TokenizedExample, tokenize_example

EOS = 2  # tiny tokenizer: <|im_end|> is both eos and pad


def _examples() -> list[TokenizedExample]:
    return [
        TokenizedExample([1, 10, 11, 12, EOS], [IGNORE_INDEX, IGNORE_INDEX, 11, 12, EOS]),
        TokenizedExample([1, 20, EOS], [IGNORE_INDEX, 20, EOS]),
    ]


def test_padding_keeps_the_eos_label_and_masks_pad_positions():
    batch = collate_padded(_examples(), pad_token_id=EOS)
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, EOS], [1, 20, EOS, EOS, EOS]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, 11, 12, EOS],
        [IGNORE_INDEX, 20, EOS, IGNORE_INDEX, IGNORE_INDEX],
    ]
    assert num_trainable_tokens(batch["labels"]) == 5


def test_pad_to_multiple_and_left_padding():
    batch = collate_padded(_examples(), pad_token_id=EOS, pad_to_multiple_of=4, padding_side="left")
    assert batch["input_ids"].shape == (2, 8)
    assert batch["attention_mask"][1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert batch["labels"][1].tolist() == [IGNORE_INDEX] * 5 + [IGNORE_INDEX, 20, EOS]


def test_packing_restarts_positions_and_masks_boundaries():
    batch = collate_packed(_examples())
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[1, 10, 11, 12, EOS, 1, 20, EOS]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 11, 12, EOS, IGNORE_INDEX, 20, EOS]]
    assert num_trainable_tokens(batch["labels"]) == sum(ex.num_trainable for ex in _examples()) == 5


def _summed_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over trained tokens of -log p(label_t | tokens < t): logits [B, T, V], labels [B, T]."""
    return F.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def test_packed_loss_equals_token_weighted_mean_of_per_example_losses(tiny_tokenizer, tiny_model):
    conversations = [
        [{"role": "user", "content": "Bonjour"}, {"role": "assistant", "content": "Salut, ça va ?"}],
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        [
            {"role": "user", "content": "Name a cheese"},
            {"role": "assistant", "content": "Comté"},
            {"role": "user", "content": "Another"},
            {"role": "assistant", "content": "Brie"},
        ],
    ]
    examples = [tokenize_example(tiny_tokenizer, Example(messages=m), max_length=256) for m in conversations]
    tiny_model.eval()
    with torch.no_grad():
        sums, counts = [], []
        for ex in examples:
            labels = torch.tensor([ex.labels])
            logits = tiny_model(input_ids=torch.tensor([ex.input_ids]), use_cache=False).logits
            sums.append(_summed_loss(logits, labels))
            counts.append(num_trainable_tokens(labels))
        expected = torch.stack(sums).sum() / sum(counts)

        packed = collate_packed(examples)
        labels = packed.pop("labels")
        logits = tiny_model(**packed, use_cache=False).logits
        assert num_trainable_tokens(labels) == sum(counts)
        packed_loss = _summed_loss(logits, labels) / num_trainable_tokens(labels)

        padded = collate_padded(examples, tiny_tokenizer.pad_token_id)
        labels = padded.pop("labels")
        padded_loss = _summed_loss(tiny_model(**padded, use_cache=False).logits, labels) / sum(counts)

    torch.testing.assert_close(packed_loss, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(padded_loss, expected, atol=1e-5, rtol=0)
