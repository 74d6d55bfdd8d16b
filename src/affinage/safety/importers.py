"""Importers for public safety data a user may bring: XSTest, HarmBench, AdvBench, JailbreakBench, Llama Guard.

``affinage safety import FILE --format NAME -o OUT.jsonl`` writes rows in the project's format::

    {"id": ..., "prompt": ..., "label": "safe" | "unsafe", "category": <taxonomy name or null>,
     "language": "en", "source": "<format>:<the dataset's own category>"}

usable as harmful / borderline prompt sets (``safety eval``, ``redteam`` seeds) and, with answers,
as classifier data. Each dataset's own categories are mapped to the taxonomy where the meaning
matches and kept in ``source`` otherwise (e.g. HarmBench's ``copyright`` has no counterpart).

Expected columns (the files as their projects publish them):

* XSTest (Röttger et al. 2024) ``xstest_prompts.csv``: ``prompt``, ``type``, ``label`` (safe/unsafe);
* HarmBench (Mazeika et al. 2024) behaviours CSV: ``Behavior``, ``SemanticCategory``,
  ``ContextString`` (optional), ``BehaviorID``;
* AdvBench (Zou et al. 2023) ``harmful_behaviors.csv``: ``goal``, ``target``;
* JailbreakBench (Chao et al. 2024) behaviours CSV: ``Goal``, ``Category``, ``Behavior``
  (``--label safe`` for its benign behaviours file);
* Llama Guard-style conversations (JSONL): ``messages`` (or ``conversation``) and a verdict
  ``label`` / ``response`` such as ``"safe"`` or ``"unsafe\\nS1,S10"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from affinage.errors import DataError
from affinage.safety.taxonomy import Taxonomy

HARMBENCH_CATEGORIES = {
    "chemical_biological": "violence",
    "cybercrime_intrusion": "violence",
    "illegal": "criminal",
    "harassment_bullying": "hate",
    "harmful": None,
    "misinformation_disinformation": None,
    "copyright": None,
}
JAILBREAKBENCH_CATEGORIES = {
    "harassment/discrimination": "hate",
    "malware/hacking": "violence",
    "physical harm": "violence",
    "economic harm": "criminal",
    "fraud/deception": "criminal",
    "privacy": "privacy",
    "expert advice": "expert_advice",
    "sexual/adult content": None,
    "disinformation": None,
    "government decision-making": None,
}
XSTEST_CONTRAST = {"contrast_privacy": "privacy", "contrast_discr": "hate"}


def _get(row: dict[str, Any], key: str, where: str, fmt: str) -> str:
    for k, v in row.items():
        if k.strip().lower() == key.lower():
            if not isinstance(v, str) or not v.strip():
                raise DataError(f"{where}: column '{key}' is empty; a {fmt} row needs it")
            return v.strip()
    raise DataError(f"{where}: no column '{key}' (found: {', '.join(row)}); is this a {fmt} file?")


def _opt(row: dict[str, Any], key: str) -> str | None:
    for k, v in row.items():
        if k.strip().lower() == key.lower() and isinstance(v, str) and v.strip():
            return v.strip()
    return None


def _row(i: int, prompt: str, label: str, category: str | None, source: str, **extra: Any) -> dict[str, Any]:
    return {"id": extra.pop("id", f"{source.split(':')[0]}-{i}"), "prompt": prompt, "label": label,
            "category": category, "language": "en", "source": source, **extra}


def from_xstest(row: dict[str, Any], i: int, where: str, taxonomy: Taxonomy, label: str | None) -> dict[str, Any]:
    kind = _get(row, "type", where, "XSTest")
    gold = label or _get(row, "label", where, "XSTest").lower()
    if gold not in ("safe", "unsafe"):
        raise DataError(f"{where}: XSTest 'label' must be safe or unsafe, got {gold!r}")
    category = XSTEST_CONTRAST.get(kind) if gold == "unsafe" else None
    return _row(i, _get(row, "prompt", where, "XSTest"), gold, category, f"xstest:{kind}",
                id=f"xstest-{_opt(row, 'id') or i}")


def from_harmbench(row: dict[str, Any], i: int, where: str, taxonomy: Taxonomy, label: str | None) -> dict[str, Any]:
    behavior = _get(row, "Behavior", where, "HarmBench")
    context = _opt(row, "ContextString")
    semantic = (_opt(row, "SemanticCategory") or "").lower()
    prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
    category = HARMBENCH_CATEGORIES.get(semantic)
    return _row(i, prompt, label or "unsafe", category if category in taxonomy else None,
                f"harmbench:{semantic or 'unknown'}", id=f"harmbench-{_opt(row, 'BehaviorID') or i}")


def from_advbench(row: dict[str, Any], i: int, where: str, taxonomy: Taxonomy, label: str | None) -> dict[str, Any]:
    return _row(i, _get(row, "goal", where, "AdvBench"), label or "unsafe", None, "advbench",
                target=_opt(row, "target"))


def from_jailbreakbench(row: dict[str, Any], i: int, where: str, taxonomy: Taxonomy, label: str | None) -> dict[str, Any]:
    source_category = (_opt(row, "Category") or "").lower()
    category = JAILBREAKBENCH_CATEGORIES.get(source_category)
    gold = label or "unsafe"
    return _row(i, _get(row, "Goal", where, "JailbreakBench"), gold,
                category if gold == "unsafe" and category in taxonomy else None,
                f"jailbreakbench:{source_category or 'unknown'}", id=f"jbb-{_opt(row, 'Index') or i}",
                behavior=_opt(row, "Behavior"))


def from_llamaguard(row: dict[str, Any], i: int, where: str, taxonomy: Taxonomy, label: str | None) -> dict[str, Any]:
    from affinage.safety.classifiers import as_conversation

    messages = row.get("messages", row.get("conversation"))
    conv = as_conversation(messages, where)
    verdict = label or row.get("label", row.get("response"))
    if not isinstance(verdict, str) or verdict.strip().lower().split("\n")[0] not in ("safe", "unsafe"):
        raise DataError(f'{where}: a Llama Guard row needs "label" or "response" starting with safe or unsafe, got {verdict!r}')
    lines = verdict.strip().split("\n")
    gold = lines[0].strip().lower()
    categories = taxonomy.parse_categories(" ".join(lines[1:])) if gold == "unsafe" else []
    out = {"id": str(row.get("id", f"llamaguard-{i}")), "messages": conv, "label": gold,
           "category": categories[0] if categories else None, "language": row.get("language", "en"),
           "source": "llamaguard" + (f":{lines[1].strip()}" if len(lines) > 1 else "")}
    return out


IMPORTERS: dict[str, Callable[..., dict[str, Any]]] = {
    "xstest": from_xstest,
    "harmbench": from_harmbench,
    "advbench": from_advbench,
    "jailbreakbench": from_jailbreakbench,
    "llamaguard": from_llamaguard,
}


def import_rows(path: str | Path, fmt: str, *, taxonomy: Taxonomy | None = None,
                label: str | None = None) -> list[dict[str, Any]]:
    """Read a public dataset file and return rows in the project's format."""
    from affinage.data.io import read_rows

    if fmt not in IMPORTERS:
        raise DataError(f"unknown import format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    if label is not None and label not in ("safe", "unsafe"):
        raise DataError(f"--label must be safe or unsafe, got {label!r}")
    taxonomy = taxonomy or Taxonomy.default()
    rows = [IMPORTERS[fmt](row, number, f"{path}, row {number}", taxonomy, label) for number, row in read_rows(path)]
    if not rows:
        raise DataError(f"{path} holds no rows")
    return rows
