"""Where the real RSNA data lies: ../shared/data beside the checkout, or $ICH_SHARED_DATA
(core.shared_data decides, as for the commands)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.shared_data import shared_data_root

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data_root()
LABELLED = DATA / "rsna_ich"
UNLABELLED_ZIP = DATA / "rsna_ich_unlabeled" / "ID_4d28912ba6.zip"


def require(path: Path) -> Path:
    """``path``, or a loud failure (never a skip) naming where the real data should be."""
    if not path.exists():
        pytest.fail(
            f"Real test data not found at {path}. The tests need the RSNA data in "
            "../shared/data beside the checkout (or set ICH_SHARED_DATA).",
            pytrace=False,
        )
    return path
