"""The HTML/Markdown report from a synthetic pipeline directory, its pure helpers by value, and a
real browser check: headless Chromium renders the page and takes a screenshot."""

from __future__ import annotations

import base64
import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from affinage.errors import ConfigError
from affinage.evaluation import report as R


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def make_pipeline_dir(root: Path) -> Path:
    """runs/demo: sft (loss curves, samples), dpo (margins, accuracies), eval (3 models), safety
    (violation and false-refusal rates of 4 guard settings), a failed gate on the safety stage."""
    root.mkdir(parents=True, exist_ok=True)
    sft_rows = [{"split": "train", "step": s, "loss": 2.5 * math.exp(-s / 12) + 0.6, "lr": 2e-4, "grad_norm": 1.0,
                 "tokens_per_s": 95.0, "elapsed_s": 4.0 * s} for s in range(1, 41)]
    sft_rows += [{"split": "eval", "step": s, "loss": 2.4 * math.exp(-s / 14) + 0.8, "perplexity": math.exp(2.4 * math.exp(-s / 14) + 0.8)}
                 for s in (10, 20, 30, 40)]
    _jsonl(root / "sft" / "metrics.jsonl", sft_rows)
    _jsonl(root / "sft" / "samples.jsonl", [{"prompt": "How do I cancel a job?", "before": "I am not sure.", "after": "Use scancel <jobid>."}])
    (root / "sft" / "manifest.json").write_text(json.dumps({
        "name": "sft", "stage": "sft", "status": "ok", "config_hash": "a" * 64, "inputs": {"path:data.jsonl": "b" * 64},
        "artifacts": {"final": {"path": str(root / "sft" / "final"), "sha256": "c" * 64}},
        "metrics": {"train.loss": 0.61, "eval.loss": 0.83}, "finished_at": "2025-01-01T10:00:00+00:00",
        "affinage": "0.1.0", "torch": "2.13.0", "git_commit": "0123456789abcdef",
    }))
    dpo_rows = [{"split": "train", "step": s, "loss": 0.69 - 0.01 * s, "rewards/chosen": 0.02 * s, "rewards/rejected": -0.03 * s,
                 "rewards/margins": 0.05 * s, "rewards/accuracies": min(1.0, 0.5 + 0.03 * s), "logps/chosen": -40.0}
                for s in range(1, 21)]
    _jsonl(root / "dpo" / "metrics.jsonl", dpo_rows)
    (root / "dpo" / "config.yaml").write_text("stage: dpo\n")
    labels = ["base", "sft", "dpo"]
    results = {
        "models": [{"label": lab, "name": f"runs/demo/{lab}/final"} for lab in labels],
        "baseline": "base",
        "sets": {
            "helpdesk_qa": {
                "type": "generation", "path": "qa.jsonl", "n": 4,
                "metrics": ["exact_match", "rouge_l", "bleu", "chrf", "perplexity", "win_rate"],
                "results": {
                    lab: {
                        "overall": {"n": 4, "exact_match": 0.25 * i, "rouge_l": 0.21 + 0.1 * i, "bleu": 5.0 + 8 * i, "chrf": 20.0 + 9 * i,
                                    "perplexity": 9.0 - 2.5 * i, "answer_chars": 120.0 + 20 * i,
                                    **({"win_rate": 0.55 + 0.1 * i, "win_rate_length_matched": 0.5 + 0.05 * i, "n_length_matched": 3,
                                        "longer_preferred": 0.6} if i else {})},
                        "by_language": {"en": {"n": 2, "rouge_l": 0.2 + 0.12 * i}, "fr": {"n": 2, "rouge_l": 0.22 + 0.08 * i}},
                        "by_category": {"login": {"n": 2, "rouge_l": 0.3 + 0.1 * i}, "storage": {"n": 2, "rouge_l": 0.12 + 0.1 * i}},
                    }
                    for i, lab in enumerate(labels)
                },
            },
            "helpdesk_mc": {
                "type": "multiple_choice", "path": "mc.jsonl", "n": 6, "metrics": ["accuracy", "accuracy_norm"],
                "results": {lab: {"overall": {"n": 6, "accuracy": 0.5 + 0.1 * i, "accuracy_norm": 0.45 + 0.12 * i}} for i, lab in enumerate(labels)},
            },
        },
    }
    results["flat"] = {f"{lab}.helpdesk_qa.rouge_l": results["sets"]["helpdesk_qa"]["results"][lab]["overall"]["rouge_l"] for lab in labels}
    (root / "eval").mkdir(parents=True, exist_ok=True)
    (root / "eval" / "results.json").write_text(json.dumps(results))
    prompts = [("How long is an account locked?", "30 minutes.", "en", "login"),
               ("Où mettre mes données <script>alert(1)</script> ?", "Dans /work/<projet>.", "fr", "storage")]
    answers = {"base": ["I don't know.", "Je ne sais pas."], "sft": ["30 minutes.", "Dans /work."],
               "dpo": ["It unlocks after 30 minutes.", "Dans /work/<projet>, pas dans le home."]}
    _jsonl(root / "eval" / "predictions.jsonl", [
        {"set": "helpdesk_qa", "index": k, "prompt": p, "reference": ref, "language": lang, "category": cat,
         "models": {lab: {"answer": answers[lab][k], "rouge_l": 0.1 * (i + 1)} for i, lab in enumerate(labels)}}
        for k, (p, ref, lang, cat) in enumerate(prompts)
    ])
    safety_metrics = {"violation_rate": 0.12, "false_refusal_rate": 0.04}
    for name, (v, fr) in {"no_guard": (0.12, 0.04), "guard_0.3": (0.05, 0.08), "guard_0.5": (0.07, 0.06), "guard_0.9": (0.08, 0.15)}.items():
        safety_metrics[f"{name}.violation_rate"] = v
        safety_metrics[f"{name}.false_refusal_rate"] = fr
    (root / "safety").mkdir(parents=True, exist_ok=True)
    (root / "safety" / "manifest.json").write_text(json.dumps({"name": "safety", "stage": "safety_eval", "status": "ok", "metrics": safety_metrics}))
    gate = {"metric": "violation_rate", "value": 0.12, "min": None, "max": 0.05, "passed": False,
            "message": "violation_rate = 0.12, must be <= 0.05: FAILED"}
    (root / "pipeline.json").write_text(json.dumps({
        "name": "demo", "status": "gate_failed", "failed_stage": "safety", "duration_s": 612.5,
        "provenance": {"affinage": "0.1.0", "torch": "2.13.0", "transformers": "5.24.0", "git_commit": "0123456789abcdef"},
        "stages": [
            {"name": "sft", "stage": "sft", "status": "ran", "duration_s": 160.2, "metrics": {"train.loss": 0.61}},
            {"name": "dpo", "stage": "dpo", "status": "skipped", "duration_s": 201.0},
            {"name": "eval", "stage": "eval", "status": "ran", "duration_s": 98.7,
             "gates": [{"metric": "dpo.helpdesk_qa.rouge_l", "value": 0.41, "min": 0.3, "max": None, "passed": True,
                        "message": "dpo.helpdesk_qa.rouge_l = 0.41, must be >= 0.3: passed"}]},
            {"name": "safety", "stage": "safety_eval", "status": "ran", "duration_s": 150.0, "gates": [gate]},
            {"name": "export", "stage": "export", "status": "not_run"},
        ],
    }))
    return root


# ----------------------------------------------------------------------------------------------
# Pure helpers
# ----------------------------------------------------------------------------------------------


def test_fmt():
    assert [R.fmt(v) for v in (None, float("nan"), 0.12345, 4.567, 12.34, 1234.5, 7, 0.0, 0.00012, True)] == [
        "–", "–", "0.123", "4.57", "12.3", "1,234", "7", "0", "1.2e-04", "yes"
    ]


def test_lower_is_better():
    assert R.lower_is_better("perplexity") and R.lower_is_better("eval.loss") and R.lower_is_better("x.violation_rate")
    assert R.lower_is_better("false_refusal_rate")
    assert not R.lower_is_better("win_rate") and not R.lower_is_better("win_rate_length_matched")
    assert not R.lower_is_better("rouge_l") and not R.lower_is_better("accuracy")


def test_pareto_front_by_value():
    """Minimise both: (0.04, 0.12), (0.08, 0.05) and (0.06, 0.07) trade one axis for the other;
    (0.15, 0.08) is beaten by (0.08, 0.05) on both and (0.10, 0.10) by (0.06, 0.07)."""
    pts = [(0.04, 0.12), (0.08, 0.05), (0.06, 0.07), (0.15, 0.08), (0.10, 0.10)]
    assert R.pareto_front(pts) == [0, 2, 1]
    # Maximise x (helpfulness), minimise y: (0.9, 0.2) and (0.5, 0.1) remain; (0.6, 0.3) is beaten by (0.9, 0.2).
    assert R.pareto_front([(0.9, 0.2), (0.5, 0.1), (0.6, 0.3)], minimize_x=False) == [1, 0]
    assert R.pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points do not dominate each other


def test_curve_families():
    rows = [{"split": "train", "step": 1, "loss": 1.0, "lr": 1e-4, "rewards/chosen": 0.1, "rewards/margins": 0.2,
             "rewards/accuracies": 0.5, "kl": 0.01, "objective/kl": 0.02, "reward_mean": 0.3, "tokens_per_s": 9.0},
            {"split": "eval", "step": 1, "loss": 1.1, "perplexity": 3.0, "accuracy": 0.7}]
    fam = R.curve_families(rows)
    assert fam["loss"] == ["loss"]
    assert fam["margin"] == ["rewards/margins"]
    assert fam["accuracy"] == ["rewards/accuracies", "accuracy"]
    assert fam["kl"] == ["kl", "objective/kl"]
    assert fam["reward"] == ["rewards/chosen", "reward_mean"]
    assert fam["perplexity"] == ["perplexity"]
    assert all("lr" not in keys for keys in fam.values())


def test_safety_points_from_stage_metrics(tmp_path):
    data = R.collect(make_pipeline_dir(tmp_path / "demo"))
    points = {p["label"]: p for p in R.safety_points(data.runs)}
    assert set(points) == {"no_guard", "guard_0.3", "guard_0.5", "guard_0.9"}
    assert points["guard_0.3"]["violation_rate"] == 0.05 and points["guard_0.3"]["false_refusal_rate"] == 0.08


def test_eval_table_deltas_and_best():
    entry = {"results": {"a": {"overall": {"n": 1, "rouge_l": 0.2, "perplexity": 9.0}},
                         "b": {"overall": {"n": 1, "rouge_l": 0.3, "perplexity": 10.0}}}}
    table = R.eval_table(entry, ["a", "b"])
    rouge, ppl = table.rows
    assert rouge[0].text == "ROUGE-L" and ppl[0].text == "Perplexity ↓"
    assert (rouge[2].text, rouge[2].delta, rouge[2].delta_cls) == ("0.300", "+0.100", "good")
    assert "best" in rouge[2].cls and "best" not in rouge[1].cls
    assert (ppl[2].delta, ppl[2].delta_cls) == ("+1.00", "bad")  # perplexity went up: worse
    assert "best" in ppl[1].cls


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_report_of_a_pipeline(tmp_path):
    pytest.importorskip("matplotlib")
    root = make_pipeline_dir(tmp_path / "demo")
    out = tmp_path / "report"
    path = R.build_report(root, output_dir=out)
    page = path.read_text(encoding="utf-8")
    md = (out / "report.md").read_text(encoding="utf-8")

    for section in ("overview", "gates", "training", "eval-eval", "safety", "samples", "provenance"):
        assert f'id="{section}"' in page
    # Self-contained: every image inline, no external resource.
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    # sft curves, dpo curves, two eval sets, two breakdowns, Pareto front.
    assert len(images) >= 7
    for img in images:
        width, height = _png_size(base64.b64decode(img))
        assert width >= 300 and height >= 150
    # The failed gate is stated first, with the stages that did not run.
    assert "stopped after stage &#x27;safety&#x27;" in page and "Not run: export" in page
    assert "violation_rate = 0.12, must be &lt;= 0.05: FAILED" in page
    # Evaluation numbers and deltas between stages (rouge_l 0.21 -> 0.31 -> 0.41).
    assert '<td class="num">0.210</td>' in page
    assert '0.310<span class="delta good">+0.100</span>' in page
    assert '0.410<span class="delta good">+0.100</span>' in page
    assert "Perplexity ↓" in page
    # Win rate with the length-bias check.
    assert "Win rate against base" in page and "length-matched" in page
    # Sample answers side by side, escaped.
    assert "It unlocks after 30 minutes." in page and "Dans /work/&lt;projet&gt;, pas dans le home." in page
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # Provenance.
    assert "0123456789abcdef" in page and "2.13.0" in page
    # Markdown: same tables, figures written beside it.
    assert "| ROUGE-L | 0.210 | 0.310 (+0.100) | 0.410 (+0.100) |" in md
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", md)
    assert len(figures) == len(images)
    assert all((out / f).is_file() for f in figures)
    assert "> **STOPPED**" in md


def test_report_of_a_single_sft_run_without_matplotlib(tmp_path, monkeypatch):
    import sys

    root = make_pipeline_dir(tmp_path / "demo")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = R.build_report(root / "sft")
    page = path.read_text(encoding="utf-8")
    assert path == root / "sft" / "report.html"
    assert "pip install &#x27;affinage[report]&#x27;" in page
    assert "data:image/png" not in page
    assert "best validation loss" in page
    assert "Use scancel &lt;jobid&gt;." in page  # SFT samples: before and after


def test_report_errors_clearly(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        R.build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no run"):
        R.build_report(tmp_path / "empty")


# ----------------------------------------------------------------------------------------------
# In a real browser
# ----------------------------------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path):
    """Chromium (Debian's package; `make test` installs it through scripts/install_chromium.sh)
    loads the page from disk and takes a screenshot of its first 2400 pixels."""
    pytest.importorskip("matplotlib")
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (scripts/install_chromium.sh installs Debian's package)")
    path = R.build_report(make_pipeline_dir(tmp_path / "demo"), output_dir=tmp_path / "report")
    shot = tmp_path / "report.png"
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,2400", f"--screenshot={shot}", path.absolute().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert shot.is_file()
    data = shot.read_bytes()
    assert _png_size(data) == (1280, 2400)
    # A blank page compresses to a few KB; this one has text, tables and charts.
    assert len(data) > 100_000


def test_report_command_line(tmp_path):
    """`affinage report DIR` writes the page; a wrong directory is one clear line and exit status 2."""
    import sys

    root = make_pipeline_dir(tmp_path / "demo")
    ok = subprocess.run([sys.executable, "-m", "affinage", "report", str(root), "-o", str(tmp_path / "out"), "--max-samples", "1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "report.html").is_file() and (tmp_path / "out" / "report.md").is_file()
    bad = subprocess.run([sys.executable, "-m", "affinage", "report", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "error:" in bad.stderr and "Traceback" not in bad.stderr
