"""core.training.metrics against values worked out by hand, and against scikit-learn as an
independent reference where it is installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core.labels import LABELS, LOSS_WEIGHTS
from core.training.metrics import (
    EPS,
    ReliabilityRow,
    bootstrap_ci,
    choose_threshold,
    constant_prior,
    expected_calibration_error,
    per_label_log_loss,
    reliability_table,
    roc_auc,
    sensitivity_specificity,
    study_level,
    weighted_log_loss,
)

# --------------------------------------------------------------------------- log loss

# 3 slices x 6 labels (LABELS order)
Y3 = np.array(
    [
        [1, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [1, 0, 0, 1, 1, 1],
    ]
)
P3 = np.array(
    [
        [0.9, 0.1, 0.7, 0.2, 0.1, 0.3],
        [0.2, 0.05, 0.1, 0.1, 0.4, 0.2],
        [0.6, 0.1, 0.3, 0.5, 0.8, 0.9],
    ]
)


def test_log_loss_of_one_label_by_hand() -> None:
    # any: y = 1, 0, 1 with p = 0.9, 0.2, 0.6
    expected = -(math.log(0.9) + math.log(0.8) + math.log(0.6)) / 3
    assert expected == pytest.approx(0.2797766, abs=1e-7)
    assert per_label_log_loss(Y3, P3)[0] == pytest.approx(expected, rel=1e-12)


def test_weighted_log_loss_by_hand() -> None:
    per_label = []
    for j in range(6):
        terms = [math.log(P3[i, j]) if Y3[i, j] == 1 else math.log(1 - P3[i, j]) for i in range(3)]
        per_label.append(-sum(terms) / 3)
    assert per_label_log_loss(Y3, P3) == pytest.approx(per_label, rel=1e-12)
    # 'any' counts twice: (2 L_any + L_edh + L_iph + L_ivh + L_sah + L_sdh) / 7
    expected = (2 * per_label[0] + sum(per_label[1:])) / 7
    assert LOSS_WEIGHTS == (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert weighted_log_loss(Y3, P3) == pytest.approx(expected, rel=1e-12)
    # equal weights give the plain mean
    assert weighted_log_loss(Y3, P3, weights=[1] * 6) == pytest.approx(np.mean(per_label))


def test_weighted_log_loss_equals_challenge_scoring_over_all_pairs() -> None:
    """The challenge scored all (image, label) rows with label weights; same number."""
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, (50, 6))
    p = rng.uniform(0.01, 0.99, (50, 6))
    w = np.tile(LOSS_WEIGHTS, (50, 1))
    reference = sk_metrics.log_loss(y.ravel(), p.ravel(), sample_weight=w.ravel(), labels=[0, 1])
    assert weighted_log_loss(y, p) == pytest.approx(reference, rel=1e-9)


def test_log_loss_clips_certain_mistakes() -> None:
    y = np.array([[1] + [0] * 5])
    p = np.array([[0.0] + [0.0] * 5])
    assert per_label_log_loss(y, p)[0] == pytest.approx(-math.log(EPS))
    assert math.isfinite(weighted_log_loss(y, p))


def test_log_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        weighted_log_loss(np.full((2, 6), 2), np.full((2, 6), 0.5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        weighted_log_loss(np.zeros((2, 6)), np.full((2, 6), 1.5))
    with pytest.raises(ValueError, match="shapes"):
        weighted_log_loss(np.zeros((2, 6)), np.full((3, 6), 0.5))
    with pytest.raises(ValueError, match="weights"):
        weighted_log_loss(Y3, P3, weights=[1, 1])


# --------------------------------------------------------------------------- AUC


def test_auc_by_hand() -> None:
    # pairs (pos, neg): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes -> 3/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.7, 0.9]) == 0.0


def test_auc_ties_count_one_half() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    # (0.5 vs 0.1) 1, (0.5 vs 0.5) 1/2, (0.9 vs 0.1) 1, (0.9 vs 0.5) 1 -> 3.5 / 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    assert roc_auc([0, 0, 1, 1, 1], [0.3] * 5) == 0.5


def test_auc_is_none_with_one_class() -> None:
    assert roc_auc([0, 0, 0], [0.1, 0.5, 0.9]) is None
    assert roc_auc([1, 1], [0.1, 0.5]) is None


def test_auc_matches_sklearn_on_random_data() -> None:
    sk_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(100):
        n = int(rng.integers(2, 80))
        y = rng.integers(0, 2, n)
        # coarse scores on half the trials, so ties are common
        s = rng.integers(0, 6, n) / 5 if trial % 2 else rng.normal(y, 1.0)
        if y.min() == y.max():
            assert roc_auc(y, s) is None
            continue
        assert roc_auc(y, s) == pytest.approx(sk_metrics.roc_auc_score(y, s), abs=1e-12)


# --------------------------------------------------------------------------- bootstrap


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return roc_auc(y, s)


def test_bootstrap_ci_contains_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(y, 1.0)
    point = roc_auc(y, s)
    ci = bootstrap_ci(_auc, y, s, n_boot=300, seed=7)
    assert ci is not None and point is not None
    assert ci[0] < point < ci[1]
    assert bootstrap_ci(_auc, y, s, n_boot=300, seed=7) == ci
    assert bootstrap_ci(_auc, y, s, n_boot=300, seed=8) != ci
    narrow = bootstrap_ci(_auc, y, s, n_boot=300, seed=7, alpha=0.5)
    assert narrow is not None and ci[0] <= narrow[0] <= narrow[1] <= ci[1]


def test_cluster_bootstrap_is_wider_on_clustered_data() -> None:
    """Slices of a study share its score level: resampling slices overstates the evidence."""
    rng = np.random.default_rng(2)
    n_groups, per_group = 12, 40
    group_label = np.repeat([0, 1], n_groups // 2)
    group_level = rng.normal(group_label * 1.0, 1.0)
    y = np.repeat(group_label, per_group)
    s = np.repeat(group_level, per_group) + rng.normal(0, 0.1, n_groups * per_group)
    groups = np.repeat([f"study{g}" for g in range(n_groups)], per_group)
    slice_ci = bootstrap_ci(_auc, y, s, n_boot=300, seed=0)
    cluster_ci = bootstrap_ci(_auc, y, s, groups=groups, n_boot=300, seed=0)
    assert slice_ci is not None and cluster_ci is not None
    assert cluster_ci[1] - cluster_ci[0] > 2 * (slice_ci[1] - slice_ci[0])


def test_bootstrap_resamples_whole_groups() -> None:
    seen: list[np.ndarray] = []

    def record(y: np.ndarray, p: np.ndarray) -> float:
        seen.append(y.copy())
        return float(len(y))

    y = np.array([0, 0, 0, 1, 1, 2])  # group sizes 3, 2, 1
    groups = np.array(["a", "a", "a", "b", "b", "c"])
    bootstrap_ci(record, y, y, groups=groups, n_boot=50, seed=0)
    for sample in seen:
        counts = np.bincount(sample, minlength=3)
        assert counts[0] % 3 == 0 and counts[1] % 2 == 0


def test_bootstrap_none_when_too_few_valid_resamples() -> None:
    y = np.zeros(20, dtype=int)
    y[0] = 1  # one positive in 20: about 36 % of resamples miss it
    s = np.linspace(0, 1, 20)
    assert bootstrap_ci(_auc, y, s, n_boot=200, seed=0, min_valid=0.9) is None
    assert bootstrap_ci(_auc, y, s, n_boot=200, seed=0, min_valid=0.5) is not None
    assert bootstrap_ci(lambda a, b: None, y, s, n_boot=20) is None


# --------------------------------------------------------------------------- operating point


def test_sensitivity_specificity_by_hand() -> None:
    y = [0, 0, 1, 1, 1]
    s = [0.1, 0.6, 0.4, 0.7, 0.9]
    # called positive (s >= 0.5): F T F T T -> sens 2/3, spec 1/2
    sens, spec = sensitivity_specificity(y, s, 0.5)
    assert sens == pytest.approx(2 / 3) and spec == 0.5
    # the threshold itself counts as positive
    assert sensitivity_specificity(y, s, 0.4) == (1.0, 0.5)
    assert sensitivity_specificity([0, 0], [0.1, 0.9], 0.5) == (None, 0.5)
    assert sensitivity_specificity([1, 1], [0.1, 0.9], 0.5) == (0.5, None)


def test_youden_threshold_separates_a_separable_example() -> None:
    y = [0, 0, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.7, 0.9]
    t = choose_threshold(y, s)
    assert t is not None and 0.3 < t <= 0.7
    assert t == pytest.approx(0.5)  # halfway between the last negative and the first positive
    assert sensitivity_specificity(y, s, t) == (1.0, 1.0)


def test_threshold_rules() -> None:
    y = [0, 0, 1, 1]
    s = [0.1, 0.4, 0.35, 0.8]
    # J = 0.5 at the cut-offs 0.8 and 0.35: the tie goes to the lower one (more sensitive)
    t = choose_threshold(y, s, "youden")
    assert t == pytest.approx((0.35 + 0.1) / 2)
    assert sensitivity_specificity(y, s, t) == (1.0, 0.5)
    t90 = choose_threshold(y, s, "sensitivity>=0.9")
    assert t90 is not None and sensitivity_specificity(y, s, t90) == (1.0, 0.5)
    t_spec = choose_threshold(y, s, "specificity >= 1")
    assert t_spec is not None and sensitivity_specificity(y, s, t_spec) == (0.5, 1.0)
    assert choose_threshold([0, 0], [0.1, 0.2]) is None
    with pytest.raises(ValueError, match="rule"):
        choose_threshold(y, s, "accuracy")


# --------------------------------------------------------------------------- calibration


def test_reliability_table_bins_and_counts() -> None:
    y = [0, 0, 1, 1, 1]
    p = [0.05, 0.12, 0.18, 0.95, 1.0]
    rows = reliability_table(y, p, n_bins=10)
    assert len(rows) == 10 and all(isinstance(r, ReliabilityRow) for r in rows)
    assert sum(r.count for r in rows) == 5
    assert rows[0] == ReliabilityRow(0.0, 0.1, 1, 0.05, 0.0)
    assert rows[1].count == 2 and rows[1].mean_predicted == pytest.approx(0.15)
    assert rows[1].observed_rate == 0.5
    assert rows[5].count == 0 and rows[5].mean_predicted is None
    assert rows[9].count == 2  # 1.0 falls in the last bin
    # by hand: (1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5
    assert expected_calibration_error(y, p, 10) == pytest.approx(0.16)


def test_calibrated_data_has_small_ece() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0, 1, 20_000)
    y = (rng.uniform(0, 1, p.shape) < p).astype(int)
    rows = reliability_table(y, p, 10)
    assert sum(r.count for r in rows) == 20_000
    assert expected_calibration_error(y, p) < 0.02
    overconfident = np.clip((p - 0.5) * 2 + 0.5, 0, 1)
    assert expected_calibration_error(y, overconfident) > 0.1


# --------------------------------------------------------------------------- baseline, studies


def test_constant_prior_log_loss_is_the_entropy() -> None:
    y = np.zeros((10, 6), dtype=int)
    y[:4, 0] = 1  # any 0.4
    y[:1, 2] = 1  # intraparenchymal 0.1
    y[:5, 5] = 1  # subdural 0.5; the others never positive
    prior = constant_prior(y)
    assert prior == pytest.approx([0.4, EPS, 0.1, EPS, EPS, 0.5])

    def entropy(q: float) -> float:
        return -(q * math.log(q) + (1 - q) * math.log(1 - q))

    expected = [entropy(0.4), 0.0, entropy(0.1), 0.0, 0.0, math.log(2)]
    losses = per_label_log_loss(y, np.tile(prior, (10, 1)))
    assert losses == pytest.approx(expected, abs=1e-6)
    assert weighted_log_loss(y, np.tile(prior, (10, 1))) == pytest.approx(
        (2 * entropy(0.4) + entropy(0.1) + math.log(2)) / 7, abs=1e-6
    )
    assert len(LABELS) == prior.shape[0]


def test_study_level_aggregations() -> None:
    y = np.array([0, 1, 0, 0, 0])
    p = np.array([0.2, 0.6, 0.5, 0.1, 0.3])
    ids = np.array(["b", "b", "b", "a", "a"])
    ys, ps, order = study_level(y, p, ids)
    assert list(order) == ["b", "a"]  # first appearance
    assert list(ys) == [1, 0]
    assert ps == pytest.approx([0.6, 0.3])
    _, ps, _ = study_level(y, p, ids, how="noisy_or")
    assert ps == pytest.approx([1 - 0.8 * 0.4 * 0.5, 1 - 0.9 * 0.7])
    _, ps, _ = study_level(y, p, ids, how="top2mean")
    assert ps == pytest.approx([0.55, 0.2])
    _, ps, _ = study_level([1], [0.7], ["x"], how="top2mean")
    assert ps == pytest.approx([0.7])
    ys2, ps2, _ = study_level(np.stack([y, 1 - y], 1), np.stack([p, 1 - p], 1), ids)
    assert ys2.tolist() == [[1, 1], [0, 1]]
    assert ps2 == pytest.approx(np.array([[0.6, 0.8], [0.3, 0.9]]))
    with pytest.raises(ValueError, match="aggregation"):
        study_level(y, p, ids, how="mean")
