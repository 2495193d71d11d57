"""The house's rules, read from the source: a room imports only the base modules and the rooms
before it on the road; core/ never imports streamlit or the dashboard."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "core"
ROOMS = ("dicom", "imaging", "model", "inference", "review", "reports", "pacs", "training")
#: What each room may import besides the base modules (labels, errors, notice, data_folder).
ALLOWED = {
    "dicom": set(),
    "imaging": {"dicom"},
    "model": {"dicom", "imaging"},
    "inference": {"dicom", "imaging", "model"},
    "review": {"dicom", "imaging", "model", "inference"},
    "reports": {"dicom", "imaging", "model", "inference", "review"},
    "pacs": {"dicom", "imaging", "model", "inference", "review", "reports"},
    "training": {"dicom", "imaging", "model", "inference"},
}
IMPORT = re.compile(r"^\s*(?:from|import)\s+core\.(\w+)", re.MULTILINE)


@pytest.mark.parametrize("room", ROOMS)
def test_a_room_imports_no_room_above_it(room: str) -> None:
    for path in sorted((CORE / room).glob("*.py")):
        used = set(IMPORT.findall(path.read_text(encoding="utf-8"))) & set(ROOMS)
        assert used <= ALLOWED[room] | {room}, f"{path.name} imports {used - ALLOWED[room]}"


def test_base_modules_and_core_import_no_room_and_no_streamlit() -> None:
    for name in ("labels.py", "errors.py", "notice.py", "data_folder.py"):
        used = set(IMPORT.findall((CORE / name).read_text(encoding="utf-8")))
        assert not used & set(ROOMS), name
    for path in CORE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(?:from|import)\s+(?:streamlit|dashboard)\b", text, re.M), path
