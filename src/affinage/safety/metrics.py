"""Detection metrics for safety classifiers: precision, recall, F1, AUPRC, threshold choice, confusion.

"Positive" means unsafe. A prediction is ``"safe"``, ``"unsafe"`` or ``"unparsable"`` (the classifier
answered outside its format). An unparsable prediction is never counted as right: on an unsafe item
it is a false negative, on a safe item a false positive, and the report gives their number apart.

AUPRC is the average precision over the ranking by score (the step-wise area under the
precision-recall curve, without interpolation):

    AP = sum_k (R_k - R_{k-1}) * P_k

where ``P_k`` and ``R_k`` are precision and recall when everything scoring at least the k-th
highest distinct score is called unsafe (tied scores enter together), ``R_0 = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BinaryMetrics:
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float | None
    """None when nothing was predicted unsafe (0/0)."""
    recall: float | None
    """None when there is no unsafe item (0/0)."""
    f1: float | None
    auprc: float | None = None
    unparsable: int = 0
    n: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def binary_metrics(
    y_true: Sequence[bool], y_pred: Sequence[str], scores: Sequence[float | None] | None = None
) -> BinaryMetrics:
    """Counts, precision = tp/(tp+fp), recall = tp/(tp+fn), F1 = 2PR/(P+R), and AUPRC from ``scores``.

    ``y_true[i]`` is True for an unsafe item; ``y_pred[i]`` is "safe", "unsafe" or "unparsable".
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    tp = fp = fn = tn = unparsable = 0
    for truth, pred in zip(y_true, y_pred, strict=True):
        if pred == "unparsable":
            unparsable += 1
            # Never right: a miss on an unsafe item, a false alarm on a safe one.
            fn += truth
            fp += not truth
        elif pred == "unsafe":
            tp += truth
            fp += not truth
        elif pred == "safe":
            fn += truth
            tn += not truth
        else:
            raise ValueError(f"prediction must be safe, unsafe or unparsable, got {pred!r}")
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    auprc = None
    if scores is not None:
        auprc = average_precision(y_true, scores)
    return BinaryMetrics(tp, fp, fn, tn, precision, recall, f1, auprc, unparsable, len(y_true))


def _ranked(y_true: Sequence[bool], scores: Sequence[float | None]) -> list[tuple[float, bool]]:
    pairs = [(float(s), bool(t)) for t, s in zip(y_true, scores, strict=True) if s is not None]
    if any(math.isnan(s) for s, _ in pairs):
        raise ValueError("scores hold NaN")
    return sorted(pairs, key=lambda p: -p[0])


def precision_recall_curve(
    y_true: Sequence[bool], scores: Sequence[float | None]
) -> list[tuple[float, float, float]]:
    """``(threshold, precision, recall)`` for every distinct score, highest threshold first.

    At threshold ``t`` an item is called unsafe when its score is ``>= t``. Items without a score
    (None) are left out.
    """
    pairs = _ranked(y_true, scores)
    positives = sum(t for _, t in pairs)
    curve = []
    tp = fp = 0
    i = 0
    while i < len(pairs):
        threshold = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == threshold:  # ties enter together
            tp += pairs[i][1]
            fp += not pairs[i][1]
            i += 1
        curve.append((threshold, tp / (tp + fp), tp / positives if positives else 0.0))
    return curve


def average_precision(y_true: Sequence[bool], scores: Sequence[float | None]) -> float | None:
    """AUPRC as average precision: ``sum_k (R_k - R_{k-1}) P_k``; None without any unsafe item."""
    pairs = _ranked(y_true, scores)
    if not any(t for _, t in pairs):
        return None
    area, previous_recall = 0.0, 0.0
    for _, precision, recall in precision_recall_curve(y_true, scores):
        area += (recall - previous_recall) * precision
        previous_recall = recall
    return area


@dataclass
class ThresholdChoice:
    threshold: float
    precision: float
    recall: float
    f1: float
    target: str
    """"precision=0.95", "recall=0.9" or "max_f1"."""
    target_met: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(
    y_true: Sequence[bool],
    scores: Sequence[float],
    *,
    target_precision: float | None = None,
    target_recall: float | None = None,
) -> ThresholdChoice:
    """Pick the decision threshold on validation data.

    * ``target_precision``: the threshold with the highest recall among those whose precision is at
      least the target (the lowest such threshold). When no threshold reaches the target, the one
      with the highest precision is returned with ``target_met=False``.
    * ``target_recall``: the threshold with the highest precision among those whose recall is at
      least the target.
    * neither: the threshold with the highest F1.

    The returned threshold sits half-way between the chosen score and the next lower distinct score,
    so the validation predictions are exactly those of the chosen operating point while unseen
    scores near the boundary are not decided by a rounding error.
    """
    if target_precision is not None and target_recall is not None:
        raise ValueError("give a target precision or a target recall, not both")
    curve = precision_recall_curve(y_true, scores)
    if not curve:
        raise ValueError("no scores to choose a threshold from")
    if not any(y_true):
        raise ValueError("choosing a threshold needs at least one unsafe example in the validation data")

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    # Each entry: (index in the curve, precision, recall); the curve goes from high to low threshold.
    points = [(k, p, r) for k, (_, p, r) in enumerate(curve)]
    if target_precision is not None:
        target, ok = f"precision={target_precision}", [pt for pt in points if pt[1] >= target_precision]
        best = max(ok, key=lambda pt: (pt[2], -pt[0])) if ok else max(points, key=lambda pt: (pt[1], pt[2]))
    elif target_recall is not None:
        target, ok = f"recall={target_recall}", [pt for pt in points if pt[2] >= target_recall]
        best = max(ok, key=lambda pt: (pt[1], -pt[0]))
    else:
        target, ok = "max_f1", points
        best = max(points, key=lambda pt: (f1(pt[1], pt[2]), -pt[0]))
    k, precision, recall = best
    chosen = curve[k][0]
    threshold = (chosen + curve[k + 1][0]) / 2 if k + 1 < len(curve) else chosen
    return ThresholdChoice(threshold, precision, recall, f1(precision, recall), target, best in ok)


# ----------------------------------------------------------------------------------------------
# Full report: overall, per category, per language, confusion table
# ----------------------------------------------------------------------------------------------


@dataclass
class Record:
    """One judged item with its gold label."""

    unsafe: bool
    category: str | None
    language: str | None
    pred: str
    """"safe", "unsafe" or "unparsable"."""
    score: float | None
    pred_categories: list[str]


def classification_report(records: Sequence[Record], categories: Sequence[str]) -> dict[str, Any]:
    """Metrics overall, per category and per language, and the confusion table.

    Per category ``c``: detection metrics on the safe items plus the unsafe items of category ``c``
    (the Llama Guard paper's per-category binary evaluation). Per language: on the items of that
    language. The confusion table counts gold class (safe or a category) against the predicted one
    (safe, the first predicted category, ``unsafe`` when no category was named, or ``unparsable``).
    """

    def metrics(items: Sequence[Record]) -> dict[str, Any]:
        return binary_metrics([r.unsafe for r in items], [r.pred for r in items], [r.score for r in items]).as_dict()

    report: dict[str, Any] = {"n": len(records), "overall": metrics(records)}
    safe = [r for r in records if not r.unsafe]
    per_category = {}
    for c in categories:
        items = [r for r in records if r.unsafe and r.category == c]
        if items:
            per_category[c] = metrics(safe + items)
    report["per_category"] = per_category
    languages = sorted({r.language for r in records if r.language})
    report["per_language"] = {lang: metrics([r for r in records if r.language == lang]) for lang in languages}

    rows = ["safe", *categories]
    if any(r.unsafe and r.category not in categories for r in records):
        rows.append("unsafe")  # gold unsafe without a (known) category
    columns = ["safe", *categories, "unsafe", "unparsable"]
    table = {row: dict.fromkeys(columns, 0) for row in rows}
    for r in records:
        gold = "safe" if not r.unsafe else (r.category if r.category in categories else "unsafe")
        if r.pred == "unsafe":
            known = [c for c in r.pred_categories if c in categories]
            pred = known[0] if known else "unsafe"
        else:
            pred = r.pred
        table[gold][pred] += 1
    report["confusion"] = {"rows": rows, "columns": columns, "counts": table}
    return report


def format_report(report: dict[str, Any], title: str = "safety classifier") -> Any:
    """A rich renderable: one table of metrics by slice, one confusion table."""
    from rich.console import Group
    from rich.table import Table

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    table = Table(title=f"{title}: detection of unsafe items")
    for col in ("slice", "n", "precision", "recall", "F1", "AUPRC", "unparsable"):
        table.add_column(col, justify="right" if col != "slice" else "left")

    def add(name: str, m: dict[str, Any]) -> None:
        table.add_row(
            name, str(m["n"]), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]), fmt(m["auprc"]), str(m["unparsable"])
        )

    add("overall", report["overall"])
    for name, m in report["per_category"].items():
        add(f"category {name}", m)
    for name, m in report["per_language"].items():
        add(f"language {name}", m)
    confusion = report["confusion"]
    ctable = Table(title="confusion (rows: gold, columns: predicted)")
    ctable.add_column("gold")
    for col in confusion["columns"]:
        ctable.add_column(col, justify="right")
    for row in confusion["rows"]:
        ctable.add_row(row, *(str(confusion["counts"][row][c]) for c in confusion["columns"]))
    return Group(table, ctable)
