"""core.training.crossval: pooling folds, cross-validating the context model, finishing the
checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.crossval import main
from core.errors import InputError
from core.labels import LABELS
from core.model.checkpoint import ModelSpec, build_model, load_checkpoint, save_checkpoint
from core.model.context import StudyExample
from core.training.crossval import FoldStudy, false_positive_positions, read_runs

SPEC = ModelSpec("tiny", 64)


def _study(rng: np.random.Generator, positive: bool, n: int = 24) -> StudyExample:
    """CNN output that fires falsely on the lowest slices of every study and truly on a run of
    middle slices of positive ones: the slice maximum is fooled, the context model need not be."""
    probs = rng.uniform(0.01, 0.1, size=(n, 6)).astype(np.float32)
    labels = np.zeros((n, 6), np.int8)
    probs[:3, 0] = rng.uniform(0.6, 0.95, size=3)
    if positive:
        start = int(rng.integers(8, 14))
        probs[start : start + 5, [0, 3]] = rng.uniform(0.5, 0.9, size=(5, 2))
        labels[start : start + 5, [0, 3]] = 1
    return StudyExample(probs, labels)


def _write_runs(root: Path, folds: int = 3, per_fold: int = 8, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    runs = []
    for f in range(folds):
        studies = []
        for k in range(per_fold):
            ex = _study(rng, positive=k % 2 == 0)
            studies.append(
                {
                    "StudyInstanceUID": f"1.2.3.{f}.{k}",
                    "slices": [
                        {
                            "index": i,
                            "probabilities": dict(zip(LABELS, map(float, p), strict=True)),
                            "target": dict(zip(LABELS, map(int, t), strict=True)),
                        }
                        for i, (p, t) in enumerate(zip(ex.probs, ex.labels, strict=True))
                    ],
                }
            )
        run = root / f"fold{f}"
        run.mkdir(parents=True)
        (run / "val_predictions.json").write_text(json.dumps({"studies": studies}))
        runs.append(run)
    return runs


@pytest.fixture()
def final_card(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    card = {
        "training_data": "synthetic",
        "command": "pytest",
        "metrics": {"training data (no validation split)": {"train_loss_last_epoch": 0.1}},
    }
    return save_checkpoint(build_model(SPEC).eval(), SPEC, tmp_path / "weights", "final", card)


def test_read_runs_pools_folds_and_refuses_a_study_seen_twice(tmp_path: Path) -> None:
    runs = _write_runs(tmp_path / "a")
    studies, _ = read_runs(runs)
    assert len(studies) == 24 and {s.fold for s in studies} == {0, 1, 2}
    twice = runs + [runs[0]]
    with pytest.raises(InputError, match="validated in both"):
        read_runs(twice)
    with pytest.raises(InputError, match="at least 2 folds"):
        read_runs(runs[:1])


def test_crossval_stores_context_metrics_and_thresholds(tmp_path: Path, final_card: Path) -> None:
    runs = _write_runs(tmp_path / "runs")
    before = load_checkpoint(final_card, allow_unverified=True)
    argv = [*map(str, runs), "--checkpoint", str(final_card), "--n-boot", "50"]
    argv += ["--allow-unverified"]
    argv += ["--context-epochs", "150"]
    assert main(argv) == 0

    after = load_checkpoint(
        final_card, allow_unverified=True
    )  # checksums verified again on the rewritten card
    assert after.context is not None and before.context is None
    for a, b in zip(
        before.model.state_dict().values(), after.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)  # the CNN is unchanged
    card = after.card
    assert isinstance(card.metrics, dict)
    (data, h), *rest = card.metrics.items()
    assert data.startswith("cross-validation: 3 folds") and "24 studies" in data
    assert rest == [("training data (no validation split)", {"train_loss_last_epoch": 0.1})]
    # The synthetic CNN's skull-base false positives fool the slice maximum; context does not.
    assert h["study_auc_any_max_over_slices"] < 0.9
    assert h["with_slice_context"]["study_auc_any"] >= 0.95
    assert h["slice_auc"]["epidural"] == "not measurable"
    assert h["constant_prior_baseline"]["study_auc_any"] == 0.5
    assert 0.0 < (card.threshold("study_any") or 0.0) < 1.0
    assert "not a usable detector" in (card.summary or "")  # 24 studies are far too few
    assert card.context is not None and card.context["hidden"] == after.context.spec.hidden
    report = json.loads((final_card.parent / "final-crossval.json").read_text())
    assert report["headline"] == h
    md = final_card.with_suffix(".md").read_text()
    assert "cross-validation: 3 folds" in md and "Slice-context model" in md
    # run again: the context model is replaced, the card keeps one cross-validation entry
    assert main(argv) == 0
    again = load_checkpoint(final_card, allow_unverified=True)
    assert again.context is not None and len(again.card.metrics or ()) == 2


def test_dry_run_changes_nothing(tmp_path: Path, final_card: Path, capsys) -> None:
    runs = _write_runs(tmp_path / "runs", folds=2)
    text = final_card.read_text()
    argv = [*map(str, runs), "--checkpoint", str(final_card), "--n-boot", "0", "--dry-run"]
    argv += ["--allow-unverified"]
    assert main(argv) == 0
    assert final_card.read_text() == text
    assert "study AUC(any)" in capsys.readouterr().out


def test_bad_run_folder_is_a_clear_error(tmp_path: Path, final_card: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--checkpoint", str(final_card)]) == 2
    assert "is not a training run's validation output" in capsys.readouterr().err


def test_false_positive_positions_counts_by_part_of_the_head() -> None:
    rng = np.random.default_rng(0)
    studies = []
    for k in range(10):
        ex = _study(rng, positive=False)
        studies.append(FoldStudy(f"s{k}", k % 2, ex.probs, ex.labels))
    fp = false_positive_positions(studies, share=0.1)
    # the 24 highest of 240 negative slices: the 3 lowest slices of each study score highest
    assert fp["by_position"]["skull base (lowest fifth)"] == 24
    assert fp["by_position"]["vertex (highest fifth)"] == 0
