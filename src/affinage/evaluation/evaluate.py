"""The ``eval`` stage: one or several models on the same evaluation sets, one results JSON.

``affinage eval CONFIG.yaml`` (or a pipeline stage ``stage: eval``) loads each model in turn, runs
every set on it, and frees it before the next: only one policy model is in memory at a time. Answers
are kept, so that the reward model (win rate against the baseline) and the LLM judge are loaded once,
after the models, and score every model's answers. Three kinds of set, told apart by their rows:

``generation``       a conversation whose last turn is the reference answer (any SFT format:
                     ``messages``, ``prompt``/``completion``, ``alpaca``...; or ``prompt``/``reference``):
                     exact match, ROUGE-L, BLEU, chrF, perplexity of the reference, win rate, judge
``multiple_choice``  ``question``, ``choices`` (a list), ``answer`` (index or the choice's text):
                     accuracy and length-normalised accuracy from the options' log-likelihoods
``text``             ``text``: perplexity of held-out text

Any other column (``language``, ``category``...) is metadata; ``language`` and ``category`` give
per-language and per-category breakdowns of every metric. Output under ``output_dir``:
``results.json`` (every number, overall and per group), ``predictions.jsonl`` (per example: prompt,
reference, each model's answer and scores) and ``config.yaml``.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.config import DType, dump_yaml
from affinage.errors import ConfigError, DataError
from affinage.evaluation import metrics as M
from affinage.evaluation.prompting import BuiltPrompt, Prompter, PromptingConfig
from affinage.utils.fs import atomic_write_text

SetType = Literal["auto", "generation", "multiple_choice", "text"]
MetricName = Literal[
    "exact_match", "rouge_l", "bleu", "chrf", "perplexity", "accuracy", "win_rate", "judge"
]
METRICS_BY_TYPE: dict[str, tuple[str, ...]] = {
    "generation": ("exact_match", "rouge_l", "bleu", "chrf", "perplexity", "win_rate", "judge"),
    "multiple_choice": ("accuracy",),
    "text": ("perplexity",),
}
"""Which metrics each kind of set can compute."""
GROUP_KEYS = ("language", "category")
"""Metadata columns that get a breakdown when a set has them."""
LOWER_IS_BETTER = frozenset({"perplexity", "violation_rate", "false_refusal_rate", "attack_success_rate", "loss"})


@dataclass
class EvalModelConfig:
    """One model to evaluate."""

    name: str = ""
    """Built-in alias, local directory (a run's ``final/``), ``.gguf`` file or hub id."""
    label: str | None = None
    """Its name in tables and in metric keys (default: derived from ``name``)."""
    chat_template: str | None = None
    """Named template or Jinja string, for base models without one."""
    prompting: PromptingConfig = field(default_factory=PromptingConfig)
    """How the model is prompted: zero-shot (default), few-shot or retrieval-augmented; list one
    checkpoint several times to compare prompt-engineering baselines with fine-tuned models."""


@dataclass
class EvalSetConfig:
    """One evaluation set (a data file)."""

    path: str = ""
    name: str | None = None
    """Its name in tables and metric keys (default: the file name without extension)."""
    type: SetType = "auto"
    metrics: list[MetricName] = field(default_factory=list)
    """Empty: every metric the set's type supports that the config can compute (win_rate needs
    ``win_rate.reward_model``, judge needs ``judge.model``, bleu/chrf need sacrebleu)."""
    max_examples: int | None = None
    system_prompt: str | None = None
    template: Literal["chat", "plain"] = "chat"
    """Multiple choice: options continue the chat-rendered question (``chat``) or the raw text (``plain``)."""


@dataclass
class EvalGenerationConfig:
    """How answers are generated for generation sets (greedy)."""

    max_new_tokens: int = 128
    batch_size: int = 8


@dataclass
class WinRateConfig:
    """Pairwise win rate against a baseline model, judged by a reward model."""

    reward_model: str | None = None
    """Directory of an ``AutoModelForSequenceClassification`` reward model (an ``affinage rm`` final/)."""
    baseline: str | None = None
    """Label of the baseline among ``models`` (default: the first model)."""
    length_tolerance: float = 0.2
    """Pairs whose answer lengths differ by at most this fraction count as length-matched."""


@dataclass
class JudgeConfig:
    """LLM-as-judge: a local chat model scores each answer against a written rubric."""

    model: str | None = None
    rubric: str = M.DEFAULT_RUBRIC
    rubric_file: str | None = None
    """Read the rubric from this file (replaces ``rubric``)."""
    mode: Literal["generate", "logprobs"] = "generate"
    """``generate``: the judge writes a justification and 'Score: N', parsed; ``logprobs``: the
    probability-weighted score from its next-token probabilities of the score tokens (G-Eval)."""
    min_score: int = 1
    max_score: int = 5
    use_reference: bool = True
    """Show the judge the reference answer when the set has one."""
    max_new_tokens: int = 128


@dataclass
class LmEvalConfig:
    """Tasks of lm-evaluation-harness (optional extra ``lm-eval``) run on every model."""

    tasks: list[str] = field(default_factory=list)
    include_path: str | None = None
    """A folder of task YAML files of your own (local data: nothing is downloaded)."""
    limit: int | None = None
    num_fewshot: int | None = None
    batch_size: int = 4


@dataclass
class EvalConfig:
    """Evaluation: ``affinage eval CONFIG.yaml``."""

    stage: Literal["eval"] = "eval"
    models: list[EvalModelConfig] = field(default_factory=list)
    sets: list[EvalSetConfig] = field(default_factory=list)
    dtype: DType = "auto"
    batch_size: int = 8
    """Sequences per forward pass for log-likelihood metrics (perplexity, multiple choice, rewards)."""
    max_length: int = 1024
    """Longest sequence scored for perplexity (longer ones keep their start)."""
    generation: EvalGenerationConfig = field(default_factory=EvalGenerationConfig)
    win_rate: WinRateConfig = field(default_factory=WinRateConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    output_dir: str = "runs/eval"
    progress: bool = True

    def validate(self) -> None:
        check = _check
        check(bool(self.models), "models", "needs at least one model, e.g. models=[{name: smollm2-135m-instruct}]")
        labels = self.labels()
        for i, m in enumerate(self.models):
            check(bool(m.name), f"models[{i}].name", "is empty; give an alias, a directory or a hub id")
            m.prompting.validate(f"models[{i}].prompting")
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        check(not dupes, "models", f"labels must be unique; repeated: {', '.join(dupes)} (set models[i].label)")
        check(bool(self.sets) or bool(self.lm_eval.tasks), "sets", "needs at least one set (or lm_eval.tasks)")
        names = [s.name or Path(s.path).stem for s in self.sets]
        for i, s in enumerate(self.sets):
            check(bool(s.path), f"sets[{i}].path", "is empty; give a JSONL/JSON/CSV/Parquet file")
            check(s.max_examples is None or s.max_examples >= 1, f"sets[{i}].max_examples", "must be at least 1")
            allowed = METRICS_BY_TYPE.get(s.type)
            bad = [m for m in s.metrics if allowed is not None and m not in allowed]
            check(not bad, f"sets[{i}].metrics", f"{bad} do not apply to a {s.type} set; valid: {', '.join(allowed or ())}")
            if "win_rate" in s.metrics:
                check(bool(self.win_rate.reward_model), "win_rate.reward_model", f"is needed by sets[{i}].metrics=win_rate")
            if "judge" in s.metrics:
                check(bool(self.judge.model), "judge.model", f"is needed by sets[{i}].metrics=judge")
        dupes = sorted({x for x in names if names.count(x) > 1})
        check(not dupes, "sets", f"names must be unique; repeated: {', '.join(dupes)} (set sets[i].name)")
        prompted = [i for i, m in enumerate(self.models) if not m.prompting.is_default()]
        plain = [i for i, s in enumerate(self.sets) if s.template == "plain"]
        check(not (prompted and plain), f"models[{prompted[0] if prompted else 0}].prompting",
              f"builds chat prompts, but sets[{plain[0] if plain else 0}] scores raw text (template: plain); "
              "evaluate the prompted models on chat-template sets, or in a config of their own")
        check(self.batch_size >= 1, "batch_size", "must be at least 1")
        check(self.max_length >= 8, "max_length", "must be at least 8")
        check(self.generation.max_new_tokens >= 1, "generation.max_new_tokens", "must be at least 1")
        check(self.generation.batch_size >= 1, "generation.batch_size", "must be at least 1")
        w = self.win_rate
        check(w.baseline is None or w.baseline in labels, "win_rate.baseline", f"must be one of the model labels {labels}")
        check(0 <= w.length_tolerance <= 1, "win_rate.length_tolerance", "must be in [0, 1]")
        check(
            not w.reward_model or len(self.models) >= 2,
            "win_rate.reward_model",
            "compares models with a baseline: give at least two models",
        )
        j = self.judge
        check(j.min_score < j.max_score, "judge.max_score", "must be larger than judge.min_score")
        check(j.mode != "logprobs" or (j.min_score >= 0 and j.max_score <= 9), "judge.mode",
              "logprobs needs a scale of single digits (0-9)")
        check(j.rubric_file is None or Path(j.rubric_file).is_file(), "judge.rubric_file", f"{j.rubric_file} does not exist")
        check(self.lm_eval.batch_size >= 1, "lm_eval.batch_size", "must be at least 1")

    def labels(self) -> list[str]:
        """Each model's label: ``label``, else derived from ``name`` (``-few-shot``, ``-rag``... appended
        for a prompted model, so that one checkpoint can be listed once per way of prompting it)."""
        return [
            m.label or _default_label(m.name) + ("" if m.prompting.is_default() else "-" + m.prompting.mode.replace("_", "-"))
            for m in self.models
        ]


def _check(condition: Any, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}' {message}")


def _default_label(name: str) -> str:
    path = Path(name)
    if path.name == "final" and path.parent.name:
        return path.parent.name  # runs/quickstart/sft/final -> sft
    return path.name or name


# ----------------------------------------------------------------------------------------------
# Sets
# ----------------------------------------------------------------------------------------------


@dataclass
class EvalExample:
    prompt: list[dict[str, str]] | None = None
    """Generation: the conversation up to the reference answer."""
    reference: str | None = None
    question: str | None = None
    """Multiple choice: the question; generation: the last user message (shown to judges and in reports)."""
    choices: list[str] | None = None
    answer: int | None = None
    text: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSet:
    name: str
    path: str
    type: str
    metrics: list[str]
    examples: list[EvalExample]
    config: EvalSetConfig = field(default_factory=EvalSetConfig)


def load_eval_set(cfg: EvalSetConfig, *, judge: bool = False, win_rate: bool = False) -> EvalSet:
    """Read and check a set; detect its type from the first row when ``type: auto``."""
    from affinage.data.io import read_rows

    name = cfg.name or Path(cfg.path).stem
    examples: list[EvalExample] = []
    kind = cfg.type
    for number, row in read_rows(cfg.path):
        where = f"{cfg.path}, row {number}"
        row_kind = _row_type(row)
        if kind == "auto":
            kind = row_kind
        elif row_kind != kind and not (kind == "generation" and row_kind != "multiple_choice"):
            raise DataError(f"{where}: a {row_kind} row in a set of type {kind}; give every row the same shape")
        examples.append(_parse_row(row, kind, where))
        if cfg.max_examples and len(examples) >= cfg.max_examples:
            break
    if not examples:
        raise DataError(f"{cfg.path}: the evaluation set '{name}' has no rows")
    if kind == "auto":
        kind = "generation"
    allowed = METRICS_BY_TYPE[kind]
    if cfg.metrics:
        bad = [m for m in cfg.metrics if m not in allowed]
        if bad:
            raise ConfigError(
                f"set '{name}' is a {kind} set, so metrics {bad} do not apply; valid: {', '.join(allowed)}"
            )
        chosen = list(cfg.metrics)
    else:
        chosen = [m for m in allowed if m not in ("win_rate", "judge", "bleu", "chrf")]
        if kind == "generation" and M.sacrebleu_available():
            chosen += ["bleu", "chrf"]
        chosen += [m for m, on in (("win_rate", win_rate), ("judge", judge)) if on and m in allowed]
    if kind == "multiple_choice" and "accuracy" in chosen:
        chosen = ["accuracy", "accuracy_norm", *[m for m in chosen if m != "accuracy"]]
    order = ("exact_match", "rouge_l", "bleu", "chrf", "perplexity", "accuracy", "accuracy_norm", "win_rate", "judge")
    return EvalSet(name, cfg.path, kind, sorted(chosen, key=order.index), examples, cfg)


def _row_type(row: dict[str, Any]) -> str:
    if "choices" in row:
        return "multiple_choice"
    if "text" in row and not any(k in row for k in ("messages", "prompt", "conversations", "instruction")):
        return "text"
    return "generation"


def _parse_row(row: dict[str, Any], kind: str, where: str) -> EvalExample:
    from affinage.data.formats import to_example

    if kind == "multiple_choice":
        return _parse_choice_row(row, where)
    if kind == "text":
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: 'text' must be a non-empty string")
        return EvalExample(text=text, meta={k: v for k, v in row.items() if k != "text"})
    if "reference" in row and "prompt" in row and "completion" not in row:
        row = {**{k: v for k, v in row.items() if k != "reference"}, "completion": row["reference"]}
    example = to_example(row, "auto", where)
    if example.messages is None:
        raise DataError(f"{where}: a generation set needs conversations with a reference answer, not plain text")
    messages = example.messages
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the reference answer (role 'assistant')")
    prompt = messages[:-1]
    user_turns = [m["content"] for m in prompt if m["role"] == "user"]
    if not user_turns:
        raise DataError(f"{where}: there is no user message before the reference answer")
    return EvalExample(prompt=prompt, reference=messages[-1]["content"], question=user_turns[-1], meta=example.meta)


def _parse_choice_row(row: dict[str, Any], where: str) -> EvalExample:
    question = row.get("question", row.get("prompt"))
    choices = row.get("choices")
    answer = row.get("answer")
    if not isinstance(question, str) or not question.strip():
        raise DataError(f"{where}: a multiple-choice row needs a non-empty 'question' string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{where}: 'choices' must be a list of at least two non-empty strings")
    if isinstance(answer, str) and not answer.isdigit():
        if answer not in choices:
            raise DataError(f"{where}: 'answer' {answer!r} is not one of the choices")
        answer = choices.index(answer)
    elif isinstance(answer, str):
        answer = int(answer)
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise DataError(f"{where}: 'answer' must be the index (0 to {len(choices) - 1}) or the text of the right choice")
    meta = {k: v for k, v in row.items() if k not in ("question", "prompt", "choices", "answer")}
    return EvalExample(question=question, choices=list(choices), answer=answer, meta=meta)


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


@dataclass
class EvalResult:
    output_dir: Path
    results: dict[str, Any]
    metrics: dict[str, float]
    """Flat ``{label}.{set}.{metric}`` -> overall value (what pipeline gates read)."""


def run_eval(cfg: EvalConfig) -> EvalResult:
    """Evaluate every model of ``cfg`` on every set; write and return the results."""
    from affinage.engine.progress import console

    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    t_start = time.perf_counter()
    labels = cfg.labels()
    sets = [
        load_eval_set(s, judge=bool(cfg.judge.model), win_rate=bool(cfg.win_rate.reward_model) and len(labels) > 1)
        for s in cfg.sets
    ]
    # per_example[set][label] = {"answer": [...], "exact_match": [...], ...}
    per_example: dict[str, dict[str, dict[str, list[Any]]]] = {s.name: {} for s in sets}
    timings: dict[str, float] = {}

    for model_cfg, label in zip(cfg.models, labels, strict=True):
        t0 = time.perf_counter()
        model, tokenizer = _load(model_cfg, cfg.dtype)
        how = model_cfg.prompting.describe()
        console.print(f"[bold]eval[/] {label} ({model_cfg.name}{'; ' + how if how else ''}) on {len(sets)} set(s)")
        prompter = None if model_cfg.prompting.is_default() else Prompter(model_cfg.prompting, output_dir=out, console=console)
        for s in sets:
            per_example[s.name][label] = _evaluate_set(model, tokenizer, s, cfg, prompter)
        del model
        gc.collect()
        timings[label] = round(time.perf_counter() - t0, 2)

    baseline = cfg.win_rate.baseline or labels[0]
    if cfg.win_rate.reward_model and any("win_rate" in s.metrics for s in sets):
        t0 = time.perf_counter()
        _score_rewards(cfg, sets, per_example, labels)
        timings["reward_model"] = round(time.perf_counter() - t0, 2)
    if cfg.judge.model and any("judge" in s.metrics for s in sets):
        t0 = time.perf_counter()
        _judge_answers(cfg, sets, per_example, labels)
        timings["judge"] = round(time.perf_counter() - t0, 2)

    results: dict[str, Any] = {
        "models": [
            {"label": label, "name": m.name, **({"prompting": m.prompting.describe()} if not m.prompting.is_default() else {})}
            for m, label in zip(cfg.models, labels, strict=True)
        ],
        "baseline": baseline if cfg.win_rate.reward_model else None,
        "sets": {},
    }
    for s in sets:
        entry: dict[str, Any] = {"type": s.type, "path": s.path, "n": len(s.examples), "metrics": list(s.metrics), "results": {}}
        for label in labels:
            values = per_example[s.name][label]
            entry["results"][label] = {
                "overall": summarize(s, values, range(len(s.examples)), baseline_values=per_example[s.name].get(baseline),
                                     is_baseline=label == baseline, tolerance=cfg.win_rate.length_tolerance),
                **{
                    f"by_{key}": {
                        group: summarize(s, values, idx, baseline_values=per_example[s.name].get(baseline),
                                         is_baseline=label == baseline, tolerance=cfg.win_rate.length_tolerance)
                        for group, idx in M.group_indices([e.meta for e in s.examples], key).items()
                    }
                    for key in GROUP_KEYS
                    if any(key in e.meta for e in s.examples)
                },
            }
        results["sets"][s.name] = entry

    if cfg.lm_eval.tasks:
        from affinage.evaluation.lm_eval_bridge import run_lm_eval

        results["lm_eval"] = {}
        for model_cfg, label in zip(cfg.models, labels, strict=True):
            t0 = time.perf_counter()
            results["lm_eval"][label] = run_lm_eval(
                model_cfg.name, cfg.lm_eval.tasks, include_path=cfg.lm_eval.include_path,
                limit=cfg.lm_eval.limit, num_fewshot=cfg.lm_eval.num_fewshot,
                batch_size=cfg.lm_eval.batch_size, dtype=cfg.dtype,
            )
            timings[f"lm_eval/{label}"] = round(time.perf_counter() - t0, 2)

    timings["total"] = round(time.perf_counter() - t_start, 2)
    results["timings_s"] = timings
    flat = flatten_metrics(results)
    results["flat"] = flat
    atomic_write_text(out / "results.json", json.dumps(clean_json(results), indent=2, ensure_ascii=False, default=str) + "\n")
    _write_predictions(out / "predictions.jsonl", sets, per_example, labels)
    print_results(results, console)
    console.print(f"results: {out / 'results.json'}")
    return EvalResult(out, results, flat)


def clean_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so that the file is strict JSON."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    return value


def _load(model_cfg: EvalModelConfig, dtype: str):
    from transformers.utils import logging as hf_logging

    from affinage.models.loading import load_model, load_tokenizer

    hf_logging.disable_progress_bar()
    tokenizer = load_tokenizer(model_cfg.name, chat_template=model_cfg.chat_template)
    model = load_model(model_cfg.name, dtype=dtype)
    return model, tokenizer


def _evaluate_set(
    model: Any, tokenizer: Any, s: EvalSet, cfg: EvalConfig, prompter: Prompter | None = None
) -> dict[str, list[Any]]:
    """Per-example values of one model on one set: answers, scores, NLL sums and token counts.

    With a ``prompter`` (a few-shot, retrieval-augmented or system-prompted baseline) every prompt is
    built by it, and the same prompt serves generation, perplexity and multiple-choice scoring.
    """
    from affinage.data.formats import Example
    from affinage.data.tokenize import tokenize_example

    values: dict[str, list[Any]] = {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    built: list[BuiltPrompt] | None = None
    if prompter is not None and s.type != "text":
        prompts = (
            [[{"role": "user", "content": e.question or ""}] for e in s.examples]
            if s.type == "multiple_choice" else [e.prompt or [] for e in s.examples]
        )
        built = prompter.build_all(prompts, default_system=s.config.system_prompt)
        if prompter.cfg.mode == "few_shot":
            values["shots"] = [b.shots for b in built]
        if prompter.cfg.mode == "rag":
            values["retrieved"] = [b.retrieved for b in built]
    if s.type == "multiple_choice":
        items = [M.MultipleChoiceItem(e.question or "", e.choices or [], e.answer or 0) for e in s.examples]
        lls = M.multiple_choice_loglikelihoods(
            model, tokenizer, items, template=s.config.template, system_prompt=s.config.system_prompt,
            batch_size=cfg.batch_size, contexts=[b.messages for b in built] if built is not None else None,
        )
        raw, norm = M.multiple_choice_predictions(lls, [i.choices for i in items])
        values["loglikelihoods"] = lls
        values["prediction"] = raw
        values["correct"] = [float(p == i.answer) for p, i in zip(raw, items, strict=True)]
        values["correct_norm"] = [float(p == i.answer) for p, i in zip(norm, items, strict=True)]
        return values

    # A built prompt already holds its system message.
    system_prompt = s.config.system_prompt if built is None else None
    prompts = [b.messages for b in built] if built is not None else [e.prompt or [] for e in s.examples]
    if "perplexity" in s.metrics:
        rows = []
        for e, prompt in zip(s.examples, prompts, strict=True):
            ex = Example(text=e.text) if s.type == "text" else Example(
                messages=[*prompt, {"role": "assistant", "content": e.reference or ""}]
            )
            # Only the reference is scored, not the assistant turns of the prompt (few-shot examples,
            # earlier answers of a multi-turn conversation).
            tok = tokenize_example(tokenizer, ex, max_length=cfg.max_length, system_prompt=system_prompt, where=s.name,
                                   first_trained_message=len(prompt) if s.type != "text" else 0)
            rows.append((tok.input_ids, tok.labels) if not isinstance(tok, str) else ([pad], [M.IGNORE_INDEX]))
        scored = M.sequence_logprobs(model, rows, pad_token_id=pad, batch_size=cfg.batch_size)
        values["nll"] = [-lp for lp, _ in scored]
        values["tokens"] = [n for _, n in scored]
    if s.type == "generation" and set(s.metrics) & {"exact_match", "rouge_l", "bleu", "chrf", "win_rate", "judge"}:
        from affinage.generation.sampling import GenerationOptions, generate

        options = GenerationOptions(max_new_tokens=cfg.generation.max_new_tokens, temperature=0.0)
        answers = generate(
            model, tokenizer, prompts, options,
            batch_size=cfg.generation.batch_size, system_prompt=system_prompt, progress=cfg.progress,
        )
        answers = [a.strip() for a in answers]
        refs = [e.reference or "" for e in s.examples]
        values["answer"] = answers
        values["exact_match"] = [M.exact_match(a, r) for a, r in zip(answers, refs, strict=True)]
        values["rouge_l"] = [M.rouge_l(a, r).f1 for a, r in zip(answers, refs, strict=True)]
    return values


def summarize(
    s: EvalSet,
    values: dict[str, list[Any]],
    indices: Any,
    *,
    baseline_values: dict[str, list[Any]] | None = None,
    is_baseline: bool = False,
    tolerance: float = 0.2,
) -> dict[str, Any]:
    """Every metric of ``s`` over the examples ``indices`` (all of them, or one language or category).

    Means of per-example scores for exact match, ROUGE-L, accuracy and judge scores; corpus-level
    recomputation on the subset for BLEU, chrF and perplexity (which are not means of per-example values).
    """
    idx = list(indices)
    out: dict[str, Any] = {"n": len(idx)}

    def pick(key: str, source: dict[str, list[Any]] | None = None) -> list[Any]:
        return [(source or values)[key][i] for i in idx]

    for metric in s.metrics:
        if metric in ("exact_match", "rouge_l"):
            out[metric] = M.mean(pick(metric))
        elif metric in ("bleu", "chrf"):
            refs = [s.examples[i].reference or "" for i in idx]
            fn = M.bleu if metric == "bleu" else M.chrf
            out[metric] = fn(pick("answer"), refs) if idx else None
        elif metric == "perplexity":
            out[metric] = M.perplexity(pick("nll"), pick("tokens"))
        elif metric == "accuracy":
            out["accuracy"] = M.mean(pick("correct"))
        elif metric == "accuracy_norm":
            out["accuracy_norm"] = M.mean(pick("correct_norm"))
        elif metric == "win_rate" and "reward" in values and baseline_values is not None and not is_baseline:
            pair = M.pairwise_win_rate(
                pick("reward"), pick("reward", baseline_values),
                [len(a) for a in pick("answer")], [len(a) for a in pick("answer", baseline_values)],
                length_tolerance=tolerance,
            )
            out.update({k: v for k, v in pair.items() if k != "n"})
        elif metric == "win_rate" and "reward" in values:
            out["mean_reward"] = M.mean(pick("reward"))
        elif metric == "judge" and "judge" in values:
            scores = pick("judge")
            out["judge"] = M.mean(scores)
            out["judge_parsed"] = sum(v is not None for v in scores) / len(scores) if scores else None
    if "answer" in values:
        out["answer_chars"] = M.mean([float(len(a)) for a in pick("answer")])
    return out


def _score_rewards(cfg: EvalConfig, sets: list[EvalSet], per_example: dict, labels: list[str]) -> None:
    from affinage.engine.progress import console

    assert cfg.win_rate.reward_model is not None
    console.print(f"[bold]reward model[/] {cfg.win_rate.reward_model}: scoring the answers of {len(labels)} models")
    rm, rm_tokenizer = M.load_reward_model(cfg.win_rate.reward_model, dtype=cfg.dtype)
    for s in sets:
        if "win_rate" not in s.metrics:
            continue
        for label in labels:
            values = per_example[s.name][label]
            values["reward"] = M.reward_scores(
                rm, rm_tokenizer, [e.prompt for e in s.examples], values["answer"], batch_size=cfg.batch_size
            )
    del rm
    gc.collect()


def _judge_answers(cfg: EvalConfig, sets: list[EvalSet], per_example: dict, labels: list[str]) -> None:
    from affinage.engine.progress import console
    from affinage.models.loading import load_model, load_tokenizer

    j = cfg.judge
    assert j.model is not None
    rubric = Path(j.rubric_file).read_text(encoding="utf-8") if j.rubric_file else j.rubric
    console.print(f"[bold]judge[/] {j.model} ({j.mode}): scoring the answers of {len(labels)} models")
    tokenizer = load_tokenizer(j.model)
    model = load_model(j.model, dtype=cfg.dtype)
    for s in sets:
        if "judge" not in s.metrics:
            continue
        for label in labels:
            values = per_example[s.name][label]
            prompts = [
                M.judge_prompt(
                    rubric, e.question or "", answer, reference=e.reference if j.use_reference else None,
                    min_score=j.min_score, max_score=j.max_score, mode=j.mode,
                )
                for e, answer in zip(s.examples, values["answer"], strict=True)
            ]
            if j.mode == "logprobs":
                values["judge"] = M.judge_by_probabilities(
                    model, tokenizer, prompts, min_score=j.min_score, max_score=j.max_score, batch_size=cfg.batch_size
                )
            else:
                scores, texts = M.judge_by_generation(
                    model, tokenizer, prompts, min_score=j.min_score, max_score=j.max_score,
                    max_new_tokens=j.max_new_tokens, batch_size=cfg.generation.batch_size, progress=cfg.progress,
                )
                values["judge"], values["judge_text"] = scores, texts
    del model
    gc.collect()


def flatten_metrics(results: dict[str, Any]) -> dict[str, float]:
    """``{label}.{set}.{metric}`` -> overall value, plus ``{label}.lm_eval.{task}.{metric}``."""
    flat: dict[str, float] = {}
    for set_name, entry in results.get("sets", {}).items():
        for label, res in entry["results"].items():
            for metric, value in res["overall"].items():
                if isinstance(value, int | float) and not isinstance(value, bool) and value == value:
                    flat[f"{label}.{set_name}.{metric}"] = float(value)
    for label, tasks in (results.get("lm_eval") or {}).items():
        for task, task_metrics in tasks.items():
            for metric, value in task_metrics.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    flat[f"{label}.lm_eval.{task}.{metric}"] = float(value)
    return flat


def _write_predictions(path: Path, sets: list[EvalSet], per_example: dict, labels: list[str]) -> None:
    from affinage.data.io import write_jsonl

    def rows():
        for s in sets:
            for i, e in enumerate(s.examples):
                row: dict[str, Any] = {"set": s.name, "index": i, **{k: e.meta[k] for k in GROUP_KEYS if k in e.meta}}
                if s.type == "multiple_choice":
                    row.update(question=e.question, choices=e.choices, answer=e.answer)
                elif s.type == "text":
                    row["text"] = e.text
                else:
                    row.update(prompt=e.question, reference=e.reference)
                per_model = {}
                for label in labels:
                    values = per_example[s.name][label]
                    per_model[label] = {
                        k: v[i] for k, v in values.items() if k != "loglikelihoods" and isinstance(v, list) and len(v) > i
                    }
                row["models"] = per_model
                yield row

    write_jsonl(path, rows())


def print_results(results: dict[str, Any], console: Any) -> None:
    """One table per set: a row per metric, a column per model, the best value in bold."""
    from rich.table import Table

    labels = [m["label"] for m in results["models"]]
    for set_name, entry in results["sets"].items():
        table = Table(title=f"{set_name} ({entry['type']}, {entry['n']} examples)")
        table.add_column("metric")
        for label in labels:
            table.add_column(label, justify="right")
        keys: list[str] = []
        for label in labels:
            keys += [k for k in entry["results"][label]["overall"] if k not in keys and k != "n"]
        for key in keys:
            cells = [entry["results"][label]["overall"].get(key) for label in labels]
            numbers = [c for c in cells if isinstance(c, int | float)]
            best = (min if key in LOWER_IS_BETTER else max)(numbers) if len(numbers) > 1 else None
            table.add_row(key, *[_cell(c, c == best) for c in cells])
        console.print(table)


def _cell(value: Any, bold: bool) -> str:
    if value is None:
        return "-"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return f"[bold]{text}[/]" if bold else text


def run_stage(cfg: EvalConfig) -> Any:
    """Pipeline entry point: run the evaluation, hand back its files and flat metrics."""
    from affinage.pipeline import StageOutput

    result = run_eval(cfg)
    return StageOutput(
        artifacts={"results": str(result.output_dir / "results.json"), "predictions": str(result.output_dir / "predictions.jsonl")},
        metrics=result.metrics,
    )
