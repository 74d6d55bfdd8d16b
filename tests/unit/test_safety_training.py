"""The trained safety classifier on a tiny model: probe = full forward, save/load, threshold, LoRA."""

from __future__ import annotations

import json

import pytest
import torch

from affinage.config import load_config
from affinage.errors import ConfigError
from affinage.safety.classifiers import TrainedClassifier, classify_file
from affinage.safety.training import (
    ClassifierTrainConfig,
    load_sequence_classifier,
    pooled_features,
    right_pad,
    train_classifier,
)

UNSAFE = ["How do I build a bomb?", "bomb instructions please", "make a pipe bomb", "Sure, here is the bomb plan",
          "bomb the subway", "a bomb for my neighbour"]
SAFE = ["How do I bake bread?", "bread recipe please", "make a sourdough bread", "Sure, here is the bread plan",
        "bread for the picnic", "a loaf of bread for my neighbour"]


def write_rows(path, n_copies=1, start=0):
    rows = []
    for k in range(n_copies):
        for i, (u, s) in enumerate(zip(UNSAFE, SAFE, strict=True)):
            lang = "en" if i % 2 else "fr"
            rows.append({"id": f"u{start + k}-{i}", "prompt": u, "label": "unsafe", "category": "violence", "language": lang})
            rows.append({"id": f"s{start + k}-{i}", "prompt": s, "label": "safe", "language": lang})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_config(tmp_path, model_dir, **extra) -> ClassifierTrainConfig:
    train = write_rows(tmp_path / "train.jsonl", 2)
    val = write_rows(tmp_path / "val.jsonl", 1, start=10)
    config = tmp_path / "clf.yaml"
    config.write_text(f"""
stage: safety_classifier
model: {{name: {model_dir}, dtype: float32}}
data: {{train: [{train}], validation: [{val}], test: [{val}], max_length: 64}}
train: {{lr: 0.05, epochs: 15, batch_size: 8}}
run: {{output_dir: {tmp_path / 'run'}, log_every: 1, progress: false}}
target_precision: 0.8
""")
    return load_config(ClassifierTrainConfig, config, [f"{k}={v}" for k, v in extra.items()])


def test_cached_features_give_the_logits_of_the_full_forward(tiny_model_dir, tiny_tokenizer):
    model = load_sequence_classifier(str(tiny_model_dir), 3, dtype=torch.float32, pad_token_id=tiny_tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight)  # zero at start; any head must match
    rows = [tiny_tokenizer(t)["input_ids"] for t in ("a bomb", "How do I bake bread today?", "x")]
    features = pooled_features(model.model, rows, tiny_tokenizer.pad_token_id, 2, torch.device("cpu"))
    input_ids, attention_mask = right_pad(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
        assert torch.allclose(model.score(features), expected, atol=1e-5)


def test_num_layers_keeps_the_first_layers(tiny_model_dir, tiny_tokenizer):
    full = load_sequence_classifier(str(tiny_model_dir), 2, dtype=torch.float32, pad_token_id=0)
    one = load_sequence_classifier(str(tiny_model_dir), 2, dtype=torch.float32, pad_token_id=0, num_layers=1)
    assert one.config.num_hidden_layers == 1 and len(one.model.layers) == 1
    assert torch.equal(one.model.layers[0].self_attn.q_proj.weight, full.model.layers[0].self_attn.q_proj.weight)
    with pytest.raises(ConfigError, match="only 2 layers"):
        load_sequence_classifier(str(tiny_model_dir), 2, dtype=torch.float32, pad_token_id=0, num_layers=5)


def test_probe_training_saves_a_loadable_classifier_with_its_threshold(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    cfg = make_config(tmp_path, tiny_model_dir)
    final = train_classifier(cfg)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    meta = json.loads((final / "safety_classifier.json").read_text())
    assert meta["threshold"] == report["threshold"]["threshold"]
    assert report["threshold"]["target"] == "precision=0.8"
    assert set(report) >= {"validation", "test", "threshold"}
    assert set(report["validation"]["per_language"]) == {"en", "fr"}
    # Training lowered the loss.
    train_rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
                  if json.loads(x)["split"] == "train"]
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]

    plain = AutoModelForSequenceClassification.from_pretrained(final)
    assert plain.config.num_labels == 8 and plain.config.id2label[0] == "unsafe"
    clf = TrainedClassifier.load(final, dtype="float32")
    assert clf.threshold == meta["threshold"]
    texts = ["User: How do I build a bomb?", "User: How do I bake bread?"]
    enc = clf.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = plain(**enc).logits
    assert torch.allclose(clf.logits_for_texts(texts), expected, atol=1e-5)
    judgements = clf.classify(["How do I build a bomb?"])
    assert judgements[0].score == pytest.approx(torch.sigmoid(expected[0, 0]).item(), rel=1e-5)
    # The validation metrics in the report are those of the saved classifier at its threshold.
    out = classify_file(str(final), str(tmp_path / "val.jsonl"), str(tmp_path / "judged.jsonl"), dtype="float32")
    assert out["report"]["overall"]["f1"] == pytest.approx(report["validation"]["overall"]["f1"])
    assert out["report"]["overall"]["auprc"] == pytest.approx(report["validation"]["overall"]["auprc"])


def test_lora_training_runs_and_merges(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, **{"adapter.method": "lora", "adapter.r": 4, "train.max_steps": 2})
    final = train_classifier(cfg)
    clf = TrainedClassifier.load(final)
    assert not any("lora" in name for name, _ in clf.model.named_parameters())
    assert len(clf.classify(["bomb"])) == 1


def test_config_checks(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="cannot be set together"):
        make_config(tmp_path, tiny_model_dir, target_recall=0.9)
    with pytest.raises(ConfigError, match="prompt_tuning"):
        make_config(tmp_path, tiny_model_dir, **{"adapter.method": "prompt_tuning"})
    with pytest.raises(ConfigError, match="data.validation"):
        load_config(ClassifierTrainConfig, None, ["data.train=[x.jsonl]", "data.validation_fraction=0"])


def test_top_layers_from_cached_states_equal_the_full_model(tiny_model_dir, tiny_tokenizer):
    from affinage.safety.training import frozen_prefix, pool_index, prefix_states, top_logits

    model = load_sequence_classifier(str(tiny_model_dir), 3, dtype=torch.float32, pad_token_id=tiny_tokenizer.pad_token_id)
    torch.nn.init.normal_(model.score.weight)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("model.layers.1.", "model.norm", "score")))
    assert frozen_prefix(model, 2) == 1
    rows = [tiny_tokenizer(t)["input_ids"] for t in ("a bomb", "How do I bake bread today?")]
    states = prefix_states(model.model, rows, tiny_tokenizer.pad_token_id, 1, 2, torch.device("cpu"))
    assert [s.shape[0] for s in states] == [len(r) for r in rows]
    top = top_logits(model.model, model.score, states, [pool_index(r, tiny_tokenizer.pad_token_id) for r in rows], 1,
                     torch.device("cpu"))
    input_ids, attention_mask = right_pad(rows, tiny_tokenizer.pad_token_id)
    with torch.no_grad():
        full = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert torch.allclose(top, full, atol=1e-5)
    assert len(model.model.layers) == 2  # the slice was undone
    # Gradients reach the trainable top layer only.
    top.sum().backward()
    assert model.model.layers[1].mlp.up_proj.weight.grad is not None
    assert model.model.layers[0].mlp.up_proj.weight.grad is None


def test_training_the_top_layer_on_cached_states(tmp_path, tiny_model_dir):
    cfg = make_config(tmp_path, tiny_model_dir, **{"adapter.trainable": "['layers\\.1\\.', 'model\\.norm\\.']", "train.max_steps": 3})
    final = train_classifier(cfg)
    clf = TrainedClassifier.load(final, dtype="float32")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    out = classify_file(str(final), str(tmp_path / "val.jsonl"), None, dtype="float32")
    assert out["report"]["overall"]["auprc"] == pytest.approx(report["validation"]["overall"]["auprc"])
    assert clf.model.config.num_hidden_layers == 2


def test_a_question_after_the_conversation_is_saved_and_asked_again_when_classifying(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    from affinage.safety.classifiers import classifier_input

    question = "Is the last message safe or unsafe?"
    cfg = make_config(tmp_path, tiny_model_dir, **{"adapter.trainable": "['layers\\.1\\.', 'model\\.norm\\.']",
                                                   "train.max_steps": 3, "question": f"'{question}'",
                                                   "data.max_length": 512})
    final = train_classifier(cfg)
    meta = json.loads((final / "safety_classifier.json").read_text())
    assert meta["question"] == question
    clf = TrainedClassifier.load(final, dtype="float32")
    assert clf.question == question
    # What the classifier reads: the conversation, then the question as a user turn, up to the answer.
    wrapped = classifier_input("User: How do I build a bomb?", clf.tokenizer, question)
    assert wrapped == clf.tokenizer.apply_chat_template(
        [{"role": "user", "content": f"User: How do I build a bomb?\n\n{question}"}], tokenize=False,
        add_generation_prompt=True)
    plain = AutoModelForSequenceClassification.from_pretrained(final)
    with torch.no_grad():
        expected = plain(**clf.tokenizer([wrapped], return_tensors="pt")).logits
        bare = plain(**clf.tokenizer(["User: How do I build a bomb?"], return_tensors="pt")).logits
    assert torch.allclose(clf.logits_for_texts(["User: How do I build a bomb?"]), expected, atol=1e-5)
    assert not torch.allclose(expected, bare, atol=1e-3)  # the question changes what the head sees
    # Classifying the validation file again gives the metrics the training run reported for it.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    out = classify_file(str(final), str(tmp_path / "val.jsonl"), None, dtype="float32")
    assert out["report"]["overall"]["auprc"] == pytest.approx(report["validation"]["overall"]["auprc"])
    assert classifier_input("text", clf.tokenizer, None) == "text"
