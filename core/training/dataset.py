"""Training data: labelled slices from study zips or from the challenge's own folder layout.

Why two sources behind one table: the project's study zips go through the app's loader
(``core.dicom.study.load_studies``), so training sees exactly the HU, slice order and default series
that inference sees; the challenge's layout (a flat folder of ~750k ``ID_<sop>.dcm`` files and
``stage_2_train.csv``) is too large for memory, so it is indexed from headers and read one file
at a time, still through ``core.dicom.ct_slice.read_member`` (same HU conversion, same RSNA 12-bit
fix). Both give a ``SliceTable``: one row per labelled slice with its study, a pseudonymous
patient key (for splitting, never the PatientID itself), its place in the series and its labels.

Augmentation runs on whole batches on the training device (CPU or GPU): geometry with one
``grid_sample``, then jittered windows with the same arithmetic as ``core.imaging.windowing``.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from core.dicom.archive import Member
from core.dicom.ct_slice import HU_MIN, RawSlice, read_member
from core.dicom.study import load_studies, patient_axis_z, slice_normal
from core.imaging.windowing import MODEL_WINDOWS, Window, model_input
from core.labels import LABELS
from core.training.label_files import read_labels

log = logging.getLogger(__name__)

N_LABELS = len(LABELS)

# --------------------------------------------------------------------------- labels


def read_challenge_labels(csv_path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Image id (``ID_<sop>``, the slice's SOPInstanceUID) → its six labels as float32 (6,) in
    LABELS order, from the challenge CSV or the wide CSV: ``core.training.label_files`` reads
    and checks the file (identical repeats accepted, contradictions, unknown subtypes, values
    other than 0/1 and incomplete images refused)."""
    return {
        image_id: np.asarray(values, dtype=np.float32)
        for image_id, values in read_labels(Path(csv_path)).labels.items()
    }


def label_for(labels: dict[str, np.ndarray], sop: str) -> np.ndarray | None:
    """A slice's labels by its SOPInstanceUID, or None. Challenge ids are ``ID_<sop>``; RSNA's
    own SOPInstanceUIDs already start with ``ID_``."""
    found = labels.get(sop)
    return found if found is not None else labels.get(f"ID_{sop}")


def _labelled(labels: dict[str, np.ndarray], sop: str) -> np.ndarray:
    found = label_for(labels, sop)
    if found is None:  # callers keep only labelled rows
        raise KeyError(sop)
    return found


def patient_key(patient_id: str, study_uid: str) -> str:
    """Group key for splitting: a hash of the PatientID (the study when it is empty), so that
    no file or log written by training ever holds the identifier itself."""
    source = f"patient:{patient_id}" if patient_id.strip() else f"study:{study_uid}"
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --------------------------------------------------------------------------- slice tables


@dataclass(eq=False)
class SliceTable:
    """One row per labelled slice; ``load_hu(i)`` gives its HU resized to ``size``²."""

    size: int
    sop_ids: np.ndarray  # str (N,)
    study_ids: np.ndarray  # str (N,) StudyInstanceUID
    series_ids: np.ndarray  # str (N,) SeriesInstanceUID
    patient_keys: np.ndarray  # str (N,) pseudonymous, see patient_key()
    slice_index: np.ndarray  # int (N,) position in the series, patient-axis order
    z: np.ndarray  # float (N,) position along the slice normal, mm
    labels: np.ndarray  # float32 (N, 6) in LABELS order
    source: str = ""  # what the table was built from, for the model card

    def __post_init__(self) -> None:
        n = len(self.sop_ids)
        for name in ("study_ids", "series_ids", "patient_keys", "slice_index", "z", "labels"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {n}")
        if self.labels.shape != (n, N_LABELS):
            raise ValueError(f"labels must be ({n}, {N_LABELS}), got {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.sop_ids)

    @property
    def groups(self) -> np.ndarray:
        """What a split keeps together: the patient (a patient's studies never straddle)."""
        return self.patient_keys

    def load_hu(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def load_batch(self, indices: Sequence[int]) -> np.ndarray:
        """HU float32 (n, size, size) of several rows."""
        return np.stack([self.load_hu(int(i)) for i in indices])

    def summary(self) -> dict[str, object]:
        """Counts only (no identifiers): what the model card says about the training data."""
        return {
            "source": self.source,
            "slices": len(self),
            "studies": len(set(self.study_ids.tolist())),
            "patients": len(set(self.patient_keys.tolist())),
            "positive_slices": {
                label: int(self.labels[:, j].sum()) for j, label in enumerate(LABELS)
            },
        }


@dataclass(eq=False)
class InMemorySlices(SliceTable):
    """HU of every row, resized once, held as int16 (N, size, size): 549 slices at 256² are
    ~70 MB, and int16 loses under 0.5 HU to rounding."""

    hu: np.ndarray = field(default_factory=lambda: np.zeros((0, 1, 1), np.int16), repr=False)

    def load_hu(self, i: int) -> np.ndarray:
        return self.hu[i].astype(np.float32)

    def load_batch(self, indices: Sequence[int]) -> np.ndarray:
        return self.hu[np.asarray(indices, dtype=np.int64)].astype(np.float32)


@dataclass(eq=False)
class LazyDicomSlices(SliceTable):
    """Rows indexed from headers; pixels are read from ``paths[i]`` only when asked for."""

    paths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str), repr=False)
    hu_range: tuple[float, float] | None = None  # clip before resizing, as from_zips does

    def load_hu(self, i: int) -> np.ndarray:
        path = Path(str(self.paths[i]))
        raw = read_member(Member(path.name, data=path.read_bytes()))
        if not isinstance(raw, RawSlice) or raw.hu is None:
            detail = getattr(raw, "detail", "not a CT image")
            raise ValueError(f"{path.name} cannot be read as a CT slice: {detail}")
        return resize_hu(raw.hu[None], self.size, self.hu_range)[0].astype(np.float32)


def resize_hu(hu: np.ndarray, size: int, hu_range: tuple[float, float] | None = None) -> np.ndarray:
    """HU (n, rows, cols) → int16 (n, size, size), bilinear with antialiasing, as
    ``core.imaging.windowing.model_input`` resizes (so training sees inference's pixels); with
    ``hu_range`` clipped to it first, as ``model_input`` clips to its windows' span."""
    x = torch.from_numpy(np.asarray(hu, dtype=np.float32))[:, None]
    if hu_range is not None:
        x = x.clamp(*hu_range)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
    return x[:, 0].round_().clamp_(-32768, 32767).to(torch.int16).numpy()


def zip_paths(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Zip files given directly, or every ``*.zip`` directly inside a folder given."""
    out: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            found = sorted(path.glob("*.zip"))
            if not found:
                raise ValueError(f"{path} holds no .zip files")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise ValueError(f"{path} does not exist")
    return out


def from_zips(
    sources: Iterable[str | os.PathLike[str]],
    labels: dict[str, np.ndarray],
    size: int,
    hu_range: tuple[float, float] | None = None,
) -> InMemorySlices:
    """Labelled slices of each study's default series (the one the app scores), in memory.

    Slices without a label are left out (and counted); a study without any labelled slice is
    an error, since it usually means the wrong label file.
    """
    rows: dict[str, list] = defaultdict(list)
    stacks: list[np.ndarray] = []
    unlabelled = 0
    paths = zip_paths(sources)
    for path in paths:
        for study in load_studies(path):
            series = study.default_series
            keep = [
                (info, lab)
                for info in series.slices
                if (lab := label_for(labels, info.sop_instance_uid)) is not None
            ]
            unlabelled += series.n_slices - len(keep)
            if not keep:
                raise ValueError(
                    f"{path.name}: none of the {series.n_slices} slices of study "
                    f"{study.study_instance_uid} has a label in the label file"
                )
            key = patient_key(study.patient_id, study.study_instance_uid)
            for info, lab in keep:
                rows["sop"].append(info.sop_instance_uid)
                rows["study"].append(study.study_instance_uid)
                rows["series"].append(series.series_instance_uid)
                rows["patient"].append(key)
                rows["index"].append(info.index)
                rows["z"].append(info.z)
                rows["labels"].append(lab)
            stacks.append(resize_hu(series.hu[[info.index for info, _ in keep]], size, hu_range))
    if unlabelled:
        log.info("%d slice(s) without a label were left out", unlabelled)
    return InMemorySlices(
        size=size,
        sop_ids=np.array(rows["sop"], dtype=str),
        study_ids=np.array(rows["study"], dtype=str),
        series_ids=np.array(rows["series"], dtype=str),
        patient_keys=np.array(rows["patient"], dtype=str),
        slice_index=np.array(rows["index"], dtype=np.int64),
        z=np.array(rows["z"], dtype=np.float64),
        labels=np.stack(rows["labels"]).astype(np.float32),
        source=f"{len(paths)} study zip(s)",
        hu=np.concatenate(stacks),
    )


# --------------------------------------------------------------------------- brain-window PNGs

#: The PNG layout's one HU mapping: value 0..255 ↔ 0..80 HU (level 40, width 80).
PNG_HU_RANGE: tuple[float, float] = (0.0, 80.0)


def read_png_hu(path: str | os.PathLike[str]) -> np.ndarray:
    """A brain-window PNG (8-bit grey, level 40 / width 80) → HU float32: value × 80 / 255.

    Only 0–80 HU survive in such a file (below reads 0, above reads 80), which is why the
    model's windows lie inside that range.
    """
    with Image.open(path) as im:
        grey = np.asarray(im.convert("L"), dtype=np.float32)
    lo, hi = PNG_HU_RANGE
    return lo + grey * np.float32((hi - lo) / 255.0)


def from_png_folder(
    folder: str | os.PathLike[str],
    labels: dict[str, np.ndarray],
    size: int,
) -> InMemorySlices:
    """A folder of ``ID_<sop>.png`` brain-window slices with challenge labels, in memory.

    Each PNG is its own study and patient (the layout carries no header): the split then puts
    single slices on either side, which is right for slices from as many patients as slices.
    Only labelled images are read; a folder with none is an error (the wrong label file).
    """
    folder = Path(folder)
    names = sorted(e.name for e in os.scandir(folder) if e.name.endswith(".png") and e.is_file())
    ids = [n[: -len(".png")] for n in names if label_for(labels, n[: -len(".png")]) is not None]
    if not ids:
        raise ValueError(
            f"{folder} holds {len(names)} .png file(s), none named ID_<sop>.png after a "
            "labelled image of the label file"
        )
    # One at a time: the files are not all the same size (a few are not 512²).
    stacks = [resize_hu(read_png_hu(folder / f"{i}.png")[None], size) for i in ids]
    lab = [label_for(labels, i) for i in ids]
    return InMemorySlices(
        size=size,
        sop_ids=np.array(ids, dtype=str),
        study_ids=np.array(ids, dtype=str),
        series_ids=np.array(ids, dtype=str),
        patient_keys=np.array([patient_key("", i) for i in ids], dtype=str),
        slice_index=np.zeros(len(ids), dtype=np.int64),
        z=np.zeros(len(ids), dtype=np.float64),
        labels=np.stack([v for v in lab if v is not None]).astype(np.float32),
        source=f"{len(ids)} brain-window PNG slices ({folder.name})",
        hu=np.concatenate(stacks),
    )


def hash_fraction(key: str) -> float:
    """A stable number in [0, 1) from ``key`` (sha256): a split by it never moves an image
    when others are added or removed, and needs no seed.

    >>> round(hash_fraction("ID_000"), 4) == round(hash_fraction("ID_000"), 4)
    True
    """
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:12], 16) / float(1 << 48)


def split_by_hash(
    ids: Sequence[str] | np.ndarray, fraction: float, forced_val: Iterable[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) row indices: an id is validation when ``hash_fraction(id) <
    fraction`` or it is in ``forced_val`` (e.g. the slices with hand-drawn masks, kept out of
    training so that outline figures measured on them stay honest)."""
    if not 0 < fraction < 1:
        raise ValueError(f"the validation share must be between 0 and 1, got {fraction}")
    forced = set(forced_val)
    is_val = np.array([hash_fraction(str(i)) < fraction or str(i) in forced for i in ids])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def read_id_column(csv_path: str | os.PathLike[str], column: str = "image_id") -> list[str]:
    """The ``column`` of a CSV (e.g. ``hemseg_masks.csv``'s image ids)."""
    path = Path(csv_path)
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(f"{path.name} has no column {column!r}")
        return [row[column].strip() for row in reader if row.get(column)]


# --------------------------------------------------------------------------- challenge folder

_HEADER_TAGS = [
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "PatientID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
]
_INDEX_COLUMNS = ("file", "sop", "study", "series", "patient", "z", "instance")


def _read_header(path: str) -> tuple[str, ...] | None:
    """One file's identifiers and position from its header (no pixels); None if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except Exception:  # noqa: BLE001 - a damaged file is skipped and counted, as the app does
        return None
    z = ""
    try:
        pos = [float(v) for v in ds.ImagePositionPatient]
        ori = [float(v) for v in ds.ImageOrientationPatient]
        z = repr(patient_axis_z(pos, slice_normal(ori)))
    except (AttributeError, TypeError, ValueError):
        pass
    number = str(ds.get("InstanceNumber", "") or "")
    return (
        Path(path).name,
        str(ds.get("SOPInstanceUID", "")),
        str(ds.get("StudyInstanceUID", "")),
        str(ds.get("SeriesInstanceUID", "")),
        patient_key(str(ds.get("PatientID", "")), str(ds.get("StudyInstanceUID", ""))),
        z,
        number,
    )


def index_dicom_folder(
    folder: str | os.PathLike[str],
    labels: dict[str, np.ndarray],
    workers: int = 0,
) -> list[tuple[str, ...]]:
    """Header rows of the labelled ``ID_<sop>.dcm`` files of ``folder`` (others are not read).

    Reading 750k headers takes minutes, so it runs in ``workers`` processes (0: serial).
    """
    folder = Path(folder)
    names = [e.name for e in os.scandir(folder) if e.name.endswith(".dcm") and e.is_file()]
    wanted = sorted(n for n in names if label_for(labels, n[: -len(".dcm")]) is not None)
    if not wanted:
        raise ValueError(
            f"{folder} holds {len(names)} .dcm file(s), none named ID_<sop>.dcm after a "
            "labelled image of the label file"
        )
    paths = [str(folder / n) for n in wanted]
    if workers > 1 and len(paths) > 2000:
        with ProcessPoolExecutor(workers) as pool:
            rows = list(pool.map(_read_header, paths, chunksize=256))
    else:
        rows = [_read_header(p) for p in paths]
    good = [r for r in rows if r is not None and r[1]]
    if len(good) < len(rows):
        log.warning("%d labelled file(s) could not be read and were skipped", len(rows) - len(good))
    return good


def save_index(rows: list[tuple[str, ...]], path: str | os.PathLike[str]) -> None:
    """The header index as CSV (patient column: pseudonymous keys only), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_INDEX_COLUMNS)
        writer.writerows(rows)
    os.replace(tmp, path)


def load_index(path: str | os.PathLike[str]) -> list[tuple[str, ...]]:
    with Path(path).open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        if tuple(next(reader, ())) != _INDEX_COLUMNS:
            raise ValueError(f"{Path(path).name} is not a DICOM index written by this trainer")
        return [tuple(r) for r in reader if r]


def from_dicom_folder(
    folder: str | os.PathLike[str],
    labels: dict[str, np.ndarray],
    size: int,
    *,
    index_cache: str | os.PathLike[str] | None = None,
    workers: int = 0,
    hu_range: tuple[float, float] | None = None,
) -> LazyDicomSlices:
    """The challenge's layout: a flat folder of ``ID_<sop>.dcm``. Headers only are read here
    (or the index cached in ``index_cache`` by an earlier run); pixels are read per item."""
    folder = Path(folder)
    if index_cache is not None and Path(index_cache).is_file():
        rows = load_index(index_cache)
        log.info("read the header index of %d files from %s", len(rows), Path(index_cache).name)
    else:
        rows = index_dicom_folder(folder, labels, workers)
        if index_cache is not None:
            save_index(rows, index_cache)
    rows = [r for r in rows if label_for(labels, r[1]) is not None]
    if not rows:
        raise ValueError(f"no labelled slice found in {folder}")
    # Order each series along the head: z when every slice has it, else InstanceNumber.
    by_series: dict[tuple[str, str], list[tuple[str, ...]]] = defaultdict(list)
    for r in rows:
        by_series[(r[2], r[3])].append(r)
    ordered: list[tuple[tuple[str, ...], int]] = []
    for key in sorted(by_series):
        items = by_series[key]
        if all(r[5] for r in items):
            items.sort(key=lambda r: (float(r[5]), r[1]))
        else:
            items.sort(key=lambda r: (_int_or(r[6], 1 << 30), r[1]))
        ordered += [(r, i) for i, r in enumerate(items)]
    return LazyDicomSlices(
        size=size,
        sop_ids=np.array([r[1] for r, _ in ordered], dtype=str),
        study_ids=np.array([r[2] for r, _ in ordered], dtype=str),
        series_ids=np.array([r[3] for r, _ in ordered], dtype=str),
        patient_keys=np.array([r[4] for r, _ in ordered], dtype=str),
        slice_index=np.array([i for _, i in ordered], dtype=np.int64),
        z=np.array([float(r[5]) if r[5] else float(i) for r, i in ordered], dtype=np.float64),
        labels=np.stack([_labelled(labels, r[1]) for r, _ in ordered]).astype(np.float32),
        source="folder of ID_<sop>.dcm files (challenge layout)",
        paths=np.array([str(folder / r[0]) for r, _ in ordered], dtype=str),
        hu_range=hu_range,
    )


def _int_or(text: str, default: int) -> int:
    try:
        return int(float(text))
    except ValueError:
        return default


# --------------------------------------------------------------------------- torch dataset


class SliceDataset(Dataset):
    """Rows ``indices`` of a table → (HU float32 (1, S, S), labels float32 (6,), row index).

    The row index comes back so predictions and embeddings can be matched to their slices.
    """

    def __init__(self, table: SliceTable, indices: Sequence[int] | np.ndarray | None = None):
        self.table = table
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        i = int(self.indices[k])
        hu = torch.from_numpy(self.table.load_hu(i))[None]
        return hu, torch.from_numpy(self.table.labels[i]), i


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; zero (or 1.0 for factors) turns one off."""

    flip: float = 0.5  # probability of a left-right flip
    rotate_deg: float = 10.0  # ± degrees
    scale: float = 0.1  # zoom factor in 1 ± scale
    level_shift: float = 0.05  # window level ± this fraction of the window's width
    width_scale: float = 0.1  # window width × (1 ± width_scale)
    contrast: float = 0.1  # HU around the brain level × (1 ± contrast)
    noise_hu: float = 3.0  # Gaussian noise, sigma drawn per slice in [0, noise_hu] HU

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _uniform(n: int, half_range: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * half_range


def augment(
    hu: torch.Tensor,
    generator: torch.Generator,
    windows: tuple[Window, ...] = MODEL_WINDOWS,
    config: AugmentConfig = AugmentConfig(),
) -> torch.Tensor:
    """HU batch (B, 1, S, S) on any device → augmented model input (B, len(windows), S, S).

    Random numbers are drawn on the CPU from ``generator`` (so a seed gives the same batch on
    CPU and GPU) and applied on ``hu``'s device: flip, rotation and zoom in one grid_sample
    (outside the image is air, -1024 HU), contrast and noise in HU, then each window with a
    jittered level and width, windowed as ``core.imaging.windowing.model_input`` does.
    """
    return augment_with_mask(hu, None, generator, windows, config)[0]


def augment_with_mask(
    hu: torch.Tensor,
    mask: torch.Tensor | None,
    generator: torch.Generator,
    windows: tuple[Window, ...] = MODEL_WINDOWS,
    config: AugmentConfig = AugmentConfig(),
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``augment``, also moving a mask batch (B, 1, S, S) by the same flip, rotation and zoom
    (bilinear, so its edges become fractions), as the bleed map's targets must follow the
    pixels they outline."""
    if hu.ndim != 4 or hu.shape[1] != 1:
        raise ValueError(f"expected HU (batch, 1, size, size), got {tuple(hu.shape)}")
    b, device = hu.shape[0], hu.device
    x = hu.to(torch.float32)
    flip = torch.rand(b, generator=generator) < config.flip
    angle = torch.deg2rad(_uniform(b, config.rotate_deg, generator))
    zoom = 1.0 + _uniform(b, config.scale, generator)
    contrast = 1.0 + _uniform(b, config.contrast, generator)
    sigma = torch.rand(b, generator=generator, dtype=torch.float64) * config.noise_hu
    shift = _uniform(b * len(windows), config.level_shift, generator).view(b, -1)
    stretch = 1.0 + _uniform(b * len(windows), config.width_scale, generator).view(b, -1)
    noise = torch.randn(x.shape, generator=generator) if config.noise_hu > 0 else None

    if config.flip > 0 or config.rotate_deg > 0 or config.scale > 0:
        # Output pixel → input pixel: rotate, divide by the zoom, then flip horizontally.
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        sx = torch.where(flip, -1.0, 1.0).to(torch.float64)
        theta = torch.stack(
            [
                torch.stack([cos * sx, -sin * sx, torch.zeros(b, dtype=torch.float64)], 1),
                torch.stack([sin, cos, torch.zeros(b, dtype=torch.float64)], 1),
            ],
            1,
        ).to(device=device, dtype=torch.float32)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # grid_sample pads with 0: sample HU + 1024 so that the padding is air.
        x = F.grid_sample(x - HU_MIN, grid, mode="bilinear", align_corners=False) + HU_MIN
        if mask is not None:
            mask = F.grid_sample(mask.float(), grid, mode="bilinear", align_corners=False)
    if config.contrast > 0:
        brain = float(windows[0].level)
        x = (x - brain) * contrast.to(device, torch.float32).view(b, 1, 1, 1) + brain
    if noise is not None:
        x = x + noise.to(device) * sigma.to(device, torch.float32).view(b, 1, 1, 1)

    base_level = torch.tensor([w.level for w in windows], dtype=torch.float64)
    base_width = torch.tensor([w.width for w in windows], dtype=torch.float64)
    width = base_width * stretch
    level = base_level + shift * base_width
    return window_batch(x, level - width / 2, width), mask


def window_batch(hu: torch.Tensor, low: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """HU (B, 1, S, S) and per-slice windows (B, C) → (B, C, S, S) in [0, 1]: the arithmetic of
    ``core.imaging.windowing.model_input`` with a window per slice (which it cannot take)."""
    b = hu.shape[0]
    low = low.to(hu.device, torch.float32).view(b, -1, 1, 1)
    width = width.to(hu.device, torch.float32).view(b, -1, 1, 1)
    return ((hu - low) / width).clamp_(0.0, 1.0)


def model_batch(hu: torch.Tensor, windows: tuple[Window, ...] = MODEL_WINDOWS) -> torch.Tensor:
    """Un-augmented input (validation, embeddings): ``core.imaging.windowing.model_input``
    itself, on HU that is already at the model's size, so nothing is resized twice."""
    if hu.ndim == 4:
        hu = hu[:, 0]
    size = int(hu.shape[-1])
    if hu.shape[-2] != size:
        raise ValueError(f"expected square slices, got {tuple(hu.shape)}")
    return model_input(hu, size, windows)


# --------------------------------------------------------------------------- splits


def fold_of_groups(
    groups: Sequence[str] | np.ndarray,
    folds: int,
    seed: int = 0,
    positive: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, int]:
    """Group → fold in 0..folds-1, groups with a positive item spread first across the folds,
    then the rest, each to the fold with fewest groups (then fewest items). Deterministic."""
    groups = np.asarray(groups)
    unique, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if folds < 2:
        raise ValueError(f"k-fold needs at least 2 folds, got {folds}")
    if len(unique) < folds:
        raise ValueError(f"{len(unique)} patient(s)/studies cannot fill {folds} folds")
    pos = np.zeros(len(unique), dtype=bool)
    if positive is not None:
        np.logical_or.at(pos, inverse, np.asarray(positive, dtype=bool))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(unique))
    n_groups = np.zeros(folds, dtype=np.int64)
    n_pos = np.zeros(folds, dtype=np.int64)
    n_items = np.zeros(folds, dtype=np.int64)
    out: dict[str, int] = {}
    for g in [g for g in order if pos[g]] + [g for g in order if not pos[g]]:
        if pos[g]:
            f = min(range(folds), key=lambda k: (n_pos[k], n_groups[k], n_items[k], k))
            n_pos[f] += 1
        else:
            f = min(range(folds), key=lambda k: (n_groups[k], n_items[k], k))
        n_groups[f] += 1
        n_items[f] += counts[g]
        out[str(unique[g])] = f
    return out


def split_by_group(
    groups: Sequence[str] | np.ndarray,
    *,
    folds: int | None = None,
    fold: int = 0,
    val_fraction: float | None = None,
    seed: int = 0,
    positive: Sequence[bool] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices) with every group (patient, else study) on one side.

    Either ``folds``/``fold`` (k-fold: each group is validation in exactly one fold) or
    ``val_fraction`` (a fixed share of the groups, positives and negatives each in proportion).
    ``positive`` (per item, e.g. labels[:, 0] > 0) spreads groups with hemorrhage evenly.
    """
    groups = np.asarray(groups)
    if (folds is None) == (val_fraction is None):
        raise ValueError("give either folds (with fold) or val_fraction")
    if folds is not None:
        if not 0 <= fold < folds:
            raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
        assignment = fold_of_groups(groups, folds, seed, positive)
        val_groups = {g for g, f in assignment.items() if f == fold}
    else:
        assert val_fraction is not None
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
        val_groups = _fraction_groups(groups, val_fraction, seed, positive)
    is_val = np.isin(groups, list(val_groups))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def _fraction_groups(
    groups: np.ndarray, fraction: float, seed: int, positive: Sequence[bool] | np.ndarray | None
) -> set[str]:
    unique, inverse = np.unique(groups, return_inverse=True)
    if len(unique) < 2:
        raise ValueError("a validation split needs at least two patients/studies")
    pos = np.zeros(len(unique), dtype=bool)
    if positive is not None:
        np.logical_or.at(pos, inverse, np.asarray(positive, dtype=bool))
    rng = np.random.default_rng(seed)
    pos_groups, neg_groups = np.flatnonzero(pos), np.flatnonzero(~pos)
    total = min(len(unique) - 1, max(1, math.floor(fraction * len(unique) + 0.5)))
    # Positives in proportion (at least one when there are any), the rest from negatives.
    k_pos = min(len(pos_groups), max(int(len(pos_groups) > 0), round(fraction * len(pos_groups))))
    k_pos = min(k_pos, total)
    k_neg = min(len(neg_groups), total - k_pos)
    chosen = rng.permutation(pos_groups)[:k_pos].tolist()
    chosen += rng.permutation(neg_groups)[:k_neg].tolist()
    return {str(unique[g]) for g in chosen}


__all__ = [
    "AugmentConfig",
    "InMemorySlices",
    "LazyDicomSlices",
    "SliceDataset",
    "SliceTable",
    "augment",
    "fold_of_groups",
    "from_dicom_folder",
    "from_png_folder",
    "hash_fraction",
    "read_id_column",
    "read_png_hu",
    "split_by_hash",
    "from_zips",
    "index_dicom_folder",
    "model_batch",
    "patient_key",
    "read_challenge_labels",
    "resize_hu",
    "split_by_group",
    "window_batch",
    "zip_paths",
]
