"""``python -m core.crossval RUN [RUN ...] --checkpoint weights/NAME.json``: finish a model.

After ``python -m core.train --folds K --fold i`` has run for every fold (each RUN folder holds
the ``val_predictions.json`` of one fold) and the final CNN was trained on all studies
(``--no-val --save-weights NAME``), this command:

1. pools the folds' out-of-fold predictions (each study scored by a CNN that never saw it) and
   evaluates them with core.training.evaluate, beside the constant-prior baseline;
2. cross-validates the slice-context model (core.model.context) over the same folds: for each
   fold it is fitted on the other folds' out-of-fold CNN outputs and applied to this fold's;
3. chooses the operating thresholds on these out-of-fold predictions (validation data);
4. fits the context model on all out-of-fold outputs and stores it, the cross-validated
   figures and the thresholds in the final checkpoint (its card is rewritten; the CNN's
   weights are unchanged), plus the full figures as ``NAME-crossval.json`` beside it.

Why the numbers come from here and not from the final model: with 16 studies there is no
held-out set to spare; cross-validation scores every study with a model that did not see it.
The final model, trained on all of them, is the one the app uses; its own performance on new
studies is estimated by these figures, not measured.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError
from core.labels import LABELS
from core.model.card import RESERVED_CARD_KEYS
from core.model.checkpoint import load_checkpoint, save_checkpoint
from core.model.context import ContextSpec, StudyExample, apply_context, fit_context
from core.training.evaluate import NOT_MEASURABLE, evaluate
from core.training.metrics import (
    bootstrap_ci,
    choose_threshold,
    roc_auc,
    sensitivity_specificity,
)

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2

#: Share of the head at each end counted as "skull base" (first slices) or "vertex" (last).
END_SHARE = 0.2


@dataclass(frozen=True)
class FoldStudy:
    """One study's out-of-fold CNN output, slices in patient-axis order (inferior first)."""

    uid: str
    fold: int
    probs: np.ndarray  # (T, 6)
    labels: np.ndarray  # (T, 6) 0/1

    @property
    def example(self) -> StudyExample:
        return StudyExample(self.probs, self.labels)


def read_runs(runs: list[Path]) -> tuple[list[FoldStudy], list[dict[str, Any]]]:
    """The studies of every run's val_predictions.json (fold = run's place in the list)."""
    studies: list[FoldStudy] = []
    seen: dict[str, Path] = {}
    infos = []
    for fold, run in enumerate(runs):
        path = run / "val_predictions.json" if run.is_dir() else run
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            entries = doc["studies"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path} is not a training run's validation output ({exc}).") from None
        infos.append(
            {"run": path.parent.name, "split": doc.get("split"), "model": doc.get("model")}
        )
        for entry in entries:
            uid = str(entry["StudyInstanceUID"])
            if uid in seen:
                raise InputError(
                    f"Study {uid} was validated in both {seen[uid]} and {path}: the runs are not "
                    "folds of one split, so their predictions are not out-of-fold."
                )
            seen[uid] = path
            rows = entry["slices"]
            if any("target" not in s for s in rows):
                raise InputError(f"{path} holds predictions without reference labels.")
            studies.append(
                FoldStudy(
                    uid=uid,
                    fold=fold,
                    probs=np.array(
                        [[s["probabilities"][k] for k in LABELS] for s in rows], np.float32
                    ),
                    labels=np.array([[s["target"][k] for k in LABELS] for s in rows], np.int8),
                )
            )
    if len({s.fold for s in studies}) < 2:
        raise InputError("Cross-validation needs the validation output of at least 2 folds.")
    return studies, infos


def context_cross_validation(
    studies: list[FoldStudy], spec: ContextSpec, epochs: int, seed: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Per study: refined slice probabilities and the study score, each from a context model
    fitted on the other folds only."""
    refined: list[np.ndarray] = [np.empty(0)] * len(studies)
    study = np.zeros(len(studies))
    for fold in sorted({s.fold for s in studies}):
        train = [s.example for s in studies if s.fold != fold]
        model = fit_context(train, spec, epochs=epochs, seed=seed)
        for i, s in enumerate(studies):
            if s.fold == fold:
                refined[i], study[i] = apply_context(model, s.probs)
    return refined, study


def study_figures(
    y: np.ndarray, s: np.ndarray, n_boot: int, seed: int, threshold: float | None = None
) -> dict[str, Any]:
    """Study-level AUC (bootstrap over studies) and the operating point for 'any'."""
    auc = roc_auc(y, s)
    out: dict[str, Any] = {
        "n_studies": int(len(y)),
        "positive_studies": int(y.sum()),
        "auc": NOT_MEASURABLE if auc is None else float(auc),
        "auc_ci95": NOT_MEASURABLE,
    }
    if auc is not None and n_boot > 0:
        ci = bootstrap_ci(roc_auc, y, s, n_boot=n_boot, seed=seed)
        out["auc_ci95"] = list(ci) if ci is not None else NOT_MEASURABLE
    if threshold is None:
        threshold = choose_threshold(y, s)
    if threshold is not None:
        sens, spec = sensitivity_specificity(y, s, threshold)
        out.update(
            threshold=float(threshold),
            sensitivity=NOT_MEASURABLE if sens is None else float(sens),
            specificity=NOT_MEASURABLE if spec is None else float(spec),
        )
    return out


def false_positive_positions(studies: list[FoldStudy], share: float = 0.1) -> dict[str, Any]:
    """Where along the head the highest-scored negative slices ('any') lie: the top ``share``
    of negative slices by out-of-fold score, counted by position. Were position irrelevant,
    each end (a fifth of the head) would hold about a fifth of them."""
    scored = []
    for s in studies:
        n = len(s.probs)
        for i in range(n):
            if s.labels[i, 0] == 0:
                scored.append((float(s.probs[i, 0]), i / (n - 1) if n > 1 else 0.5))
    scored.sort(reverse=True)
    top = scored[: max(1, round(share * len(scored)))]
    counts = {"skull base (lowest fifth)": 0, "middle": 0, "vertex (highest fifth)": 0}
    for _, pos in top:
        if pos < END_SHARE:
            counts["skull base (lowest fifth)"] += 1
        elif pos > 1 - END_SHARE:
            counts["vertex (highest fifth)"] += 1
        else:
            counts["middle"] += 1
    return {
        "slices": f"the {len(top)} highest-scored of {len(scored)} negative slices",
        "by_position": counts,
        "expected_at_each_end_if_position_did_not_matter": round(END_SHARE * len(top), 1),
    }


def _r(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, list):
        return [_r(v) for v in value]
    if isinstance(value, dict):
        return {k: _r(v) for k, v in value.items()}
    return value


def headline(cnn: dict[str, Any], refined: dict[str, Any], study_ctx: dict) -> dict[str, Any]:
    """The card's few numbers, each next to its constant-prior reference."""
    m, b = cnn["model"], cnn["baseline"]
    study_max = m["study_any"]  # evaluate()'s study level: the highest slice score
    return _r(
        {
            "slice_auc_any": m["labels"]["any"]["auc"],
            "slice_auc_any_ci95": m["labels"]["any"]["auc_ci95"],
            "slice_auc": {k: m["labels"][k]["auc"] for k in LABELS},
            "weighted_log_loss": m["weighted_log_loss"],
            "weighted_log_loss_ci95": m["weighted_log_loss_ci95"],
            "study_auc_any_max_over_slices": study_max["auc"],
            "study_auc_any_max_over_slices_ci95": study_max["auc_ci95"],
            "with_slice_context": {
                "slice_auc_any": refined["model"]["labels"]["any"]["auc"],
                "slice_auc_any_ci95": refined["model"]["labels"]["any"]["auc_ci95"],
                "weighted_log_loss": refined["model"]["weighted_log_loss"],
                "study_auc_any": study_ctx["auc"],
                "study_auc_any_ci95": study_ctx["auc_ci95"],
                "study_threshold": study_ctx.get("threshold"),
                "study_sensitivity": study_ctx.get("sensitivity"),
                "study_specificity": study_ctx.get("specificity"),
            },
            "constant_prior_baseline": {
                "weighted_log_loss": b["weighted_log_loss"],
                "slice_auc_any": b["labels"]["any"]["auc"],
                "study_auc_any": b["study_any"]["auc"],
                "prior": b["prior"],
            },
        }
    )


#: Below this many studies, or a cross-validated slice AUC(any) below WEAK_AUC, the card calls
#: the model a demonstration: the intervals are too wide to trust any probability it gives.
WEAK_STUDIES, WEAK_AUC = 200, 0.9


def summary_sentence(n_studies: int, n_slices: int, h: dict[str, Any]) -> str:
    def fmt(v: object, ci: object) -> str:
        if not isinstance(v, float | int):
            return str(v)
        if isinstance(ci, list):
            return f"{v:.2f} (95 % CI {ci[0]:.2f}–{ci[1]:.2f})"
        return f"{v:.2f}"

    c = h["with_slice_context"]
    auc = h["slice_auc_any"]
    weak = n_studies < WEAK_STUDIES or not isinstance(auc, float | int) or auc < WEAK_AUC
    verdict = (
        "A demonstration of the pipeline, not a usable detector: do not rely on its probabilities."
        if weak
        else "Research use only, not a medical device: every finding needs a radiologist."
    )
    worse = isinstance(auc, float | int) and auc < 0.5
    pos = h.get("position_only_reference") or {}
    position = (
        f", against {pos['slice_auc_any']:.2f} and {pos['study_auc_any']:.2f} from slice "
        "position alone"
        if isinstance(pos.get("slice_auc_any"), float | int)
        and isinstance(pos.get("study_auc_any"), float | int)
        else ""
    )
    return (
        f"Trained on {'only ' if weak else ''}{n_studies} studies ({n_slices} slices). "
        "Cross-validated (each study scored by models that never saw it): the CNN alone "
        + ("ranks slices worse than chance" if worse else "reaches")
        + f" (slice AUC(any) {fmt(auc, h['slice_auc_any_ci95'])}; study AUC(any) as the "
        f"highest slice score "
        f"{fmt(h['study_auc_any_max_over_slices'], h['study_auc_any_max_over_slices_ci95'])}). "
        f"With the slice-context model: slice AUC(any) "
        f"{fmt(c['slice_auc_any'], c['slice_auc_any_ci95'])}, study AUC(any) "
        f"{fmt(c['study_auc_any'], c['study_auc_any_ci95'])}{position}; a constant guess "
        "scores 0.50. " + verdict
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    studies, infos = read_runs(args.runs)
    ids = np.concatenate([[s.uid] * len(s.probs) for s in studies])
    y = np.concatenate([s.labels for s in studies])
    p = np.concatenate([s.probs for s in studies])
    cnn = evaluate(y, p, ids, n_boot=args.n_boot, seed=args.seed)

    spec = ContextSpec(hidden=args.hidden)
    refined_list, ctx_study = context_cross_validation(
        studies, spec, args.context_epochs, args.seed
    )
    refined_p = np.concatenate(refined_list)
    refined = evaluate(y, refined_p, ids, n_boot=args.n_boot, seed=args.seed)
    # Reference: the same context model fed a constant instead of the CNN's output, i.e. slice
    # position alone. What the context model adds beyond it is what the CNN contributes.
    prior = np.clip(p.mean(axis=0), 1e-4, 1 - 1e-4).astype(np.float32)
    blind = [
        FoldStudy(s.uid, s.fold, np.broadcast_to(prior, s.probs.shape).copy(), s.labels)
        for s in studies
    ]
    blind_list, blind_study = context_cross_validation(blind, spec, args.context_epochs, args.seed)
    blind_p = np.concatenate(blind_list)
    y_study = np.array([s.labels[:, 0].max() for s in studies], np.int8)
    study_ctx = study_figures(y_study, ctx_study, args.n_boot, args.seed)
    position_only = {
        "slice_auc_any": roc_auc(y[:, 0], blind_p[:, 0]),
        "study_auc_any": roc_auc(y_study, blind_study),
        "what": "the slice-context model fed a constant instead of the CNN's output: slice "
        "position alone, cross-validated the same way",
    }

    # on what the app shows per slice: the context-refined probabilities
    slice_threshold = choose_threshold(y[:, 0], refined_p[:, 0])
    fp = false_positive_positions(studies)
    n_slices, n_studies = int(len(y)), len(studies)
    folds = len({s.fold for s in studies})
    data = (
        f"cross-validation: {folds} folds by patient over {n_studies} studies ({n_slices} "
        "slices); every study scored by a CNN (and a slice-context model) that never saw it"
    )
    h = headline(cnn, refined, study_ctx)
    h["position_only_reference"] = _r(position_only)
    # A threshold on a ranking worse than chance is meaningless (Youden's J then picks an
    # extreme that flags everything or nothing): none is recorded and the tools say so.
    slice_auc = refined["model"]["labels"]["any"]["auc"]
    usable_slice = isinstance(slice_auc, float) and slice_auc > 0.5
    usable_study = isinstance(study_ctx["auc"], float) and study_ctx["auc"] > 0.5
    thresholds = {
        "study_any": study_ctx.get("threshold") if usable_study else None,
        "slice_any": float(slice_threshold) if usable_slice and slice_threshold else None,
        "rule": "Youden's J on the out-of-fold (validation) predictions of the cross-validation; "
        "none where the cross-validated AUC is not above 0.5",
    }
    report = {
        "data": data,
        "runs": infos,
        "cnn_out_of_fold": cnn,
        "with_slice_context_out_of_fold": refined,
        "study_any_slice_context": study_ctx,
        "position_only_reference": position_only,
        "false_positive_positions_any": fp,
        "operating_thresholds": thresholds,
        "headline": h,
        "summary": summary_sentence(n_studies, n_slices, h),
    }
    if args.dry_run:
        return report

    loaded = load_checkpoint(
        args.checkpoint, with_context=False, allow_unverified=args.allow_unverified
    )
    context = fit_context([s.example for s in studies], spec, epochs=args.context_epochs)
    card = {k: v for k, v in loaded.card.to_dict().items() if k not in RESERVED_CARD_KEYS}
    metrics = {
        k: v for k, v in (card.get("metrics") or {}).items() if not k.startswith("cross-val")
    }
    card["metrics"] = {data: h, **metrics}
    card["summary"] = report["summary"]
    card["operating_thresholds"] = thresholds
    card["false_positive_positions_any"] = fp
    card["cross_validation_report"] = f"{loaded.name}-crossval.json"
    card["cross_validation"] = {
        "folds": folds,
        "fold_command": args.fold_command or "not recorded",
        "command": "python -m core.crossval "
        + " ".join(str(r) for r in args.runs)
        + f" --checkpoint {args.checkpoint}",
    }
    context_info = {
        "model": "monotone 1-D convolution over the slices in patient-axis order, with a "
        "position prior (core.model.context)",
        "input": "the CNN's six logits per slice and the slice's relative position",
        "trained_on": (
            f"out-of-fold CNN outputs of {n_studies} studies ({folds} folds), "
            f"{args.context_epochs} full-batch epochs, seed {args.seed}"
        ),
        "command": "see cross_validation.command",
    }
    directory = loaded.card_path.parent
    out = directory / f"{loaded.name}-crossval.json"
    out.write_text(json.dumps(_r(report), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    save_checkpoint(
        loaded.model,
        loaded.spec,
        directory,
        loaded.name,
        card,
        context=context,
        context_info=context_info,
    )
    return report


def format_report(report: dict[str, Any]) -> str:
    h = report["headline"]

    def f(v: object) -> str:
        return f"{v:.3f}" if isinstance(v, float | int) and not math.isnan(v) else str(v)

    def ci(v: object) -> str:
        return f"[{v[0]:.3f}, {v[1]:.3f}]" if isinstance(v, list) else str(v)

    c, b = h["with_slice_context"], h["constant_prior_baseline"]
    lines = [
        report["data"],
        f"slice AUC(any)          CNN {f(h['slice_auc_any'])} {ci(h['slice_auc_any_ci95'])}"
        f"   with context {f(c['slice_auc_any'])} {ci(c['slice_auc_any_ci95'])}"
        f"   constant {f(b['slice_auc_any'])}",
        f"study AUC(any)          max over slices {f(h['study_auc_any_max_over_slices'])} "
        f"{ci(h['study_auc_any_max_over_slices_ci95'])}   slice-context "
        f"{f(c['study_auc_any'])} {ci(c['study_auc_any_ci95'])}   constant {f(b['study_auc_any'])}",
        f"weighted log loss       CNN {f(h['weighted_log_loss'])} "
        f"{ci(h['weighted_log_loss_ci95'])}   with context {f(c['weighted_log_loss'])}"
        f"   constant {f(b['weighted_log_loss'])}",
        f"position-only reference slice AUC(any) {f(h['position_only_reference']['slice_auc_any'])}"
        f", study AUC(any) {f(h['position_only_reference']['study_auc_any'])} (the context "
        "model without the CNN)",
        "slice AUC per label     "
        + "  ".join(
            f"{k} {f(v) if v != NOT_MEASURABLE else 'n/m'}" for k, v in h["slice_auc"].items()
        ),
        f"study operating point   threshold {f(c['study_threshold'])}: sensitivity "
        f"{f(c['study_sensitivity'])}, specificity {f(c['study_specificity'])} (chosen on these "
        "out-of-fold data"
        + (
            ")"
            if report["operating_thresholds"]["study_any"] is not None
            else "; not recorded: the study AUC is not above 0.5)"
        ),
    ]
    fp = report.get("false_positive_positions_any")
    if fp:
        lines.append(
            f"where the likeliest false positives lie ({fp['slices']}): {fp['by_position']} "
            f"(about {fp['expected_at_each_end_if_position_did_not_matter']} at each end "
            "if position did not matter)"
        )
    lines.append(report["summary"])
    return "\n".join(lines)
