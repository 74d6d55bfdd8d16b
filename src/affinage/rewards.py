"""Reward sources for online RL and rejection sampling: reward models, Python functions, combinations.

A reward source scores (prompt, completion) pairs:

* ``model``: a reward model directory written by ``affinage rm`` (anything that
  ``AutoModelForSequenceClassification.from_pretrained`` loads with one label). The conversation
  (prompt messages + the completion as the assistant turn) is rendered with the reward model's own
  chat template, and the score is ``logits[:, 0]`` at the last token that is not padding (the
  transformers convention the reward model was trained with).
* ``function``: ``"package.module:function"`` or ``"path/to/file.py:function"``, a Python function
  ``f(prompt, completion)`` or ``f(prompt, completion, row)`` returning a number. ``prompt`` is the
  text of the last user message, ``completion`` the answer (stop strings cut, special tokens
  skipped) and ``row`` the data row the prompt came from (so verifiable tasks can read their
  reference answer, e.g. ``row["answer"]``).

Several sources are added with their weights (``combine: weighted_sum``), or combined as Llama 2
combines its helpfulness and safety reward models (``combine: llama2``; Touvron et al. 2023,
Sec. 3.2.2):

    R_c(g | p) = R_s(g | p)   if IS_SAFETY(p) or sigmoid(R_s(g | p)) < 0.15
                 R_h(g | p)   otherwise

where IS_SAFETY(p) reads a boolean column of the prompt row (``unsafe_key``). Llama 2 compares the
sigmoid of the safety score with 0.15 and then takes the logit of the chosen score, i.e. the raw
score, which is what this returns. Whitening over the rollout (``whiten``) is applied by the RL
recipes, with statistics gathered over every process.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from affinage.config import _check
from affinage.errors import ConfigError, DataError, ModelError

Message = dict[str, str]


@dataclass
class RewardSourceConfig:
    """One reward: a reward model directory or a Python function, with a weight."""

    name: str | None = None
    """How the source is called in metrics and in ``combine: llama2`` (default: derived from it)."""
    model: str | None = None
    """A reward model directory (written by ``affinage rm``), e.g. runs/rm_helpfulness/final."""
    function: str | None = None
    """``module:function`` or ``path/to/file.py:function`` scoring (prompt, completion[, row])."""
    weight: float = 1.0


@dataclass
class RewardsConfig:
    """Where rewards come from and how several are combined."""

    sources: list[RewardSourceConfig] = field(default_factory=list)
    combine: Literal["weighted_sum", "llama2"] = "weighted_sum"
    """``weighted_sum``: sum of weight * score. ``llama2``: the safety score where the prompt is
    tagged unsafe or the safety score is low, the helpfulness score elsewhere (plus any other
    sources, weighted)."""
    helpfulness: str = "helpfulness"
    """``llama2``: the name of the helpfulness source."""
    safety: str = "safety"
    """``llama2``: the name of the safety source."""
    safety_threshold: float = 0.15
    """``llama2``: use the safety score when sigmoid(safety score) is below this (0.15 in Llama 2)."""
    unsafe_key: str = "unsafe"
    """``llama2``: the boolean column of a prompt row that tags it as a safety prompt."""
    unfinished_penalty: float = 0.0
    """Subtracted from the reward of answers that never end (cut at max_new_tokens without an
    end-of-sequence token or stop string)."""
    whiten: bool = False
    """Whiten the combined scores of each rollout (zero mean, unit variance), as Llama 2 does."""
    batch_size: int = 8
    """Sequences per reward-model forward pass."""
    max_length: int = 1024
    """Reward-model inputs longer than this keep their first max_length tokens."""

    def validate(self, prefix: str = "reward") -> None:
        _check(bool(self.sources), f"{prefix}.sources", "needs at least one source, e.g. "
               f"{prefix}.sources=[{{model: runs/rm_helpfulness/final}}] or "
               f"[{{function: examples/rewards.py:short_and_correct}}]")
        names = []
        for i, source in enumerate(self.sources):
            where = f"{prefix}.sources[{i}]"
            _check((source.model is None) != (source.function is None), where,
                   "needs exactly one of 'model' (a reward model directory) or 'function' (module:function)")
            _check(math.isfinite(source.weight), f"{where}.weight", "must be a finite number")
            if source.function is not None:
                _check(":" in source.function, f"{where}.function",
                       f"must look like 'module:function' or 'path/to/file.py:function', got {source.function!r}")
            names.append(source_name(source, i))
        _check(len(set(names)) == len(names), f"{prefix}.sources", f"have duplicate names {names}; set 'name' on each")
        if self.combine == "llama2":
            for role in ("helpfulness", "safety"):
                wanted = getattr(self, role)
                _check(wanted in names, f"{prefix}.{role}",
                       f"= {wanted!r} names no source (sources: {', '.join(names)}); combine=llama2 needs a "
                       "helpfulness and a safety reward model")
            _check(0 < self.safety_threshold < 1, f"{prefix}.safety_threshold", "must be in (0, 1)")
        _check(math.isfinite(self.unfinished_penalty), f"{prefix}.unfinished_penalty", "must be a finite number")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", "must be at least 1")
        _check(self.max_length >= 8, f"{prefix}.max_length", "must be at least 8")


def source_name(source: RewardSourceConfig, index: int) -> str:
    if source.name:
        return source.name
    if source.function is not None:
        return source.function.rsplit(":", 1)[-1]
    return Path(str(source.model)).parent.name if Path(str(source.model)).name == "final" else Path(str(source.model)).name or f"source{index}"


@dataclass
class Sample:
    """What a reward scores: the conversation so far, the answer and the data row."""

    prompt: list[Message]
    completion: str
    row: dict[str, Any] = field(default_factory=dict)
    finished: bool = True
    """False when the answer was cut at the token budget without ending."""

    @property
    def prompt_text(self) -> str:
        users = [m["content"] for m in self.prompt if m["role"] == "user"]
        return users[-1] if users else self.prompt[-1]["content"]


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class FunctionReward:
    """A Python function ``f(prompt, completion[, row]) -> number``."""

    def __init__(self, spec: str, name: str) -> None:
        self.spec, self.name = spec, name
        self.fn = load_function(spec)
        try:
            params = [
                p for p in inspect.signature(self.fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
            ]
        except (TypeError, ValueError):
            params = []
        self.pass_row = len(params) >= 3 or any(p.kind == p.VAR_POSITIONAL for p in params)

    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        scores = []
        for s in samples:
            args = (s.prompt_text, s.completion, s.row) if self.pass_row else (s.prompt_text, s.completion)
            value = self.fn(*args)
            try:  # numbers, bools, numpy scalars, 0-d tensors
                number = math.nan if isinstance(value, str | bytes) else float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not math.isfinite(number):
                raise DataError(
                    f"reward function {self.spec} returned {value!r} ({type(value).__name__}) for the "
                    f"completion {s.completion[:60]!r}; it must return a finite number"
                )
            scores.append(number)
        return scores


def load_function(spec: str) -> Callable[..., Any]:
    """Import ``module:function`` or ``path/to/file.py:function``; errors name the spec and the fix."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"reward function {spec!r} must look like 'module:function' or 'path/to/file.py:function'")
    if module_name.endswith(".py") or "/" in module_name or "\\" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise ConfigError(f"reward function {spec!r}: the file {path} does not exist")
        mod_id = f"affinage_user_rewards_{abs(hash(str(path.resolve())))}"
        module = sys.modules.get(mod_id)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(mod_id, path)
            if loader_spec is None or loader_spec.loader is None:
                raise ConfigError(f"reward function {spec!r}: cannot import {path}")
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[mod_id] = module
            loader_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(
                f"reward function {spec!r}: cannot import module {module_name!r} ({exc}); give an importable "
                "module or a file path such as examples/rewards.py:my_reward"
            ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"reward function {spec!r}: {module_name} has no function {attr!r}; it has {', '.join(names[:12])}")
    return fn


class ModelReward:
    """A sequence-classification reward model scoring rendered conversations."""

    def __init__(
        self, path: str, name: str, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
        batch_size: int = 8, max_length: int = 1024,
    ) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path, self.name, self.batch_size, self.max_length = path, name, batch_size, max_length
        if not Path(path).is_dir():
            raise ModelError(
                f"reward model {path} does not exist; train one first (affinage rm CONFIG.yaml) or fix the path"
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(device).eval()
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the reward model {path}: {exc}") from exc
        if self.model.config.num_labels != 1:
            raise ModelError(f"reward model {path} has {self.model.config.num_labels} labels; a reward model has 1")
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(f"reward model {path} has no chat template in its tokenizer to render conversations")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)

    def encode(self, sample: Sample) -> list[int]:
        from affinage.data.tokenize import render_chat

        messages = [*sample.prompt, {"role": "assistant", "content": sample.completion}]
        text = render_chat(self.tokenizer, messages, where=f"reward model {self.name}")
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return ids[: self.max_length]

    @torch.inference_mode()
    def __call__(self, samples: Sequence[Sample]) -> list[float]:
        scores: list[float] = []
        pad = self.model.config.pad_token_id
        for start in range(0, len(samples), self.batch_size):
            rows = [self.encode(s) for s in samples[start : start + self.batch_size]]
            width = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):  # right padding: the score sits at the last real token
                input_ids[i, : len(r)] = torch.tensor(r)
                attention_mask[i, : len(r)] = 1
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)).logits
            scores += logits[:, 0].float().tolist()
        return scores


# ----------------------------------------------------------------------------------------------
# Combination
# ----------------------------------------------------------------------------------------------


def llama2_combine(
    helpfulness: torch.Tensor, safety: torch.Tensor, unsafe: torch.Tensor, threshold: float = 0.15
) -> torch.Tensor:
    """Llama 2's reward (Touvron et al. 2023, Sec. 3.2.2): the safety score where the prompt is a
    safety prompt or sigmoid(safety) < threshold, the helpfulness score elsewhere.  [N] -> [N]"""
    use_safety = unsafe.bool() | (torch.sigmoid(safety.float()) < threshold)
    return torch.where(use_safety, safety.float(), helpfulness.float())


@dataclass
class Scores:
    total: list[float]
    """The combined reward of each sample (less the penalty of unfinished answers)."""
    parts: dict[str, list[float]]
    """Each source's own score, by source name."""


class Rewards:
    """All the reward sources of a config; ``rewards(samples)`` returns their combined scores."""

    def __init__(self, cfg: RewardsConfig, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        cfg.validate()
        self.cfg = cfg
        self.sources: list[tuple[str, float, Callable[[Sequence[Sample]], list[float]]]] = []
        for i, source in enumerate(cfg.sources):
            name = source_name(source, i)
            if source.function is not None:
                scorer: Any = FunctionReward(source.function, name)
            else:
                scorer = ModelReward(
                    str(source.model), name, device=device, dtype=dtype, batch_size=cfg.batch_size,
                    max_length=cfg.max_length,
                )
            self.sources.append((name, source.weight, scorer))

    def __call__(self, samples: Sequence[Sample]) -> Scores:
        parts = {name: scorer(samples) for name, _, scorer in self.sources}
        weights = {name: weight for name, weight, _ in self.sources}
        total = torch.zeros(len(samples), dtype=torch.float64)
        summed = list(parts)
        if self.cfg.combine == "llama2":
            h, s = self.cfg.helpfulness, self.cfg.safety
            unsafe = torch.tensor([_truthy(x.row.get(self.cfg.unsafe_key)) for x in samples], dtype=torch.bool)
            total += llama2_combine(
                torch.tensor(parts[h]), torch.tensor(parts[s]), unsafe, self.cfg.safety_threshold
            ).double()
            summed = [n for n in parts if n not in (h, s)]
        for name in summed:
            total += weights[name] * torch.tensor(parts[name], dtype=torch.float64)
        if self.cfg.unfinished_penalty:
            total -= self.cfg.unfinished_penalty * torch.tensor([not x.finished for x in samples], dtype=torch.float64)
        return Scores(total=total.tolist(), parts=parts)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "unsafe")
    return bool(value)
