"""Every safety example config loads and validates; the example data is consistent; CLI wiring."""

from __future__ import annotations

import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from affinage.config import config_class_for, load_config
from affinage.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SAFETY = EXAMPLES / "data" / "safety"
CONFIGS = {
    "guard.yaml": "GuardConfig",
    "safety_classifier.yaml": "ClassifierTrainConfig",
    "safety_eval.yaml": "SafetyEvalConfig",
    "redteam.yaml": "RedTeamConfig",
    "constitution.yaml": "ConstitutionConfig",
}


@pytest.mark.parametrize(("name", "cls_name"), sorted(CONFIGS.items()))
def test_example_configs_load(name, cls_name):
    cls = config_class_for(EXAMPLES / name)
    assert cls.__name__ == cls_name
    cfg = load_config(cls, EXAMPLES / name)
    for field in ("seeds", "translations", "prompts"):  # every data file a config names exists
        for path in getattr(cfg, field, []) or []:
            assert (ROOT / path).is_file(), path
    data = getattr(cfg, "data", None)
    for key in ("harmful", "borderline", "benign", "train", "test"):
        for path in getattr(data, key, []) or []:
            assert (ROOT / path).is_file(), path


def test_unknown_keys_and_bad_values_fail_at_start(tmp_path):
    from affinage.safety.evaluate import SafetyEvalConfig
    from affinage.safety.guard import GuardConfig

    with pytest.raises(ConfigError, match="unknown config key 'input.treshold'"):
        load_config(GuardConfig, EXAMPLES / "guard.yaml", ["input.treshold=0.5"])
    with pytest.raises(ConfigError, match=r"guard.output.threshold"):
        load_config(GuardConfig, EXAMPLES / "guard.yaml", ["output.threshold=1.5"])
    with pytest.raises(ConfigError, match="sweep.input_thresholds"):
        load_config(SafetyEvalConfig, EXAMPLES / "safety_eval.yaml", ["sweep.input_thresholds=[2.0]"])
    with pytest.raises(ConfigError, match=r"classifier.model' must name the directory"):
        load_config(GuardConfig, None, ["classifier.kind=trained"])


def test_a_trained_classifier_is_not_loaded_as_a_self_reflection_judge(tmp_path):
    from affinage.safety.classifiers import CLASSIFIER_META, ClassifierConfig, build_classifier

    (tmp_path / CLASSIFIER_META).write_text("{}")
    with pytest.raises(ConfigError, match="is a trained classifier.*classifier.model=null"):
        build_classifier(ClassifierConfig(kind="self_reflection", model=str(tmp_path)))


def test_the_quickstart_pipeline_lets_the_model_judge_itself():
    """The pipeline's safety stage must not point the self-reflection judge at a classifier dir."""
    from affinage.pipeline import load_pipeline

    pipeline = load_pipeline(EXAMPLES / "pipeline_quickstart.yaml")
    safety = next(stage for stage in pipeline.stages if stage.name == "safety")
    assert safety.overrides["guard.classifier.kind"] == "self_reflection"
    assert safety.overrides["guard.classifier.model"] is None


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_prompt_sets_cover_every_category_and_language():
    from affinage.safety.taxonomy import Taxonomy

    langs = ("en", "fr", "de", "es", "it")
    for lang in langs:
        harmful = _rows(SAFETY / "prompts" / f"harmful_{lang}.jsonl")
        assert {r["category"] for r in harmful} == set(Taxonomy.default().names)
        assert all(r["language"] == lang for r in harmful)
        ids = {r["id"] for r in harmful}
        assert ids == {r["id"] for r in _rows(SAFETY / "prompts" / "harmful_en.jsonl")}  # aligned translations
        assert min(Counter(r["category"] for r in harmful).values()) >= 15
        for kind in ("borderline", "benign"):
            rows = _rows(SAFETY / "prompts" / f"{kind}_{lang}.jsonl")
            assert len(rows) >= 50 and all(r["language"] == lang and r["answer"] for r in rows)
            assert [r["id"] for r in rows] == [r["id"] for r in _rows(SAFETY / "prompts" / f"{kind}_en.jsonl")]
        answers = json.loads((SAFETY / "answers" / f"{lang}.json").read_text(encoding="utf-8"))
        assert len(set(answers["refusals"])) >= 14
        assert set(answers["compliance"]) == set(Taxonomy.default().names)
        assert min(len(set(v)) for v in answers["compliance"].values()) >= 3
    # The borderline set carries the classic case.
    assert any("kill a Linux process" in r["prompt"] for r in _rows(SAFETY / "prompts" / "borderline_en.jsonl"))


def test_labelled_split_is_reproducible_and_held_out_by_request(tmp_path):
    spec = importlib.util.spec_from_file_location("make_safety", EXAMPLES / "data" / "make_safety.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.build(tmp_path)
    splits = ("train", "validation", "test")
    for split in splits:
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (SAFETY / "labelled" / f"{split}.jsonl").read_bytes()
    rows = {split: _rows(SAFETY / "labelled" / f"{split}.jsonl") for split in splits}
    answers = {split: {r["response"] for r in rows[split] if r["kind"] == "harmful" and r["role"] == "response"}
               for split in splits}
    for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
        assert not {r["id"] for r in rows[a]} & {r["id"] for r in rows[b]}  # held out by request
        assert not answers[a] & answers[b]  # and by refusal and compliant wording
    for split in ("validation", "test"):
        assert {r["category"] for r in rows[split] if r["label"] == "unsafe"} == {
            "criminal", "hate", "violence", "self_harm", "child_sexual", "privacy", "expert_advice"}
        assert {r["language"] for r in rows[split]} == {"en", "fr", "de", "es", "it"}


def test_generate_with_guard_on_the_command_line(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from affinage.cli import _register_commands, app

    _register_commands()
    guard = tmp_path / "guard.yaml"
    guard.write_text("stage: guard\ninput: {threshold: 0.0}\nclassifier: {min_verdict_mass: 0.0, parse_categories: false}\n")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Comment tuer un processus ?"}) + "\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["generate", str(tiny_model_dir), "-i", str(prompts), "-o", str(out),
                                      "--max-new-tokens", "3", "--dtype", "float32", "--guard", str(guard)])
    assert result.exit_code == 0, result.output
    [row] = [json.loads(x) for x in out.read_text().splitlines()]
    # Threshold 0 refuses everything: the refusal is in French, and the verdict is recorded.
    assert row["guard"]["input"]["allowed"] is False and row["guard"]["input"]["language"] == "fr"
    assert row["completion"].startswith("Je ne peux pas vous aider")
