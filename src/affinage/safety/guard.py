"""Guardrails around a chat model: a safety system prompt, input moderation, output moderation.

The ``guard:`` section of chat, generate, serve and evaluation configs (or ``--guard guard.yaml``)::

    system_prompt: true          # add SAFETY_SYSTEM_PROMPT (or system_prompt_text) when none is given
    input:  {enabled: true, threshold: 0.5}    # judge the prompt; refuse before generating
    output: {enabled: true, threshold: 0.5}    # judge the answer; replace an unsafe one by a refusal
    classifier: {kind: trained, model: runs/safety_classifier/final}
    on_unparsable: block         # a verdict outside the classifier's format blocks (or: allow)

Use from Python::

    guard = Guard.from_config(cfg, model=model, tokenizer=tokenizer)
    verdict = guard.check_input(messages)            # Verdict(allowed=False, refusal="I can't ...")
    verdict = guard.check_output(messages, answer)
    answers = guard.generate(model, tokenizer, prompts, options)   # GuardedAnswer per prompt
    guarded_generate = guard.wrap_generate(generate)                # same signature, returns texts

A refusal is written in the user's language and offers the safe alternative of the harm category
(:mod:`affinage.safety.messages`). A threshold set here overrides the classifier's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from affinage.errors import ConfigError
from affinage.safety.classifiers import (
    ClassifierConfig,
    Judgement,
    Message,
    as_conversation,
    build_classifier,
)
from affinage.safety.messages import EU_LANGUAGES, SAFETY_SYSTEM_PROMPT, detect_language, refusal_text


@dataclass
class ModerationConfig:
    enabled: bool = True
    threshold: float | None = None
    """Score from which the text is unsafe (None: the classifier's threshold)."""


@dataclass
class GuardConfig:
    """Guardrails: ``guard:`` in chat/generate/serve/eval configs, or a ``--guard`` YAML file."""

    stage: Literal["guard"] = "guard"
    enabled: bool = True
    system_prompt: bool = True
    """Add the safety system prompt to conversations that have no system message."""
    system_prompt_text: str | None = None
    """Replace the built-in safety system prompt."""
    input: ModerationConfig = field(default_factory=ModerationConfig)
    output: ModerationConfig = field(default_factory=ModerationConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    on_unparsable: Literal["block", "allow"] = "block"
    """What an "unparsable" verdict does. ``allow`` lets it through (the count is still reported)."""
    default_language: str = "en"
    """Refusal language when the user's language cannot be told."""
    languages: list[str] = field(default_factory=lambda: list(EU_LANGUAGES))
    """Languages the detector chooses among (ISO 639-1)."""

    def validate(self) -> None:
        for name, m in (("input", self.input), ("output", self.output)):
            if m.threshold is not None and not 0 <= m.threshold <= 1:
                raise ConfigError(f"config key 'guard.{name}.threshold' must be in [0, 1], got {m.threshold}")
        self.classifier.validate("guard.classifier")
        if not self.languages:
            raise ConfigError("config key 'guard.languages' needs at least one language code")


def load_guard_config(path: str, overrides: list[str] | None = None) -> GuardConfig:
    from affinage.config import load_config

    return load_config(GuardConfig, path, overrides or [])


@dataclass
class Verdict:
    """The guard's decision on a prompt (stage "input") or an answer (stage "output")."""

    allowed: bool
    stage: Literal["input", "output"]
    reason: Literal["passed", "unsafe", "unparsable", "disabled"]
    language: str
    judgement: Judgement | None = None
    refusal: str | None = None
    """The text to show instead, when not allowed."""

    @property
    def score(self) -> float | None:
        return self.judgement.score if self.judgement else None

    @property
    def categories(self) -> list[str]:
        return self.judgement.categories if self.judgement else []

    def as_dict(self) -> dict[str, Any]:
        return {
            "allowed": self.allowed, "stage": self.stage, "reason": self.reason, "language": self.language,
            "score": self.score, "categories": self.categories, "refusal": self.refusal,
        }


@dataclass
class GuardedAnswer:
    text: str
    """What the user sees: the model's answer, or a refusal."""
    original: str | None
    """The model's own answer (None when the input was refused before generating)."""
    input: Verdict
    output: Verdict | None

    @property
    def refused_by_guard(self) -> bool:
        return not self.input.allowed or (self.output is not None and not self.output.allowed)


class Guard:
    """Applies a :class:`GuardConfig` with one classifier for prompts and answers."""

    def __init__(self, cfg: GuardConfig, classifier: Any = None):
        cfg.validate()
        self.cfg = cfg
        needs_classifier = cfg.enabled and (cfg.input.enabled or cfg.output.enabled)
        if needs_classifier and classifier is None:
            raise ConfigError("the guard moderates inputs or outputs but has no classifier")
        self.classifier = classifier
        self.languages = tuple(sorted({c.lower() for c in cfg.languages}))

    @classmethod
    def from_config(cls, cfg: GuardConfig, model: Any = None, tokenizer: Any = None, classifier: Any = None) -> Guard:
        """Build the classifier the config names; self-reflection without a model judges with ``model``."""
        cfg.validate()
        needs = cfg.enabled and (cfg.input.enabled or cfg.output.enabled)
        if needs and classifier is None:
            classifier = build_classifier(cfg.classifier, model=model, tokenizer=tokenizer)
        return cls(cfg, classifier)

    # ------------------------------------------------------------------ pieces

    @property
    def system_prompt(self) -> str | None:
        if not (self.cfg.enabled and self.cfg.system_prompt):
            return None
        return self.cfg.system_prompt_text or SAFETY_SYSTEM_PROMPT

    def apply_system_prompt(self, messages: list[Message]) -> list[Message]:
        """``messages`` with the safety system prompt first, unless they already have a system turn."""
        prompt = self.system_prompt
        if prompt is None or (messages and messages[0]["role"] == "system"):
            return list(messages)
        return [{"role": "system", "content": prompt}, *messages]

    def language(self, messages: list[Message] | str) -> str:
        return detect_language(messages, self.cfg.default_language, self.languages)

    def refusal(self, messages: list[Message] | str, categories: list[str] | None = None) -> str:
        return refusal_text(self.language(messages), categories)

    def _decide(self, judgement: Judgement, threshold: float | None) -> Literal["passed", "unsafe", "unparsable"]:
        if judgement.label == "unparsable":
            return "unparsable"
        if threshold is None:
            return "unsafe" if judgement.label == "unsafe" else "passed"
        return "unsafe" if judgement.score is not None and judgement.score >= threshold else "passed"

    def _verdicts(
        self, stage: Literal["input", "output"], convs: list[list[Message]], users: list[list[Message]]
    ) -> list[Verdict]:
        moderation = self.cfg.input if stage == "input" else self.cfg.output
        if not (self.cfg.enabled and moderation.enabled):
            return [Verdict(True, stage, "disabled", self.language(u)) for u in users]
        judgements = self.classifier.classify(convs) if convs else []
        verdicts = []
        for judgement, user in zip(judgements, users, strict=True):
            reason = self._decide(judgement, moderation.threshold)
            allowed = reason == "passed" or (reason == "unparsable" and self.cfg.on_unparsable == "allow")
            language = self.language(user)
            refusal = None if allowed else refusal_text(language, judgement.categories)
            verdicts.append(Verdict(allowed, stage, reason, language, judgement, refusal))
        return verdicts

    # ------------------------------------------------------------------ checks

    def check_inputs(self, conversations: Sequence[str | list[Message]]) -> list[Verdict]:
        """Input moderation of many conversations (each ending with the user's message)."""
        convs = [_without_system(as_conversation(c, f"conversation {i}")) for i, c in enumerate(conversations)]
        return self._verdicts("input", convs, convs)

    def check_outputs(self, conversations: Sequence[str | list[Message]], answers: Sequence[str]) -> list[Verdict]:
        """Output moderation: each answer judged in the context of its conversation."""
        users = [_without_system(as_conversation(c, f"conversation {i}")) for i, c in enumerate(conversations)]
        convs = [[*u, {"role": "assistant", "content": a}] for u, a in zip(users, answers, strict=True)]
        return self._verdicts("output", convs, users)

    def check_input(self, messages: str | list[Message]) -> Verdict:
        return self.check_inputs([messages])[0]

    def check_output(self, messages: str | list[Message], answer: str) -> Verdict:
        return self.check_outputs([messages], [answer])[0]

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        model: Any,
        tokenizer: Any,
        prompts: Sequence[str | list[Message]],
        options: Any = None,
        *,
        batch_size: int = 16,
        system_prompt: str | None = None,
        progress: bool = False,
        generate_fn: Callable[..., list[str]] | None = None,
    ) -> list[GuardedAnswer]:
        """Moderate the prompts, answer the allowed ones (batched), moderate and replace the answers."""
        if generate_fn is None:
            from affinage.generation.sampling import generate as generate_fn
        convs = [as_conversation(p, f"prompt {i}") for i, p in enumerate(prompts)]
        inputs = self.check_inputs(convs)
        allowed = [i for i, v in enumerate(inputs) if v.allowed]
        to_answer = []
        for i in allowed:
            conv = convs[i]
            if system_prompt and conv[0]["role"] != "system":
                conv = [{"role": "system", "content": system_prompt}, *conv]
            to_answer.append(self.apply_system_prompt(conv))
        raw = (
            generate_fn(model, tokenizer, to_answer, options, batch_size=batch_size, progress=progress)
            if to_answer else []
        )
        outputs = self.check_outputs([convs[i] for i in allowed], raw)
        results: list[GuardedAnswer] = []
        by_index = {i: (answer, verdict) for i, answer, verdict in zip(allowed, raw, outputs, strict=True)}
        for i, verdict in enumerate(inputs):
            if i not in by_index:
                results.append(GuardedAnswer(verdict.refusal or "", None, verdict, None))
                continue
            answer, out = by_index[i]
            text = answer if out.allowed else (out.refusal or "")
            results.append(GuardedAnswer(text, answer, verdict, out))
        return results

    def wrap_generate(self, generate_fn: Callable[..., list[str]]) -> Callable[..., list[str]]:
        """A function like :func:`affinage.generation.generate` that returns guarded answers."""

        def guarded(model: Any, tokenizer: Any, prompts: Sequence[Any], options: Any = None, **kwargs: Any) -> list[str]:
            answers = self.generate(model, tokenizer, prompts, options, generate_fn=generate_fn, **kwargs)
            return [a.text for a in answers]

        return guarded


def _without_system(conv: list[Message]) -> list[Message]:
    return [m for m in conv if m["role"] != "system"]
