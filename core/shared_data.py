"""Where the shared data lies, for the commands that measure or build with it (calibrate,
quantize, bench, synthesize); the app itself never reads it.

Why one place: each command had its own default (one relative to the working directory, others
to the checkout, only some honouring the environment), so the same command could find the
data or not depending on how it was started.
"""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_root() -> Path:
    """``$ICH_SHARED_DATA``, else ``shared/data`` beside the checkout (where CI puts it)."""
    env = os.environ.get("ICH_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
