"""Detection metrics by value, each with its hand derivation."""

from __future__ import annotations

import pytest

from affinage.safety.metrics import (
    Record,
    average_precision,
    binary_metrics,
    choose_threshold,
    classification_report,
    precision_recall_curve,
)


def test_binary_metrics_by_hand_with_unparsable_counted_as_errors():
    # gold:  U U U S S S ;  pred: unsafe unsafe safe unsafe safe unparsable
    # tp = 2 (first two), fn = 1 (third), fp = 1 (fourth) + 1 (unparsable on a safe item), tn = 1.
    # precision = 2/4, recall = 2/3, F1 = 2 * 0.5 * 2/3 / (0.5 + 2/3) = 4/7.
    m = binary_metrics([True, True, True, False, False, False],
                       ["unsafe", "unsafe", "safe", "unsafe", "safe", "unparsable"])
    assert (m.tp, m.fp, m.fn, m.tn, m.unparsable) == (2, 2, 1, 1, 1)
    assert m.precision == pytest.approx(0.5)
    assert m.recall == pytest.approx(2 / 3)
    assert m.f1 == pytest.approx(4 / 7)


def test_unparsable_on_an_unsafe_item_is_a_miss_never_a_hit():
    m = binary_metrics([True], ["unparsable"])
    assert (m.tp, m.fn, m.unparsable) == (0, 1, 1)
    assert m.recall == 0.0 and m.precision is None and m.f1 is None


def test_average_precision_by_hand():
    # Ranking: 0.9 U, 0.8 S, 0.7 U, 0.6 S (2 unsafe).
    # k=1: P=1,   R=1/2 -> + 1/2 * 1
    # k=2: P=1/2, R=1/2 -> + 0
    # k=3: P=2/3, R=1   -> + 1/2 * 2/3
    # k=4: P=1/2, R=1   -> + 0           AP = 1/2 + 1/3 = 5/6
    assert average_precision([True, False, True, False], [0.9, 0.8, 0.7, 0.6]) == pytest.approx(5 / 6)
    # A perfect ranking has AP 1, whatever the scores' scale.
    assert average_precision([False, True, True], [0.1, 5.0, 3.0]) == pytest.approx(1.0)
    assert average_precision([False, False], [0.2, 0.3]) is None


def test_average_precision_with_ties_enters_tied_items_together():
    # 0.9 holds one unsafe and one safe item: P=1/2, R=1/2; then 0.1 (unsafe): P=2/3, R=1.
    # AP = 1/2 * 1/2 + 1/2 * 2/3 = 7/12 (not 1/2 * 1 + ..., which a tie broken by input order would give).
    assert average_precision([True, False, True], [0.9, 0.9, 0.1]) == pytest.approx(7 / 12)
    assert average_precision([False, True, True], [0.9, 0.9, 0.1]) == pytest.approx(7 / 12)
    assert precision_recall_curve([True, False, True], [0.9, 0.9, 0.1]) == [
        (0.9, 0.5, 0.5), (0.1, pytest.approx(2 / 3), 1.0)]


SCORES = [0.95, 0.9, 0.8, 0.7, 0.6, 0.3]
GOLD = [True, True, False, True, False, True]
# threshold: 0.95 0.9  0.8  0.7  0.6  0.3
# precision: 1    1    2/3  3/4  3/5  4/6
# recall:    1/4  1/2  1/2  3/4  3/4  1
# F1:        .4   .667 .571 .75  .667 .8


def test_threshold_for_target_precision_takes_the_best_recall_and_sits_halfway():
    c = choose_threshold(GOLD, SCORES, target_precision=0.75)
    # Eligible: 0.95, 0.9 (P=1) and 0.7 (P=3/4); the best recall is at 0.7; half-way to 0.6.
    assert c.threshold == pytest.approx(0.65)
    assert (c.precision, c.recall, c.target_met) == (0.75, 0.75, True)
    c = choose_threshold(GOLD, SCORES, target_precision=0.9)
    assert c.threshold == pytest.approx(0.85) and c.recall == 0.5
    # The chosen threshold reproduces the operating point on the same data.
    predicted = ["unsafe" if s >= c.threshold else "safe" for s in SCORES]
    m = binary_metrics(GOLD, predicted)
    assert (m.precision, m.recall) == (c.precision, c.recall)


def test_threshold_for_target_recall_and_max_f1():
    c = choose_threshold(GOLD, SCORES, target_recall=1.0)
    assert c.threshold == pytest.approx(0.3)  # the lowest score: nothing below it
    assert c.precision == pytest.approx(4 / 6)
    c = choose_threshold(GOLD, SCORES, target_recall=0.7)
    # Recall >= 0.7 at 0.7, 0.6, 0.3; precision best at 0.7 (3/4).
    assert c.threshold == pytest.approx(0.65)
    c = choose_threshold(GOLD, SCORES)
    assert c.target == "max_f1" and c.f1 == pytest.approx(0.8) and c.threshold == pytest.approx(0.3)


def test_unreachable_precision_falls_back_to_the_most_precise_threshold():
    c = choose_threshold([False, True], [0.9, 0.8], target_precision=0.9)
    assert not c.target_met and c.precision == 0.5 and c.threshold == pytest.approx(0.8)
    with pytest.raises(ValueError, match="not both"):
        choose_threshold([True], [0.5], target_precision=0.5, target_recall=0.5)
    with pytest.raises(ValueError, match="at least one unsafe"):
        choose_threshold([False, False], [0.5, 0.4])


def test_report_per_category_per_language_and_confusion():
    records = [
        Record(True, "violence", "en", "unsafe", 0.9, ["violence"]),
        Record(True, "violence", "fr", "safe", 0.2, []),
        Record(True, "self_harm", "en", "unsafe", 0.8, ["hate"]),
        Record(True, "self_harm", "fr", "unparsable", None, []),
        Record(False, None, "en", "safe", 0.1, []),
        Record(False, None, "fr", "unsafe", 0.7, []),
    ]
    report = classification_report(records, ["violence", "self_harm", "hate"])
    # violence slice = 2 safe + 2 violence items: tp=1, fn=1, fp=1 -> P=R=1/2.
    v = report["per_category"]["violence"]
    assert (v["tp"], v["fn"], v["fp"], v["tn"], v["n"]) == (1, 1, 1, 1, 4)
    assert "hate" not in report["per_category"]  # no gold item of that category
    en = report["per_language"]["en"]
    assert (en["tp"], en["fp"], en["fn"], en["tn"]) == (2, 0, 0, 1)
    counts = report["confusion"]["counts"]
    assert counts["violence"]["violence"] == 1 and counts["violence"]["safe"] == 1
    assert counts["self_harm"]["hate"] == 1 and counts["self_harm"]["unparsable"] == 1
    assert counts["safe"]["unsafe"] == 1  # predicted unsafe without a category
    assert report["overall"]["unparsable"] == 1
    assert report["overall"]["auprc"] is not None
