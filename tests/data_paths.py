"""Where the real RSNA data lies: ../shared/data beside the checkout, or $ICH_SHARED_DATA."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ICH_SHARED_DATA", ROOT.parent / "shared" / "data"))
LABELLED = DATA / "rsna_ich"
UNLABELLED_ZIP = DATA / "rsna_ich_unlabeled" / "ID_4d28912ba6.zip"
