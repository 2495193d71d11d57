"""dicom3tools' dciodvfy on the objects this tool writes: every one must pass with no Error line.

dciodvfy (Debian's dicom3tools, installed by `.ci/setup test`) checks an object against the IOD
tables of the standard, which catches what pydicom and highdicom let through (a Type 2C attribute
missing, a wrong code, a module out of place). Warnings are allowed; errors fail the test.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = "dciodvfy"


def dciodvfy_errors(data: bytes, tmp_path: Path, name: str = "object.dcm") -> list[str]:
    """The Error lines dciodvfy prints for one DICOM file's bytes (empty when it passes)."""
    exe = shutil.which(DCIODVFY)
    if exe is None:
        pytest.fail(
            "dciodvfy not found: install Debian's dicom3tools (`.ci/setup test` does)",
            pytrace=False,
        )
    path = tmp_path / name
    path.write_bytes(data)
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]
