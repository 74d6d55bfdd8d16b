"""Language identification on known sentences in seven EU languages, and the allowed-language filter."""

from __future__ import annotations

import pytest

from affinage.curation.base import StepContext
from affinage.curation.language import UNDETERMINED, LanguageOptions, LanguageStep, identify
from affinage.curation.lengths import LengthMeter
from affinage.curation.record import Record

pytest.importorskip("py3langid")

SENTENCES = {
    "fr": "Je n'arrive plus à me connecter au cluster depuis ce matin, pouvez-vous m'aider ?",
    "en": "I cannot log in to the cluster since this morning, can you help me?",
    "de": "Ich kann mich seit heute Morgen nicht mehr am Cluster anmelden, können Sie mir helfen?",
    "es": "No puedo iniciar sesión en el clúster desde esta mañana, ¿me pueden ayudar?",
    "it": "Non riesco ad accedere al cluster da stamattina, potete aiutarmi?",
    "pt": "Não consigo entrar no cluster desde esta manhã, podem ajudar-me?",
    "nl": "Ik kan sinds vanochtend niet meer inloggen op het cluster, kunnen jullie me helpen?",
}


@pytest.mark.parametrize("language", sorted(SENTENCES))
def test_identifies_known_sentences(language):
    code, probability = identify(SENTENCES[language])
    assert code == language
    assert probability > 0.5


def test_code_and_symbols_are_undetermined():
    assert identify("```\nls -la\n```  123 456")[0] == UNDETERMINED


def _record(text: str, declared: str | None = None) -> Record:
    return Record("s", "f, row 1", [{"role": "user", "content": text}, {"role": "assistant", "content": text}],
                  language=declared, declared_language=declared)


def test_allowed_filter_and_declared_languages(tmp_path):
    step = LanguageStep(LanguageOptions(allowed=["fr", "en"]), StepContext(tmp_path, LengthMeter()))
    fr, de = _record(SENTENCES["fr"]), _record(SENTENCES["de"], declared="fr")
    assert step(fr) is None and fr.language == "fr"
    # Declared French but written in German: identification wins (confident) and the filter removes it.
    assert step(de) == "language de not allowed"
    assert step.changes["declared language corrected"] == 1
    assert step.details()["disagreements"] == {"declared fr, identified de": 1}


def test_trusted_declaration_skips_identification(tmp_path):
    step = LanguageStep(LanguageOptions(declared="trust"), StepContext(tmp_path, LengthMeter()))
    record = _record(SENTENCES["de"], declared="fr")
    assert step(record) is None and record.language == "fr"
