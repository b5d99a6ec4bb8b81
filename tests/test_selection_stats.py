"""`cme_reward.selection`: AUROC, pairwise accuracy, ROC curves and bootstrap intervals against plain references."""

from __future__ import annotations

import math
import random
import statistics
import xml.etree.ElementTree as ET

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cme_reward.selection import stats
from cme_reward.selection.roc_svg import roc_svg
from cme_reward.selection.stats import (
    ClassSummary,
    Interval,
    auroc,
    auroc_interval,
    bootstrap_ci,
    class_summary,
    paired_difference,
    paired_pairwise_difference,
    pairwise_accuracy,
    pairwise_interval,
    roc_curve,
)

SVG = "{http://www.w3.org/2000/svg}"
FEW = settings(max_examples=50, deadline=None)

# scores from a small set (many ties, -0.0 == 0.0) or any moderate float
score = st.one_of(st.sampled_from([-1.0, -0.0, 0.0, 0.5, 2.0]), st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def labelled(draw, min_each: int = 1) -> tuple[list[float], list[bool]]:
    good = draw(st.lists(score, min_size=min_each, max_size=20))
    bad = draw(st.lists(score, min_size=min_each, max_size=20))
    rows = [(x, True) for x in good] + [(x, False) for x in bad]
    random.Random(draw(st.integers(0, 99))).shuffle(rows)
    return [x for x, _ in rows], [y for _, y in rows]


def ref_auroc(scores, labels) -> float:
    good = [x for x, y in zip(scores, labels) if y]
    bad = [x for x, y in zip(scores, labels) if not y]
    return sum(1.0 if g > b else 0.5 if g == b else 0.0 for g in good for b in bad) / (len(good) * len(bad))


def ref_pairwise(chosen, rejected) -> float:
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected)) / len(chosen)


def trapezoid(points) -> float:
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:]))


def separated(n: int = 60, shift: float = 1.0, seed: int = 0) -> tuple[list[float], list[bool]]:
    rng = random.Random(seed)
    labels = [i % 3 != 0 for i in range(n)]
    return [rng.gauss(shift * y, 1.0) for y in labels], labels


@FEW
@given(labelled())
def test_auroc_matches_double_loop(data):
    scores, labels = data
    assert auroc(scores, labels) == pytest.approx(ref_auroc(scores, labels), abs=1e-12)
    assert auroc(torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)) == auroc(scores, [*map(int, labels)])


@FEW
@given(labelled())
def test_roc_curve_area_equals_auroc(data):
    scores, labels = data
    points = roc_curve(scores, labels)
    assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)
    assert len(points) == len(set(scores)) + 1
    assert all(x0 <= x1 and y0 <= y1 for (x0, y0), (x1, y1) in zip(points, points[1:]))
    assert trapezoid(points) == pytest.approx(auroc(scores, labels), abs=1e-12)


@FEW
@given(labelled())
def test_auroc_invariant_to_monotone_transforms_and_flips_with_labels(data):
    scores, labels = data
    value = auroc(scores, labels)
    stretch = {x: math.exp(k / 3) - 5 for k, x in enumerate(sorted(set(scores)))}  # strictly increasing on the data
    assert auroc([stretch[x] for x in scores], labels) == pytest.approx(value, abs=1e-12)
    assert auroc([2 * x for x in scores], labels) == value
    assert auroc(scores, [not y for y in labels]) == pytest.approx(1 - value, abs=1e-12)
    assert auroc([-x for x in scores], labels) == pytest.approx(1 - value, abs=1e-12)


@FEW
@given(st.lists(st.tuples(score, score), min_size=1, max_size=40))
def test_pairwise_accuracy_matches_loop(pairs):
    chosen, rejected = [c for c, _ in pairs], [r for _, r in pairs]
    assert pairwise_accuracy(chosen, rejected) == pytest.approx(ref_pairwise(chosen, rejected), abs=1e-12)
    assert pairwise_accuracy(rejected, chosen) == pytest.approx(1 - ref_pairwise(chosen, rejected), abs=1e-12)


def test_known_values():
    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert roc_curve([1, 1, 0], [1, 0, 0]) == [(0.0, 0.0), (0.5, 1.0), (1.0, 1.0)]
    assert class_summary([1.0, 3.0, 0.0, -1.0], [1, 1, 0, 0]) == ClassSummary(2, 2, 2.0, -0.5, 2.5)
    assert str(Interval(0.7344, 0.7, 0.77, 0.95, 100, 0.04)) == "0.734 [0.700, 0.770] p=0.04"


@FEW
@given(labelled())
def test_class_summary_matches_statistics(data):
    scores, labels = data
    summary = class_summary(scores, labels)
    good, bad = [x for x, y in zip(scores, labels) if y], [x for x, y in zip(scores, labels) if not y]
    assert (summary.n_good, summary.n_bad) == (len(good), len(bad))
    assert summary.mean_good == pytest.approx(statistics.fmean(good), abs=1e-6)
    assert summary.gap == pytest.approx(statistics.fmean(good) - statistics.fmean(bad), abs=1e-6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: auroc([1.0, 2.0], [1]), r"`scores` has 2, `labels` has 1"),
        (lambda: auroc([1.0, math.nan], [1, 0]), r"`scores\[1\]` must be a finite number, got nan"),
        (lambda: auroc([1.0, math.inf], [1, 0]), r"`scores\[1\]` must be a finite number, got inf"),
        (lambda: auroc(["1", 2.0], [1, 0]), r"`scores\[0\]` must be a finite number, got '1'"),
        (lambda: auroc([1.0, 2.0], [1, 2]), r"`labels\[1\]` must be 0, 1 or a bool, got 2"),
        (lambda: auroc([1.0, 2.0], ["1", 0]), r"`labels\[0\]` must be 0, 1 or a bool, got '1'"),
        (lambda: auroc([0.5] * 12, [1] * 12), "AUROC needs both classes: got 12 good and 0 bad"),
        (lambda: roc_curve([0.5], [False]), "roc_curve needs both classes: got 0 good and 1 bad"),
        (lambda: pairwise_accuracy([], []), "needs at least one pair"),
        (lambda: pairwise_accuracy([1.0], [1.0, 2.0]), r"`chosen` has 1, `rejected` has 2"),
        (lambda: paired_difference([1, 2], [1, 2, 3], [0, 1]), r"`scores_b` has 3"),
        (lambda: paired_pairwise_difference([1], [2], [3], [math.nan]), r"`rejected_b\[0\]` must be a finite"),
        (lambda: bootstrap_ci(sum, [1.0], confidence=1.0), r"`confidence` must be in \(0, 1\)"),
        (lambda: bootstrap_ci(sum, [1.0], n_resamples=0), "`n_resamples` >= 1"),
        (lambda: bootstrap_ci(sum, [1.0, 2.0], strata=[0]), "`strata` has 1"),
        (lambda: bootstrap_ci(sum, [1.0], [1.0, 2.0]), r"`samples\[0\]` has 1, `samples\[1\]` has 2"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_unstratified_auroc_bootstrap_reports_a_missing_class():
    with pytest.raises(ValueError, match="not finite on some resamples"):
        bootstrap_ci(stats._auroc_rows, [0.0, 1.0, 2.0], [1, 0, 0], n_resamples=200, batched=True)


def test_interval_is_the_percentiles_of_the_resampled_values():
    seen: list[float] = []

    def mean(xs):
        seen.append(sum(xs) / len(xs))
        return seen[-1]

    interval = bootstrap_ci(mean, [float(x * x % 17) for x in range(30)], n_resamples=300, confidence=0.95, seed=3)
    estimate, values = seen[0], seen[1:]
    cuts = statistics.quantiles(values, n=40, method="inclusive")
    assert len(values) == 300 and interval.estimate == estimate
    assert (interval.low, interval.high) == (pytest.approx(cuts[0]), pytest.approx(cuts[-1]))


@FEW
@given(labelled(min_each=3), st.integers(0, 2**32))
def test_vectorised_intervals_equal_plain_bootstrap_and_contain_estimate(data, seed):
    scores, labels = data
    interval = auroc_interval(scores, labels, n_resamples=100, seed=seed)
    assert interval == bootstrap_ci(auroc, scores, labels, n_resamples=100, seed=seed, strata=labels)
    assert interval.low <= interval.estimate <= interval.high
    assert interval == auroc_interval(scores, labels, n_resamples=100, seed=seed)  # same seed, same interval
    assert interval.estimate == auroc(scores, labels) and interval.p_value is None


def test_stratified_resamples_keep_class_counts():
    scores, labels = separated(40)
    counts = set()

    def n_good(xs, ys):
        counts.add((len(ys), sum(ys)))
        return auroc(xs, ys)

    bootstrap_ci(n_good, scores, labels, n_resamples=200, strata=labels)
    assert counts == {(40, sum(labels))}


def test_seeds_and_chunking(monkeypatch):
    scores, labels = separated(50)
    first = auroc_interval(scores, labels, n_resamples=300, seed=1)
    assert first != auroc_interval(scores, labels, n_resamples=300, seed=2)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7 * 50)  # resamples drawn 7 at a time: the same stream
    assert auroc_interval(scores, labels, n_resamples=300, seed=1) == first


@FEW
@given(st.lists(st.tuples(score, score, score, score), min_size=2, max_size=30), st.integers(0, 2**32))
def test_pairwise_intervals_equal_plain_bootstrap(rows, seed):
    ca, ra, cb, rb = ([row[k] for row in rows] for k in range(4))
    interval = pairwise_interval(ca, ra, n_resamples=50, seed=seed)
    plain = bootstrap_ci(pairwise_accuracy, ca, ra, n_resamples=50, seed=seed)
    assert interval.estimate == pytest.approx(plain.estimate) and interval.low == pytest.approx(plain.low)
    assert interval.high == pytest.approx(plain.high) and interval.low <= interval.estimate <= interval.high
    gap = paired_pairwise_difference(ca, ra, cb, rb, n_resamples=50, seed=seed)

    def gap_of(*four):
        return pairwise_accuracy(*four[:2]) - pairwise_accuracy(*four[2:])

    plain = bootstrap_ci(gap_of, ca, ra, cb, rb, n_resamples=50, seed=seed, null=0.0)
    assert (gap.low, gap.high, gap.p_value) == (pytest.approx(plain.low), pytest.approx(plain.high), plain.p_value)


@FEW
@given(labelled(min_each=2), st.lists(score, min_size=40, max_size=40), st.integers(0, 2**32))
def test_paired_difference_equals_plain_bootstrap(data, other, seed):
    scores_a, labels = data
    scores_b = other[: len(scores_a)]
    gap = paired_difference(scores_a, scores_b, labels, n_resamples=50, seed=seed)

    def gap_of(a, b, y):
        return auroc(a, y) - auroc(b, y)

    assert gap == bootstrap_ci(gap_of, scores_a, scores_b, labels, n_resamples=50, seed=seed, strata=labels, null=0)
    assert gap.estimate == auroc(scores_a, labels) - auroc(scores_b, labels)
    assert 2 / 51 <= gap.p_value <= 1


def test_paired_difference_p_values():
    scores, labels = separated(90, shift=2.0)
    same = paired_difference(scores, scores, labels, n_resamples=300)
    assert (same.estimate, same.low, same.high, same.p_value) == (0.0, 0.0, 0.0, 1.0)
    noise = [random.Random(i).random() for i in range(90)]
    better = paired_difference(scores, noise, labels, n_resamples=300)
    assert better.low > 0 and better.p_value == 2 / 301
    worse = paired_difference(noise, scores, labels, n_resamples=300)
    assert worse.estimate == -better.estimate and worse.high < 0 and worse.p_value == 2 / 301
    assert (worse.low, worse.high) == (pytest.approx(-better.high), pytest.approx(-better.low))


def test_roc_svg():
    curves = {"a<b&c": [(0.0, 0.0), (0.25, 0.75), (1.0, 1.0)], "chance": [(0.0, 0.0), (1.0, 1.0)]}
    svg = roc_svg(curves, title="Verifiers & <math>", aucs={"a<b&c": 0.734})
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and svg == roc_svg(curves, title="Verifiers & <math>", aucs={"a<b&c": 0.734})
    polylines = root.iter(f"{SVG}polyline")
    assert [p.get("points").split()[1] for p in polylines] == ["154.00,138.00", "424.00,48.00"]
    assert len([line for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray")]) == 1  # the diagonal
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "a<b&c (AUROC 0.734)" in texts and "chance" in texts and "Verifiers & <math>" in texts
    assert {"0.0", "0.2", "0.4", "0.6", "0.8", "1.0", "false positive rate", "true positive rate"} <= set(texts)
    assert "a&lt;b&amp;c" in svg and "a<b" not in svg
    with pytest.raises(ValueError, match="outside"):
        roc_svg({"x": [(0.0, 1.5)]}, title="t")
    with pytest.raises(ValueError, match="not in `curves`"):
        roc_svg({"x": [(0.0, 0.0)]}, title="t", aucs={"y": 0.5})
