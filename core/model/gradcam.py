"""Grad-CAM heatmaps: where on a slice the model looked when it scored one finding.

Grad-CAM rescales every map to 0..1, so even a slice the model scores at 0.1 % gets a map with
a bright spot. A Heatmap therefore always carries the probability the model gave that finding
on that slice, and the viewer must show both together.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import core.model.tv_compat  # noqa: F401  (pytorch_grad_cam imports torchvision)

# isort: split
import cv2
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from core.errors import ModelError
from core.imaging.windowing import apply_window, model_input
from core.model.checkpoint import LoadedModel, ModelSpec


@dataclass(frozen=True, eq=False)
class Heatmap:
    """A Grad-CAM map on the slice's own pixel grid, with the probability it explains.

    ``cam`` is float32 (rows, cols) in [0, 1] and read-only, so a cached Heatmap cannot be
    altered by a caller. Compared by identity (arrays have no single truth value).
    """

    label: str
    label_index: int
    probability: float
    cam: np.ndarray


class GradCamExplainer:
    """Grad-CAM on ``model.layer4[-1]`` of a loaded classifier, safe to call from threads.

    The model is shared, not copied (a ResNeXt-101 is 170-350 MB). While a map is computed,
    Grad-CAM hooks sit on ``layer4[-1]`` and parameter flags are changed, so calls are
    serialised by ``lock``. A forward pass on the same model from another thread during that
    time would also trigger the hooks; code that runs inference on this model concurrently
    should pass the same lock here and hold it around its forward passes.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        lock: threading.Lock | None = None,
        temperature: tuple[float, ...] | None = None,
    ) -> None:
        try:
            self.target_layer: nn.Module = model.layer4[-1]  # type: ignore[index,assignment]
        except (AttributeError, IndexError, TypeError):
            raise ModelError(
                f"Heatmaps are not available for the architecture {spec.arch}."
            ) from None
        self.model = model
        self.spec = spec
        self.lock = lock if lock is not None else threading.Lock()
        #: The card's per-label temperatures, so a heatmap's probability is the one the
        #: engine shows for that slice (the map itself does not depend on it).
        self.temperature = temperature or (1.0,) * len(spec.labels)

    @classmethod
    def from_loaded(
        cls, loaded: LoadedModel, *, lock: threading.Lock | None = None
    ) -> GradCamExplainer:
        return cls(loaded.model, loaded.spec, lock=lock, temperature=loaded.temperature)

    def explain(self, hu_slice: np.ndarray, label: str) -> Heatmap:
        """Grad-CAM of ``label``'s logit for one slice of HU (rows, cols)."""
        if label not in self.spec.labels:
            raise ValueError(f"unknown label {label!r}; known: {', '.join(self.spec.labels)}")
        index = self.spec.labels.index(label)
        hu = np.asarray(hu_slice)
        if hu.ndim != 2:
            raise ValueError(f"expected one slice (rows, cols), got shape {hu.shape}")
        rows, cols = hu.shape
        x = model_input(hu[None], self.spec.input_size, self.spec.windows)

        with self.lock:
            grey, logit = self._grad_cam(x, index)

        cam = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32))[None, None]
        if cam.shape[-2:] != (rows, cols):
            cam = F.interpolate(
                cam, size=(rows, cols), mode="bilinear", align_corners=False, antialias=True
            )
        out = cam[0, 0].clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)
        if not (np.isfinite(out).all() and np.isfinite(logit)):
            raise ModelError("The model produced invalid numbers on this slice; no heatmap.")
        out.flags.writeable = False
        scaled = logit / self.temperature[index]
        probability = float(torch.sigmoid(torch.tensor(scaled, dtype=torch.float64)))
        return Heatmap(label=label, label_index=index, probability=probability, cam=out)

    def _grad_cam(self, x: torch.Tensor, index: int) -> tuple[np.ndarray, float]:
        """One forward + backward; returns the (size, size) map and the logit. Hold the lock."""
        params = list(self.model.parameters())
        saved = [p.requires_grad for p in params]
        keep = {id(p) for p in self.target_layer.parameters()}
        try:
            # Gradients are needed only from layer4[-1] on: freezing the rest makes the
            # backward pass stop there instead of running through all 101 layers.
            for p in params:
                p.requires_grad_(id(p) in keep)
            # Works even when the caller is inside torch.inference_mode or no_grad.
            with torch.inference_mode(False), torch.enable_grad():
                cam = GradCAM(model=self.model, target_layers=[self.target_layer])
                # try/finally rather than ``with cam``: GradCAM.__exit__ swallows IndexError,
                # which would turn a bug into a silently missing map.
                try:
                    grey = cam(input_tensor=x, targets=[ClassifierOutputTarget(index)])
                    logit = float(cam.outputs[0, index].detach())
                finally:
                    cam.activations_and_grads.release()
                    cam.outputs = None  # drops the retained autograd graph now
        finally:
            for p, flag in zip(params, saved, strict=True):
                p.requires_grad_(flag)
            for p in self.target_layer.parameters():
                p.grad = None
        return grey[0], logit


def _colormap(name: str) -> int:
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if not isinstance(code, int):
        raise ValueError(f"unknown colormap {name!r} (OpenCV names such as 'jet', 'inferno')")
    return code


def render_overlay(
    hu_slice: np.ndarray,
    heatmap: Heatmap,
    level: float,
    width: float,
    opacity: float = 0.4,
    colormap: str = "jet",
) -> np.ndarray:
    """Windowed slice blended with the colour-mapped heatmap → uint8 RGB (rows, cols, 3).

    Per pixel the heatmap's weight is ``opacity × map``: full opacity where the map is 1, none
    where it is 0.

    Colours come from OpenCV's colormap, as in grad-cam's show_cam_on_image; the blend is done
    here because show_cam_on_image divides the result by its maximum, which would make the
    grey levels of the window change with each heatmap.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within 0..1, got {opacity}")
    grey = apply_window(hu_slice, level, width)
    if grey.shape != heatmap.cam.shape:
        raise ValueError(f"heatmap {heatmap.cam.shape} does not match slice {grey.shape}")
    cam = np.clip(heatmap.cam, 0.0, 1.0)
    mask = np.rint(cam * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(mask, _colormap(colormap)), cv2.COLOR_BGR2RGB)
    # Colour only where the map is high: alpha grows with the map, so air and brain the model
    # did not look at stay plain grey instead of being tinted by the colour map's low end.
    alpha = (opacity * cam)[..., None].astype(np.float32)
    blended = (1.0 - alpha) * grey[..., None].astype(np.float32) + alpha * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def heatmap_layer(heatmap: Heatmap, opacity: float = 0.4, colormap: str = "jet") -> np.ndarray:
    """The heatmap as a uint8 RGBA (rows, cols, 4) layer: laid over the windowed slice (alpha
    compositing, as a browser does) it gives what :func:`render_overlay` draws, in any window,
    so a viewer can show and hide it and change the window without a new overlay."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be within 0..1, got {opacity}")
    cam = np.clip(heatmap.cam, 0.0, 1.0)
    mask = np.rint(cam * 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(mask, _colormap(colormap)), cv2.COLOR_BGR2RGB)
    alpha = np.rint(opacity * cam * 255).astype(np.uint8)
    return np.concatenate([colour, alpha[..., None]], axis=-1)


def colorbar_image(width: int = 512, height: int = 14, colormap: str = "jet") -> np.ndarray:
    """The overlay's colour scale, low (left) to high (right), as uint8 RGB (height, width, 3)."""
    ramp = np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))
    return cv2.cvtColor(cv2.applyColorMap(ramp, _colormap(colormap)), cv2.COLOR_BGR2RGB)


__all__ = ["GradCamExplainer", "Heatmap", "colorbar_image", "heatmap_layer", "render_overlay"]
