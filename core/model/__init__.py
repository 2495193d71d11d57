"""The network and what travels with it: ResNeXt builders, the checkpoint (safetensors shards
+ model card), the slice-context model, Grad-CAM and the torchvision compatibility shim. It may
import the base modules, core.dicom and core.imaging.

``tv_compat`` is imported here, first, so that every ``import torchvision`` in this room (and
``pytorch_grad_cam``'s) finds torchvision importable beside the CPU build of torch.
"""

import core.model.tv_compat  # noqa: F401  (must precede every torchvision import)
