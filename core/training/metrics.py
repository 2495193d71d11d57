"""Evaluation metrics for the six-label hemorrhage model, in plain numpy.

Written out rather than taken from a library so every figure the tool reports can be checked by
hand (the tests do) and so ``core`` needs nothing beyond numpy. Conventions used throughout:

- ``y_true`` holds 0/1 labels, ``p``/``scores`` probabilities (or any score for AUC); arrays of
  shape ``(n, 6)`` follow ``core.labels.LABELS`` order.
- A figure that cannot be measured on the data (an AUC with one class present, a sensitivity
  without positives) is ``None``, never a made-up number; callers print "not measurable".
- A slice is called positive when ``score >= threshold``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.labels import LOSS_WEIGHTS

#: Probabilities are clipped to [EPS, 1 - EPS] before taking logs, so one confident mistake
#: gives a large but finite loss.
EPS = 1e-7

STUDY_AGGREGATIONS: tuple[str, ...] = ("max", "noisy_or", "top2mean")

MetricFn = Callable[[NDArray[Any], NDArray[Any]], "float | None"]


# --------------------------------------------------------------------------- input checks


def _binary(y: ArrayLike, name: str = "y_true") -> NDArray[np.int8]:
    arr = np.asarray(y)
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0 and 1")
    return arr.astype(np.int8)


def _scores(s: ArrayLike, name: str = "scores") -> NDArray[np.float64]:
    arr = np.asarray(s, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _probabilities(p: ArrayLike, name: str = "p") -> NDArray[np.float64]:
    arr = _scores(p, name)
    if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    return arr


def _same_shape(a: NDArray[Any], b: NDArray[Any]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: labels {a.shape}, predictions {b.shape}")


def _one_label(
    y_true: ArrayLike, scores: ArrayLike, caller: str
) -> tuple[NDArray[np.int8], NDArray[np.float64], int, int]:
    """Checked 1-D labels and scores of one label, with the positive and negative counts."""
    y = _binary(y_true)
    s = _scores(scores)
    _same_shape(y, s)
    if y.ndim != 1:
        raise ValueError(f"{caller} takes one label: 1-D y_true and scores")
    n_pos = int(y.sum())
    return y, s, n_pos, y.shape[0] - n_pos


# --------------------------------------------------------------------------- log loss


def per_label_log_loss(y_true: ArrayLike, p: ArrayLike, eps: float = EPS) -> NDArray[np.float64]:
    """Mean binary cross-entropy of each column over the samples, shape ``(k,)``.

    ``L_j = -mean_i[y_ij log p_ij + (1 - y_ij) log(1 - p_ij)]`` with ``p`` clipped to
    ``[eps, 1 - eps]``. These are the per-label terms of the challenge metric, worth reporting
    on their own because the weighted sum hides which label is poorly predicted.
    """
    y = _binary(y_true)
    q = _probabilities(p)
    _same_shape(y, q)
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError("log loss needs a non-empty (n, labels) array")
    q = np.clip(q, eps, 1.0 - eps)
    return -np.mean(y * np.log(q) + (1 - y) * np.log1p(-q), axis=0)


def weighted_log_loss(
    y_true: ArrayLike,
    p: ArrayLike,
    weights: Sequence[float] | NDArray[Any] = LOSS_WEIGHTS,
    eps: float = EPS,
) -> float:
    """The RSNA 2019 challenge metric: weighted mean of the per-label log losses.

    ``sum_j w_j L_j / sum_j w_j`` with ``L_j`` from :func:`per_label_log_loss` and the weights
    of ``LOSS_WEIGHTS`` ('any' 2, each subtype 1). Because every sample carries all six labels
    this equals the weighted mean over all (sample, label) pairs, which is how the challenge
    scored it. Lower is better; it rewards calibrated probabilities, not only ranking.
    """
    losses = per_label_log_loss(y_true, p, eps)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != losses.shape or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need {losses.shape[0]} non-negative weights, got {w.tolist()}")
    return float(np.dot(w, losses) / w.sum())


# --------------------------------------------------------------------------- ROC AUC


def _average_ranks(s: NDArray[np.float64]) -> NDArray[np.float64]:
    """1-based ranks with tied values sharing the mean of their ranks."""
    order = np.argsort(s, kind="mergesort")
    ordered = s[order]
    new_value = np.empty(ordered.shape[0], dtype=bool)
    new_value[:1] = True
    new_value[1:] = ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(new_value)
    ends = np.append(starts[1:], ordered.shape[0])
    mean_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(ordered.shape[0], dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(new_value) - 1]
    return ranks


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float | None:
    """Area under the ROC curve, or ``None`` when only one class is present.

    Computed as the Mann-Whitney statistic: the probability that a random positive scores
    higher than a random negative, ties counting one half (average ranks). With no positive or
    no negative case there is nothing to rank, so the AUC is "not measurable" rather than 0.5.
    """
    y, s, n_pos, n_neg = _one_label(y_true, scores, "roc_auc")
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    metric_fn: MetricFn,
    y: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_valid: float = 0.5,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval ``(low, high)`` of ``metric_fn(y, p)``.

    Rows of ``y`` and ``p`` (first axis) are resampled with replacement. With ``groups`` (e.g.
    the StudyInstanceUID of each slice) whole groups are resampled instead — a cluster
    bootstrap. Slices of one study share patient, scanner and bleed, so they are not independent
    and resampling single slices gives intervals that are too narrow; the cluster interval is
    the honest one. Resamples where the metric is ``None`` (e.g. no positive drawn) are skipped;
    if fewer than ``min_valid`` of them are usable the interval is ``None`` (not measurable).
    The same ``seed`` gives the same interval.
    """
    y_arr = np.asarray(y)
    p_arr = np.asarray(p)
    n = y_arr.shape[0]
    if p_arr.shape[0] != n or n == 0:
        raise ValueError("y and p need the same, non-zero number of rows")
    if n_boot < 1 or not 0.0 < alpha < 1.0:
        raise ValueError("need n_boot >= 1 and 0 < alpha < 1")
    rng = np.random.default_rng(seed)
    if groups is None:
        clusters: list[NDArray[np.intp]] | None = None
    else:
        g = np.asarray(groups)
        if g.shape[0] != n:
            raise ValueError("groups needs one entry per row")
        _, codes = np.unique(g, return_inverse=True)
        order = np.argsort(codes, kind="mergesort")
        clusters = np.split(order, np.flatnonzero(np.diff(codes[order])) + 1)
    values: list[float] = []
    for _ in range(n_boot):
        idx: np.ndarray
        if clusters is None:
            idx = np.asarray(rng.integers(0, n, size=n))
        else:
            picked = rng.integers(0, len(clusters), len(clusters))
            idx = np.concatenate([clusters[k] for k in picked])
        value = metric_fn(y_arr[idx], p_arr[idx])
        if value is not None:
            values.append(float(value))
    if len(values) < min_valid * n_boot:
        return None
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


# --------------------------------------------------------------------------- operating point


def sensitivity_specificity(
    y_true: ArrayLike, scores: ArrayLike, threshold: float
) -> tuple[float | None, float | None]:
    """``(sensitivity, specificity)`` when calling ``score >= threshold`` positive.

    Sensitivity is ``None`` without positive cases and specificity ``None`` without negatives:
    a rate over zero cases is undefined, not 0 or 1.
    """
    y = _binary(y_true)
    s = _scores(scores)
    _same_shape(y, s)
    called = s >= threshold
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    sens = float((called & (y == 1)).sum() / n_pos) if n_pos else None
    spec = float((~called & (y == 0)).sum() / n_neg) if n_neg else None
    return sens, spec


_RULE = re.compile(r"^(sensitivity|specificity)\s*>=\s*(0(?:\.\d+)?|1(?:\.0*)?)$")


def choose_threshold(y_true: ArrayLike, scores: ArrayLike, rule: str = "youden") -> float | None:
    """An operating threshold chosen on validation data, or ``None`` with one class only.

    Rules:
    - ``"youden"`` (default): maximise Youden's J = sensitivity + specificity - 1, the point of
      the ROC curve farthest above chance; it weighs a missed bleed and a false alarm equally.
      Ties go to the lower threshold (higher sensitivity), as missing a bleed costs more.
    - ``"sensitivity>=X"``: the highest threshold whose sensitivity is at least X (the best
      specificity that keeps X of the bleeds) — the usual choice for a triage tool.
    - ``"specificity>=X"``: the lowest threshold whose specificity is at least X.

    The threshold returned lies halfway between the cut-off score and the next lower distinct
    score (the cut-off itself below the lowest score), so on these data it classifies exactly
    as the chosen cut-off and on new data it does not sit on an observed value. A threshold
    chosen on the data it is then evaluated on is optimistic; choose it on validation data.
    """
    y, s, n_pos, n_neg = _one_label(y_true, scores, "choose_threshold")
    if n_pos == 0 or n_neg == 0:
        return None
    cuts = np.unique(s)[::-1]  # distinct scores, high to low; cut k calls s >= cuts[k]
    order = np.argsort(-s, kind="mergesort")
    tp_sorted = np.cumsum(y[order] == 1)
    fp_sorted = np.cumsum(y[order] == 0)
    # last index of each distinct score in the descending order
    last = np.searchsorted(-s[order], -cuts, side="right") - 1
    sens = tp_sorted[last] / n_pos
    spec = 1.0 - fp_sorted[last] / n_neg

    rule_text = rule.replace(" ", "").lower()
    if rule_text == "youden":
        j = sens + spec - 1.0
        k = int(np.flatnonzero(j >= j.max() - 1e-12)[-1])  # lowest threshold among the best
    else:
        match = _RULE.match(rule_text)
        if match is None:
            raise ValueError(
                f"unknown threshold rule {rule!r}: use 'youden', 'sensitivity>=X' or "
                "'specificity>=X' with X in [0, 1]"
            )
        target = float(match.group(2))
        if match.group(1) == "sensitivity":
            k = int(np.flatnonzero(sens >= target - 1e-12)[0])  # sens rises as k grows
        else:
            ok = np.flatnonzero(spec >= target - 1e-12)
            if ok.size == 0:  # negatives share the top score: only "call nothing" is specific
                return float(np.nextafter(cuts[0], np.inf))
            k = int(ok[-1])
    if k + 1 < cuts.shape[0]:
        return float((cuts[k] + cuts[k + 1]) / 2.0)
    return float(cuts[k])


# --------------------------------------------------------------------------- calibration


class ReliabilityRow(NamedTuple):
    """One bin of a reliability table; the means are ``None`` for an empty bin."""

    bin_low: float
    bin_high: float
    count: int  # type: ignore[assignment]  # (shadows tuple.count, as the table names it)
    mean_predicted: float | None
    observed_rate: float | None


def reliability_table(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> list[ReliabilityRow]:
    """Predicted probability against observed frequency in ``n_bins`` equal-width bins.

    Shows whether "P = 0.3" means a bleed in about 30 % of such slices; a model can rank well
    (high AUC) and still be badly calibrated. Bins are ``[low, high)``, the last one ``[low,
    1]``; every bin is listed, empty ones with count 0.
    """
    y = _binary(y_true)
    q = _probabilities(p)
    _same_shape(y, q)
    if y.ndim != 1 or n_bins < 1:
        raise ValueError("reliability_table takes one label (1-D) and n_bins >= 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.floor(q * n_bins).astype(np.int64), 0, n_bins - 1)
    rows: list[ReliabilityRow] = []
    for b in range(n_bins):
        mask = which == b
        count = int(mask.sum())
        rows.append(
            ReliabilityRow(
                float(edges[b]),
                float(edges[b + 1]),
                count,
                float(q[mask].mean()) if count else None,
                float(y[mask].mean()) if count else None,
            )
        )
    return rows


def expected_calibration_error(y_true: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """ECE: the count-weighted mean gap ``|mean predicted - observed rate|`` over the bins of
    :func:`reliability_table`. One number for calibration; 0 is perfect. It depends on the
    binning and is noisy with few positives, so read it beside the table."""
    rows = reliability_table(y_true, p, n_bins)
    n = sum(r.count for r in rows)
    if n == 0:
        raise ValueError("expected_calibration_error needs at least one sample")
    return float(
        sum(
            r.count * abs(r.mean_predicted - r.observed_rate)
            for r in rows
            if r.mean_predicted is not None and r.observed_rate is not None
        )
        / n
    )


# --------------------------------------------------------------------------- baseline


def constant_prior(y_train: ArrayLike, eps: float = EPS) -> NDArray[np.float64]:
    """Each label's prevalence in the training labels, clipped to ``[eps, 1 - eps]``.

    Predicting this for every slice is the reference a model must beat: its log loss is the
    label entropy, its AUC 0.5. Clipping keeps the log loss finite for a label with no
    positive (epidural here).
    """
    y = _binary(y_train, "y_train")
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError("constant_prior needs a non-empty (n, labels) array")
    return np.clip(y.mean(axis=0, dtype=np.float64), eps, 1.0 - eps)


# --------------------------------------------------------------------------- study level


def study_level(
    y_slices: ArrayLike, p_slices: ArrayLike, study_ids: ArrayLike, how: str = "max"
) -> tuple[NDArray[np.int8], NDArray[np.float64], NDArray[Any]]:
    """Slice labels and scores pooled per study: ``(y_study, p_study, ids)``.

    A study is positive for a label if any of its slices is. Its score is, by ``how``:
    - ``"max"`` (default): the highest slice score, as the engine and worklist do; one clearly
      bleeding slice makes the study suspicious.
    - ``"noisy_or"``: ``1 - prod(1 - p)``, the chance that at least one slice bleeds if slices
      were independent; they are not, so it grows with the slice count and is overconfident.
    - ``"top2mean"``: the mean of the two highest slice scores (the one score for a one-slice
      study); damps a single spurious slice, since real bleeds usually span slices.

    Works for one label (1-D) or several (``(n, k)``). Studies are listed in the order they
    first appear.
    """
    y = _binary(y_slices, "y_slices")
    q = _probabilities(p_slices, "p_slices")
    ids = np.asarray(study_ids)
    _same_shape(y, q)
    if ids.ndim != 1 or ids.shape[0] != y.shape[0] or y.shape[0] == 0:
        raise ValueError("study_ids needs one entry per slice (and at least one slice)")
    if how not in STUDY_AGGREGATIONS:
        raise ValueError(f"unknown study aggregation {how!r}: use one of {STUDY_AGGREGATIONS}")
    uniq, first, codes = np.unique(ids, return_index=True, return_inverse=True)
    appearance = np.argsort(first, kind="mergesort")
    ys: list[NDArray[Any]] = []
    ps: list[NDArray[Any]] = []
    for code in appearance:
        mask = codes == code
        ys.append(y[mask].max(axis=0))
        block = q[mask]
        if how == "max":
            ps.append(block.max(axis=0))
        elif how == "noisy_or":
            ps.append(1.0 - np.prod(1.0 - block, axis=0))
        else:
            top = np.sort(block, axis=0)[-2:]
            ps.append(top.mean(axis=0))
    return (
        np.asarray(ys, dtype=np.int8),
        np.asarray(ps, dtype=np.float64),
        uniq[appearance],
    )


__all__ = [
    "EPS",
    "STUDY_AGGREGATIONS",
    "ReliabilityRow",
    "bootstrap_ci",
    "choose_threshold",
    "constant_prior",
    "expected_calibration_error",
    "per_label_log_loss",
    "reliability_table",
    "roc_auc",
    "sensitivity_specificity",
    "study_level",
    "weighted_log_loss",
]
