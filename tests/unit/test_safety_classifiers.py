"""Self-reflection scores by value on a tiny model; verdict parsing; unparsable verdicts; inputs."""

from __future__ import annotations

import pytest
import torch

from affinage.errors import DataError, ModelError
from affinage.safety.classifiers import (
    SelfReflectionClassifier,
    as_conversation,
    conversation_text,
    judged_role,
    row_conversation,
    row_gold,
)
from affinage.safety.metrics import binary_metrics
from affinage.safety.taxonomy import Taxonomy


def test_score_is_the_softmax_probability_of_the_unsafe_token(tiny_model, tiny_tokenizer):
    clf = SelfReflectionClassifier(tiny_model, tiny_tokenizer, min_verdict_mass=0.0, parse_categories=False)
    # Byte-level tokenizer: "Verdict: safe" and "Verdict: unsafe" part at their 10th byte, 's' / 'u'.
    assert clf.safe_id == tiny_tokenizer.convert_tokens_to_ids("s")
    assert clf.unsafe_id == tiny_tokenizer.convert_tokens_to_ids("u")
    assert tiny_tokenizer.decode(clf.shared_ids) == "Verdict: "
    conv = [{"role": "user", "content": "How do I bake bread?"}]
    [j] = clf.classify([conv])

    # Independently: render the judge prompt, append the prefix, one forward pass, full softmax.
    text = tiny_tokenizer.apply_chat_template(clf.judge_messages(conv), tokenize=False, add_generation_prompt=True)
    ids = tiny_tokenizer(text + "Verdict: ", add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        probs = torch.softmax(tiny_model(ids).logits[0, -1].float(), dim=-1)
    p_u, p_s = probs[clf.unsafe_id].item(), probs[clf.safe_id].item()
    assert j.p_unsafe == pytest.approx(p_u, rel=1e-5)
    assert j.p_safe == pytest.approx(p_s, rel=1e-5)
    assert j.score == pytest.approx(p_u / (p_u + p_s), rel=1e-5)
    assert j.label == ("unsafe" if j.score >= 0.5 else "safe")


def test_batched_left_padded_scores_equal_one_by_one(tiny_model, tiny_tokenizer):
    clf = SelfReflectionClassifier(tiny_model, tiny_tokenizer, min_verdict_mass=0.0, parse_categories=False, batch_size=4)
    items = ["hi", "How do I kill a Linux process that hangs?", [{"role": "user", "content": "x"},
                                                                 {"role": "assistant", "content": "an answer"}]]
    batched = clf.classify(items)
    single = [clf.classify([item])[0] for item in items]
    for b, s in zip(batched, single, strict=True):
        assert b.p_unsafe == pytest.approx(s.p_unsafe, rel=1e-4, abs=1e-7)


def test_threshold_decides_the_label(tiny_model, tiny_tokenizer):
    conv = ["some text"]
    low = SelfReflectionClassifier(tiny_model, tiny_tokenizer, threshold=0.0, min_verdict_mass=0.0, parse_categories=False)
    high = SelfReflectionClassifier(tiny_model, tiny_tokenizer, threshold=1.0, min_verdict_mass=0.0, parse_categories=False)
    assert low.classify(conv)[0].label == "unsafe"
    j = high.classify(conv)[0]
    assert j.label == ("unsafe" if j.score == 1.0 else "safe")


def test_low_verdict_mass_is_unparsable_and_counted_never_safe(tiny_model, tiny_tokenizer):
    # A random model spreads its probability over 259 tokens: 's' and 'u' together hold far less than 90%.
    clf = SelfReflectionClassifier(tiny_model, tiny_tokenizer, min_verdict_mass=0.9)
    judgements = clf.classify(["a", "b"])
    assert [j.label for j in judgements] == ["unparsable", "unparsable"]
    assert all(j.score is not None and j.p_unsafe + j.p_safe < 0.9 for j in judgements)
    m = binary_metrics([True, False], [j.label for j in judgements])
    assert (m.unparsable, m.tp, m.tn) == (2, 0, 0)


class ScriptedLM(torch.nn.Module):
    """A stand-in chat model: puts its verdict mass on one token, and 'writes' a fixed category line."""

    def __init__(self, tokenizer, verdict_id: int, category_line: str):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.vocab = len(tokenizer)
        self.verdict_id = verdict_id
        self.line = tokenizer(category_line, add_special_tokens=False, return_tensors="pt").input_ids[0]
        self.prompts: list[torch.Tensor] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False, logits_to_keep=0):
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -10.0)
        logits[:, :, self.verdict_id] = 10.0
        return type("Out", (), {"logits": logits})()

    def generate(self, input_ids, attention_mask=None, generation_config=None):
        self.prompts.append(input_ids)
        return torch.cat([input_ids, self.line.repeat(input_ids.shape[0], 1)], dim=1)


def test_unsafe_verdict_then_category_line_is_parsed(tiny_tokenizer):
    model = ScriptedLM(tiny_tokenizer, tiny_tokenizer.convert_tokens_to_ids("u"), " violence, S11\nmore")
    clf = SelfReflectionClassifier(model, tiny_tokenizer, min_verdict_mass=0.5)
    [j] = clf.classify(["How do I build a bomb?"])
    assert j.label == "unsafe" and j.score == pytest.approx(1.0)
    assert j.categories == ["violence", "self_harm"]
    assert j.raw == "violence, S11"
    # The category was asked after the full unsafe verdict and the cue: "...Verdict: unsafe\nCategory:".
    assert tiny_tokenizer.decode(model.prompts[0][0]).endswith("Verdict: unsafe\nCategory:")


def test_safe_verdict_skips_category_generation(tiny_tokenizer):
    model = ScriptedLM(tiny_tokenizer, tiny_tokenizer.convert_tokens_to_ids("s"), "violence")
    [j] = SelfReflectionClassifier(model, tiny_tokenizer).classify(["Hello"])
    assert j.label == "safe" and j.categories == [] and model.prompts == []


def test_llama_guard_format_reads_s_codes(tiny_tokenizer):
    model = ScriptedLM(tiny_tokenizer, tiny_tokenizer.convert_tokens_to_ids("u"), "S9,S7")
    clf = SelfReflectionClassifier(model, tiny_tokenizer, judge_format="llama_guard")
    [j] = clf.classify([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]])
    assert j.categories == ["violence", "privacy"]
    # Llama Guard's own chat template renders the conversation: no affinage instructions around it.
    assert clf.judge_messages([{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]) == [
        {"role": "user", "content": "q"}]


def test_prompt_mentions_taxonomy_role_and_conversation(tiny_model, tiny_tokenizer):
    clf = SelfReflectionClassifier(tiny_model, tiny_tokenizer, Taxonomy.default().subset(["privacy"]))
    [msg] = clf.judge_messages([{"role": "user", "content": "Find her address"}, {"role": "assistant", "content": "No."}])
    assert "- privacy: Revealing" in msg["content"] and "violence" not in msg["content"]
    assert "agent answer" in msg["content"]
    assert "User: Find her address\nAgent: No." in msg["content"]


def test_needs_a_chat_template(tiny_model):
    from affinage.testing import make_tiny_tokenizer

    with pytest.raises(ModelError, match="chat template"):
        SelfReflectionClassifier(tiny_model, make_tiny_tokenizer(chat_template=None))


def test_conversations_and_gold_labels_from_rows():
    assert row_conversation({"prompt": "p", "response": "r"}, "x") == [
        {"role": "user", "content": "p"}, {"role": "assistant", "content": "r"}]
    assert judged_role(row_conversation({"prompt": "p"}, "x")) == "prompt"
    assert conversation_text(as_conversation([{"role": "system", "content": "s"}, {"role": "user", "content": " q "}])) == "User: q"
    tax = Taxonomy.default()
    assert row_gold({"label": "unsafe", "category": "S11"}, tax, "x") == (True, "self_harm")
    assert row_gold({"label": "unsafe\nS1"}, tax, "x") == (True, None)
    assert row_gold({"label": "safe", "category": "violence"}, tax, "x") == (False, None)
    assert row_gold({"prompt": "p"}, tax, "x") == (None, None)
    with pytest.raises(DataError, match='"label" must be'):
        row_gold({"label": "maybe"}, tax, "f.jsonl, row 3")
    with pytest.raises(DataError, match="not in the taxonomy"):
        row_gold({"label": "unsafe", "category": "weather"}, tax, "x")
    with pytest.raises(DataError, match='needs "prompt"'):
        row_conversation({"text": ""}, "f.jsonl, row 2")
    with pytest.raises(DataError, match="must end with a user or an assistant"):
        as_conversation([{"role": "system", "content": "s"}])
