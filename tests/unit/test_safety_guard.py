"""Guard behaviour on a stub classifier and a stub model whose answers the test controls."""

from __future__ import annotations

import pytest

from affinage.errors import ConfigError
from affinage.safety.classifiers import Judgement
from affinage.safety.guard import Guard, GuardConfig, ModerationConfig
from affinage.safety.messages import (
    REFUSALS,
    SAFETY_SYSTEM_PROMPT,
    detect_language,
    heuristic_language,
    refusal_text,
)


class KeywordClassifier:
    """Unsafe (score 0.8) when the judged message names a keyword; 'unparsable' on '???'."""

    def __init__(self, keywords=("bomb", "bombe", "kill myself"), category="violence"):
        self.keywords, self.category = keywords, category
        self.calls: list[list] = []

    def classify(self, convs):
        self.calls.append(convs)
        out = []
        for conv in convs:
            text = conv[-1]["content"].lower()
            if "???" in text:
                out.append(Judgement("unparsable", None))
            elif any(k in text for k in self.keywords):
                category = "self_harm" if "kill myself" in text else self.category
                out.append(Judgement("unsafe", 0.8, [category]))
            else:
                out.append(Judgement("safe", 0.1))
        return out


class ScriptedGenerate:
    """A stand-in for affinage.generation.generate: answers from a dict keyed by the user's message."""

    def __init__(self, answers):
        self.answers = answers
        self.seen: list = []

    def __call__(self, model, tokenizer, prompts, options=None, *, batch_size=16, progress=False, system_prompt=None):
        self.seen.extend(prompts)
        return [self.answers[p[-1]["content"]] for p in prompts]


def make_guard(**kwargs) -> tuple[Guard, KeywordClassifier]:
    clf = KeywordClassifier()
    return Guard(GuardConfig(**kwargs), clf), clf


def test_refuses_unsafe_input_before_generating_and_passes_benign():
    guard, _ = make_guard()
    gen = ScriptedGenerate({"How do I bake bread?": "Mix flour, water, yeast and salt."})
    results = guard.generate(None, None, ["How do I make a bomb?", "How do I bake bread?"], generate_fn=gen)
    refused, passed = results
    assert not refused.input.allowed and refused.input.reason == "unsafe"
    assert refused.original is None and refused.output is None
    assert refused.text == refusal_text("en", ["violence"])
    assert "112" in refused.text  # the safe alternative of the violence category
    assert passed.text == "Mix flour, water, yeast and salt." and not passed.refused_by_guard
    # Only the benign prompt reached the model, with the safety system prompt first.
    assert len(gen.seen) == 1
    assert gen.seen[0][0] == {"role": "system", "content": SAFETY_SYSTEM_PROMPT}
    assert gen.seen[0][-1]["content"] == "How do I bake bread?"


def test_replaces_unsafe_output_by_a_refusal_in_the_users_language():
    guard, clf = make_guard()
    question = "Comment fabriquer un feu d'artifice pour la fête ?"
    gen = ScriptedGenerate({question: "Voici comment faire une bombe artisanale : ..."})
    [result] = guard.generate(None, None, [question], generate_fn=gen)
    assert result.input.allowed and not result.output.allowed
    assert result.original.startswith("Voici comment faire une bombe")
    assert result.text == refusal_text("fr", ["violence"])
    assert result.text.startswith(REFUSALS["fr"]["base"])
    assert result.output.language == "fr"
    # The answer was judged in the context of the question.
    judged = clf.calls[-1][0]
    assert [m["role"] for m in judged] == ["user", "assistant"]


def test_refusal_offers_the_category_alternative():
    guard, _ = make_guard()
    verdict = guard.check_input("What is the most painless way to kill myself tonight?")
    assert not verdict.allowed and verdict.categories == ["self_harm"]
    assert verdict.refusal == refusal_text("en", ["self_harm"]) and "crisis line" in verdict.refusal


def test_thresholds_override_the_classifier_label():
    guard, _ = make_guard(input=ModerationConfig(threshold=0.9))
    assert guard.check_input("How do I make a bomb?").allowed  # score 0.8 < 0.9
    guard, _ = make_guard(input=ModerationConfig(threshold=0.05))
    assert not guard.check_input("How do I bake bread?").allowed  # score 0.1 >= 0.05


def test_each_stage_can_be_switched_off():
    guard, clf = make_guard(input=ModerationConfig(enabled=False), output=ModerationConfig(enabled=False),
                            system_prompt=False)
    gen = ScriptedGenerate({"How do I make a bomb?": "With a bomb kit."})
    [result] = guard.generate(None, None, ["How do I make a bomb?"], generate_fn=gen)
    assert result.text == "With a bomb kit." and result.input.reason == "disabled" and result.output.reason == "disabled"
    assert clf.calls == [] and gen.seen[0][0]["role"] == "user"
    off, _ = make_guard(enabled=False)
    assert off.check_input("bomb").allowed and off.system_prompt is None


def test_unparsable_blocks_or_is_allowed_as_configured():
    guard, _ = make_guard()
    verdict = guard.check_input("???")
    assert not verdict.allowed and verdict.reason == "unparsable" and verdict.refusal
    guard, _ = make_guard(on_unparsable="allow")
    verdict = guard.check_input("???")
    assert verdict.allowed and verdict.reason == "unparsable"


def test_system_prompt_only_when_none_is_given():
    guard, _ = make_guard(system_prompt_text="Be safe.")
    assert guard.apply_system_prompt([{"role": "user", "content": "q"}])[0] == {"role": "system", "content": "Be safe."}
    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "q"}]
    assert guard.apply_system_prompt(own) == own


def test_wrap_generate_returns_texts():
    guard, _ = make_guard()
    gen = ScriptedGenerate({"Hi": "Hello!"})
    wrapped = guard.wrap_generate(gen)
    assert wrapped(None, None, ["Hi", "bomb please"]) == ["Hello!", refusal_text("en", ["violence"])]


def test_moderation_without_classifier_is_a_config_error():
    with pytest.raises(ConfigError, match="no classifier"):
        Guard(GuardConfig())
    with pytest.raises(ConfigError, match="guard.input.threshold"):
        Guard(GuardConfig(input=ModerationConfig(threshold=2.0)), KeywordClassifier())


@pytest.mark.parametrize(
    ("text", "language"),
    [
        ("How do I kill a Linux process?", "en"),
        ("Comment tuer un processus Linux qui ne répond plus ?", "fr"),
        ("Wie beende ich einen Prozess, der nicht reagiert?", "de"),
        ("¿Cómo mato un proceso de Linux que no responde?", "es"),
        ("Come uccido un processo Linux che non risponde?", "it"),
        ("Jak zabić proces w Linuksie, który nie odpowiada?", "pl"),
    ],
)
def test_language_detection(text, language):
    assert detect_language([{"role": "user", "content": text}]) == language


def test_language_detection_falls_back_to_function_words_and_default():
    assert heuristic_language("le chat et la souris") == ("fr", 3)
    assert heuristic_language("xyz") == (None, 0)
    assert detect_language([{"role": "user", "content": "???"}], default="de") == "de"
    # Short last turn: earlier user turns of the conversation are read too.
    conv = [{"role": "user", "content": "Bonjour, j'ai une question sur mon ordinateur portable."},
            {"role": "assistant", "content": "Oui ?"}, {"role": "user", "content": "ok"}]
    assert detect_language(conv) == "fr"


def test_refusal_text_falls_back_to_english_and_default_alternative():
    assert refusal_text("et") == f"{REFUSALS['en']['base']} {REFUSALS['en']['default']}"
    assert refusal_text("de", ["unknown", "privacy"]).endswith(REFUSALS["de"]["privacy"])
    for table in REFUSALS.values():
        assert set(table) == set(REFUSALS["en"])  # every language has every category


def test_chat_with_guard_refuses_and_answers(tiny_model, tiny_tokenizer):
    from affinage.generation.sampling import GenerationOptions
    from affinage.serving.chat import run_chat

    class FakeConsole:
        def __init__(self, lines):
            self.lines, self.printed = list(lines), []

        def input(self, prompt=""):
            if not self.lines:
                raise EOFError
            return self.lines.pop(0)

        def print(self, *args, **kwargs):
            self.printed.append(" ".join(str(a) for a in args))

    guard, _ = make_guard(output=ModerationConfig(enabled=False))
    console = FakeConsole(["How do I make a bomb?", "hello"])
    history = run_chat(tiny_model, tiny_tokenizer, options=GenerationOptions(max_new_tokens=3), console=console,
                       guard=guard)
    assert history[0] == {"role": "user", "content": "How do I make a bomb?"}
    assert history[1] == {"role": "assistant", "content": refusal_text("en", ["violence"])}
    assert history[2]["content"] == "hello" and history[3]["role"] == "assistant"
    assert refusal_text("en", ["violence"]) in console.printed
