"""Training slices with synthetic bleeds painted into some of the normal ones, and a mask for
every slice whose blood is known.

Why: a few hundred real bleeding slices teach the classifier a few hundred patients' bleeds,
and give the segmentation head nothing (real labels have no outline). A synthetic bleed
(core.imaging.synthesis) comes with its pixel mask and can sit in any normal slice, so the
network sees bleeds of every kind, size and place, and learns where the blood is. A real slice
without blood is a known mask too (all zeros); a real bleeding slice is not (its mask is
unknown, so the map's loss leaves it out).

Each item is drawn from the seed, the epoch and the row, so a resumed run paints the same
bleeds; the anatomy of each slice (the costly part) is found on first use and only whether it
is usable is remembered.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from core.imaging.synthesis import DEFAULT_PIXEL_MM, feasible_kinds, find_anatomy, synthesize
from core.training.checkpointing import derived_seed
from core.training.dataset import SliceTable

#: The pixel size the synthesis assumes for a slice of ``size`` px: a 512-px slice of
#: DEFAULT_PIXEL_MM resized (the tables hold slices at the model's size, not their own).
FULL_MATRIX = 512


class SyntheticBleedSlices(Dataset):
    """Rows ``indices`` of ``table`` → (HU (1, S, S), labels (6,), row, mask (1, S, S), known).

    A row without any bleed is, with probability ``share``, given one synthetic bleed (its
    kind drawn from those the slice allows); it then carries that bleed's labels and mask.
    ``known`` is False only for a real bleeding slice. Set ``epoch`` before each epoch.
    """

    def __init__(
        self, table: SliceTable, indices: Sequence[int] | np.ndarray, share: float, seed: int
    ) -> None:
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"the synthetic share is a fraction in [0, 1], got {share}")
        self.table = table
        self.indices = np.asarray(indices)
        self.share = share
        self.seed = seed
        self.epoch = 0
        self.pixel_mm = DEFAULT_PIXEL_MM * FULL_MATRIX / table.size
        self._usable: dict[int, bool] = {}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, bool]:
        i = int(self.indices[k])
        hu = self.table.load_hu(i)
        labels = self.table.labels[i]
        mask = np.zeros(hu.shape, dtype=np.float32)
        bleeding = bool(labels.max() > 0)
        if not bleeding and self.share > 0:
            rng = np.random.default_rng(derived_seed(f"{self.seed}/{self.epoch}/{i}"))
            if rng.random() < self.share and self._usable.get(i, True):
                anatomy = find_anatomy(hu, pixel_mm=self.pixel_mm)
                self._usable[i] = bool(feasible_kinds(anatomy))
                if self._usable[i]:
                    try:
                        bleed = synthesize(hu, rng, pixel_mm=self.pixel_mm, anatomy=anatomy)
                    except ValueError:  # the drawn kind found no place on this slice
                        bleed = None
                    if bleed is not None and bleed.mask.any():
                        hu, labels, mask = bleed.hu, bleed.labels, bleed.mask.astype(np.float32)
        return (
            torch.from_numpy(np.ascontiguousarray(hu, dtype=np.float32))[None],
            torch.from_numpy(np.asarray(labels, dtype=np.float32)),
            i,
            torch.from_numpy(mask)[None],
            not bleeding,
        )
