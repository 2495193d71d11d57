"""``python -m core.calibrate``: measure a trained model on data it never saw, fit its
temperature, choose its operating threshold, and write all of it into its model card.

Why a command of its own, run on the installed files: the numbers a radiologist reads in the
sidebar must be those of the weights the app loads (stored at half size, read back as float32),
through the app's own input path (``core.windowing.model_input`` on HU, the engine's forward
pass), not the trainer's figures on its in-memory copy. Two kinds of held-out data:

* the validation slices of the PNG set (the trainer's fixed split by image id): the temperature
  and the slice threshold are chosen on them (so their calibration figures are in-sample for
  the temperature; their ranking figures are not, the network never trained on them);
* whole DICOM studies the model never saw (``--studies``, with their labels): slice and study
  AUC, and the threshold's sensitivity and specificity per study, with nothing fitted on them.

The study is flagged when its highest slice reaches the slice threshold: one threshold, one
meaning ("a slice looks like bleeding"), not tuned on the handful of whole studies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.dicom.study import Study, load_studies
from core.errors import ICHError
from core.imaging.volume import DensityRule
from core.inference.predictor import Predictor, resolve_device
from core.labels import LABELS
from core.model.checkpoint import LoadedModel, _check_metrics, load_checkpoint, render_card_markdown
from core.model.integrity import stamp
from core.shared_data import shared_data_root
from core.training.bleed_map_check import hemseg_report, phantom_report, synthetic_threshold
from core.training.calibration import (
    MIN_POSITIVES_FOR_OWN_TEMPERATURE,
    _r,
    fit_temperatures,
    headline,
    png_logits,
    sigmoid,
    summary_sentence,
)
from core.training.crossval import FoldStudy, false_positive_positions
from core.training.dataset import label_for, read_challenge_labels, read_id_column, split_by_hash
from core.training.evaluate import evaluate
from core.training.metrics import (
    choose_threshold,
    constant_prior,
    expected_calibration_error,
    roc_auc,
)

log = logging.getLogger("core.calibrate")


# --------------------------------------------------------------------------- command


def build_parser() -> argparse.ArgumentParser:
    data = shared_data_root()
    p = argparse.ArgumentParser(
        prog="python -m core.calibrate",
        description=(
            "Measure a trained model on held-out slices and whole studies, fit its temperature "
            "and operating threshold, and write them into its model card (research use only)."
        ),
    )
    p.add_argument("--weights", type=Path, required=True, help="the model card (NAME.json)")
    p.add_argument("--png-dir", type=Path, default=data / "rsna_png" / "images")
    p.add_argument(
        "--png-labels", type=Path, default=data / "rsna_png" / "rsna_png_stage_2_train.csv"
    )
    p.add_argument("--val-hash", type=float, help="default: the card's split")
    p.add_argument(
        "--val-ids",
        type=Path,
        default=data / "hemseg" / "hemseg_masks.csv",
        help="ids forced into validation at training (must match the card's split)",
    )
    p.add_argument("--studies", type=Path, help="folder of study zips the model never saw")
    p.add_argument("--study-labels", type=Path, help="their labels (challenge CSV)")
    p.add_argument(
        "--hemseg-dir",
        type=Path,
        default=data / "hemseg",
        help="hand-drawn masks: the bleed map's outline and volume are reported on them",
    )
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", type=Path, help="also write every figure here")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--dry-run", action="store_true", help="print, do not change the card")
    p.add_argument(
        "--allow-unverified",
        action="store_true",
        help="calibrate a model that is not on the manifest (core.model.integrity); the card "
        "written is unverified until its line is added to core/model/manifest.py",
    )
    return p


def _validation_ids(args: argparse.Namespace, card: dict[str, Any], labels: dict) -> list[str]:
    split = card.get("split") or {}
    if split.get("kind") != "id-hash":
        raise ValueError(
            "the card's model was not trained with a fixed split by image id (--val-hash); "
            "its validation slices cannot be told apart"
        )
    share = args.val_hash if args.val_hash is not None else float(split["val_hash"])
    if abs(share - float(split["val_hash"])) > 1e-12:
        raise ValueError(f"--val-hash {share} differs from the card's {split['val_hash']}")
    forced: list[str] = []
    if split.get("forced_val"):
        if args.val_ids.name != split["forced_val"]:
            raise ValueError(
                f"the model kept the ids of {split['forced_val']} out of training; give that "
                f"file as --val-ids (got {args.val_ids.name})"
            )
        forced = read_id_column(args.val_ids)
    names = sorted(p.stem for p in args.png_dir.glob("ID_*.png") if p.stem in labels)
    _, val = split_by_hash(np.array(names), share, forced)
    ids = [names[i] for i in val]
    if split.get("val_slices") not in (None, len(ids)):
        raise ValueError(
            f"{len(ids)} validation slices found, the card's split had {split['val_slices']}: "
            "not the data the model was trained beside"
        )
    return ids


def run(args: argparse.Namespace) -> dict[str, Any]:
    loaded: LoadedModel = load_checkpoint(
        args.weights, resolve_device(args.device), allow_unverified=args.allow_unverified
    )
    card = loaded.card.to_dict()
    # Calibration fits the reference (torch fp32) logits: raw_logits reads the torch module.
    predictor = Predictor(loaded, args.device, backend="torch")
    predictor.temperature = (1.0,) * len(LABELS)  # raw logits first; fitted below

    png_labels = read_challenge_labels(args.png_labels)
    val_ids = _validation_ids(args, card, png_labels)
    log.info("scoring %d held-out PNG slices", len(val_ids))
    z = png_logits(predictor, args.png_dir, val_ids)
    y = np.stack([png_labels[i] for i in val_ids]).astype(np.int8)
    train_ids = [k for k in png_labels if k not in set(val_ids)]
    prior = constant_prior(np.stack([png_labels[k] for k in train_ids]))

    temperature = fit_temperatures(y, z)
    t = np.array([temperature[label] for label in LABELS])
    p_raw, p_cal = sigmoid(z), sigmoid(z / t)
    threshold = choose_threshold(y[:, 0], p_cal[:, 0], "youden")
    slice_threshold = round(float(threshold), 4) if threshold is not None else None
    val_result = evaluate(
        y,
        p_cal,
        np.array(val_ids),
        prior,
        slice_threshold,
        args.n_boot,
        threshold_source="Youden's J on these validation slices",
        prior_source="training prevalence",
    )
    val = headline(val_result)
    val["ece_any_before_temperature"] = _r(expected_calibration_error(y[:, 0], p_raw[:, 0]))
    val["slice_auc_any_before_temperature"] = _r(roc_auc(y[:, 0], p_raw[:, 0]))

    map_cut: float | None = None
    map_rule: DensityRule | None = None
    chosen: dict[str, Any] | None = None
    if predictor.has_bleed_map:
        normal = [i for i, row in zip(val_ids, y, strict=True) if row.max() == 0]
        log.info("choosing the bleed map's threshold on synthetic bleeds in normal slices")
        chosen = synthetic_threshold(predictor, args.png_dir, normal)
        map_cut = float(chosen["threshold"])
        map_rule = DensityRule(**chosen["density"])

    studies: dict[str, Any] | None = None
    study_report: dict[str, Any] | None = None
    studies_map: dict[str, Any] | None = None
    if args.studies is not None:
        if args.study_labels is None:
            raise ValueError("--studies needs --study-labels")
        predictor.temperature = tuple(float(v) for v in t)
        study_labels = read_challenge_labels(args.study_labels)
        ys, ps, groups, per_study = [], [], [], []
        negative_volumes: list[float] = []
        first_negative: Study | None = None
        zips = sorted(args.studies.glob("*.zip")) if args.studies.is_dir() else [args.studies]
        for path in zips:
            for study in load_studies(path):
                series = study.default_series
                pred = predictor.predict(study)
                found = [label_for(study_labels, s.sop_instance_uid) for s in series.slices]
                keep = [k for k, lab in enumerate(found) if lab is not None]
                if not keep:
                    continue
                yy = np.stack([lab for lab in found if lab is not None]).astype(np.int8)
                pp = np.asarray(pred.probs)[keep].astype(np.float64)
                ys.append(yy)
                ps.append(pp)
                per_study.append(FoldStudy(study.study_instance_uid, -1, pp, yy))
                if predictor.has_bleed_map and yy.max() == 0:
                    negative_volumes.append(
                        predictor.localise(
                            series, pred, map_threshold=map_cut, map_density=map_rule
                        ).volume_ml
                    )
                    first_negative = first_negative or study
                groups += [study.study_instance_uid] * len(keep)
                log.info(
                    "study %d: %d slices, P(any) %.3f",
                    len(per_study),
                    len(keep),
                    float(pp[:, 0].max()),
                )
        if not ys:
            raise ValueError(f"no labelled slice found in {args.studies}")
        study_result = evaluate(
            np.concatenate(ys),
            np.concatenate(ps),
            np.array(groups),
            prior,
            slice_threshold,
            args.n_boot,
            threshold_source="chosen on the validation slices",
            prior_source="training prevalence",
        )
        studies = headline(study_result)
        studies["false_positive_positions_any"] = false_positive_positions(per_study)
        top2 = evaluate(
            np.concatenate(ys),
            np.concatenate(ps),
            np.array(groups),
            prior,
            slice_threshold,
            0,
            study_how="top2mean",
        )
        studies["study_auc_any_top2mean"] = _r(top2["model"]["study_any"]["auc"])
        study_report = study_result
        if predictor.has_bleed_map and first_negative is not None:
            log.info("bleed map: phantom hematomas of known volume in a normal study")
            phantoms = phantom_report(
                predictor, first_negative, map_threshold=map_cut, map_density=map_rule
            )
            studies_map = {
                "normal_studies": len(negative_volumes),
                "normal_study_volume_ml_max": round(max(negative_volumes), 2),
                "normal_studies_under_1_ml": sum(v < 1.0 for v in negative_volumes),
                "phantom_hematomas": phantoms,
            }

    bleed_map: dict[str, Any] | None = None
    if chosen is not None and map_cut is not None and map_rule is not None:
        log.info("measuring the bleed map on the hand-drawn masks")
        real = hemseg_report(
            predictor,
            args.hemseg_dir,
            args.png_dir,
            args.studies if args.studies is not None and args.studies.is_dir() else None,
            map_cut,
            map_rule,
        )
        bleed_map = {"synthetic_validation": chosen, "hand_drawn": real, "studies": studies_map}

    command = "python -m core.calibrate " + shlex.join(
        sys.argv[1:] if args.argv is None else args.argv
    )
    where_val = (
        f"held-out validation slices of rsna_png ({len(val_ids)}; {card['split']['description']}); "
        "never trained on; temperature and threshold chosen on them"
    )
    metrics: list[dict[str, Any]] = [{"measured_on": where_val, "values": val}]
    if studies is not None:
        metrics.append(
            {
                "measured_on": (
                    f"{studies['studies']} whole DICOM studies never trained on or tuned on "
                    f"({studies['slices']} slices), through the app's loader and engine"
                ),
                "values": studies,
            }
        )
    if bleed_map is not None:
        real = bleed_map["hand_drawn"]
        metrics.append(
            {
                "measured_on": (
                    "the bleed map against hand-drawn masks never trained on (hemseg: "
                    f"{real['scope']}); threshold chosen on synthetic bleeds in "
                    f"{bleed_map['synthetic_validation']['slices']} normal validation slices"
                ),
                "values": {
                    "threshold": real["threshold"],
                    "density_floor_hu": real["density"]["floor_hu"],
                    "density_above_brain_hu": real["density"]["above_brain_hu"],
                    "synthetic_dice": bleed_map["synthetic_validation"]["dice"],
                    "slices_with_blood": real["slices_with_blood"],
                    "dice_mean_per_slice": real["dice_mean_per_slice"],
                    "slices_without_blood": real["slices_without_blood"],
                    "share_of_empty_slices_left_clean": real["share_of_empty_slices_left_clean"],
                    "brain_window_slices": real["brain_window_slices"],
                    "whole_studies": real["whole_studies"],
                    **(bleed_map["studies"] or {}),
                },
            }
        )
    old = card.get("metrics")
    at_training = "at training time (the trainer's own copy)"
    if isinstance(old, list):  # calibrated before: keep only what the trainer wrote
        old = next((m["values"] for m in old if m.get("measured_on") == at_training), None)
    if old:
        metrics.append({"measured_on": at_training, "values": old})
    _check_metrics(metrics)
    card["metrics"] = metrics
    card["calibration"] = {
        "temperature": temperature,
        "method": (
            "per-label temperature minimising the log loss on the validation slices (labels with "
            f"fewer than {MIN_POSITIVES_FOR_OWN_TEMPERATURE} positives share one); the engine "
            "shows sigmoid(logit / T)"
        ),
        **(
            {
                "bleed_map_threshold": bleed_map["synthetic_validation"]["threshold"],
                "bleed_map_density": bleed_map["synthetic_validation"]["density"],
            }
            if bleed_map is not None
            else {}
        ),
        "ece_any_before": val["ece_any_before_temperature"],
        "ece_any_after": val["ece_any"],
        "command": command,
    }
    card["operating_thresholds"] = {
        "slice_any": slice_threshold,
        "study_any": slice_threshold,
        "rule": (
            "Youden's J on the validation slices; a study is flagged when its most suspicious "
            "slice reaches the same threshold"
        ),
    }
    card["summary"] = summary_sentence(card, val, studies)
    report = {
        "card": str(args.weights),
        "validation": val,
        "studies": studies,
        "calibration": card["calibration"],
        "operating_thresholds": card["operating_thresholds"],
        "summary": card["summary"],
        "bleed_map": bleed_map,
        "study_evaluation": study_report,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")
    if not args.dry_run:
        _write_card(loaded.card_path, card)
    return report


def _write_card(card_path: Path, card: dict[str, Any]) -> None:
    """Card JSON and its Markdown twin, each replaced atomically (weights untouched); the
    card's content digest is written anew (core.model.integrity): a recalibrated card is not
    the one on the manifest, so it loads as unverified until its line is added there."""
    card = stamp(card)
    for path, text in (
        (card_path.with_suffix(".md"), render_card_markdown(card)),
        (card_path, json.dumps(card, indent=2, ensure_ascii=False) + "\n"),
    ):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("core.study").setLevel(logging.WARNING)
    try:
        report = run(args)
    except (ValueError, ICHError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report["summary"])
    print(
        json.dumps(
            {
                "temperature": report["calibration"]["temperature"],
                "operating_thresholds": report["operating_thresholds"],
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
