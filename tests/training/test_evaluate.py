"""``python -m core.evaluate`` end to end on the real label files, with synthetic predictions
built from those labels (so the expected figures are known), and ``evaluate()`` directly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from data_paths import LABELLED

from core.evaluate import main
from core.labels import LABELS
from core.training.evaluate import (
    CHOSEN_ON_DATA,
    EXIT_INPUT,
    EXIT_OK,
    NOT_MEASURABLE,
    PRIOR_FROM_EVALUATED,
    evaluate,
)

ROOT = Path(__file__).resolve().parents[2]
CHALLENGE_CSV = LABELLED / "rsna_dev_stage_2_train.csv"
WIDE_CSV = LABELLED / "rsna_dev_labels.csv"
BOOT = "100"  # enough to exercise the intervals, short enough for the test budget


def _synthetic(label_rows: dict[str, list[dict[str, str]]], seed: int = 0) -> dict[str, Any]:
    """A predict-style document: 0.8 for a positive label, 0.2 for a negative, plus noise."""
    rng = np.random.default_rng(seed)
    studies = []
    for study_uid, rows in label_rows.items():
        slices = []
        for row in rows:
            probs = {
                label: round(
                    float(np.clip((0.8 if row[label] == "1" else 0.2) + rng.normal(0, 0.15), 0, 1)),
                    6,
                )
                for label in LABELS
            }
            slices.append(
                {
                    "index": int(row["slice_index"]),
                    "SOPInstanceUID": row["image_id"],
                    "z": float(row["ImagePositionPatient_z"]),
                    "probabilities": probs,
                }
            )
        studies.append(
            {
                "StudyInstanceUID": study_uid,
                "SeriesInstanceUID": rows[0]["SeriesInstanceUID"],
                "probabilities": {
                    label: max(s["probabilities"][label] for s in slices) for label in LABELS
                },
                "slices": slices,
            }
        )
    return {"labels": list(LABELS), "studies": studies}


@pytest.fixture(scope="module")
def predictions(label_rows: dict[str, list[dict[str, str]]]) -> dict[str, Any]:
    return _synthetic(label_rows)


def _write(tmp_path: Path, doc: Any, name: str = "preds.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _run_json(tmp_path: Path, preds: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "eval.json"
    args = [str(preds), "--labels", str(CHALLENGE_CSV), "--bootstrap", BOOT, "--json", str(out)]
    assert main([*args, *extra]) == EXIT_OK
    return json.loads(out.read_text(encoding="utf-8"))


def test_end_to_end_on_real_labels(
    predictions: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = _run_json(tmp_path, _write(tmp_path, predictions))
    text = capsys.readouterr().out

    assert doc["n_slices"] == 549 and doc["n_studies"] == 16
    assert doc["labels_format"] == "challenge"
    assert doc["coverage"]["evaluated_slices"] == 549
    model, base = doc["model"], doc["baseline"]
    expected_positives = {
        "any": 69,
        "epidural": 0,
        "intraparenchymal": 47,
        "intraventricular": 7,
        "subarachnoid": 31,
        "subdural": 21,
    }
    for label in LABELS:
        figures = model["labels"][label]
        assert figures["positive_slices"] == expected_positives[label]
        if label == "epidural":
            assert figures["auc"] == NOT_MEASURABLE and figures["auc_ci95"] == NOT_MEASURABLE
            assert base["labels"][label]["auc"] == NOT_MEASURABLE
            continue
        assert figures["auc"] > 0.95
        low, high = figures["auc_ci95"]
        assert low <= figures["auc"] <= high
        assert base["labels"][label]["auc"] == 0.5  # a constant ranks nothing
    assert model["study_any"]["n_studies"] == 16 and model["study_any"]["positive_studies"] == 6
    assert model["study_any"]["auc"] > 0.95

    # the baseline: prevalence of these labels, with the same figures
    assert base["prior_source"] == PRIOR_FROM_EVALUATED
    assert base["prior"]["any"] == pytest.approx(69 / 549)
    assert set(base) >= set(model)
    assert isinstance(base["weighted_log_loss"], float)

    op = model["operating_point_any"]
    assert op["threshold_source"] == CHOSEN_ON_DATA
    assert op["slice"]["tp"] + op["slice"]["fn"] == 69
    assert op["study"]["tp"] + op["study"]["fn"] == 6
    assert op["slice"]["sensitivity"] > 0.9 and op["slice"]["specificity"] > 0.9
    assert sum(b["count"] for b in model["reliability_any"]["bins"]) == 549

    for needle in ("Baseline", "not measurable", "optimistic", "Study-level", "Reliability"):
        assert needle in text
    assert "epidural" in " ".join(doc["warnings"])


def test_wide_labels_give_the_same_figures(predictions: dict[str, Any], tmp_path: Path) -> None:
    preds = _write(tmp_path, predictions["studies"])  # a bare list of studies is accepted too
    challenge = _run_json(tmp_path, preds)
    wide = _run_json(tmp_path, preds, "--labels", str(WIDE_CSV), "--labels-format", "wide")
    assert wide["labels_format"] == "wide"
    assert wide["model"] == challenge["model"] and wide["baseline"] == challenge["baseline"]


def test_given_threshold_prior_and_reuse_of_an_earlier_evaluation(
    predictions: dict[str, Any], tmp_path: Path
) -> None:
    preds = _write(tmp_path, predictions)
    doc = _run_json(tmp_path, preds, "--threshold", "0.5", "--prior-from", str(WIDE_CSV))
    op = doc["model"]["operating_point_any"]
    assert op["threshold"] == 0.5 and "given" in op["threshold_source"]
    assert doc["baseline"]["operating_point_any"]["threshold"] == 0.5
    assert doc["baseline"]["prior_source"].startswith("prevalence in rsna_dev_labels.csv")

    earlier = tmp_path / "validation.json"
    earlier.write_text(json.dumps(doc), encoding="utf-8")
    again = _run_json(tmp_path, preds, "--threshold", str(earlier))
    assert again["model"]["operating_point_any"]["threshold"] == 0.5

    prior = _write(tmp_path, {"prior": dict.fromkeys(LABELS, 0.1)}, "prior.json")
    doc = _run_json(tmp_path, preds, "--prior-from", str(prior), "--bootstrap", "0")
    assert doc["baseline"]["prior"]["any"] == pytest.approx(0.1)
    assert doc["model"]["labels"]["any"]["auc_ci95"] == "not computed"


def test_mismatched_ids_fail_unless_partial(
    predictions: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = ["--labels", str(CHALLENGE_CSV), "--bootstrap", "0"]
    missing = json.loads(json.dumps(predictions))
    dropped = missing["studies"][0]["slices"].pop()
    preds = _write(tmp_path, missing, "missing.json")
    assert main([str(preds), *labels]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "1 labelled slice(s) have no prediction" in err and dropped["SOPInstanceUID"] in err
    assert "--allow-partial" in err

    out = tmp_path / "partial.json"
    assert main([str(preds), *labels, "--allow-partial", "--json", str(out)]) == EXIT_OK
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["coverage"]["evaluated_slices"] == 548
    assert doc["coverage"]["labelled_without_prediction"] == 1
    assert any("partial" in w for w in doc["warnings"])

    extra = json.loads(json.dumps(predictions))
    extra["studies"][0]["slices"].append(
        {"SOPInstanceUID": "ID_000000000", "z": 0.0, "probabilities": dict.fromkeys(LABELS, 0.5)}
    )
    assert main([str(_write(tmp_path, extra, "extra.json")), *labels]) == EXIT_INPUT
    assert "1 predicted slice(s) have no label (e.g. ID_000000000)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no_predictions", "no such file"),
        ("no_labels", "no such file"),
        ("missing_label", "lack some of the six labels"),
        ("bad_label", "is not 0 or 1"),
        ("bad_json", "not valid JSON"),
        ("missing_probability", "no probability for 'subdural'"),
        ("bad_threshold", "neither a number nor a file"),
        ("threshold_range", "not a probability"),
        ("wrong_format", "not the wide label format"),
    ],
)
def test_input_errors_exit_2(
    case: str,
    message: str,
    predictions: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    preds = _write(tmp_path, predictions)
    labels = CHALLENGE_CSV
    extra: list[str] = []
    lines = CHALLENGE_CSV.read_text(encoding="utf-8").splitlines()
    if case == "no_predictions":
        preds = tmp_path / "absent.json"
    elif case == "no_labels":
        labels = tmp_path / "absent.csv"
    elif case == "missing_label":
        labels = tmp_path / "short.csv"
        labels.write_text("\n".join(lines[:-1]) + "\n", encoding="utf-8")
    elif case == "bad_label":
        labels = tmp_path / "bad.csv"
        labels.write_text("\n".join([*lines[:-1], lines[-1][:-1] + "yes"]), encoding="utf-8")
    elif case == "bad_json":
        preds.write_text("{not json", encoding="utf-8")
    elif case == "missing_probability":
        broken = json.loads(json.dumps(predictions))
        del broken["studies"][1]["slices"][0]["probabilities"]["subdural"]
        preds = _write(tmp_path, broken)
    elif case == "bad_threshold":
        extra = ["--threshold", "high"]
    elif case == "threshold_range":
        extra = ["--threshold", "1.5"]
    elif case == "wrong_format":
        extra = ["--labels-format", "wide"]
    code = main([str(preds), "--labels", str(labels), "--bootstrap", "0", *extra])
    assert code == EXIT_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_module_entry_point(predictions: dict[str, Any], tmp_path: Path) -> None:
    preds = _write(tmp_path, predictions)
    args = [sys.executable, "-m", "core.evaluate", str(preds), "--labels", str(CHALLENGE_CSV)]
    done = subprocess.run(
        [*args, "--bootstrap", "0", "--json", "-"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert json.loads(done.stdout)["model"]["labels"]["epidural"]["auc"] == NOT_MEASURABLE
    done = subprocess.run(
        [*args[:4], "--labels", str(tmp_path / "none.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_INPUT and "no such file" in done.stderr


def test_evaluate_function_for_the_trainer() -> None:
    """What the training code calls with out-of-fold predictions."""
    rng = np.random.default_rng(5)
    n_studies, per = 8, 10
    study_ids = np.repeat([f"s{i}" for i in range(n_studies)], per)
    y = np.zeros((n_studies * per, 6), dtype=int)
    y[: 3 * per : 2, 0] = 1  # studies 0-2 bleed on every other slice
    y[: 3 * per : 2, 2] = 1
    p = np.clip(0.15 + 0.6 * y + rng.normal(0, 0.05, y.shape), 0, 1)
    prior = np.array([0.2, 0.01, 0.1, 0.05, 0.05, 0.05])
    result = evaluate(y, p, study_ids, prior=prior, threshold=0.5, n_boot=50, prior_source="train")
    assert result["n_studies"] == n_studies
    assert result["model"]["labels"]["any"]["auc"] == 1.0
    assert result["model"]["labels"]["epidural"]["auc"] == NOT_MEASURABLE
    assert result["baseline"]["prior_source"] == "train"
    assert result["model"]["operating_point_any"]["study"]["tp"] == 3
    assert result["model"]["weighted_log_loss"] < result["baseline"]["weighted_log_loss"]
    json.dumps(result)  # JSON-ready as it is
    with pytest.raises(ValueError, match="shapes"):
        evaluate(y, p[:-1], study_ids)
    with pytest.raises(ValueError, match="threshold"):
        evaluate(y, p, study_ids, threshold=2.0)
