"""``python -m core.evaluate PREDICTIONS.json --labels LABELS.csv [options]``: how good is a model?

Compares per-slice probabilities (the JSON of ``python -m core.predict --json``) with reference
labels (the challenge's ``ID_<sop>_<subtype>,Label`` CSV, or the one-row-per-slice CSV) and
reports, always beside the same figures for a constant-prior baseline so every number has a
reference:

- the challenge's weighted log loss and each label's log loss;
- each label's slice-level ROC AUC, and the study-level AUC for 'any' (study score = highest
  slice score), with 95 % percentile-bootstrap intervals that resample whole studies, because
  slices of one study are not independent;
- sensitivity and specificity for 'any' at an operating threshold (given, or chosen by
  Youden's J on the evaluated data, which is optimistic and labelled so);
- a reliability table and the expected calibration error for 'any'.

A label without positive cases (epidural in the development data) has no AUC: it is reported as
"not measurable", never as a number. :func:`evaluate` computes all of it from arrays and is what
the training code calls on out-of-fold predictions.

Exit codes: 0 done; 1 the ``--json`` file could not be written; 2 bad input (missing or
unreadable file, IDs of predictions and labels that do not match, a bad threshold or prior).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from core.errors import InputError
from core.labels import LABELS, LOSS_WEIGHTS, SHORT_NAMES
from core.notice import NOTICE
from core.training.label_files import LabelSet, read_labels
from core.training.metrics import (
    EPS,
    STUDY_AGGREGATIONS,
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

EXIT_OK = 0
EXIT_OUTPUT = 1
EXIT_INPUT = 2

NOT_MEASURABLE = "not measurable"
NOT_COMPUTED = "not computed"
CHOSEN_ON_DATA = "chosen by Youden's J on the evaluated data (optimistic)"
PRIOR_FROM_EVALUATED = "prevalence in the evaluated labels (the best constant for these data)"

_ANY = LABELS.index("any")


# --------------------------------------------------------------------------- evaluation


def _number(value: float | None, missing: str = NOT_MEASURABLE) -> float | str:
    return missing if value is None else float(value)


def _interval(
    fn: Callable[[NDArray[Any], NDArray[Any]], float | None],
    y: NDArray[Any],
    p: NDArray[Any],
    groups: NDArray[Any] | None,
    point: float | None,
    n_boot: int,
    seed: int,
    alpha: float,
) -> list[float] | str:
    """A CI as ``[low, high]``, or why there is none."""
    if point is None:
        return NOT_MEASURABLE
    if n_boot <= 0:
        return NOT_COMPUTED
    ci = bootstrap_ci(fn, y, p, groups=groups, n_boot=n_boot, alpha=alpha, seed=seed)
    return NOT_MEASURABLE if ci is None else [ci[0], ci[1]]


def _auc_fn(y: NDArray[Any], s: NDArray[Any]) -> float | None:
    return roc_auc(y, s)


def _wll_fn(y: NDArray[Any], p: NDArray[Any]) -> float | None:
    return weighted_log_loss(y, p)


def _rate_fn(threshold: float, which: int) -> Callable[[NDArray[Any], NDArray[Any]], float | None]:
    def fn(y: NDArray[Any], s: NDArray[Any]) -> float | None:
        return sensitivity_specificity(y, s, threshold)[which]

    return fn


def _operating_point(
    y: NDArray[Any],
    s: NDArray[Any],
    groups: NDArray[Any] | None,
    threshold: float,
    n_boot: int,
    seed: int,
    alpha: float,
) -> dict[str, Any]:
    sens, spec = sensitivity_specificity(y, s, threshold)
    called = s >= threshold
    return {
        "sensitivity": _number(sens),
        "sensitivity_ci95": _interval(
            _rate_fn(threshold, 0), y, s, groups, sens, n_boot, seed, alpha
        ),
        "specificity": _number(spec),
        "specificity_ci95": _interval(
            _rate_fn(threshold, 1), y, s, groups, spec, n_boot, seed, alpha
        ),
        "tp": int((called & (y == 1)).sum()),
        "fn": int((~called & (y == 1)).sum()),
        "tn": int((~called & (y == 0)).sum()),
        "fp": int((called & (y == 0)).sum()),
    }


def _figures(
    y: NDArray[np.int8],
    p: NDArray[np.float64],
    groups: NDArray[Any],
    threshold: float | None,
    threshold_source: str,
    threshold_rule: str,
    n_boot: int,
    seed: int,
    alpha: float,
    n_bins: int,
    study_how: str,
) -> dict[str, Any]:
    """Every reported figure for one set of predictions (the model's or the baseline's)."""
    wll = weighted_log_loss(y, p)
    losses = per_label_log_loss(y, p)
    y_study, p_study, _ = study_level(y, p, groups, how=study_how)

    per_label: dict[str, Any] = {}
    for j, label in enumerate(LABELS):
        auc = roc_auc(y[:, j], p[:, j])
        per_label[label] = {
            "positive_slices": int(y[:, j].sum()),
            "positive_studies": int(y_study[:, j].sum()),
            "log_loss": float(losses[j]),
            "auc": _number(auc),
            "auc_ci95": _interval(_auc_fn, y[:, j], p[:, j], groups, auc, n_boot, seed, alpha),
        }

    ys, ps = y_study[:, _ANY], p_study[:, _ANY]
    study_auc = roc_auc(ys, ps)
    if threshold is None:
        threshold = choose_threshold(y[:, _ANY], p[:, _ANY], threshold_rule)
    if threshold is None:
        operating: dict[str, Any] = {
            "threshold": NOT_MEASURABLE,
            "threshold_source": NOT_MEASURABLE,
        }
    else:
        operating = {
            "threshold": float(threshold),
            "threshold_source": threshold_source,
            "slice": _operating_point(
                y[:, _ANY], p[:, _ANY], groups, threshold, n_boot, seed, alpha
            ),
            "study": _operating_point(ys, ps, None, threshold, n_boot, seed, alpha),
        }
    rows = reliability_table(y[:, _ANY], p[:, _ANY], n_bins)
    return {
        "weighted_log_loss": float(wll),
        "weighted_log_loss_ci95": _interval(_wll_fn, y, p, groups, wll, n_boot, seed, alpha),
        "labels": per_label,
        "study_any": {
            "aggregation": study_how,
            "n_studies": int(ys.shape[0]),
            "positive_studies": int(ys.sum()),
            "auc": _number(study_auc),
            "auc_ci95": _interval(_auc_fn, ys, ps, None, study_auc, n_boot, seed, alpha),
        },
        "operating_point_any": operating,
        "reliability_any": {
            "bins": [row._asdict() for row in rows],
            "ece": expected_calibration_error(y[:, _ANY], p[:, _ANY], n_bins),
        },
    }


def evaluate(
    y: ArrayLike,
    p: ArrayLike,
    study_ids: ArrayLike,
    prior: ArrayLike | None = None,
    threshold: float | None = None,
    n_boot: int = 1000,
    *,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    threshold_rule: str = "youden",
    threshold_source: str | None = None,
    prior_source: str | None = None,
    study_how: str = "max",
) -> dict[str, Any]:
    """All figures for slice labels ``y`` (n, 6) and probabilities ``p`` (n, 6), JSON-ready.

    ``study_ids`` (n,) groups slices into studies: the bootstrap resamples whole studies and the
    study-level figures pool slices (``study_how``, default the maximum). ``prior`` (6,) is the
    constant baseline; ``None`` uses the prevalence in ``y`` (labelled as such; it is the best
    constant for these labels, so the comparison does not flatter the model). ``threshold`` is
    the operating point for 'any'; ``None`` chooses one by ``threshold_rule`` on these data,
    which is optimistic and labelled so. ``n_boot=0`` skips the intervals. Figures that cannot
    be measured (an AUC without positives) are the string "not measurable".

    Returns ``{"notice", "n_slices", "n_studies", "labels", "loss_weights", "bootstrap",
    "model", "baseline", "warnings"}``; "model" and "baseline" hold the same keys (see
    ``_figures``), the baseline also its "prior" and "prior_source".
    """
    y_arr = np.asarray(y)
    p_arr = np.asarray(p, dtype=np.float64)
    groups = np.asarray(study_ids)
    if y_arr.ndim != 2 or y_arr.shape[1] != len(LABELS) or y_arr.shape[0] == 0:
        raise ValueError(f"y must be (n, {len(LABELS)}) with n > 0, got {y_arr.shape}")
    if p_arr.shape != y_arr.shape or groups.shape != (y_arr.shape[0],):
        raise ValueError(
            f"shapes differ: y {y_arr.shape}, p {p_arr.shape}, study_ids {groups.shape}"
        )
    if not np.isin(y_arr, (0, 1)).all():
        raise ValueError("y must hold only 0 and 1")
    y_arr = y_arr.astype(np.int8)
    if study_how not in STUDY_AGGREGATIONS:
        raise ValueError(f"unknown study aggregation {study_how!r}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold {threshold} is not a probability in [0, 1]")

    if prior is None:
        prior_arr = constant_prior(y_arr)
        prior_source = PRIOR_FROM_EVALUATED
    else:
        prior_arr = np.asarray(prior, dtype=np.float64)
        if prior_arr.shape != (len(LABELS),) or not np.isfinite(prior_arr).all():
            raise ValueError(f"prior must hold {len(LABELS)} probabilities")
        if prior_arr.min() < 0.0 or prior_arr.max() > 1.0:
            raise ValueError("prior values must be probabilities in [0, 1]")
        prior_arr = np.clip(prior_arr, EPS, 1.0 - EPS)  # finite log loss for a 0 or 1 prior
        prior_source = prior_source or "given"
    if threshold is None:
        source = (
            CHOSEN_ON_DATA
            if threshold_rule == "youden"
            else (f"chosen by rule '{threshold_rule}' on the evaluated data (optimistic)")
        )
    else:
        source = threshold_source or "given"

    def figures(predicted: NDArray[np.float64]) -> dict[str, Any]:
        return _figures(
            y_arr,
            predicted,
            groups,
            threshold,
            source,
            threshold_rule,
            n_boot,
            seed,
            alpha,
            n_bins,
            study_how,
        )

    model = figures(p_arr)
    # The baseline gets the same rule: the given threshold, or its own on-data choice.
    baseline = figures(np.broadcast_to(prior_arr, y_arr.shape))
    baseline = {
        "prior": dict(zip(LABELS, map(float, prior_arr), strict=True)),
        "prior_source": prior_source,
        **baseline,
    }
    warnings: list[str] = []
    for j, label in enumerate(LABELS):
        if y_arr[:, j].sum() == 0:
            warnings.append(f"{label}: no positive slice, so its AUC is not measurable")
    n_studies = int(np.unique(groups).shape[0])
    if n_boot > 0 and n_studies < 30:
        warnings.append(
            f"only {n_studies} studies: the intervals resample so few studies that they are "
            "themselves rough"
        )
    return {
        "notice": NOTICE,
        "n_slices": int(y_arr.shape[0]),
        "n_studies": n_studies,
        "labels": list(LABELS),
        "loss_weights": dict(zip(LABELS, LOSS_WEIGHTS, strict=True)),
        "bootstrap": {
            "n_boot": int(n_boot),
            "seed": int(seed),
            "confidence": 1.0 - alpha,
            "method": "percentile bootstrap; slice-level figures resample whole studies "
            "(cluster bootstrap), study-level figures resample studies",
        },
        "model": model,
        "baseline": baseline,
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- reading files


@dataclass(frozen=True)
class SlicePrediction:
    sop: str
    study: str
    probabilities: tuple[float, ...]  # LABELS order


def read_predictions(path: str | Path) -> list[SlicePrediction]:
    """Per-slice probabilities from ``core.predict --json``: a list of studies, or a document
    with that list under "studies". Each slice needs its SOPInstanceUID and all six labels."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not a predictions JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    studies = doc.get("studies") if isinstance(doc, dict) else doc
    if not isinstance(studies, list):
        raise InputError(
            f"{path}: expected the JSON of 'python -m core.predict --json' (a list of studies "
            "or an object with 'studies')"
        )
    out: list[SlicePrediction] = []
    seen: set[str] = set()
    for i, study in enumerate(studies):
        if not isinstance(study, dict) or not isinstance(study.get("slices"), list):
            raise InputError(f"{path}: study {i + 1} has no 'slices' list")
        study_uid = study.get("StudyInstanceUID")
        if not isinstance(study_uid, str) or not study_uid:
            raise InputError(f"{path}: study {i + 1} has no StudyInstanceUID")
        for k, item in enumerate(study["slices"]):
            where = f"{path.name}: study {study_uid}, slice {k + 1}"
            sop = item.get("SOPInstanceUID") if isinstance(item, dict) else None
            if not isinstance(sop, str) or not sop:
                raise InputError(f"{where}: no SOPInstanceUID")
            probs = item.get("probabilities")
            if not isinstance(probs, dict):
                raise InputError(f"{where} ({sop}): no 'probabilities' object")
            values: list[float] = []
            for label in LABELS:
                v = probs.get(label)
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise InputError(f"{where} ({sop}): no probability for '{label}'")
                if not 0.0 <= float(v) <= 1.0:
                    raise InputError(f"{where} ({sop}): '{label}' = {v} is not in [0, 1]")
                values.append(float(v))
            if sop in seen:
                raise InputError(f"{path}: slice {sop} appears more than once")
            seen.add(sop)
            out.append(SlicePrediction(sop, study_uid, tuple(values)))
    if not out:
        raise InputError(f"{path}: no slice predictions in the file")
    return out


def read_threshold(arg: str) -> tuple[float, str]:
    """``--threshold``: a number, or a file holding a number, ``{"threshold": x}`` or the
    ``--json`` output of an earlier evaluation (its operating threshold for 'any', e.g. one
    chosen on validation data)."""
    try:
        return _check_threshold(float(arg)), f"given ({arg})"
    except ValueError:
        pass
    path = Path(arg)
    if not path.is_file():
        raise InputError(f"--threshold {arg!r} is neither a number nor a file")
    try:
        doc: object = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read ({exc})") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: holds neither a number nor JSON") from None
    if isinstance(doc, dict):
        model = doc.get("model")
        point = model.get("operating_point_any") if isinstance(model, dict) else None
        nested = point.get("threshold") if isinstance(point, dict) else None
        doc = doc.get("threshold", nested)
    if isinstance(doc, bool) or not isinstance(doc, int | float):
        raise InputError(f"{path}: no numeric 'threshold' found")
    return _check_threshold(float(doc)), f"from {path.name}"


def _check_threshold(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise InputError(f"threshold {value} is not a probability in [0, 1]")
    return value


def read_prior(arg: str) -> tuple[NDArray[np.float64], str]:
    """``--prior-from``: a label CSV (either format; its prevalence is the prior) or JSON:
    ``{label: p}``, ``{"prior": {label: p}}`` or a list of six numbers in LABELS order."""
    path = Path(arg)
    if not path.is_file():
        raise InputError(f"--prior-from {arg!r}: no such file")
    if path.suffix.lower() == ".json":
        try:
            doc: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: cannot be read as JSON ({exc})") from None
        if isinstance(doc, dict) and isinstance(doc.get("prior"), dict | list):
            doc = doc["prior"]
        if isinstance(doc, dict):
            doc = [doc.get(label) for label in LABELS]
        ok = isinstance(doc, list) and len(doc) == len(LABELS)
        ok = ok and all(isinstance(v, int | float) and not isinstance(v, bool) for v in doc)
        if not ok or not all(0.0 <= v <= 1.0 for v in doc):
            raise InputError(f"{path}: need a probability for each of {', '.join(LABELS)}")
        return np.asarray(doc, dtype=np.float64), f"from {path.name}"
    label_set = read_labels(path)
    y = np.asarray(list(label_set.labels.values()), dtype=np.int8)
    return constant_prior(y), f"prevalence in {path.name} ({y.shape[0]} slices)"


@dataclass(frozen=True)
class Matched:
    y: NDArray[np.int8]
    p: NDArray[np.float64]
    study_ids: NDArray[Any]
    coverage: dict[str, int]
    warnings: list[str]


def match(predictions: Sequence[SlicePrediction], labels: LabelSet, allow_partial: bool) -> Matched:
    """Pair predictions and labels by SOPInstanceUID. Any slice on one side only is an error
    (with counts and an example) unless ``allow_partial``, which keeps the intersection."""
    predicted = {s.sop for s in predictions}
    unlabelled = [s.sop for s in predictions if s.sop not in labels.labels]
    unpredicted = [sop for sop in labels.labels if sop not in predicted]
    coverage = {
        "predicted_slices": len(predictions),
        "labelled_slices": len(labels.labels),
        "evaluated_slices": len(predictions) - len(unlabelled),
        "predicted_without_label": len(unlabelled),
        "labelled_without_prediction": len(unpredicted),
    }
    if unlabelled or unpredicted:
        parts = []
        if unlabelled:
            parts.append(
                f"{len(unlabelled)} predicted slice(s) have no label (e.g. {unlabelled[0]})"
            )
        if unpredicted:
            parts.append(
                f"{len(unpredicted)} labelled slice(s) have no prediction (e.g. {unpredicted[0]})"
            )
        detail = "; ".join(parts)
        if coverage["evaluated_slices"] == 0:
            raise InputError(f"no slice is both predicted and labelled: {detail}")
        if not allow_partial:
            raise InputError(
                f"predictions and labels do not cover the same slices: {detail}. Check the files"
                f", or pass --allow-partial to evaluate the {coverage['evaluated_slices']} "
                "slices found in both"
            )
    kept = [s for s in predictions if s.sop in labels.labels]
    warnings: list[str] = []
    if unlabelled or unpredicted:
        warnings.append(
            f"partial evaluation: {coverage['evaluated_slices']} slices in both files; "
            f"{len(unlabelled)} predicted without label and {len(unpredicted)} labelled without "
            "prediction were left out"
        )
        cut = {s.study for s in predictions if s.sop not in labels.labels}
        if labels.studies:
            cut |= {labels.studies[sop] for sop in unpredicted}
        cut &= {s.study for s in kept}
        if cut:
            warnings.append(
                f"{len(cut)} studies have slices left out; their study-level label and score "
                "come from the evaluated slices only"
            )
    if labels.studies:
        moved = sum(1 for s in kept if labels.studies.get(s.sop, s.study) != s.study)
        if moved:
            warnings.append(
                f"{moved} slices belong to a different study in the labels than in the "
                "predictions; studies are taken from the predictions"
            )
    return Matched(
        y=np.asarray([labels.labels[s.sop] for s in kept], dtype=np.int8),
        p=np.asarray([s.probabilities for s in kept], dtype=np.float64),
        study_ids=np.asarray([s.study for s in kept]),
        coverage=coverage,
        warnings=warnings,
    )


# --------------------------------------------------------------------------- text report


def _f(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _with_ci(value: object, ci: object, digits: int = 3) -> str:
    if not isinstance(value, float):
        return str(value)
    if isinstance(ci, list):
        return f"{value:.{digits}f} [{ci[0]:.{digits}f}-{ci[1]:.{digits}f}]"
    return f"{value:.{digits}f} (CI {ci})"


def _rate(op: dict[str, Any], key: str) -> str:
    value, ci = op[key], op[f"{key}_ci95"]
    hits, total = (
        (op["tp"], op["tp"] + op["fn"]) if key == "sensitivity" else (op["tn"], op["tn"] + op["fp"])
    )
    return f"{_with_ci(value, ci, 2)} ({hits}/{total})"


def format_report(result: dict[str, Any]) -> str:
    """The evaluation as a plain-text table, model beside baseline."""
    model, base = result["model"], result["baseline"]
    boot = result["bootstrap"]
    w = 34
    lines = [
        f"Evaluation of {result['n_slices']} slices in {result['n_studies']} studies. "
        + result["notice"],
    ]
    if boot["n_boot"] > 0:
        lines.append(
            f"[low-high]: {boot['confidence']:.0%} percentile bootstrap, {boot['n_boot']} "
            f"resamples of whole studies (seed {boot['seed']})."
        )
    lines += [
        f"Baseline: the same constant for every slice, the prior = {base['prior_source']}.",
        "",
        f"{'':<{w}}{'Model':<30}Baseline",
        f"{'Weighted log loss (any x2)':<{w}}"
        f"{_with_ci(model['weighted_log_loss'], model['weighted_log_loss_ci95']):<30}"
        f"{_with_ci(base['weighted_log_loss'], base['weighted_log_loss_ci95'])}",
        "",
        f"{'Slice-level ROC AUC':<24}{'pos sl/st':<12}{'Model':<30}{'Baseline':<30}"
        "Log loss model / baseline",
    ]
    for label, short in zip(LABELS, SHORT_NAMES, strict=True):
        m, b = model["labels"][label], base["labels"][label]
        lines.append(
            f"{label + ' (' + short + ')':<24}"
            f"{str(m['positive_slices']) + '/' + str(m['positive_studies']):<12}"
            f"{_with_ci(m['auc'], m['auc_ci95']):<30}{_with_ci(b['auc'], b['auc_ci95']):<30}"
            f"{m['log_loss']:.3f} / {b['log_loss']:.3f}"
        )
    lines.append("(pos sl/st: positive slices / positive studies)")
    ms, bs = model["study_any"], base["study_any"]
    lines += [
        "",
        f"Study-level ROC AUC for 'any' (study score = {ms['aggregation']} over its slices; "
        f"{ms['positive_studies']} of {ms['n_studies']} studies positive)",
        f"{'':<{w}}{_with_ci(ms['auc'], ms['auc_ci95']):<30}{_with_ci(bs['auc'], bs['auc_ci95'])}",
    ]
    mo, bo = model["operating_point_any"], base["operating_point_any"]
    lines.append("")
    if isinstance(mo["threshold"], float):
        lines.append(
            f"Operating point for 'any': model threshold {mo['threshold']:.4f}, "
            f"{mo['threshold_source']}"
        )
        if isinstance(bo["threshold"], float):
            lines.append(f"  (baseline threshold {bo['threshold']:.4f}, same rule)")
        lines.append("  A study is called positive when any of its slices reaches the threshold.")
        for level in ("slice", "study"):
            for key in ("sensitivity", "specificity"):
                base_text = _rate(bo[level], key) if level in bo else NOT_MEASURABLE
                lines.append(
                    f"  {level + ' ' + key:<{w - 2}}{_rate(mo[level], key):<30}{base_text}"
                )
    else:
        lines.append("Operating point for 'any': not measurable (one class only)")
    mr, br = model["reliability_any"], base["reliability_any"]
    lines += [
        "",
        "Reliability of P(any), slice level (empty bins left out):",
        f"  {'bin':<12}{'slices':>7}{'mean P':>9}{'observed':>10}",
    ]
    for row in mr["bins"]:
        if row["count"]:
            lines.append(
                f"  {row['bin_low']:.2f}-{row['bin_high']:.2f}  {row['count']:>7}"
                f"{row['mean_predicted']:>9.3f}{row['observed_rate']:>10.3f}"
            )
    lines.append(f"  Expected calibration error: model {mr['ece']:.3f}, baseline {br['ece']:.3f}")
    if result.get("coverage"):
        c = result["coverage"]
        lines += [
            "",
            f"Slices: {c['predicted_slices']} predicted, {c['labelled_slices']} labelled, "
            f"{c['evaluated_slices']} evaluated.",
        ]
    if result["warnings"]:
        lines.append("")
        lines += [f"! {text}" for text in result["warnings"]]
    return "\n".join(lines)
