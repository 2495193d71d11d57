"""Grad-CAM heatmaps: geometry, the probability they carry, and leaving the model untouched."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import core.model.gradcam
from core.imaging.windowing import BRAIN, apply_window, model_input
from core.labels import LABELS
from core.model.checkpoint import ModelSpec, build_model
from core.model.gradcam import GradCamExplainer, Heatmap, heatmap_layer, render_overlay

SPEC = ModelSpec("tiny", 64)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """Tiny model with a fixed seed and non-default BatchNorm statistics."""
    torch.manual_seed(0)
    net = build_model(SPEC)
    net.train()
    with torch.no_grad():
        net(torch.rand(4, 3, 64, 64))
    return net.eval()


@pytest.fixture(scope="module")
def explainer(model: torch.nn.Module) -> GradCamExplainer:
    return GradCamExplainer(model, SPEC)


def _slice(rows: int = 512, cols: int = 512) -> np.ndarray:
    """Air around a round 'brain' at 30 HU holding a 70 HU blob, like a small haematoma."""
    yy, xx = np.mgrid[:rows, :cols]
    hu = np.full((rows, cols), -1000, np.int16)
    r = min(rows, cols) * 0.4
    hu[(yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 < r**2] = 30
    hu[(yy - rows * 0.4) ** 2 + (xx - cols * 0.6) ** 2 < (r / 6) ** 2] = 70
    return hu


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        for m in model.modules()
    )


def test_heatmap_on_slice_grid(explainer: GradCamExplainer) -> None:
    hu = _slice()
    heatmap = explainer.explain(hu, "any")
    assert isinstance(heatmap, Heatmap)
    assert heatmap.label == "any" and heatmap.label_index == 0
    assert heatmap.cam.shape == hu.shape
    assert heatmap.cam.dtype == np.float32
    assert np.isfinite(heatmap.cam).all()
    assert heatmap.cam.min() >= 0.0 and heatmap.cam.max() <= 1.0
    assert heatmap.cam.max() > 0.5  # grad-cam rescales; this one is not all zero
    assert not heatmap.cam.flags.writeable


def test_non_square_slice(explainer: GradCamExplainer) -> None:
    heatmap = explainer.explain(_slice(300, 420), "subdural")
    assert heatmap.cam.shape == (300, 420)


@pytest.mark.parametrize("label", ["any", "intraparenchymal", "subdural"])
def test_probability_is_sigmoid_of_the_logit(
    model: torch.nn.Module, explainer: GradCamExplainer, label: str
) -> None:
    hu = _slice()
    heatmap = explainer.explain(hu, label)
    with torch.inference_mode():
        logits = model(model_input(hu[None], SPEC.input_size, SPEC.windows))
    expected = float(torch.sigmoid(logits[0, LABELS.index(label)]))
    assert 0.0 <= heatmap.probability <= 1.0
    assert heatmap.probability == pytest.approx(expected, abs=1e-6)


def test_map_depends_on_the_label(explainer: GradCamExplainer) -> None:
    hu = _slice()
    a = explainer.explain(hu, "any").cam
    b = explainer.explain(hu, "subarachnoid").cam  # with seed 0 these two differ clearly
    assert a.max() > 0.5 and b.max() > 0.5
    assert np.abs(a - b).max() > 0.1


def test_deterministic(explainer: GradCamExplainer) -> None:
    hu = _slice()
    np.testing.assert_allclose(
        explainer.explain(hu, "subarachnoid").cam,
        explainer.explain(hu, "subarachnoid").cam,
        atol=1e-6,
    )


def test_unknown_label_and_bad_shape(explainer: GradCamExplainer) -> None:
    with pytest.raises(ValueError, match="unknown label"):
        explainer.explain(_slice(), "stroke")
    with pytest.raises(ValueError, match="one slice"):
        explainer.explain(np.zeros((2, 64, 64), np.int16), "any")


def test_model_left_as_it_was(model: torch.nn.Module, explainer: GradCamExplainer) -> None:
    # A mixed pattern, so that both "was True" and "was False" must be restored.
    model.conv1.weight.requires_grad_(False)
    model.layer4[-1].bn3.bias.requires_grad_(False)
    try:
        before = {n: p.requires_grad for n, p in model.named_parameters()}
        explainer.explain(_slice(), "any")
        assert {n: p.requires_grad for n, p in model.named_parameters()} == before
        assert all(p.grad is None for p in model.parameters())
        assert _no_hooks(model)
        assert not model.training
    finally:
        for p in model.parameters():
            p.requires_grad_(True)


def test_model_restored_when_grad_cam_fails(
    model: torch.nn.Module, explainer: GradCamExplainer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hooks are on layer4 by the time the target runs; an error there must not leave them."""

    class Failing:
        def __init__(self, category: int) -> None:
            pass

        def __call__(self, output: torch.Tensor) -> torch.Tensor:
            raise IndexError("boom")  # GradCAM.__exit__ would swallow this one

    monkeypatch.setattr(core.model.gradcam, "ClassifierOutputTarget", Failing)
    with pytest.raises(IndexError, match="boom"):
        explainer.explain(_slice(), "any")
    assert _no_hooks(model)
    assert all(p.requires_grad for p in model.parameters())
    assert explainer.lock.acquire(blocking=False)
    explainer.lock.release()


def test_works_inside_inference_mode(explainer: GradCamExplainer) -> None:
    hu = _slice()
    expected = explainer.explain(hu, "any")
    with torch.inference_mode():
        heatmap = explainer.explain(hu, "any")
    np.testing.assert_allclose(heatmap.cam, expected.cam, atol=1e-6)


def test_concurrent_calls(model: torch.nn.Module, explainer: GradCamExplainer) -> None:
    hu = _slice()
    labels = ["any", "intraventricular"]
    expected = {label: explainer.explain(hu, label) for label in labels}
    results: dict[str, Heatmap] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(labels))

    def work(label: str) -> None:
        try:
            start.wait()
            results[label] = explainer.explain(hu, label)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(label,)) for label in labels]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for label in labels:
        np.testing.assert_allclose(results[label].cam, expected[label].cam, atol=1e-6)
        assert results[label].probability == pytest.approx(expected[label].probability)
    assert _no_hooks(model)


# --------------------------------------------------------------------------- overlay


def test_render_overlay(explainer: GradCamExplainer) -> None:
    hu = _slice()
    heatmap = explainer.explain(hu, "any")
    rgb = render_overlay(hu, heatmap, BRAIN.level, BRAIN.width)
    assert rgb.shape == (*hu.shape, 3) and rgb.dtype == np.uint8

    grey = np.repeat(apply_window(hu, BRAIN.level, BRAIN.width)[..., None], 3, axis=-1)
    hot = heatmap.cam > 0.9
    assert hot.any()
    diff = np.abs(rgb.astype(int) - grey.astype(int)).max(axis=-1)
    assert (diff[hot] > 20).all()
    # Opacity 0 is the plain window; "jet" puts red where the map is high.
    assert np.array_equal(render_overlay(hu, heatmap, BRAIN.level, BRAIN.width, 0.0), grey)
    full = render_overlay(hu, heatmap, BRAIN.level, BRAIN.width, 1.0)
    assert (full[hot][:, 0] > full[hot][:, 2]).all()
    # Where the map is ~0 the slice stays grey: the low end of the colour map is not painted.
    cold = heatmap.cam < 0.02
    assert cold.any()
    assert (np.abs(rgb[cold].astype(int) - grey[cold].astype(int)).max(axis=-1) <= 3).all()


def test_heatmap_layer_over_the_slice_is_the_overlay(explainer: GradCamExplainer) -> None:
    """The viewer lays the RGBA layer over the windowed slice in the browser: composited the
    way a browser does (source-over), it gives what render_overlay draws, within the layer's
    8-bit alpha rounding."""
    hu = _slice()
    heatmap = explainer.explain(hu, "any")
    layer = heatmap_layer(heatmap, 0.4).astype(np.float32)
    assert layer.shape == (*hu.shape, 4)
    grey = apply_window(hu, BRAIN.level, BRAIN.width)[..., None].astype(np.float32)
    alpha = layer[..., 3:] / 255
    composited = np.rint((1 - alpha) * grey + alpha * layer[..., :3])
    expected = render_overlay(hu, heatmap, BRAIN.level, BRAIN.width, 0.4).astype(np.float32)
    assert np.abs(composited - expected).max() <= 2
    assert (layer[..., 3][heatmap.cam < 0.001] == 0).all()  # transparent where the map is ~0
    with pytest.raises(ValueError, match="opacity"):
        heatmap_layer(heatmap, 1.5)


def test_render_overlay_rejects_bad_arguments(explainer: GradCamExplainer) -> None:
    hu = _slice()
    heatmap = explainer.explain(hu, "any")
    with pytest.raises(ValueError, match="colormap"):
        render_overlay(hu, heatmap, 40, 80, colormap="rainbowish")
    with pytest.raises(ValueError, match="opacity"):
        render_overlay(hu, heatmap, 40, 80, opacity=1.5)
    with pytest.raises(ValueError, match="does not match"):
        render_overlay(hu[:100], heatmap, 40, 80)
