"""core.training.dataset: challenge labels, slice tables from zips and from the challenge's folder
layout, batch augmentation, and patient-level splits, on the real RSNA studies."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_paths import DATA, LABELLED, require
from PIL import Image

from core.dicom.study import load_studies
from core.errors import InputError
from core.imaging.windowing import BONE, MODEL_WINDOWS, model_input, window_span
from core.labels import LABELS
from core.training import dataset
from core.training.dataset import (
    AugmentConfig,
    InMemorySlices,
    SliceDataset,
    augment,
    fold_of_groups,
    from_dicom_folder,
    from_png_folder,
    from_zips,
    model_batch,
    patient_key,
    read_challenge_labels,
    read_id_column,
    read_png_hu,
    split_by_group,
    split_by_hash,
)

CHALLENGE_CSV = LABELLED / "rsna_dev_stage_2_train.csv"
WIDE_CSV = LABELLED / "rsna_dev_labels.csv"
SIZE = 64


@pytest.fixture(scope="module")
def labels() -> dict[str, np.ndarray]:
    return read_challenge_labels(CHALLENGE_CSV)


@pytest.fixture(scope="module")
def table(study_zips: list[Path], labels: dict[str, np.ndarray]) -> InMemorySlices:
    return from_zips(study_zips, labels, SIZE, window_span(MODEL_WINDOWS))  # as the trainer does


# --------------------------------------------------------------------------- labels


def test_challenge_labels_match_the_wide_file(labels, label_rows) -> None:
    wide = read_challenge_labels(WIDE_CSV)
    assert len(labels) == 549 and labels.keys() == wide.keys()
    for image_id, vec in labels.items():
        assert vec.dtype == np.float32 and vec.shape == (6,)
        np.testing.assert_array_equal(vec, wide[image_id])
    row = label_rows["ID_74f2e4ee2b"][10]
    expected = [float(row[label]) for label in LABELS]
    assert labels[row["image_id"]].tolist() == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("ID_a_any,0\nID_a_epidural,2\n", "is not 0 or 1"),
        ("ID_a_bleed,0\n", "does not end in one of"),
        ("ID_a_any\n", "expected"),
        ("ID_a_any,0\nID_a_epidural,0\n", "lack some of the six labels.*ID_a has no"),
        ("ID_a_any,0\nID_a_any,1\n", "twice with different labels"),
    ],
)
def test_malformed_label_files_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("ID,Label\n" + body)
    with pytest.raises(InputError, match=message):  # the one reader's messages
        read_challenge_labels(path)


def test_identical_repeated_rows_are_accepted(tmp_path: Path) -> None:
    """The full stage_2_train.csv repeats some rows; repeats that agree are harmless."""
    rows = [f"ID_b_{label},{int(label == 'any')}" for label in LABELS]
    path = tmp_path / "labels.csv"
    path.write_text("ID,Label\n" + "\n".join(rows + rows[:2]) + "\n")
    assert read_challenge_labels(path)["ID_b"].tolist() == [1, 0, 0, 0, 0, 0]
    (tmp_path / "bad.csv").write_text("image,label\n")
    with pytest.raises(InputError, match="ID,Label"):
        read_challenge_labels(tmp_path / "bad.csv")


# --------------------------------------------------------------------------- tables


def test_table_from_zips_follows_the_app_loader(table, label_rows, small_zip) -> None:
    assert len(table) == 549 and table.hu.shape == (549, SIZE, SIZE)
    assert table.hu.dtype == np.int16
    summary = table.summary()
    assert summary["studies"] == 16 and summary["positive_slices"]["any"] == 69
    for uid, rows in label_rows.items():
        mine = np.flatnonzero(table.study_ids == uid)
        order = mine[np.argsort(table.slice_index[mine])]
        assert table.sop_ids[order].tolist() == [r["image_id"] for r in rows]
        assert table.slice_index[order].tolist() == [int(r["slice_index"]) for r in rows]
        assert len(set(table.patient_keys[mine].tolist())) == 1
    # Pseudonymous patient keys only: the PatientID never enters a table.
    patient_ids = {r["PatientID"] for rows in label_rows.values() for r in rows}
    assert not patient_ids & set(table.patient_keys.tolist())
    # Pixels: the app's resize (model_input) of the same series, to int16 rounding.
    study = load_studies(small_zip)[0]
    rows = np.flatnonzero(table.study_ids == study.study_instance_uid)
    rows = rows[np.argsort(table.slice_index[rows])]
    ours = model_batch(torch.from_numpy(table.load_batch(rows)), MODEL_WINDOWS)
    app = model_input(study.default_series.hu, SIZE)
    assert float((ours - app).abs().max()) < 0.6 / min(w.width for w in MODEL_WINDOWS) + 1e-6


def _extract_as_challenge_layout(zips: list[Path], folder: Path) -> None:
    """Members of study zips written flat as ID_<sop>.dcm, as in the challenge's folder."""
    folder.mkdir()
    for path in zips:
        for study in load_studies(path):
            by_source = {s.source: s.sop_instance_uid for s in study.default_series.slices}
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    base = name.rsplit("/", 1)[-1]
                    if base in by_source:
                        (folder / f"{by_source[base]}.dcm").write_bytes(zf.read(name))
    (folder / "ID_notlabelled.dcm").write_bytes(b"not read: no label names it")


def test_challenge_folder_gives_the_same_rows_and_pixels(
    tmp_path: Path, study_zips, labels, table, monkeypatch
) -> None:
    zips = sorted(study_zips, key=lambda p: p.stat().st_size)[:2]
    folder = tmp_path / "stage_2_train"
    _extract_as_challenge_layout(zips, folder)
    cache = tmp_path / "index.csv"
    lazy = from_dicom_folder(
        folder, labels, SIZE, index_cache=cache, hu_range=window_span(MODEL_WINDOWS)
    )
    assert not hasattr(lazy, "hu") and cache.is_file()
    assert "patient" in cache.read_text().splitlines()[0]
    keys = {(s, i) for s, i in zip(lazy.study_ids, lazy.slice_index, strict=True)}
    mine = np.isin(table.study_ids, lazy.study_ids)
    pairs = zip(table.study_ids[mine], table.slice_index[mine], strict=True)
    assert keys == set(pairs)
    for k in (0, len(lazy) // 2, len(lazy) - 1):
        j = int(
            np.flatnonzero(
                (table.study_ids == lazy.study_ids[k]) & (table.slice_index == lazy.slice_index[k])
            )[0]
        )
        assert lazy.sop_ids[k] == table.sop_ids[j] and lazy.patient_keys[k] == table.patient_keys[j]
        np.testing.assert_array_equal(lazy.labels[k], table.labels[j])
        np.testing.assert_array_equal(lazy.load_hu(k), table.load_hu(j))
    # A second run reads the cached header index instead of the folder's headers.
    monkeypatch.setattr(dataset, "index_dicom_folder", lambda *a, **k: pytest.fail("re-indexed"))
    again = from_dicom_folder(folder, labels, SIZE, index_cache=cache)
    assert again.sop_ids.tolist() == lazy.sop_ids.tolist()
    hu, target, row = SliceDataset(again, [3])[0]
    assert hu.shape == (1, SIZE, SIZE) and hu.dtype == torch.float32 and row == 3
    assert target.tolist() == again.labels[3].tolist()


def test_folder_without_labelled_files_is_refused(tmp_path: Path, labels) -> None:
    (tmp_path / "ID_x.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match="none named ID_<sop>.dcm"):
        from_dicom_folder(tmp_path, labels, SIZE)


# --------------------------------------------------------------------------- splits


@pytest.mark.parametrize(("folds", "seed"), [(5, 0), (4, 1), (16, 0)])
def test_kfold_never_puts_a_study_or_patient_on_both_sides(table, folds: int, seed: int) -> None:
    positive = table.labels[:, 0] > 0
    seen_as_val: list[str] = []
    for fold in range(folds):
        train, val = split_by_group(
            table.groups, folds=folds, fold=fold, seed=seed, positive=positive
        )
        assert len(train) and len(val)
        assert np.intersect1d(train, val).size == 0 and len(train) + len(val) == len(table)
        assert not set(table.study_ids[train]) & set(table.study_ids[val])
        assert not set(table.patient_keys[train]) & set(table.patient_keys[val])
        seen_as_val += sorted(set(table.study_ids[val].tolist()))
        if folds <= 6:  # 6 studies bleed: every fold gets at least one
            assert positive[val].any()
    assert sorted(seen_as_val) == sorted(set(table.study_ids.tolist()))  # each exactly once


def test_patient_with_two_studies_stays_on_one_side() -> None:
    groups = np.array(["p1"] * 3 + ["p2"] * 2 + ["p3"] * 4 + ["p4"] * 2)
    studies = np.array(["s1", "s1", "s2", "s3", "s3", "s4", "s4", "s5", "s5", "s6", "s6"])
    assignment = fold_of_groups(groups, folds=2, seed=3)
    assert set(assignment) == {"p1", "p2", "p3", "p4"}
    for fold in range(2):
        train, val = split_by_group(groups, folds=2, fold=fold, seed=3)
        assert not set(studies[train]) & set(studies[val])
    assert split_by_group(groups, folds=2, fold=1, seed=3)[1].tolist() == (
        split_by_group(groups, folds=2, fold=1, seed=3)[1].tolist()
    )


def test_fixed_fraction_split(table) -> None:
    positive = table.labels[:, 0] > 0
    train, val = split_by_group(table.groups, val_fraction=0.25, seed=2, positive=positive)
    assert not set(table.study_ids[train]) & set(table.study_ids[val])
    assert len(set(table.study_ids[val])) == 4 and positive[val].any() and positive[train].any()
    with pytest.raises(ValueError, match="either folds"):
        split_by_group(table.groups, folds=5, val_fraction=0.2)
    with pytest.raises(ValueError, match="cannot fill"):
        split_by_group(table.groups[:40], folds=5, fold=0)
    assert patient_key("", "study-1") != patient_key("study-1", "x")


# --------------------------------------------------------------------------- augmentation


def test_augment_without_changes_is_the_model_input(table) -> None:
    hu = torch.from_numpy(table.load_batch(range(4)))[:, None]
    plain = augment(hu, torch.Generator().manual_seed(0), config=AugmentConfig.off())
    np.testing.assert_array_equal(plain.numpy(), model_batch(hu).numpy())
    np.testing.assert_array_equal(
        plain.numpy(), model_input(table.load_batch(range(4)), SIZE, MODEL_WINDOWS).numpy()
    )
    flipped = augment(
        hu, torch.Generator().manual_seed(0), config=AugmentConfig(1.0, 0, 0, 0, 0, 0, 0)
    )
    torch.testing.assert_close(flipped, plain.flip(-1), atol=1e-4, rtol=0)  # resampling rounding


def test_augment_is_seeded_bounded_and_fills_with_air(table) -> None:
    hu = torch.from_numpy(table.load_batch(range(8)))[:, None]
    a = augment(hu, torch.Generator().manual_seed(5))
    b = augment(hu, torch.Generator().manual_seed(5))
    c = augment(hu, torch.Generator().manual_seed(6))
    assert a.shape == (8, 3, SIZE, SIZE) and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    # A uniform 40 HU image rotated and zoomed: brain stays mid-grey at the centre; where a
    # corner comes from outside the image it is air, black even in the bone window (a zero
    # fill, 0 HU, would be 0.29 there).
    flat = torch.full((16, 1, SIZE, SIZE), 40.0)
    out = augment(
        flat,
        torch.Generator().manual_seed(1),
        config=AugmentConfig(0.5, 10.0, 0.1, 0.0, 0.0, 0.0, 0.0),
    )
    assert out[:, 0, SIZE // 2, SIZE // 2].sub(0.5).abs().max() < 1e-4
    corners = out[:, :, 0, 0]
    assert (corners.amax(dim=1) == 0).any()
    assert float(out[:, 2].max()) <= (40 - BONE.low) / BONE.width + 1e-5
    with pytest.raises(ValueError, match="batch, 1, size, size"):
        augment(flat[:, 0], torch.Generator())


# --------------------------------------------------------------------------- brain-window PNGs

PNG_DIR = DATA / "rsna_png" / "images"
PNG_LABELS = DATA / "rsna_png" / "rsna_png_stage_2_train.csv"
HEMSEG_CSV = DATA / "hemseg" / "hemseg_masks.csv"


@pytest.fixture(scope="module")
def png_folder(tmp_path_factory) -> Path:
    """A few real rsna_png slices (positives and negatives, and the one that is not 512²)."""
    require(PNG_DIR)
    labels = read_challenge_labels(PNG_LABELS)
    pos = sorted(k for k, v in labels.items() if v[0] == 1)[:6]
    neg = sorted(k for k, v in labels.items() if v[0] == 0)[:10]
    odd = [p.stem for p in sorted(PNG_DIR.glob("*.png")) if Image.open(p).size != (512, 512)]
    folder = tmp_path_factory.mktemp("png")
    for image_id in pos + neg + odd[:1]:
        (folder / f"{image_id}.png").write_bytes((PNG_DIR / f"{image_id}.png").read_bytes())
    (folder / "unlabelled.png").write_bytes((PNG_DIR / f"{neg[0]}.png").read_bytes())
    return folder


def test_png_value_maps_to_0_80_hu(tmp_path: Path) -> None:
    path = tmp_path / "ramp.png"
    Image.fromarray(np.array([[0, 51, 255]], dtype=np.uint8)).save(path)
    np.testing.assert_allclose(read_png_hu(path), [[0.0, 16.0, 80.0]], atol=1e-4)


def test_png_folder_table_reads_labelled_slices_at_the_model_size(png_folder: Path) -> None:
    labels = read_challenge_labels(PNG_LABELS)
    table = from_png_folder(png_folder, labels, 64)
    assert len(table) == len(list(png_folder.glob("ID_*.png")))  # the unlabelled one is left out
    assert table.hu.shape == (len(table), 64, 64)
    assert table.hu.min() >= 0 and table.hu.max() <= 80
    for i, image_id in enumerate(table.sop_ids):
        np.testing.assert_array_equal(table.labels[i], labels[image_id])
    assert len(set(table.patient_keys.tolist())) == len(table)  # each slice its own patient
    assert int(table.labels[:, 0].sum()) == 6
    with pytest.raises(ValueError, match="none named ID_<sop>.png"):
        from_png_folder(png_folder, {"ID_nothing": labels[table.sop_ids[0]]}, 64)


def test_hash_split_is_fixed_by_id_and_keeps_forced_ids_in_validation() -> None:
    ids = np.array([f"ID_{i:05d}" for i in range(4000)])
    train, val = split_by_hash(ids, 0.15)
    assert not set(train) & set(val) and len(train) + len(val) == len(ids)
    assert 0.12 < len(val) / len(ids) < 0.18
    # An image keeps its side when others come and go (no seed, no dependence on the set).
    train2, val2 = split_by_hash(ids[::3], 0.15)
    assert set(ids[::3][val2]) == set(ids[val]) & set(ids[::3])
    forced = [str(ids[train[0]]), str(ids[train[1]])]
    _, val3 = split_by_hash(ids, 0.15, forced)
    assert set(forced) <= set(ids[val3]) and set(ids[val]) <= set(ids[val3])
    assert split_by_hash(ids, 0.15)[1].tolist() == val.tolist()


def test_hemseg_slices_are_all_in_the_validation_split() -> None:
    require(HEMSEG_CSV)
    hemseg = read_id_column(HEMSEG_CSV)
    assert len(hemseg) == 115
    ids = np.array(sorted(p.stem for p in PNG_DIR.glob("*.png")))
    train, _ = split_by_hash(ids, 0.15, hemseg)
    assert not set(ids[train].tolist()) & set(hemseg)
