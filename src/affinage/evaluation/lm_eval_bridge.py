"""Bridge to lm-evaluation-harness (EleutherAI): run its tasks on our checkpoints.

Optional extra: ``pip install 'affinage[lm-eval]'``. Any model name that affinage understands (a
built-in alias, a run's ``final/`` directory, a hub id) is resolved to a local directory and wrapped
in lm-eval's ``HFLM``; the tasks are looked up in lm-eval's own registry plus ``include_path``, a
folder of task YAML files of your own.

Offline use: lm-eval's registered benchmarks (MMLU, HellaSwag, ARC...) fetch their data from the
Hugging Face hub, which these machines cannot reach. A task of your own whose ``dataset_path`` is
``json`` (or ``csv``, ``parquet``) and whose ``dataset_kwargs.data_files`` names local files runs
fully offline: the ``json`` builder ships inside the ``datasets`` package. :func:`local_task_yaml`
writes such a task for a multiple-choice JSONL file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from affinage.errors import ConfigError


def _lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            "lm_eval.tasks needs lm-evaluation-harness, which is not installed: pip install 'affinage[lm-eval]'"
        ) from None
    return lm_eval, HFLM, TaskManager


def local_task_yaml(
    task: str,
    data_file: str | Path,
    *,
    output_dir: str | Path,
    question_field: str = "question",
    choices_field: str = "choices",
    answer_field: str = "answer",
) -> Path:
    """Write ``output_dir/{task}.yaml``: a multiple-choice task over a local JSONL file (no download).

    The rows are ``{"question": ..., "choices": [...], "answer": index}`` (our own multiple-choice
    format); the prompt is ``"Question: ...\\nAnswer:"`` and each choice is scored as its continuation,
    reported as ``acc`` and ``acc_norm``.
    """
    import yaml

    spec = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(Path(data_file).absolute())}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": f"Question: {{{{{question_field}}}}}\nAnswer:",
        "doc_to_choice": f"{{{{{choices_field}}}}}",
        "doc_to_target": f"{{{{{answer_field}}}}}",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{task}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def run_lm_eval(
    model: str,
    tasks: list[str],
    *,
    include_path: str | None = None,
    limit: int | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 4,
    dtype: str = "auto",
    device: str | None = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """Run lm-eval ``tasks`` on ``model``; return ``{task: {metric: value}}`` (plus ``_samples`` when asked).

    Metric names drop lm-eval's filter suffix (``acc,none`` -> ``acc``); standard errors keep the
    ``_stderr`` suffix. ``include_path`` alone (without lm-eval's built-in catalogue) is indexed when
    given, which takes milliseconds instead of seconds.
    """
    import torch

    from affinage.models.loading import resolve_dtype, resolve_model

    lm_eval, HFLM, TaskManager = _lm_eval()
    source = resolve_model(model)
    if source.kind == "gguf":
        raise ConfigError(f"lm_eval: model '{model}' is a GGUF file; give a Hugging Face directory")
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"config key 'lm_eval.include_path': {include_path} is not a directory")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    # Local tasks must never reach the network; a registered benchmark then fails with a clear
    # "couldn't reach the hub" message instead of hanging on a download.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    manager = TaskManager(include_path=include_path, include_defaults=include_path is None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f" in {include_path}" if include_path else ""
        raise ConfigError(
            f"lm_eval.tasks: unknown task(s) {unknown}{where}. Give a folder of task YAML files with "
            "lm_eval.include_path, or the name of a task lm-eval ships"
        )
    lm = HFLM(pretrained=source.path, device=device, batch_size=batch_size, dtype=torch_dtype)
    try:
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=log_samples,
        )
    except (ConnectionError, OSError) as exc:
        raise ConfigError(
            f"lm_eval could not load the data of {tasks}: {exc}. Registered benchmarks download their "
            "data from the Hugging Face hub; offline, write a task over local files (see docs/evaluation.md)"
        ) from exc
    results: dict[str, Any] = {}
    for task, values in output["results"].items():
        clean = {}
        for key, value in values.items():
            if key in ("alias", "name") or not isinstance(value, int | float):
                continue
            metric, _, _filter = key.partition(",")
            clean[metric] = float(value)
        results[task] = clean
    if log_samples:
        results["_samples"] = output.get("samples", {})
    return results
