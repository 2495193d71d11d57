"""Helpers shared by the tests that build DICOM files and zips from the real slices."""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pydicom

Files = list[tuple[str, bytes]]


def read_ds(data: bytes) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the RSNA UIDs ("ID_…") are not valid UIDs
        return pydicom.dcmread(io.BytesIO(data))


def write_ds(ds: pydicom.Dataset) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def edit(data: bytes, change: Callable[[pydicom.Dataset], None]) -> bytes:
    ds = read_ds(data)
    change(ds)
    return write_ds(ds)


def zip_bytes(files: Files, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files:
            zf.writestr(name, data)
    return buf.getvalue()


def write_zip(files: Files, path: Path, method: int = zipfile.ZIP_DEFLATED) -> Path:
    path.write_bytes(zip_bytes(files, method))
    return path
