"""The app's own data folder: the one place it writes (reviews, keys, caches, reports).

A base module, below every room: the review store keeps its database there, the inference
room its compiled OpenVINO models, the PACS watcher its state. Nothing is written outside it.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import StoreError

#: Where the folder is when ICH_REVIEW_DATA does not say: data/ beside the checkout.
DEFAULT = Path(__file__).resolve().parents[1] / "data"


def data_dir(create: bool = True) -> Path:
    """The app's own data folder (created on first use unless ``create`` is False); nothing is
    written outside it."""
    root = os.environ.get("ICH_REVIEW_DATA")
    path = Path(root).expanduser() if root else DEFAULT
    if create:
        ensure_folder(path)
    return path


def ensure_folder(path: Path) -> None:
    """Create the folder, or say in words why it cannot be (not an OSError traceback)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"The data folder {path} cannot be created ({exc.strerror or exc}). Set "
            "ICH_REVIEW_DATA to a folder this account can write to, or ask IT to create it."
        ) from exc
