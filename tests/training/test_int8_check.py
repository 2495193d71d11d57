"""core.training.int8_check: the int8 calibration set comes from the training split only, is
fixed and documented, and is read through the app's input path; the validation figures compare
an engine with torch fp32 on labelled slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from data_paths import DATA, require

from core.imaging.windowing import model_input
from core.inference.openvino_backend import compile_engine, convert
from core.model.checkpoint import ModelSpec, build_model, find_default_checkpoint
from core.training.dataset import read_id_column, read_png_hu
from core.training.int8_check import (
    CALIBRATION_NEGATIVE,
    CALIBRATION_POSITIVE,
    calibration_digest,
    calibration_ids,
    png_split,
    read_inputs,
    validation_figures,
)

SPEC = ModelSpec("tiny", 64, bleed_map=True)


@pytest.fixture(scope="module")
def shipped_split() -> dict:
    card = find_default_checkpoint()
    assert card is not None
    return json.loads(card.read_text())["split"]


def test_the_split_is_the_shipped_cards(shipped_split: dict) -> None:
    split = png_split(require(DATA), shipped_split)
    assert len(split.val_ids) == shipped_split["val_slices"]  # 569
    assert len(split.train_ids) == shipped_split["train_slices"]  # 2575
    assert not set(split.val_ids) & set(split.train_ids)
    assert "the card's split" in split.description
    # A card without an id-hash split gets the same split (the shipped card's).
    assert png_split(DATA, None).val_ids == split.val_ids


def test_calibration_slices_are_training_slices_half_bleeding_and_fixed(
    shipped_split: dict,
) -> None:
    split = png_split(require(DATA), shipped_split)
    ids = calibration_ids(split)
    assert len(ids) == len(set(ids)) == CALIBRATION_POSITIVE + CALIBRATION_NEGATIVE
    assert set(ids) <= set(split.train_ids)
    hand_outlined = set(read_id_column(DATA / "hemseg" / "hemseg_masks.csv"))
    assert not set(ids) & (set(split.val_ids) | hand_outlined)
    bleeding = [i for i in ids if split.labels[i][0] > 0]
    assert len(bleeding) == CALIBRATION_POSITIVE
    assert calibration_ids(png_split(DATA, shipped_split)) == ids  # the same every time


def test_calibration_inputs_go_through_the_apps_input_path(shipped_split: dict) -> None:
    split = png_split(require(DATA), shipped_split)
    ids = calibration_ids(split)[:3]
    x = read_inputs(split.folder, ids, SPEC)
    assert x.shape == (3, 3, 64, 64) and x.dtype == np.float32
    one = model_input(read_png_hu(split.folder / f"{ids[1]}.png")[None], 64, SPEC.windows)
    np.testing.assert_array_equal(x[1], one[0].numpy())
    digest = calibration_digest(x)
    assert digest == calibration_digest(x.copy())
    changed = x.copy()
    changed[2, 0, 0, 0] += 1e-3
    assert calibration_digest(changed) != digest
    assert calibration_digest(x[:2]) != digest


def test_validation_figures_compare_with_torch_fp32() -> None:
    torch.manual_seed(5)
    net = build_model(SPEC)
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, 64, 64))
    net.eval()
    rng = np.random.default_rng(0)
    x = rng.random((40, 3, 64, 64), dtype=np.float32)
    y = np.zeros((40, 6), np.int8)
    y[::3, 0] = 1
    y[::3, 3] = 1
    engine = compile_engine(convert(net, SPEC), "f32", True)
    figures = validation_figures(engine, net, (1.0,) * 6, x, y)
    assert figures["slices"] == 40 and figures["positives"]["any"] == 14
    assert figures["max_dp"] < 1e-4 and figures["max_dmap"] < 1e-3  # f32 is torch
    assert figures["auc_int8"]["any"] == pytest.approx(figures["auc_torch_fp32"]["any"], abs=1e-6)
    assert figures["auc_int8"]["epidural"] is None  # one class only: not measurable
    assert figures["guarded_labels"] == ["any", "intraventricular"]  # >= 10 positives
