"""Evaluation metrics: reference-based text metrics, log-likelihood metrics, reward-model and LLM judges.

Three families, from the lightest to the heaviest:

* **Text against references** (pure Python): exact match after normalisation, ROUGE-L (our own
  implementation, Lin 2004), BLEU and chrF through sacrebleu (optional extra ``eval``).
* **Log-likelihood** (one forward pass, no generation): perplexity of held-out text or of reference
  answers, and multiple-choice accuracy by the log-likelihood of each option, raw and
  length-normalised (the ``acc`` / ``acc_norm`` of lm-evaluation-harness, checked against it).
* **Judges**: pairwise win rate against a baseline model, judged by a reward model
  (``AutoModelForSequenceClassification`` directory), with a length-bias check; and LLM-as-judge with
  any local chat model and a written rubric, the score parsed from its answer or read from the
  probabilities of the score tokens (G-Eval).

Per-language and per-category breakdowns group example indices by a metadata column
(:func:`group_indices`); the ``eval`` stage recomputes every metric on each group.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from affinage.errors import ConfigError, DataError, ModelError

IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------
# Text against references
# ----------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """Lower-case, NFKC, punctuation removed, whitespace collapsed; accents kept (``é`` ≠ ``e`` in French).

    The normalisation of SQuAD's exact match (Rajpurkar et al. 2016), except that English articles
    are kept: dropping "a/an/the" would be wrong for the other languages we evaluate.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    return " ".join(text.split())


def words(text: str) -> list[str]:
    """Normalised words of ``text`` (:func:`normalize_text`, split on whitespace)."""
    return normalize_text(text).split()


def exact_match(prediction: str, reference: str) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0."""
    return float(normalize_text(prediction) == normalize_text(reference))


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence of ``a`` and ``b`` (dynamic programming, O(|a|·|b|))."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class RougeL:
    precision: float
    recall: float
    f1: float


def rouge_l(prediction: str, reference: str, beta: float = 1.0) -> RougeL:
    """ROUGE-L of one prediction against one reference, on normalised words.

    Lin (2004), "ROUGE: A Package for Automatic Evaluation of Summaries", section 3.1, eq. 2-4, with
    X the reference (m words) and Y the prediction (n words)::

        R_lcs = LCS(X, Y) / m      P_lcs = LCS(X, Y) / n
        F_lcs = (1 + beta²) R_lcs P_lcs / (R_lcs + beta² P_lcs)

    ``beta = 1`` gives the F1 that most tools report. Empty on both sides counts as a perfect match;
    empty on one side as 0.
    """
    ref, pred = words(reference), words(prediction)
    if not ref and not pred:
        return RougeL(1.0, 1.0, 1.0)
    if not ref or not pred:
        return RougeL(0.0, 0.0, 0.0)
    lcs = lcs_length(ref, pred)
    recall, precision = lcs / len(ref), lcs / len(pred)
    if lcs == 0:
        return RougeL(0.0, 0.0, 0.0)
    f = (1 + beta**2) * recall * precision / (recall + beta**2 * precision)
    return RougeL(precision, recall, f)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(
            "the metrics 'bleu' and 'chrf' need sacrebleu, which is not installed: pip install 'affinage[eval]'"
        ) from None
    return sacrebleu


def sacrebleu_available() -> bool:
    try:
        import sacrebleu  # noqa: F401
    except ImportError:
        return False
    return True


def bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU (Papineni et al. 2002) through sacrebleu, 0-100, its default 13a tokenisation."""
    _check_pairs(predictions, references)
    return float(_sacrebleu().corpus_bleu(list(predictions), [list(references)]).score)


def chrf(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (Popović 2015, character n-grams up to 6, beta = 2) through sacrebleu, 0-100."""
    _check_pairs(predictions, references)
    return float(_sacrebleu().corpus_chrf(list(predictions), [list(references)]).score)


def _check_pairs(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def mean(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# ----------------------------------------------------------------------------------------------
# Log-likelihood
# ----------------------------------------------------------------------------------------------


def perplexity(nll_sums: Sequence[float], token_counts: Sequence[int]) -> float:
    """Corpus perplexity: ``exp(sum of token NLLs / number of tokens)`` over all examples together.

    Every token weighs the same (a long example counts more than a short one), as in the SFT
    recipe's validation loss; this is not the mean of per-example perplexities.
    """
    tokens = sum(token_counts)
    if tokens == 0:
        return math.nan
    return math.exp(min(sum(nll_sums) / tokens, 50.0))


def sequence_logprobs(
    model: Any,
    rows: Sequence[tuple[list[int], list[int]]],
    *,
    pad_token_id: int,
    batch_size: int = 8,
) -> list[tuple[float, int]]:
    """Sum of ``log p(token)`` over the labelled tokens of each row, and their number.

    ``rows`` are ``(input_ids, labels)`` pairs, labels ``IGNORE_INDEX`` where a token is not scored
    (prompts) and equal to the token elsewhere (the layout of
    :class:`~affinage.data.tokenize.TokenizedExample`). Token ``t`` is scored by the logits at
    position ``t - 1``. Rows are batched longest first with right padding; the output head runs only
    at scored positions (``logits_to_keep``), and log-softmax is taken in fp32.
    """
    import torch

    from affinage.data.collate import collate_padded
    from affinage.data.tokenize import TokenizedExample
    from affinage.generation.sampling import model_device
    from affinage.losses.sft import shifted_targets, trainable_positions

    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    results: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    device = model_device(model)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = collate_padded([TokenizedExample(*rows[i]) for i in idx], pad_token_id)
                labels = batch["labels"].to(device)  # [B, T]
                positions = trainable_positions(labels)  # [P]
                if positions.numel() == 0:
                    continue
                logits = model(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    logits_to_keep=positions,
                    use_cache=False,
                ).logits  # [B, P, V]
                targets = shifted_targets(labels)[:, positions]  # [B, P]
                scored = targets != IGNORE_INDEX
                logp = torch.log_softmax(logits.float(), dim=-1)
                token_logp = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # [B, P]
                sums = (token_logp * scored).sum(dim=1).double().tolist()
                counts = scored.sum(dim=1).tolist()
                for i, s, n in zip(idx, sums, counts, strict=True):
                    results[i] = (float(s), int(n))
    finally:
        model.train(was_training)
    return results


def encode_continuation(
    tokenizer: Any, context: str, continuation: str, *, add_special_tokens: bool = False
) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as they fall when the two are tokenised together.

    Trailing whitespace of the context moves to the continuation, and the continuation's ids are what
    follows the context's ids in the tokenisation of the whole text, so a word is split as the model
    would see it in running text (the convention of lm-evaluation-harness, kept for parity).
    """
    if not context:
        raise DataError("a log-likelihood request needs a non-empty context (the question)")
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = list(tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"])
    ctx = list(tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"])
    if whole[: len(ctx)] != ctx:  # tokenisation merged across the boundary: fall back to separate ids
        cont = list(tokenizer(continuation, add_special_tokens=False)["input_ids"])
        return ctx, cont
    return ctx, whole[len(ctx) :]


def continuation_row(context_ids: list[int], continuation_ids: list[int]) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` that score only the continuation tokens."""
    return context_ids + continuation_ids, [IGNORE_INDEX] * len(context_ids) + list(continuation_ids)


# ----------------------------------------------------------------------------------------------
# Multiple choice
# ----------------------------------------------------------------------------------------------


@dataclass
class MultipleChoiceItem:
    question: str
    choices: list[str]
    answer: int
    """Index of the correct choice."""


def multiple_choice_context(
    tokenizer: Any, question: str, *, template: str = "chat", system_prompt: str | None = None
) -> str:
    """The text the options continue: the chat-rendered question up to the assistant header (``chat``),
    or ``"{question}"`` as is (``plain``; the options then start with a space, as in lm-eval)."""
    if template == "plain":
        return question
    from affinage.data.tokenize import render_chat, with_system_prompt

    messages = with_system_prompt([{"role": "user", "content": question}], system_prompt)
    return render_chat(tokenizer, messages, add_generation_prompt=True, where="multiple-choice question")


def multiple_choice_loglikelihoods(
    model: Any,
    tokenizer: Any,
    items: Sequence[MultipleChoiceItem],
    *,
    template: str = "chat",
    system_prompt: str | None = None,
    batch_size: int = 8,
    contexts: Sequence[list[dict[str, str]]] | None = None,
) -> list[list[float]]:
    """``log p(choice | question)`` summed over each choice's tokens, for every choice of every item.

    ``template="chat"``: the question is a user turn rendered with the chat template and each choice
    is the start of the assistant's answer. ``template="plain"``: the question text is continued by
    ``" " + choice`` (lm-evaluation-harness's ``target_delimiter``), for base models. ``contexts``
    (chat only) gives each item's whole conversation up to the answer instead of its bare question:
    the prompt of a few-shot or retrieval-augmented baseline.
    """
    from affinage.data.tokenize import render_chat

    if contexts is not None and (template != "chat" or len(contexts) != len(items)):
        raise ConfigError("multiple-choice contexts need template 'chat' and one conversation per item")
    rows: list[tuple[list[int], list[int]]] = []
    for n, item in enumerate(items):
        if contexts is not None:
            context = render_chat(tokenizer, contexts[n], add_generation_prompt=True, where="multiple-choice question")
        else:
            context = multiple_choice_context(tokenizer, item.question, template=template, system_prompt=system_prompt)
        for choice in item.choices:
            continuation = choice if template == "chat" else " " + choice
            # A chat render already holds the template's BOS; plain text gets none (as lm-eval's HFLM).
            ctx, cont = encode_continuation(tokenizer, context, continuation)
            rows.append(continuation_row(ctx, cont))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scored = sequence_logprobs(model, rows, pad_token_id=pad, batch_size=batch_size)
    out, k = [], 0
    for item in items:
        out.append([scored[k + j][0] for j in range(len(item.choices))])
        k += len(item.choices)
    return out


def multiple_choice_predictions(
    loglikelihoods: Sequence[Sequence[float]], choices: Sequence[Sequence[str]]
) -> tuple[list[int], list[int]]:
    """Predicted choice per item: by total log-likelihood, and by log-likelihood per character.

    The normalised variant divides each choice's log-likelihood by its length in characters (the
    ``acc_norm`` of lm-evaluation-harness), which removes the penalty a long option pays for having
    more tokens to predict. Ties go to the first choice.
    """
    raw, norm = [], []
    for lls, opts in zip(loglikelihoods, choices, strict=True):
        raw.append(max(range(len(lls)), key=lambda j: (lls[j], -j)))
        scaled = [ll / max(len(o), 1) for ll, o in zip(lls, opts, strict=True)]
        norm.append(max(range(len(scaled)), key=lambda j: (scaled[j], -j)))
    return raw, norm


def multiple_choice_accuracy(
    loglikelihoods: Sequence[Sequence[float]], choices: Sequence[Sequence[str]], answers: Sequence[int]
) -> dict[str, float]:
    """``accuracy`` (argmax of total log-likelihood) and ``accuracy_norm`` (per character)."""
    raw, norm = multiple_choice_predictions(loglikelihoods, choices)
    n = len(answers)
    if n == 0:
        return {"accuracy": math.nan, "accuracy_norm": math.nan}
    return {
        "accuracy": sum(p == a for p, a in zip(raw, answers, strict=True)) / n,
        "accuracy_norm": sum(p == a for p, a in zip(norm, answers, strict=True)) / n,
    }


# ----------------------------------------------------------------------------------------------
# Pairwise win rate, judged by a reward model
# ----------------------------------------------------------------------------------------------


def load_reward_model(name: str, *, dtype: str = "auto") -> tuple[Any, Any]:
    """An ``AutoModelForSequenceClassification`` with one output (a reward model) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification

    from affinage.models.loading import load_tokenizer, resolve_dtype, resolve_model

    source = resolve_model(name)
    if source.kind == "gguf":
        raise ModelError(f"reward model '{name}' is a GGUF file; give a Hugging Face directory")
    tokenizer = load_tokenizer(name)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(source.path, dtype=resolve_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"cannot load the reward model '{name}' as AutoModelForSequenceClassification: {exc}. "
            "Give the final/ directory of an `affinage rm` run."
        ) from exc
    if model.config.num_labels != 1:
        raise ModelError(
            f"reward model '{name}' has {model.config.num_labels} outputs; a reward model has one (num_labels=1)"
        )
    model.eval()
    return model, tokenizer


def render_pair(tokenizer: Any, prompt: str | list[dict[str, str]], answer: str) -> str:
    """A prompt and an answer as the reward model reads them: the chat template when it has one."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if getattr(tokenizer, "chat_template", None):
        from affinage.data.tokenize import render_chat

        return render_chat(tokenizer, [*messages, {"role": "assistant", "content": answer}], where="reward input")
    question = "\n\n".join(m["content"] for m in messages)
    return f"{question}\n\n{answer}"


def reward_scores(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str | list[dict[str, str]]],
    answers: Sequence[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """The reward of each (prompt, answer): the scalar head read at the last real token.

    transformers' own pooling takes the last token that is not ``pad_token_id``, which is wrong when
    padding reuses the end-of-sequence token that closes every rendered answer; here the backbone
    runs once per batch and the head reads the hidden state at the last position of the attention
    mask. Models without a ``score`` head are run one sequence at a time (no padding at all).
    """
    import torch

    from affinage.generation.sampling import model_device

    _check_pairs(answers, prompts)
    texts = [render_pair(tokenizer, p, a) for p, a in zip(prompts, answers, strict=True)]
    limit = min(max_length or getattr(tokenizer, "model_max_length", None) or 4096, 1 << 20)
    # Over-long pairs keep their end: the head reads the last token, which must be the answer's.
    encoded = [list(tokenizer(t, add_special_tokens=False)["input_ids"])[-limit:] for t in texts]
    device = model_device(model)
    backbone = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    head = getattr(model, "score", None)
    scores = [0.0] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: -len(encoded[i]))
    with torch.inference_mode():
        if backbone is None or head is None:
            for i in order:
                ids = torch.tensor([encoded[i]], device=device)
                scores[i] = float(model(input_ids=ids).logits[0, 0])
            return scores
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[r, : len(encoded[i])] = 1
            hidden = backbone(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state  # [B, T, H]
            last = mask.sum(dim=1).to(device) - 1  # [B]
            pooled = hidden[torch.arange(len(idx), device=device), last]  # [B, H]
            values = head(pooled)[:, 0].float().tolist()  # [B]
            for i, v in zip(idx, values, strict=True):
                scores[i] = float(v)
    return scores


def pairwise_win_rate(
    candidate_rewards: Sequence[float],
    baseline_rewards: Sequence[float],
    candidate_lengths: Sequence[int],
    baseline_lengths: Sequence[int],
    *,
    length_tolerance: float = 0.2,
) -> dict[str, float | int | None]:
    """Win rate of a candidate over a baseline on the same prompts, and how much length explains it.

    ``win_rate`` counts a win as 1, a tie as 1/2 and a loss as 0, averaged over prompts.
    Reward models are known to prefer longer answers (Singhal et al. 2023, "A Long Way to Go:
    Investigating Length Correlations in RLHF"), so a model that only learnt to talk more would win.
    Two checks:

    * ``win_rate_length_matched``: the win rate on the pairs whose lengths differ by at most
      ``length_tolerance`` of the longer one (``|a - b| <= tol * max(a, b)``), where length cannot
      explain the verdict (``n_length_matched`` of them);
    * ``longer_preferred``: among pairs of different lengths, how often the judge prefers the longer
      answer, whichever model wrote it (0.5 = no visible length preference).
    """
    n = len(candidate_rewards)
    if not (len(baseline_rewards) == len(candidate_lengths) == len(baseline_lengths) == n):
        raise ValueError("rewards and lengths must have one value per prompt")

    def outcome(c: float, b: float) -> float:
        return 1.0 if c > b else 0.5 if c == b else 0.0

    outcomes = [outcome(c, b) for c, b in zip(candidate_rewards, baseline_rewards, strict=True)]
    matched = [
        o
        for o, lc, lb in zip(outcomes, candidate_lengths, baseline_lengths, strict=True)
        if abs(lc - lb) <= length_tolerance * max(lc, lb)
    ]
    longer = [
        outcome(c, b) if lc > lb else 1.0 - outcome(c, b)
        for c, b, lc, lb in zip(candidate_rewards, baseline_rewards, candidate_lengths, baseline_lengths, strict=True)
        if lc != lb
    ]
    rate = sum(outcomes) / n if n else None
    return {
        "win_rate": rate,
        "win_rate_stderr": math.sqrt(rate * (1 - rate) / n) if n else None,
        "win_rate_length_matched": sum(matched) / len(matched) if matched else None,
        "n_length_matched": len(matched),
        "longer_preferred": sum(longer) / len(longer) if longer else None,
        "mean_reward": sum(candidate_rewards) / n if n else None,
        "mean_reward_baseline": sum(baseline_rewards) / n if n else None,
        "n": n,
    }


# ----------------------------------------------------------------------------------------------
# LLM as a judge
# ----------------------------------------------------------------------------------------------

DEFAULT_RUBRIC = """\
Judge how well the answer serves the user who asked the question.
5: correct, complete and directly usable (right commands, values and steps), in the user's language.
4: correct and useful, with a minor omission or imprecision.
3: partly correct, vague, or missing an important step.
2: mostly wrong, off-topic or unhelpful.
1: wrong, harmful, or not an answer at all."""


def judge_prompt(
    rubric: str,
    question: str,
    answer: str,
    *,
    reference: str | None = None,
    min_score: int = 1,
    max_score: int = 5,
    mode: str = "generate",
) -> str:
    """The user message sent to the judge: rubric, question, optional reference, answer, output format."""
    parts = [f"{rubric.strip()}\n", f"[Question]\n{question.strip()}\n"]
    if reference:
        parts.append(f"[Reference answer, for comparison]\n{reference.strip()}\n")
    parts.append(f"[Answer to judge]\n{answer.strip()}\n")
    if mode == "logprobs":
        parts.append(f"Reply with the score only: one integer from {min_score} to {max_score}.")
    else:
        parts.append(
            f"Explain your judgement in one or two sentences, then write the score on the last line as "
            f"'Score: N' with N an integer from {min_score} to {max_score}."
        )
    return "\n".join(parts)


_SCORE_PATTERNS = (
    re.compile(r"(?:score|note|rating)\s*[:=]?\s*\**\s*(\d+(?:[.,]\d+)?)", re.IGNORECASE),
    re.compile(r"(\d+(?:[.,]\d+)?)\s*/\s*(\d+)"),
    re.compile(r"^\s*\**\s*(\d+(?:[.,]\d+)?)\s*\**\s*\.?\s*$"),
)


def parse_judge_score(text: str, min_score: int = 1, max_score: int = 5) -> float | None:
    """The score a judge wrote, or None when there is none in ``[min_score, max_score]``.

    Looks for the last ``Score: N`` (also ``note``/``rating``, bold markers allowed), then the last
    ``N/max_score``, then an answer that is only a number. A score outside the range is unparsable,
    never clipped: a judge that writes "Score: 7" on a 1-5 scale did not follow the rubric.
    """
    for k, pattern in enumerate(_SCORE_PATTERNS):
        matches = pattern.findall(text) if k < 2 else pattern.findall(text.strip())
        for match in reversed(matches):
            value_text, denominator = (match if isinstance(match, tuple) else (match, None))
            if denominator is not None and int(denominator) != max_score:
                continue
            value = float(value_text.replace(",", "."))
            if min_score <= value <= max_score:
                return value
    return None


def score_token_ids(tokenizer: Any, min_score: int, max_score: int) -> list[int]:
    """The token id of each score ``min_score..max_score`` written alone; each must be one token."""
    ids = []
    for s in range(min_score, max_score + 1):
        encoded = list(tokenizer(str(s), add_special_tokens=False)["input_ids"])
        if len(encoded) != 1:
            raise ConfigError(
                f"judge.mode=logprobs needs each score to be a single token, but '{s}' is {len(encoded)} "
                "tokens for this judge's tokenizer; use judge.mode=generate or a scale of single digits"
            )
        ids.append(encoded[0])
    return ids


def expected_score(score_logits: Sequence[float], min_score: int) -> float:
    """Probability-weighted score, G-Eval (Liu et al. 2023, eq. 1): ``sum_i p(s_i) s_i``.

    ``score_logits`` are the judge's next-token logits of the score tokens ``min_score, min_score+1,
    ...``; they are renormalised over those tokens only (softmax), so probability the judge puts on
    other tokens does not drag the score down.
    """
    top = max(score_logits)
    weights = [math.exp(v - top) for v in score_logits]
    total = sum(weights)
    return sum((min_score + i) * w / total for i, w in enumerate(weights))


def judge_by_generation(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    min_score: int = 1,
    max_score: int = 5,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[list[float | None], list[str]]:
    """Greedy judge answers to ``prompts`` (built by :func:`judge_prompt`) and the scores parsed from them."""
    from affinage.generation.sampling import GenerationOptions, generate

    options = GenerationOptions(max_new_tokens=max_new_tokens, temperature=0.0)
    texts = generate(model, tokenizer, list(prompts), options, batch_size=batch_size, progress=progress)
    return [parse_judge_score(t, min_score, max_score) for t in texts], texts


def judge_by_probabilities(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    min_score: int = 1,
    max_score: int = 5,
    batch_size: int = 8,
) -> list[float]:
    """Expected scores from the judge's next-token probabilities of the score tokens (no sampling).

    Each prompt is rendered with the chat template up to the assistant header; the rows are left-padded
    with position ids counted from each row's first real token, so the last position of every row is
    the first token of the judge's answer.
    """
    import torch

    from affinage.data.tokenize import render_chat
    from affinage.generation.sampling import model_device

    ids = score_token_ids(tokenizer, min_score, max_score)
    encoded = [
        list(
            tokenizer(
                render_chat(tokenizer, [{"role": "user", "content": p}], add_generation_prompt=True, where="judge prompt"),
                add_special_tokens=False,
            )["input_ids"]
        )
        for p in prompts
    ]
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = [0.0] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            rows = encoded[start : start + batch_size]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                input_ids[r, width - len(row) :] = torch.tensor(row)
                mask[r, width - len(row) :] = 1
            position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, T]
            logits = model(
                input_ids=input_ids.to(device),
                attention_mask=mask.to(device),
                position_ids=position_ids.to(device),
                logits_to_keep=1,
                use_cache=False,
            ).logits[:, -1, :]  # [B, V]
            for r, row_logits in enumerate(logits[:, ids].float().tolist()):
                scores[start + r] = expected_score(row_logits, min_score)
    return scores


# ----------------------------------------------------------------------------------------------
# Breakdowns
# ----------------------------------------------------------------------------------------------


def group_indices(meta: Sequence[dict[str, Any]], key: str) -> dict[str, list[int]]:
    """Indices of the examples of each value of ``meta[i][key]``, in first-seen order.

    Examples without the key are left out (a set with no ``language`` column has no language breakdown).
    """
    groups: dict[str, list[int]] = {}
    for i, m in enumerate(meta):
        value = m.get(key)
        if value is None or value == "":
            continue
        groups.setdefault(str(value), []).append(i)
    return groups
