"""The registry of curation steps: name -> (options dataclass, step class), and parsing the ``steps`` list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from affinage.curation.base import Step, StepContext
from affinage.curation.clean import CleanOptions, CleanStep
from affinage.curation.decontam import DecontaminateOptions, DecontaminateStep
from affinage.curation.dedup import ExactDedupOptions, ExactDedupStep, NearDedupOptions, NearDedupStep
from affinage.curation.language import LanguageOptions, LanguageStep
from affinage.curation.pii import PiiOptions, PiiStep
from affinage.curation.quality import LengthOptions, LengthStep, QualityOptions, QualityStep
from affinage.errors import ConfigError

STEPS: dict[str, tuple[type, type[Step]]] = {
    "clean": (CleanOptions, CleanStep),
    "quality": (QualityOptions, QualityStep),
    "length": (LengthOptions, LengthStep),
    "language": (LanguageOptions, LanguageStep),
    "pii": (PiiOptions, PiiStep),
    "exact_dedup": (ExactDedupOptions, ExactDedupStep),
    "near_dedup": (NearDedupOptions, NearDedupStep),
    "decontaminate": (DecontaminateOptions, DecontaminateStep),
}
"""Step name -> (options dataclass, step class)."""


@dataclass
class StepSpec:
    name: str
    options: Any
    index: int

    @property
    def needs_tokenizer(self) -> bool:
        return STEPS[self.name][1].needs_tokenizer

    def build(self, context: StepContext) -> Step:
        return STEPS[self.name][1](self.options, context)


def parse_steps(raw: list[str | dict[str, Any]]) -> list[StepSpec]:
    """``["clean", {"step": "near_dedup", "threshold": 0.8}]`` -> validated specs, or a ConfigError naming the key."""
    import difflib

    from affinage.config import from_dict

    specs = []
    for i, item in enumerate(raw):
        key = f"steps[{i}]"
        if isinstance(item, str):
            name, options = item, {}
        else:
            options = dict(item)
            name = options.pop("step", None)
            if not isinstance(name, str):
                raise ConfigError(
                    f"config key '{key}' needs 'step: NAME' (one of {', '.join(STEPS)}), got the keys {list(item)}"
                )
        if name not in STEPS:
            close = difflib.get_close_matches(name, list(STEPS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"config key '{key}' names an unknown step '{name}'.{hint} Steps: {', '.join(STEPS)}")
        specs.append(StepSpec(name, from_dict(STEPS[name][0], options, prefix=f"{key}."), i))
    seen = [s.name for s in specs]
    repeated = sorted({n for n in seen if seen.count(n) > 1})
    if repeated:
        raise ConfigError(f"config key 'steps' lists {repeated} more than once; each step may appear once")
    return specs
