"""``--init``: start training from a state dict the user brings (ImageNet ResNeXt weights from
torchvision or timm, or an earlier run); nothing is downloaded.

Why it reads so carefully: a checkpoint from elsewhere may be pickled (refused: only
``weights_only`` loading or safetensors), wrapped (``state_dict``/``model`` keys, ``module.``
prefixes) or of another head; tensors are matched by name and shape and the report says what
was taken, so a silent no-op initialisation cannot pass for a pretrained start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

#: Key prefixes of wrapped state dicts (DDP, Lightning/timm wrappers, torch.compile).
_INIT_PREFIXES = ("module.", "model.", "_orig_mod.")
#: Classifier heads of torchvision/timm ResNets: never taken from an ImageNet state dict.
_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "last_linear.")


@dataclass(frozen=True)
class InitReport:
    loaded: int
    model_tensors: int
    head_skipped: int
    wrong_shape: int
    unexpected: int
    #: tensors holding NaN or infinity (a float16 running variance that overflowed), left at
    #: their initial value: training re-estimates running statistics from its own batches
    nonfinite: int = 0

    def __str__(self) -> str:
        damaged = f"; {self.nonfinite} with NaN or infinity left out" if self.nonfinite else ""
        return (
            f"initialised {self.loaded} of {self.model_tensors} tensors of the model "
            f"({self.head_skipped} classifier-head tensors skipped; {self.wrong_shape} of another "
            f"shape; {self.unexpected} not in this architecture{damaged})"
        )


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - unpickling refused or file damaged
            raise ValueError(
                f"--init {path.name}: cannot be read as a state dict without running code "
                f"from it ({type(exc).__name__}). Save it with torch.save(model.state_dict()) "
                "or as .safetensors."
            ) from None
    for _ in range(3):  # {"state_dict": {...}} / {"model": {...}} wrappers
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next(
                (obj[k] for k in ("state_dict", "model", "model_state", "module") if k in obj),
                None,
            )
            if isinstance(inner, dict):
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise ValueError(f"--init {path.name}: holds a {type(obj).__name__}, not a state dict")
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def load_init_weights(
    model: nn.Module, path: str | os.PathLike[str], *, keep_head: bool = False
) -> InitReport:
    """Start from a torchvision/timm ResNeXt state dict the user brings (nothing is
    downloaded): prefixes such as ``module.`` are stripped, tensors matched by name and shape,
    the classifier head skipped (an ImageNet head has 1000 outputs; ours has 6). ``keep_head``
    takes the head too, for fine-tuning one of this project's own models, whose head already
    speaks the six labels (a random head would first push noise back into the features it
    was meant to keep). Raises ValueError when nothing matches."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--init {path}: no such file")
    state = _read_state_dict(path)
    target = model.state_dict()
    take: dict[str, torch.Tensor] = {}
    head = wrong = unexpected = nonfinite = 0
    for key, value in state.items():
        name = key
        while name.startswith(_INIT_PREFIXES):
            name = name.split(".", 1)[1]
        if name.startswith(_HEAD_PREFIXES) and not keep_head:
            head += 1
        elif name not in target:
            unexpected += 1
        elif target[name].shape != value.shape:
            wrong += 1
        elif value.is_floating_point() and not value.isfinite().all():
            nonfinite += 1
        else:
            take[name] = value.to(target[name].dtype)
    if not take:
        raise ValueError(
            f"--init {path.name}: none of its {len(state)} tensors matches the model by name "
            f"and shape; is it a ResNet/ResNeXt state dict of this architecture?"
        )
    model.load_state_dict(take, strict=False)
    return InitReport(len(take), len(target), head, wrong, unexpected, nonfinite)
