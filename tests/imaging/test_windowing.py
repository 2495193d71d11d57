"""core.imaging.windowing: presets, display windowing, the 3-channel model input."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from data_paths import UNLABELLED_ZIP
from PIL import Image

from core.dicom.study import load_studies
from core.imaging.windowing import (
    BLOOD,
    BONE,
    BRAIN,
    MODEL_WINDOWS,
    PRESETS,
    STROKE,
    SUBDURAL,
    Window,
    apply_window,
    model_input,
    window_by_name,
    window_span,
)
from core.training.dataset import read_png_hu


def test_presets_have_the_usual_level_and_width() -> None:
    expected = {
        "brain": (40, 80),
        "subdural": (80, 200),
        "stroke": (40, 40),
        "bone": (600, 2800),
        "soft tissue": (40, 380),
    }
    assert {n: (w.level, w.width) for n, w in PRESETS.items()} == expected
    assert window_by_name("subdural") is SUBDURAL
    with pytest.raises(ValueError, match="unknown window"):
        window_by_name("lung")
    with pytest.raises(ValueError, match="positive"):
        Window("bad", 40, 0)


def test_apply_window_maps_the_window_onto_0_255() -> None:
    hu = np.array([-1024, 0, 20, 40, 60, 80, 2000], dtype=np.int16)
    out = apply_window(hu, 40, 80)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 64, 128, 191, 255, 255]
    # free level/width: a narrow stroke window makes 30 vs 50 HU black vs white
    assert apply_window(np.array([20, 60]), 40, 40).tolist() == [0, 255]


def test_model_input_stacks_three_windows_and_resizes(small_zip) -> None:
    series = load_studies(small_zip)[0].default_series
    x = model_input(series.hu, 256)
    assert x.shape == (series.n_slices, 3, 256, 256) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    # Each channel is its own window: 55 HU blood is bright in brain, brighter in stroke and
    # mid-grey in the blood window, which still separates it from 75 HU.
    blood = model_input(np.full((1, 32, 32), 55, np.int16), 16)
    assert blood[0, 0].mean() == pytest.approx((55 - BRAIN.low) / BRAIN.width, abs=1e-5)
    assert blood[0, 1].mean() == pytest.approx((55 - STROKE.low) / STROKE.width, abs=1e-5)
    assert blood[0, 2].mean() == pytest.approx((55 - BLOOD.low) / BLOOD.width, abs=1e-5)
    three = (SUBDURAL, STROKE, BONE)  # a checkpoint's own windows are taken as they are
    other = model_input(np.full((1, 32, 32), 70, np.int16), 16, three)
    assert other[0, 2].mean() == pytest.approx((70 - BONE.low) / BONE.width, abs=1e-5)
    assert MODEL_WINDOWS == (BRAIN, STROKE, BLOOD)
    assert window_span(MODEL_WINDOWS) == (0.0, 80.0)  # inside what rsna_png holds
    # The read-only cached stack is not modified and no warning-prone aliasing happens.
    before = series.pixel_hash
    model_input(series.hu[:2], 128)
    assert series.pixel_hash == before


def test_model_input_equals_windowing_a_resized_slice() -> None:
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, size=(2, 64, 64)).astype(np.int16)
    same_size = model_input(hu, 64, (BRAIN,))
    expected = np.clip((hu.astype(np.float32) - BRAIN.low) / BRAIN.width, 0, 1)
    np.testing.assert_allclose(same_size[:, 0].numpy(), expected, atol=1e-6)


def test_a_dicom_slice_and_its_brain_window_png_give_the_model_the_same_input() -> None:
    """Training reads 0–80 HU PNGs; the app reads full-HU DICOM. With the clip before the
    resize, the skull (+1000 HU) no longer bleeds into the brain pixels beside it."""
    study = load_studies(UNLABELLED_ZIP)[0]
    hu = study.default_series.hu[len(study.default_series.hu) // 2].astype(np.float32)
    png = apply_window(hu, 40, 80)
    buf = io.BytesIO()
    Image.fromarray(png).save(buf, format="PNG")
    buf.seek(0)
    from_png = read_png_hu(buf)
    a = model_input(hu[None], 160).numpy()
    b = model_input(from_png[None], 160).numpy()
    # 8-bit PNG quantisation: 80/255 HU, i.e. under 0.01 of the narrowest (40 HU) window.
    assert np.abs(a - b).max() < 0.02
    unclipped = torch.nn.functional.interpolate(
        torch.from_numpy(hu)[None, None], size=(160, 160), mode="bilinear", antialias=True
    )[0]
    old = ((unclipped - BRAIN.low) / BRAIN.width).clamp(0, 1).numpy()
    assert np.abs(old - b[:, :1]).max() > 0.1  # what the clip fixes
