"""core.calibrate and core.training.calibration: temperature, threshold and held-out figures
written into the card of a model trained on real PNG slices (tiny network, seconds), and
applied by the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_paths import DATA, LABELLED, require

from core import calibrate
from core.dicom.study import load_studies
from core.imaging.windowing import model_input
from core.inference.predictor import Predictor
from core.labels import LABELS
from core.model.checkpoint import ModelError, load_checkpoint
from core.train import main as train_main
from core.training import calibration
from core.training.dataset import read_challenge_labels

PNG_DIR = DATA / "rsna_png" / "images"
PNG_LABELS = DATA / "rsna_png" / "rsna_png_stage_2_train.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, study_zips: list[Path]) -> dict[str, Path]:
    """A tiny model trained on 80 real PNG slices (fixed split by id, 3 ids forced into
    validation), and two whole studies it never saw."""
    require(PNG_DIR)
    root = tmp_path_factory.mktemp("calibrate")
    folder = root / "png"
    folder.mkdir()
    labels = read_challenge_labels(PNG_LABELS)
    pos = sorted(k for k, v in labels.items() if v[0] == 1)[:30]
    neg = sorted(k for k, v in labels.items() if v[0] == 0)[:50]
    for image_id in pos + neg:
        (folder / f"{image_id}.png").write_bytes((PNG_DIR / f"{image_id}.png").read_bytes())
    forced = root / "masks.csv"
    forced.write_text("image_id,pixels\n" + "".join(f"{i},0\n" for i in neg[:3]))
    studies = root / "studies"
    studies.mkdir()
    for path in sorted(study_zips, key=lambda p: p.stat().st_size)[:2]:
        (studies / path.name).symlink_to(path)
    argv = ["--png-dir", str(folder), "--labels", str(PNG_LABELS), "--arch", "tiny"]
    argv += ["--size", "64", "--batch-size", "8", "--val-hash", "0.3", "--val-ids", str(forced)]
    argv += ["--epochs", "2", "--out", str(root / "run"), "--no-progress", "--no-embeddings"]
    argv += ["--save-weights", "tiny-png", "--weights-dir", str(root / "weights")]
    assert train_main(argv) == 0
    return {
        "card": root / "weights" / "tiny-png.json",
        "png": folder,
        "forced": forced,
        "studies": studies,
    }


def test_temperature_fit_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, (6000, 6))
    y = (rng.random((6000, 6)) < calibration.sigmoid(z / 3.0)).astype(np.int8)
    y[:, 1] = 0
    y[:5, 1] = 1  # too few positives for its own temperature: takes the shared one
    t = calibration.fit_temperatures(y, z)
    assert list(t) == list(LABELS)
    assert abs(t["any"] - 3.0) < 0.3 and abs(t["subdural"] - 3.0) < 0.3
    assert t["epidural"] == pytest.approx(
        calibration.fit_temperature(y.ravel(), z.ravel()), abs=1e-3
    )


def test_calibrate_writes_card_figures_and_the_engine_applies_the_temperature(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    card_path = trained["card"]
    before = json.loads(card_path.read_text())
    argv = ["--weights", str(card_path), "--png-dir", str(trained["png"])]
    argv += ["--png-labels", str(PNG_LABELS), "--val-ids", str(trained["forced"])]
    argv += ["--studies", str(trained["studies"])]
    argv += ["--study-labels", str(LABELLED / "rsna_dev_stage_2_train.csv")]
    argv += ["--n-boot", "20", "--json", str(tmp_path / "figures.json")]
    argv += ["--allow-unverified"]
    assert calibrate.main(argv) == 0

    card = json.loads(card_path.read_text())
    assert card["weights_sha256"] == before["weights_sha256"]  # the weights are untouched
    temperature = card["calibration"]["temperature"]
    assert list(temperature) == list(LABELS)
    assert all(0.05 <= v <= 20 for v in temperature.values())
    val, studies, at_training = card["metrics"]
    assert val["values"]["slices"] == before["split"]["val_slices"]
    assert studies["values"]["studies"] == 2 and studies["values"]["positive_studies"] == 1
    assert "study_auc_any" in studies["values"] and at_training["values"] == before["metrics"]
    thresholds = card["operating_thresholds"]
    assert 0 < thresholds["slice_any"] < 1 and thresholds["study_any"] == thresholds["slice_any"]
    assert "whole CT studies it never saw" in card["summary"]
    assert card["summary"] in card_path.with_suffix(".md").read_text()
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["validation"]["slice_auc"]["any"] == val["values"]["slice_auc"]["any"]

    # The engine now shows sigmoid(logit / T) for every label, and caches by it.
    loaded = load_checkpoint(card_path, allow_unverified=True)
    predictor = Predictor(loaded, "cpu")
    t = np.array([temperature[label] for label in LABELS])
    assert predictor.temperature == tuple(t)
    hu = load_studies(sorted(trained["studies"].glob("*.zip"))[0])[0].default_series.hu[:4]
    x = model_input(hu, 64, loaded.spec.windows)
    with torch.inference_mode():
        logits = loaded.model(x).numpy()
    np.testing.assert_allclose(
        predictor.forward(x).numpy(), calibration.sigmoid(logits / t), atol=1e-5
    )

    # Calibrating again keeps one copy of the trainer's figures, not a nesting of them.
    assert calibrate.main(argv + ["--n-boot", "0"]) == 0
    again = json.loads(card_path.read_text())["metrics"]
    assert len(again) == 3 and again[2]["values"] == before["metrics"]


def test_an_edited_temperature_is_refused(trained: dict[str, Path], tmp_path: Path) -> None:
    card = json.loads(trained["card"].read_text())
    card["calibration"] = {"temperature": {"any": 0.0}}
    folder = tmp_path / "w"
    folder.mkdir()
    for f in trained["card"].parent.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / trained["card"].name).write_text(json.dumps(card))
    with pytest.raises(ModelError, match="temperature for any"):
        _ = load_checkpoint(folder / trained["card"].name, allow_unverified=True).temperature


def test_a_model_without_an_id_split_is_refused(tiny_weights: Path) -> None:
    card = next(tiny_weights.glob("*.json")) if tiny_weights.is_dir() else tiny_weights
    assert calibrate.main(["--weights", str(card), "--dry-run"]) == 2
