"""core.training.synthetic: real normal slices given synthetic bleeds with masks, for training."""

from __future__ import annotations

import numpy as np
import torch
from data_paths import DATA, require

from core.training.dataset import (
    AugmentConfig,
    augment,
    augment_with_mask,
    from_png_folder,
    read_challenge_labels,
)
from core.training.synthetic import SyntheticBleedSlices

PNG_DIR = DATA / "rsna_png" / "images"
PNG_LABELS = DATA / "rsna_png" / "rsna_png_stage_2_train.csv"


def _table(tmp_path, n_neg: int = 24, n_pos: int = 4):
    require(PNG_DIR)
    labels = read_challenge_labels(PNG_LABELS)
    neg = sorted(k for k, v in labels.items() if v[0] == 0)[:n_neg]
    pos = sorted(k for k, v in labels.items() if v[0] == 1)[:n_pos]
    for image_id in neg + pos:
        (tmp_path / f"{image_id}.png").write_bytes((PNG_DIR / f"{image_id}.png").read_bytes())
    return from_png_folder(tmp_path, labels, 96)


def test_normal_slices_get_bleeds_with_masks_and_real_bleeds_stay_unknown(tmp_path) -> None:
    table = _table(tmp_path)
    items = [
        SyntheticBleedSlices(table, range(len(table)), 1.0, seed=3)[k] for k in range(len(table))
    ]
    painted = 0
    for (hu, labels, row, mask, known), real in zip(items, table.labels, strict=True):
        assert hu.shape == mask.shape == (1, 96, 96)
        if real[0] == 1:  # a real bleed: untouched, its blood unknown
            assert not known and float(mask.sum()) == 0.0
            np.testing.assert_array_equal(hu[0].numpy(), table.load_hu(row))
            continue
        assert known
        if float(mask.sum()) > 0:
            painted += 1
            assert labels[0] == 1 and labels[1:].sum() == 1
            assert float(hu[0][mask[0] > 0].mean()) > 45  # blood is dense
        else:
            assert labels.sum() == 0
            np.testing.assert_array_equal(hu[0].numpy(), table.load_hu(row))
    assert painted >= 5  # most normal mid-head slices can take a bleed


def test_draws_follow_seed_and_epoch_and_share_zero_paints_nothing(tmp_path) -> None:
    table = _table(tmp_path, n_neg=12, n_pos=0)
    a, b = (SyntheticBleedSlices(table, range(12), 0.5, seed=1) for _ in range(2))
    first = [a[k][3] for k in range(12)]
    assert all(torch.equal(m, b[k][3]) for k, m in enumerate(first))
    b.epoch = 1
    assert not all(torch.equal(m, b[k][3]) for k, m in enumerate(first))
    none = SyntheticBleedSlices(table, range(12), 0.0, seed=1)
    assert all(float(none[k][3].sum()) == 0 for k in range(12))


def test_the_mask_moves_with_the_pixels() -> None:
    hu = torch.full((4, 1, 32, 32), 20.0)
    mask = torch.zeros(4, 1, 32, 32)
    hu[:, :, 4:10, 2:8] = 70.0
    mask[:, :, 4:10, 2:8] = 1.0
    g = torch.Generator().manual_seed(0)
    config = AugmentConfig(0.5, 15.0, 0.1, 0.0, 0.0, 0.0, 0.0)
    x, moved = augment_with_mask(hu, mask, g, config=config)
    assert moved is not None
    torch.testing.assert_close(x, augment(hu, torch.Generator().manual_seed(0), config=config))
    blood = x[:, 2] > 0.5  # the blood window: 70 HU bright, 20 HU dark
    assert float(((moved[:, 0] > 0.5) == blood).float().mean()) > 0.98
