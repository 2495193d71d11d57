"""core.inspect: the command a user runs on a zip before triage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from core.inspect import main


def test_json_lists_slices_in_patient_axis_order_with_dicom_keywords(small_zip, label_rows, capsys):
    assert main([str(small_zip), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 1
    study = out[0]
    rows = label_rows[study["StudyInstanceUID"]]
    series = study["series"][0]
    assert series["default"] is True and series["Modality"] == "CT"
    assert series["NumberOfSlices"] == len(rows)
    assert [s["SOPInstanceUID"] for s in series["slices"]] == [r["image_id"] for r in rows]
    zs = [s["z"] for s in series["slices"]]
    assert zs == sorted(zs)
    for key in ("PixelSpacing", "SpacingBetweenSlices", "GantryDetectorTilt", "warnings"):
        assert key in series
    assert "PatientID" not in study and study["patient"].startswith("Patient ")


def test_identity_only_on_request(unlabelled_zip, capsys):
    assert main([str(unlabelled_zip)]) == 0
    text = capsys.readouterr().out
    assert "ID_52c1ab5a" not in text and "tilt 11.0°" in text
    assert main([str(unlabelled_zip), "--json", "--show-identity"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["PatientID"] == "ID_52c1ab5a"


def test_bad_input_gives_a_message_and_exit_code_2(tmp_path, capsys):
    photo = tmp_path / "holiday.zip"
    import zipfile

    with zipfile.ZipFile(photo, "w") as zf:
        zf.writestr("beach.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main([str(photo)]) == 2
    err = capsys.readouterr().err
    assert "no CT images" in err and "Traceback" not in err


def test_missing_fields_read_not_recorded_and_a_closed_pipe_is_quiet(small_zip) -> None:
    root = Path(__file__).resolve().parents[1]

    def shell(pipe: str) -> subprocess.CompletedProcess[str]:
        command = f"'{sys.executable}' -m core.inspect '{small_zip}' | {pipe}"
        return subprocess.run(
            command, shell=True, cwd=root, capture_output=True, text=True, timeout=120
        )

    head = shell("head -2")
    assert len(head.stdout.splitlines()) == 2
    assert "?" not in head.stdout and "''" not in head.stdout
    # `true` reads nothing and exits at once: every write of the command meets a closed pipe.
    closed = shell("true")
    assert "Traceback" not in closed.stderr and "BrokenPipe" not in closed.stderr, closed.stderr
