"""Language identification with py3langid (its model ships inside the package: no download) and a filter.

py3langid is the maintained fork of langid.py (Lui & Baldwin 2012, "langid.py: An Off-the-shelf
Language Identification Tool"): a naive Bayes model over byte n-grams covering 97 languages, every
official EU language among them. Code is removed before identification (it reads as no language).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from affinage.curation.base import Step, require
from affinage.curation.record import Record, prose
from affinage.errors import ConfigError

UNDETERMINED = "und"
"""ISO 639-2 code for an undetermined language: used below ``min_confidence``."""

_IDENTIFIERS: dict[tuple[str, ...], object] = {}


@dataclass
class LanguageOptions:
    allowed: list[str] = field(default_factory=list)
    """Keep only rows in these languages (ISO 639-1 codes); empty keeps every language and only labels rows."""
    candidates: list[str] = field(default_factory=list)
    """Restrict identification to these languages (faster, fewer confusions); empty considers all 97."""
    min_confidence: float = 0.5
    """Below this probability the verdict is ``und`` (undetermined) and the declared language, if any, is used."""
    declared: Literal["check", "trust", "ignore"] = "check"
    """A language declared by the row or its source: checked against identification (the confident verdict
    wins, disagreements counted), trusted without identification, or ignored."""
    keep_undetermined: bool = True
    """With ``allowed`` set: keep rows whose language could not be determined."""
    max_chars: int = 2000


def identifier(candidates: tuple[str, ...]):
    """A shared py3langid identifier restricted to ``candidates`` (loaded once per process, ~0.5 s)."""
    if candidates not in _IDENTIFIERS:
        require("py3langid", "curation", "the language step")
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        if candidates:
            unknown = sorted(set(candidates) - set(ident.nb_classes))
            if unknown:
                raise ConfigError(
                    f"language step: unknown candidate language(s) {unknown}; "
                    f"known: {', '.join(sorted(ident.nb_classes))}"
                )
            ident.set_languages(list(candidates))
        _IDENTIFIERS[candidates] = ident
    return _IDENTIFIERS[candidates]


def identify(text: str, candidates: tuple[str, ...] = (), max_chars: int = 2000) -> tuple[str, float]:
    """``(iso_639_1_code, probability)`` of ``text``; ``("und", 0.0)`` for text without letters."""
    text = prose(text)[:max_chars]
    if not any(c.isalpha() for c in text):
        return UNDETERMINED, 0.0
    code, probability = identifier(candidates).classify(text)
    return code, float(probability)


class LanguageStep(Step):
    name = "language"

    def __init__(self, options: LanguageOptions, context) -> None:
        super().__init__(options, context)
        self.candidates = tuple(sorted({c.lower() for c in options.candidates}))
        self.allowed = {a.lower() for a in options.allowed}
        self.disagreements: Counter[str] = Counter()
        identifier(self.candidates)  # load the model and fail on bad candidates before reading any data

    def __call__(self, record: Record) -> str | None:
        o = self.options
        declared = record.declared_language if o.declared != "ignore" else None
        if declared and o.declared == "trust":
            language = declared
        else:
            code, probability = identify(record.joined(), self.candidates, o.max_chars)
            if probability < o.min_confidence:
                code = UNDETERMINED
            if declared and code != UNDETERMINED and code != declared:
                self.disagreements[f"declared {declared}, identified {code}"] += 1
                self.changes["declared language corrected"] += 1
            language = code if code != UNDETERMINED else (declared or UNDETERMINED)
        record.language = language
        if self.allowed and language not in self.allowed:
            if language == UNDETERMINED and o.keep_undetermined:
                return None
            return f"language {language} not allowed"
        return None

    def details(self) -> dict:
        return {"disagreements": dict(self.disagreements.most_common(20))} if self.disagreements else {}
