"""Evaluation metrics by value, the eval stage end to end on tiny random models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from affinage.config import load_config
from affinage.errors import ConfigError, DataError
from affinage.evaluation import metrics as M
from affinage.evaluation.evaluate import EvalConfig, EvalSetConfig, load_eval_set, run_eval
from affinage.testing import make_tiny_model

# ----------------------------------------------------------------------------------------------
# Text against references
# ----------------------------------------------------------------------------------------------


def test_normalize_and_exact_match():
    assert M.normalize_text("  Hello, World!\n Été… ") == "hello world été"
    assert M.exact_match("30 Minutes.", "30 minutes") == 1.0
    assert M.exact_match("30 min", "30 minutes") == 0.0
    assert M.exact_match("scancel -u $USER", "scancel -u $user") == 1.0  # '-' is punctuation, dropped on both sides
    assert M.exact_match("ete", "été") == 0.0  # accents matter in French


def test_lcs_length_classic_example():
    # CLRS 15.4: LCS("ABCBDAB", "BDCABA") has length 4 (e.g. "BCBA").
    assert M.lcs_length("ABCBDAB", "BDCABA") == 4
    assert M.lcs_length("BDCABA", "ABCBDAB") == 4
    assert M.lcs_length("", "abc") == 0


def test_rouge_l_examples_of_lin_2004():
    """Lin (2004) section 3.1: reference S1 "police killed the gunman";
    S2 "police kill the gunman" shares "police the gunman" (LCS 3 of 4) -> R = P = F = 3/4;
    S3 "the gunman kill police" shares "the gunman" (LCS 2) -> 2/4."""
    ref = "police killed the gunman"
    assert M.rouge_l("police kill the gunman", ref).f1 == pytest.approx(0.75)
    assert M.rouge_l("the gunman kill police", ref).f1 == pytest.approx(0.5)


def test_rouge_l_precision_recall_and_beta():
    """Prediction "the cat" against the 6-word reference "the cat sat on the mat": LCS = 2, so
    P = 2/2 = 1 and R = 2/6 = 1/3. F1 = 2PR/(P+R) = (2/3)/(4/3) = 1/2. With beta = 2:
    F = (1+4) R P / (R + 4P) = (5/3) / (13/3) = 5/13."""
    score = M.rouge_l("The cat!", "the cat sat on the mat")
    assert score.precision == pytest.approx(1.0)
    assert score.recall == pytest.approx(1 / 3)
    assert score.f1 == pytest.approx(0.5)
    assert M.rouge_l("the cat", "the cat sat on the mat", beta=2).f1 == pytest.approx(5 / 13)
    assert M.rouge_l("", "").f1 == 1.0
    assert M.rouge_l("x", "").f1 == 0.0
    assert M.rouge_l("a b", "c d").f1 == 0.0


def test_rouge_l_matches_rouge_score_package():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [
        ("the quick brown fox jumps over the lazy dog", "a quick brown dog jumps over the fox"),
        ("use scancel to cancel your jobs now", "cancel jobs with scancel"),
        ("files on scratch are purged after thirty days", "scratch files untouched for thirty days are purged"),
    ]
    for pred, ref in pairs:
        theirs = scorer.score(ref, pred)["rougeL"]
        ours = M.rouge_l(pred, ref)
        assert ours.precision == pytest.approx(theirs.precision)
        assert ours.recall == pytest.approx(theirs.recall)
        assert ours.f1 == pytest.approx(theirs.fmeasure)


def test_bleu_and_chrf_through_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    refs = ["the job was cancelled by the scheduler", "use apptainer to run docker images"]
    assert M.bleu(refs, refs) == pytest.approx(100.0)
    assert M.chrf(refs, refs) == pytest.approx(100.0)
    preds = ["the job was stopped by the scheduler", "run images with apptainer"]
    assert M.bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < M.chrf(preds, refs) < 100
    assert M.chrf(["zzzz qqqq"], ["abcd efgh"]) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        M.bleu(["a"], ["a", "b"])


def test_bleu_without_sacrebleu_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(ConfigError, match=r"affinage\[eval\]"):
        M.bleu(["a"], ["a"])
    assert not M.sacrebleu_available()


def test_group_indices_and_mean():
    meta = [{"language": "en"}, {"language": "fr"}, {}, {"language": "en"}, {"language": ""}]
    assert M.group_indices(meta, "language") == {"en": [0, 3], "fr": [1]}
    assert M.mean([1.0, None, 3.0]) == 2.0
    assert M.mean([None]) is None


# ----------------------------------------------------------------------------------------------
# Log-likelihood
# ----------------------------------------------------------------------------------------------


def test_perplexity_weighs_every_token_equally():
    """Two examples: NLL sums 2.0 over 1 token and 4.0 over 3 tokens -> exp(6 / 4) = e^1.5
    (not the mean of the per-example perplexities e^2 and e^(4/3))."""
    assert M.perplexity([2.0, 4.0], [1, 3]) == pytest.approx(math.exp(1.5))
    assert math.isnan(M.perplexity([], []))


def _manual_logprob(model, input_ids, labels):
    """Reference: one unpadded forward pass, log-softmax, sum over labelled tokens."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([input_ids])).logits[0].float()  # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    total, n = 0.0, 0
    for t in range(1, len(input_ids)):
        if labels[t] != M.IGNORE_INDEX:
            total += logp[t - 1, labels[t]].item()
            n += 1
    return total, n


def test_sequence_logprobs_equal_unpadded_forward(tiny_model, tiny_tokenizer):
    rows = []
    for ctx, cont in [("question one", " answer"), ("q", " a much longer answer here"), ("mid length q", "!")]:
        c, a = M.encode_continuation(tiny_tokenizer, ctx, cont)
        rows.append(M.continuation_row(c, a))
    got = M.sequence_logprobs(tiny_model, rows, pad_token_id=tiny_tokenizer.pad_token_id, batch_size=2)
    for (ids, labels), (lp, n) in zip(rows, got, strict=True):
        ref_lp, ref_n = _manual_logprob(tiny_model, ids, labels)
        assert n == ref_n == sum(1 for x in labels if x != M.IGNORE_INDEX)
        assert lp == pytest.approx(ref_lp, abs=1e-4)
        assert lp < 0


def test_encode_continuation_moves_trailing_space(tiny_tokenizer):
    ctx, cont = M.encode_continuation(tiny_tokenizer, "Question: x\nAnswer: ", "yes")
    assert tiny_tokenizer.decode(ctx) == "Question: x\nAnswer:"
    assert tiny_tokenizer.decode(cont) == " yes"
    with pytest.raises(DataError):
        M.encode_continuation(tiny_tokenizer, "", "yes")


def test_multiple_choice_predictions_by_value():
    """Item 0: log-likelihoods -3 ('a', 1 char) and -4 ('bbbb', 4 chars): raw picks 0 (-3 > -4),
    per character picks 1 (-1 > -3). Item 1: -10 ('cc') and -6 ('dddddd'): raw picks 1, per
    character -5 vs -1 picks 1. With answers [1, 1]: accuracy 1/2, normalised accuracy 2/2."""
    lls = [[-3.0, -4.0], [-10.0, -6.0]]
    choices = [["a", "bbbb"], ["cc", "dddddd"]]
    assert M.multiple_choice_predictions(lls, choices) == ([0, 1], [1, 1])
    assert M.multiple_choice_accuracy(lls, choices, [1, 1]) == {"accuracy": 0.5, "accuracy_norm": 1.0}


def test_multiple_choice_prefers_the_option_the_model_learnt(tiny_tokenizer):
    """A model trained for a few steps on "Q -> yes" gives "yes" the higher log-likelihood."""
    model = make_tiny_model(tiny_tokenizer, seed=3)
    item = M.MultipleChoiceItem("Is the sky blue?", ["yes", "no"], 0)
    ctx = M.multiple_choice_context(tiny_tokenizer, item.question)
    c, a = M.encode_continuation(tiny_tokenizer, ctx, "yes")
    ids, labels = M.continuation_row(c, a)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(15):
        out = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels]))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    lls = M.multiple_choice_loglikelihoods(model, tiny_tokenizer, [item])
    assert lls[0][0] > lls[0][1]
    assert M.multiple_choice_accuracy(lls, [item.choices], [0])["accuracy"] == 1.0


# ----------------------------------------------------------------------------------------------
# Win rate
# ----------------------------------------------------------------------------------------------


def test_pairwise_win_rate_by_value():
    """Rewards candidate [1, 2, 3, 0] vs baseline [0, 2, 1, 1]: win, tie, win, loss -> (1 + .5 + 1 + 0)/4
    = 0.625. Lengths (100 vs 90, 50 vs 50, 200 vs 100, 10 vs 10), tolerance 0.2: pairs 0, 1, 3 are
    matched (10 <= 20, 0, 0; pair 2 differs by 100 > 40) -> (1 + .5 + 0)/3 = 0.5. Pairs of different
    lengths: 0 and 2, the longer (the candidate) preferred both times -> 1.0."""
    out = M.pairwise_win_rate([1, 2, 3, 0], [0, 2, 1, 1], [100, 50, 200, 10], [90, 50, 100, 10], length_tolerance=0.2)
    assert out["win_rate"] == pytest.approx(0.625)
    assert out["win_rate_length_matched"] == pytest.approx(0.5)
    assert out["n_length_matched"] == 3
    assert out["longer_preferred"] == pytest.approx(1.0)
    assert out["win_rate_stderr"] == pytest.approx(math.sqrt(0.625 * 0.375 / 4))
    assert out["mean_reward"] == pytest.approx(1.5)
    # The baseline wins when its longer answer is preferred: longer_preferred counts the baseline's wins too.
    out = M.pairwise_win_rate([0.0], [1.0], [10], [30])
    assert out["win_rate"] == 0.0 and out["longer_preferred"] == 1.0 and out["n_length_matched"] == 0


def _tiny_reward_model(tokenizer, path=None):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=512,
    )
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(config).eval()
    if path is not None:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return model


def test_reward_scores_read_the_last_real_token(tiny_tokenizer):
    """Batched scores equal one unpadded forward per pair, although each rendered pair ends with
    <|im_end|>, which is also the pad token (transformers' own pooling would read the wrong token)."""
    model = _tiny_reward_model(tiny_tokenizer)
    prompts = ["hello", "how do I cancel a job?", "x"]
    answers = ["hi there", "scancel", "a much longer answer than the others, with many tokens"]
    got = M.reward_scores(model, tiny_tokenizer, prompts, answers, batch_size=3)
    for p, a, score in zip(prompts, answers, got, strict=True):
        text = M.render_pair(tiny_tokenizer, p, a)
        assert text.rstrip().endswith("<|im_end|>")
        ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
            expected = model.score(hidden)[0].item()
        assert score == pytest.approx(expected, abs=1e-5)
    assert len(set(round(s, 6) for s in got)) == 3


# ----------------------------------------------------------------------------------------------
# LLM as a judge
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Clear and correct.\nScore: 4", 4.0),
        ("**Score:** 5", 5.0),
        ("Score: 2 at first... on reflection Score: 3", 3.0),
        ("I'd give it 4/5.", 4.0),
        ("Note : 3", 3.0),
        ("4", 4.0),
        ("Score: 4.5", 4.5),
        ("Score: 7", None),  # outside the 1-5 scale: not followed, never clipped
        ("It gets 3/10", None),  # another scale
        ("no verdict here", None),
    ],
)
def test_parse_judge_score(text, expected):
    assert M.parse_judge_score(text, 1, 5) == expected


def test_expected_score_g_eval():
    """Equal logits over 1..5 -> mean 3. Probabilities 1/4 and 3/4 on scores 1 and 2 -> 1.75."""
    assert M.expected_score([0.0] * 5, 1) == pytest.approx(3.0)
    assert M.expected_score([math.log(1.0), math.log(3.0)], 1) == pytest.approx(1.75)


def test_judge_prompt_holds_rubric_reference_and_format():
    text = M.judge_prompt("RUBRIC", "Q?", "A.", reference="REF", min_score=1, max_score=5)
    assert text.index("RUBRIC") < text.index("Q?") < text.index("REF") < text.index("A.")
    assert "Score: N" in text
    assert "REF" not in M.judge_prompt("RUBRIC", "Q?", "A.")
    assert "score only" in M.judge_prompt("R", "Q", "A", mode="logprobs")


def test_judge_by_probabilities_matches_unpadded_forward(tiny_model, tiny_tokenizer):
    """Left padding with position ids gives each row the next-token distribution of its own forward."""
    prompts = ["short", "a much longer judge prompt with many more tokens in it"]
    got = M.judge_by_probabilities(tiny_model, tiny_tokenizer, prompts, min_score=1, max_score=5, batch_size=2)
    ids5 = M.score_token_ids(tiny_tokenizer, 1, 5)
    for p, score in zip(prompts, got, strict=True):
        from affinage.data.tokenize import render_chat

        text = render_chat(tiny_tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True)
        ids = torch.tensor([tiny_tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = tiny_model(input_ids=ids).logits[0, -1, ids5].tolist()
        assert score == pytest.approx(M.expected_score(logits, 1), abs=1e-4)
        assert 1 <= score <= 5


def test_score_tokens_must_be_single_tokens(tiny_tokenizer):
    # The byte-level tiny tokenizer encodes "10" as two tokens.
    with pytest.raises(ConfigError, match="single token"):
        M.score_token_ids(tiny_tokenizer, 1, 10)


# ----------------------------------------------------------------------------------------------
# Sets and the eval stage
# ----------------------------------------------------------------------------------------------


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


QA = [
    {"prompt": "How long is an account locked?", "reference": "30 minutes.", "language": "en", "category": "login"},
    {"messages": [{"role": "user", "content": "Quelle commande annule mes jobs ?"},
                  {"role": "assistant", "content": "scancel -u $USER"}], "language": "fr", "category": "scheduling"},
    {"prompt": "Is Docker available?", "completion": "No, use Apptainer.", "language": "en", "category": "software"},
]
MC = [
    {"question": "Lock time?", "choices": ["30 minutes", "1 day"], "answer": 0, "language": "en"},
    {"question": "Backup on scratch?", "choices": ["yes", "no"], "answer": "no", "language": "fr"},
]


def test_load_eval_set_detects_types_and_checks_rows(tmp_path):
    qa = load_eval_set(EvalSetConfig(path=str(_write(tmp_path / "qa.jsonl", QA))))
    assert qa.type == "generation" and qa.name == "qa" and len(qa.examples) == 3
    assert qa.examples[1].reference == "scancel -u $USER" and qa.examples[1].meta["language"] == "fr"
    assert qa.examples[2].question == "Is Docker available?"
    assert "perplexity" in qa.metrics and "win_rate" not in qa.metrics
    mc = load_eval_set(EvalSetConfig(path=str(_write(tmp_path / "mc.jsonl", MC))))
    assert mc.type == "multiple_choice" and mc.examples[1].answer == 1
    assert mc.metrics == ["accuracy", "accuracy_norm"]
    bad = _write(tmp_path / "bad.jsonl", [MC[0], {"question": "q", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(DataError, match=r"bad.jsonl, row 2.*answer"):
        load_eval_set(EvalSetConfig(path=str(bad)))
    with pytest.raises(ConfigError, match="do not apply"):
        load_eval_set(EvalSetConfig(path=str(tmp_path / "mc.jsonl"), metrics=["rouge_l"]))
    no_ref = _write(tmp_path / "noref.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(DataError, match="noref.jsonl, row 1"):
        load_eval_set(EvalSetConfig(path=str(no_ref)))


def test_eval_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="models"):
        load_config(EvalConfig, None, ["sets=[{path: x.jsonl}]"])
    with pytest.raises(ConfigError, match="labels must be unique"):
        load_config(EvalConfig, None, ["models=[{name: a, label: x}, {name: b, label: x}]", "sets=[{path: x.jsonl}]"])
    with pytest.raises(ConfigError, match="win_rate.reward_model"):
        load_config(EvalConfig, None, ["models=[{name: a}, {name: b}]", "sets=[{path: x.jsonl, metrics: [win_rate]}]"])
    with pytest.raises(ConfigError, match="win_rate.baseline"):
        load_config(EvalConfig, None, ["models=[{name: a}, {name: b}]", "sets=[{path: x.jsonl}]", "win_rate.baseline=c"])
    with pytest.raises(ConfigError, match="single digits"):
        load_config(EvalConfig, None, ["models=[{name: a}]", "sets=[{path: x.jsonl}]", "judge.mode=logprobs", "judge.max_score=10"])


def test_run_eval_end_to_end(tmp_path, tiny_tokenizer):
    """Two labels on the same tiny model (identical answers), a tiny reward model and a tiny judge.

    Identical answers give identical rewards, so every pair is a tie: win rate exactly 0.5, and
    every pair is length-matched. Per-language numbers are recomputed from the per-example values.
    """
    model_dir = tmp_path / "model"
    make_tiny_model(tiny_tokenizer).save_pretrained(model_dir)
    tiny_tokenizer.save_pretrained(model_dir)
    rm_dir = tmp_path / "rm"
    _tiny_reward_model(tiny_tokenizer, rm_dir)
    qa = _write(tmp_path / "qa.jsonl", QA)
    mc = _write(tmp_path / "mc.jsonl", MC)
    text = _write(tmp_path / "text.jsonl", [{"text": "held-out text one"}, {"text": "and two", "language": "en"}])
    out = tmp_path / "eval"
    cfg = load_config(EvalConfig, None, [
        f"models=[{{name: {model_dir}, label: base}}, {{name: {model_dir}, label: sft}}]",
        f"sets=[{{path: {qa}}}, {{path: {mc}}}, {{path: {text}, name: heldout}}]",
        f"win_rate.reward_model={rm_dir}", f"judge.model={model_dir}", "judge.mode=logprobs",
        "generation.max_new_tokens=6", "dtype=float32", f"output_dir={out}", "progress=false",
    ])
    result = run_eval(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["baseline"] == "base"
    qa_res = saved["sets"]["qa"]["results"]
    assert qa_res["sft"]["overall"]["win_rate"] == pytest.approx(0.5)
    assert qa_res["sft"]["overall"]["n_length_matched"] == 3
    assert "win_rate" not in qa_res["base"]["overall"]  # the baseline is not compared with itself
    assert qa_res["base"]["overall"]["rouge_l"] == qa_res["sft"]["overall"]["rouge_l"]
    assert 1 <= qa_res["base"]["overall"]["judge"] <= 5
    assert set(qa_res["base"]["by_language"]) == {"en", "fr"}
    assert set(qa_res["base"]["by_category"]) == {"login", "scheduling", "software"}
    assert qa_res["base"]["overall"]["perplexity"] > 1
    assert saved["sets"]["heldout"]["results"]["base"]["overall"]["perplexity"] > 1
    assert 0 <= saved["sets"]["mc"]["results"]["base"]["overall"]["accuracy"] <= 1

    preds = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    qa_preds = [p for p in preds if p["set"] == "qa"]
    assert [p["reference"] for p in qa_preds] == ["30 minutes.", "scancel -u $USER", "No, use Apptainer."]
    en = [p["models"]["base"]["rouge_l"] for p in qa_preds if p["language"] == "en"]
    assert qa_res["base"]["by_language"]["en"]["rouge_l"] == pytest.approx(sum(en) / len(en))
    # Corpus perplexity of a group = exp(sum NLL / sum tokens) of its examples.
    fr = [p["models"]["base"] for p in qa_preds if p["language"] == "fr"]
    expected = math.exp(sum(m["nll"] for m in fr) / sum(m["tokens"] for m in fr))
    assert qa_res["base"]["by_language"]["fr"]["perplexity"] == pytest.approx(expected)
    assert result.metrics["sft.qa.win_rate"] == pytest.approx(0.5)
    assert result.metrics["base.mc.accuracy"] == saved["sets"]["mc"]["results"]["base"]["overall"]["accuracy"]
