"""Constitutional AI: the model critiques and revises its own answers against written principles.

``affinage constitutional CONFIG.yaml`` runs the supervised stage of Bai et al. 2022
("Constitutional AI: Harmlessness from AI Feedback", Sec. 3.1): for each prompt the model answers;
then, for each of ``revisions`` rounds, a principle is drawn at random, the model is asked to
critique its latest answer against the principle's critique request, and to rewrite the answer
following the principle's revision request. Every step is batched across prompts.

Outputs (``output_dir``):

* ``sft.jsonl``: ``{"messages": [user, assistant: final revision]}`` for ``affinage sft``;
* ``preferences.jsonl``: ``{"prompt", "chosen": final revision, "rejected": first answer}`` for
  ``affinage dpo`` / ``affinage rm`` (revised preferred to original);
* ``transcripts.jsonl``: every answer, critique and revision with the principles drawn;
* ``report.json``: counts, and pairs dropped because the revision was empty, repetitive (the
  Gopher repetition measures of the curation step) or unchanged.

A principles file::

    principles:
      - name: harmless
        critique: Point out every way the assistant's last answer could help someone cause harm ...
        revision: Rewrite the answer so that it ...
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from affinage.config import ModelConfig, _check, to_dict
from affinage.curation.quality import repetition
from affinage.errors import ConfigError, DataError


@dataclass(frozen=True)
class Principle:
    name: str
    critique: str
    """The critique request, asked as the user's next turn after the answer."""
    revision: str
    """The revision request, asked after the critique."""


def load_principles(path: str | Path) -> list[Principle]:
    from affinage.config import read_yaml

    raw = read_yaml(path)
    rows = raw.get("principles")
    if set(raw) != {"principles"} or not isinstance(rows, list) or not rows:
        raise ConfigError(f"{path}: a principles file holds one key, 'principles', a non-empty list")
    principles = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or set(row) - {"name", "critique", "revision"}:
            raise ConfigError(f"{path}: principle {i} must be a mapping with name, critique and revision")
        for key in ("critique", "revision"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise ConfigError(f"{path}: principle {i} needs a non-empty '{key}' request")
        principles.append(Principle(str(row.get("name", f"principle{i}")), row["critique"].strip(), row["revision"].strip()))
    return principles


@dataclass
class ConstitutionGeneration:
    max_new_tokens: int = 160
    batch_size: int = 8
    temperature: float = 0.0
    seed: int | None = 0


@dataclass
class ConstitutionConfig:
    """``affinage constitutional CONFIG.yaml``."""

    stage: Literal["constitutional"] = "constitutional"
    model: ModelConfig = field(default_factory=ModelConfig)
    principles: str = "examples/constitution_principles.yaml"
    prompts: list[str] = field(default_factory=list)
    """Files with ``prompt`` (or ``messages``) rows: usually harmful and borderline requests."""
    max_prompts: int | None = None
    revisions: int = 1
    """Critique-and-revise rounds per prompt."""
    system_prompt: str | None = None
    generation: ConstitutionGeneration = field(default_factory=ConstitutionGeneration)
    seed: int = 0
    """Draws the principles."""
    output_dir: str = "runs/constitutional"

    def validate(self) -> None:
        _check(bool(self.prompts), "prompts", "needs at least one prompt file, e.g. [examples/data/safety/prompts/harmful_en.jsonl]")
        _check(self.revisions >= 1, "revisions", "must be at least 1")
        _check(self.max_prompts is None or self.max_prompts >= 1, "max_prompts", "must be at least 1")
        _check(self.generation.max_new_tokens >= 1, "generation.max_new_tokens", "must be at least 1")
        _check(self.generation.batch_size >= 1, "generation.batch_size", "must be at least 1")


@dataclass
class Revision:
    """One prompt's trajectory through the critique-revision loop."""

    prompt: list[dict[str, str]]
    original: str
    steps: list[dict[str, str]] = field(default_factory=list)
    """``{"principle", "critique", "revision"}`` per round."""

    @property
    def final(self) -> str:
        return self.steps[-1]["revision"] if self.steps else self.original


def critique_revise(
    model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], principles: list[Principle], options: Any,
    *, revisions: int = 1, seed: int = 0, batch_size: int = 8, system_prompt: str | None = None,
    progress: bool = False, generate_fn: Any = None,
) -> list[Revision]:
    """Answer, then critique and revise ``revisions`` times, every step batched across prompts."""
    if generate_fn is None:
        from affinage.generation.sampling import generate as generate_fn

    def run(convs: list[list[dict[str, str]]]) -> list[str]:
        texts = generate_fn(model, tokenizer, convs, options, batch_size=batch_size, system_prompt=system_prompt,
                            progress=progress)
        return [t.strip() for t in texts]

    originals = run(prompts)
    trajectories = [Revision(p, a) for p, a in zip(prompts, originals, strict=True)]
    for round_ in range(revisions):
        # One generator per (prompt, round): the draw does not depend on batch order or other prompts.
        drawn = [random.Random(f"{seed}:{i}:{round_}").choice(principles) for i in range(len(prompts))]
        base = [[*t.prompt, {"role": "assistant", "content": t.final}] for t in trajectories]
        critique_convs = [[*b, {"role": "user", "content": p.critique}] for b, p in zip(base, drawn, strict=True)]
        critiques = run(critique_convs)
        revision_convs = [
            [*c, {"role": "assistant", "content": crit}, {"role": "user", "content": p.revision}]
            for c, crit, p in zip(critique_convs, critiques, drawn, strict=True)
        ]
        revised = run(revision_convs)
        for t, p, crit, rev in zip(trajectories, drawn, critiques, revised, strict=True):
            t.steps.append({"principle": p.name, "critique": crit, "revision": rev})
    return trajectories


def training_rows(trajectories: list[Revision]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """SFT rows (final revisions) and preference pairs (revision > original), and the drop counts."""
    sft, pairs = [], []
    dropped = {"empty revision": 0, "repetitive revision": 0, "revision identical to the original": 0}
    for t in trajectories:
        final = t.final
        if not final:
            dropped["empty revision"] += 1
            continue
        if repetition(final):  # a small model looping ("The answer is: The answer is: ..."): no target
            dropped["repetitive revision"] += 1
            continue
        principles = [s["principle"] for s in t.steps]
        sft.append({"messages": [*t.prompt, {"role": "assistant", "content": final}], "principles": principles})
        if final == t.original:
            dropped["revision identical to the original"] += 1
            continue
        prompt: Any = t.prompt[0]["content"] if len(t.prompt) == 1 else t.prompt
        pairs.append({"prompt": prompt, "chosen": final, "rejected": t.original, "principles": principles,
                      "source": "constitutional"})
    return sft, pairs, dropped


def run_constitutional(cfg: ConstitutionConfig) -> dict[str, Any]:
    from affinage.data.io import read_rows, write_jsonl
    from affinage.engine.progress import console
    from affinage.generation.cli import row_prompt
    from affinage.generation.sampling import GenerationOptions
    from affinage.models.loading import load_model, load_tokenizer
    from affinage.utils.fs import atomic_write_text

    principles = load_principles(cfg.principles)
    prompts: list[list[dict[str, str]]] = []
    for path in cfg.prompts:
        for number, row in read_rows(path):
            p = row_prompt(row, f"{path}, row {number}")
            prompts.append([{"role": "user", "content": p}] if isinstance(p, str) else p)
    if cfg.max_prompts:
        prompts = prompts[: cfg.max_prompts]
    if not prompts:
        raise DataError(f"no prompt in {', '.join(cfg.prompts)}")
    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template, revision=cfg.model.revision,
                               trust_remote_code=cfg.model.trust_remote_code)
    model = load_model(cfg.model.name, dtype=cfg.model.dtype, revision=cfg.model.revision,
                       trust_remote_code=cfg.model.trust_remote_code, attn_implementation=cfg.model.attn_implementation)
    g = cfg.generation
    options = GenerationOptions(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                top_p=0.95 if g.temperature > 0 else 1.0, seed=g.seed)
    console.print(f"[bold]constitutional[/] {cfg.model.name}: {len(prompts)} prompts, {len(principles)} principles, "
                  f"{cfg.revisions} revision round(s)")
    trajectories = critique_revise(model, tokenizer, prompts, principles, options, revisions=cfg.revisions,
                                   seed=cfg.seed, batch_size=g.batch_size, system_prompt=cfg.system_prompt,
                                   progress=True)
    sft, pairs, dropped = training_rows(trajectories)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "sft.jsonl", sft)
    write_jsonl(out / "preferences.jsonl", pairs)
    write_jsonl(out / "transcripts.jsonl", [{"prompt": t.prompt, "original": t.original, "steps": t.steps}
                                            for t in trajectories])
    report = {"config": to_dict(cfg), "prompts": len(prompts), "sft_rows": len(sft), "preference_pairs": len(pairs),
              "dropped": dropped}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    console.print(f"wrote {len(sft)} SFT rows and {len(pairs)} preference pairs to {out} (dropped: {dropped})")
    return report
