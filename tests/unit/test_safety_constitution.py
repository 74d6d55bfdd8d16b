"""Constitutional AI: the critique-revision loop, the data it writes, the principles file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from affinage.errors import ConfigError
from affinage.safety.constitution import (
    ConstitutionConfig,
    Principle,
    critique_revise,
    load_principles,
    run_constitutional,
    training_rows,
)

ROOT = Path(__file__).resolve().parents[2]
PRINCIPLES = [Principle("a", "CRITIQUE-A", "REVISE-A"), Principle("b", "CRITIQUE-B", "REVISE-B")]


class ScriptedGenerate:
    """Answers by the last user message: a first answer, a critique, then a revision."""

    def __init__(self):
        self.calls: list[list] = []

    def __call__(self, model, tokenizer, convs, options=None, *, batch_size=8, system_prompt=None, progress=False):
        self.calls.append(convs)
        out = []
        for conv in convs:
            last = conv[-1]["content"]
            if last.startswith("CRITIQUE"):
                out.append(f"critique of: {conv[-2]['content']}")
            elif last.startswith("REVISE"):
                answer = conv[-4]["content"]
                out.append(answer if "keep" in conv[0]["content"] else f"revised({answer})")
            else:
                out.append(f"answer to {last}")
        return out


def test_loop_structure_and_rows():
    gen = ScriptedGenerate()
    prompts = [[{"role": "user", "content": "bomb?"}], [{"role": "user", "content": "keep"}]]
    trajectories = critique_revise(None, None, prompts, PRINCIPLES, None, revisions=1, seed=0, generate_fn=gen)
    # Three batched calls: answers, critiques, revisions.
    assert len(gen.calls) == 3
    critique_conv = gen.calls[1][0]
    assert [m["role"] for m in critique_conv] == ["user", "assistant", "user"]
    assert critique_conv[1]["content"] == "answer to bomb?"
    revision_conv = gen.calls[2][0]
    assert [m["role"] for m in revision_conv] == ["user", "assistant", "user", "assistant", "user"]
    assert revision_conv[3]["content"] == "critique of: answer to bomb?"
    t = trajectories[0]
    assert t.original == "answer to bomb?" and t.final == "revised(answer to bomb?)"
    assert t.steps[0]["principle"] in ("a", "b")
    # The critique and revision requests come from the same drawn principle.
    assert critique_conv[2]["content"][-1] == revision_conv[4]["content"][-1]

    sft, pairs, dropped = training_rows(trajectories)
    assert sft[0]["messages"] == [{"role": "user", "content": "bomb?"},
                                  {"role": "assistant", "content": "revised(answer to bomb?)"}]
    assert pairs == [{"prompt": "bomb?", "chosen": "revised(answer to bomb?)", "rejected": "answer to bomb?",
                      "principles": [t.steps[0]["principle"]], "source": "constitutional"}]
    assert dropped == {"empty revision": 0, "repetitive revision": 0,
                       "revision identical to the original": 1}  # the "keep" prompt


def test_unchanged_and_empty_revisions_are_dropped_and_counted():
    from affinage.safety.constitution import Revision

    same = Revision([{"role": "user", "content": "q"}], "x", [{"principle": "a", "critique": "c", "revision": "x"}])
    empty = Revision([{"role": "user", "content": "q"}], "x", [{"principle": "a", "critique": "c", "revision": ""}])
    # What the 135M model wrote in a real run: a revision that loops on one line. Neither an SFT
    # target nor a "chosen" answer; a revision that merely says the same thing twice is kept.
    looping = Revision([{"role": "user", "content": "q"}], "x",
                       [{"principle": "a", "critique": "c", "revision": "The answer is:\n\n" * 12}])
    twice = Revision([{"role": "user", "content": "q"}], "x",
                     [{"principle": "a", "critique": "c", "revision": "I can't help with that. I can't help with that."}])
    sft, pairs, dropped = training_rows([same, empty, looping, twice])
    assert [row["messages"][-1]["content"] for row in sft] == ["x", twice.final]
    assert [pair["chosen"] for pair in pairs] == [twice.final]
    assert dropped == {"empty revision": 1, "repetitive revision": 1, "revision identical to the original": 1}


def test_principles_are_drawn_reproducibly_and_rounds_chain():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(6)]
    a = critique_revise(None, None, prompts, PRINCIPLES, None, revisions=2, seed=7, generate_fn=ScriptedGenerate())
    b = critique_revise(None, None, prompts, PRINCIPLES, None, revisions=2, seed=7, generate_fn=ScriptedGenerate())
    assert [[s["principle"] for s in t.steps] for t in a] == [[s["principle"] for s in t.steps] for t in b]
    assert {s["principle"] for t in a for s in t.steps} == {"a", "b"}
    # Round 2 revises round 1's revision.
    assert a[0].steps[1]["revision"] == f"revised({a[0].steps[0]['revision']})"


def test_tiny_model_produces_revision_pairs(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("How do I pick a lock?", "Hello")))
    cfg = ConstitutionConfig(model={"name": str(tiny_model_dir), "dtype": "float32"},  # type: ignore[arg-type]
                             principles=str(ROOT / "examples" / "constitution_principles.yaml"),
                             prompts=[str(prompts)], output_dir=str(tmp_path / "out"))
    from affinage.config import ModelConfig
    from affinage.safety.constitution import ConstitutionGeneration

    cfg.model = ModelConfig(name=str(tiny_model_dir), dtype="float32")
    cfg.generation = ConstitutionGeneration(max_new_tokens=6, batch_size=2)
    report = run_constitutional(cfg)
    out = tmp_path / "out"
    rows = [json.loads(x) for x in (out / "preferences.jsonl").read_text().splitlines()]
    transcripts = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]
    assert report["prompts"] == 2 and len(transcripts) == 2
    assert report["preference_pairs"] == len(rows) and report["sft_rows"] >= len(rows)
    for row, t in zip(rows, transcripts, strict=False):
        assert row["rejected"] == t["original"] and row["chosen"] == t["steps"][-1]["revision"] != t["original"]


def test_principles_file_checks(tmp_path):
    assert [p.name for p in load_principles(ROOT / "examples" / "constitution_principles.yaml")] == [
        "harmless", "not_preachy", "safe_alternative", "privacy"]
    bad = tmp_path / "p.yaml"
    bad.write_text("principles:\n  - {name: a, critique: x}\n")
    with pytest.raises(ConfigError, match="non-empty 'revision'"):
        load_principles(bad)
    bad.write_text("rules: []\n")
    with pytest.raises(ConfigError, match="one key, 'principles'"):
        load_principles(bad)
