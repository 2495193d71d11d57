"""``python -m core.predict``: JSON layout, heatmap PNGs, exit codes and messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image

from core.dicom.study import load_studies
from core.labels import LABELS
from core.model.checkpoint import ModelSpec, build_model, load_checkpoint, save_checkpoint
from core.notice import NOTICE
from core.predict import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, main, safe_name
from core.reports.segmentation import mask_from_segmentation
from core.review.pseudonym import for_installation

ROOT = Path(__file__).resolve().parents[1]
SPEC = ModelSpec("tiny", 64)


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    net = build_model(SPEC)
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, 64, 64))
    return save_checkpoint(net.eval(), SPEC, tmp_path_factory.mktemp("weights"), "tiny-cli")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "core.predict", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_end_to_end_json_and_heatmaps(
    card: Path, small_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    cams = tmp_path / "cams"
    argv = [
        str(small_zip),
        "--weights",
        str(card),
        "--allow-unverified",
        "--json",
        str(out),
        "--cam-dir",
        str(cams),
    ]
    assert main([*argv, "--device", "cpu"]) == EXIT_OK
    printed = capsys.readouterr().out

    study = load_studies(small_zip)[0]
    series = study.default_series
    doc = json.loads(out.read_text(encoding="utf-8"))

    assert doc["notice"] == NOTICE
    assert (
        doc["model"]["weights_identity"]
        == load_checkpoint(card, allow_unverified=True).weights_identity
    )
    assert doc["model"]["name"] == "tiny-cli"
    # A test model is on no manifest: loaded only with the flag, and said so everywhere.
    assert doc["model"]["status"] == "unverified model" and doc["model"]["unverified_reason"]
    assert all(s["model_status"] == "unverified model" for s in doc["studies"])
    assert printed.startswith("UNVERIFIED MODEL: it is not one of the models shipped")
    assert doc["labels"] == list(LABELS)
    assert len(doc["studies"]) == 1
    entry = doc["studies"][0]
    assert entry["StudyInstanceUID"] == study.study_instance_uid
    assert entry["SeriesInstanceUID"] == series.series_instance_uid
    assert list(entry["probabilities"]) == list(LABELS)

    slices = entry["slices"]
    assert [s["SOPInstanceUID"] for s in slices] == [s.sop_instance_uid for s in series.slices]
    assert [s["z"] for s in slices] == [round(s.z, 4) for s in series.slices]
    zs = [s["z"] for s in slices]
    assert zs == sorted(zs)  # patient-axis order
    for s in slices:
        assert list(s["probabilities"]) == list(LABELS)
        assert all(0.0 <= v <= 1.0 for v in s["probabilities"].values())
    for label in LABELS:
        assert entry["probabilities"][label] == max(s["probabilities"][label] for s in slices)
        peak = entry["peak_slice_index"][label]  # counts from 0, like slices[].index
        assert entry["peak_slice_number"][label] == peak + 1  # from 1, like the page and table
        assert slices[peak]["probabilities"][label] == entry["probabilities"][label]

    # Study line in the table, notice shown, no patient identity anywhere.
    assert study.study_instance_uid in printed and NOTICE in printed
    text = out.read_text(encoding="utf-8") + printed
    for value in (study.patient_id, study.patient_name):
        if value:
            assert value not in text

    # Heatmaps: 'any' and the top subtype, named from the sanitized UID, readable PNGs.
    pngs = sorted(cams.glob("*.png"))
    assert 1 <= len(pngs) <= 2
    assert [h["label"] for h in entry["heatmaps"]][0] == "any"
    assert entry["heatmaps"][-1]["label"] == entry["top_subtype"]
    assert {h["file"] for h in entry["heatmaps"]} == {p.name for p in pngs}
    for h in entry["heatmaps"]:
        assert h["slice_index"] == entry["peak_slice_index"][h["label"]]
    for png in pngs:
        assert re.fullmatch(r"[A-Za-z0-9._-]+\.png", png.name)
        assert png.name.startswith(safe_name(study.study_instance_uid) + "_slice")
        with Image.open(png) as img:
            img.load()
            assert img.mode == "RGB"
            assert img.size == (series.shape[2], series.shape[1])


def test_json_to_stdout(card: Path, small_zip: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main([str(small_zip), "--weights", str(card), "--allow-unverified", "--json", "-"])
        == EXIT_OK
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["studies"][0]["StudyInstanceUID"] == small_zip.stem


@pytest.mark.parametrize("weights", ["missing.json", "empty-dir"])
def test_missing_weights_exit_3(
    weights: str, small_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty-dir").mkdir()
    assert main([str(small_zip), "--weights", str(tmp_path / weights)]) == EXIT_MODEL
    err = capsys.readouterr().err
    assert err.startswith("error: No trained model is installed")


def test_missing_weights_subprocess(small_zip: Path, tmp_path: Path) -> None:
    result = _run(str(small_zip), "--weights", str(tmp_path / "none.json"))
    assert result.returncode == EXIT_MODEL
    assert "No trained model is installed" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_input_exit_2(card: Path, tmp_path: Path) -> None:
    bad = tmp_path / "study.zip"
    bad.write_bytes(b"this is not a zip file\n" * 10)
    result = _run(str(bad), "--weights", str(card), "--allow-unverified")
    assert result.returncode == EXIT_INPUT
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_input_exit_2(
    card: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([str(tmp_path / "nothing.zip"), "--weights", str(card), "--allow-unverified"])
        == EXIT_INPUT
    )
    assert "error:" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_exit_3(
    card: Path, small_zip: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([str(small_zip), "--weights", str(card), "--allow-unverified", "--device", "cuda"])
        == EXIT_MODEL
    )
    assert "GPU" in capsys.readouterr().err


def test_safe_name() -> None:
    assert safe_name("1.2.840.113619.2.55.3") == "1.2.840.113619.2.55.3"
    assert safe_name("ID_4d28912ba6") == "ID_4d28912ba6"
    hostile = safe_name("../../etc/passwd")
    assert "/" not in hostile and not hostile.startswith(".")
    assert re.fullmatch(r"[A-Za-z0-9._-]+", hostile)
    assert safe_name("a/b") != safe_name("a_b")  # changed names carry a hash of the original
    assert len(safe_name("9" * 500)) <= 64 + 9
    assert safe_name("") and safe_name("...")


def test_json_carries_volume_and_areas_and_reports_are_written(
    card: Path, small_zip: Path, tmp_path: Path
) -> None:
    out, reports = tmp_path / "out.json", tmp_path / "reports"
    argv = [str(small_zip), "--weights", str(card), "--allow-unverified", "--json", str(out)]
    assert main([*argv, "--report-dir", str(reports), "--device", "cpu"]) == EXIT_OK
    entry = json.loads(out.read_text(encoding="utf-8"))["studies"][0]
    bleed = entry["bleed_estimate"]
    assert bleed["volume_ml"] >= 0 and "estimate" in bleed["notice"]
    assert all(s["bleed_area_mm2"] >= 0 for s in entry["slices"])
    flagged = set(bleed["flagged_slices"])
    assert all(s["bleed_area_mm2"] == 0 for i, s in enumerate(entry["slices"]) if i not in flagged)
    stem = safe_name(entry["StudyInstanceUID"])
    seg_name = f"{stem}_bleed-seg.dcm"
    assert sorted(entry["reports"]) == [seg_name, f"{stem}_key-image.dcm", f"{stem}_report.pdf"]
    assert (reports / f"{stem}_report.pdf").read_bytes().startswith(b"%PDF")
    ds = pydicom.dcmread(reports / f"{stem}_key-image.dcm")
    assert ds.Modality == "OT" and "RESEARCH USE ONLY" in ds.ImageComments
    # the SEG holds the outline the JSON measures: a frame on each slice with an area, of
    # that area, in the same study as the key image
    seg = hd.seg.segread(reports / seg_name)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == ds.StudyInstanceUID
    series = load_studies(small_zip)[0].default_series
    mask = mask_from_segmentation(seg, series)
    pixel_area = series.pixel_spacing[0] * series.pixel_spacing[1]  # type: ignore[index]
    areas = [s["bleed_area_mm2"] for s in entry["slices"]]
    assert any(areas)
    assert np.allclose(mask.reshape(len(mask), -1).sum(axis=1) * pixel_area, areas, atol=0.1)
    assert "report_notes" not in entry


def test_an_empty_outline_writes_no_seg_and_says_why(
    card: Path, small_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, reports = tmp_path / "out.json", tmp_path / "reports"
    argv = [str(small_zip), "--weights", str(card), "--json", str(out), "--flag-threshold", "0.99"]
    argv += ["--allow-unverified"]
    assert main([*argv, "--report-dir", str(reports), "--device", "cpu"]) == EXIT_OK
    entry = json.loads(out.read_text(encoding="utf-8"))["studies"][0]
    assert entry["bleed_estimate"]["volume_ml"] == 0  # nothing reaches P(any) 0.99
    stem = safe_name(entry["StudyInstanceUID"])
    assert sorted(entry["reports"]) == [f"{stem}_key-image.dcm", f"{stem}_report.pdf"]
    assert sorted(p.name for p in reports.iterdir()) == sorted(entry["reports"])
    [note] = entry["report_notes"]
    assert "outlined no bleed" in note and "no DICOM SEG" in note
    assert f"{entry['StudyInstanceUID']}: {note}" in capsys.readouterr().out


def _pdf_text(path: Path) -> str:
    return subprocess.run(
        ["pdftotext", "-layout", str(path), "-"], check=True, capture_output=True, text=True
    ).stdout


def test_reports_name_the_patient_by_the_installations_pseudonym(
    card: Path, small_zip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = load_studies(small_zip)[0]
    stem = safe_name(study.study_instance_uid)
    labels = []
    for site in ("site-a", "site-b"):
        monkeypatch.setenv("ICH_REVIEW_DATA", str(tmp_path / site))
        out = tmp_path / site / "reports"
        argv = [
            str(small_zip),
            "--weights",
            str(card),
            "--allow-unverified",
            "--no-volume",
            "--report-dir",
            str(out),
        ]
        assert main(argv) == EXIT_OK
        text = _pdf_text(out / f"{stem}_report.pdf")
        [label] = re.findall(r"Patient [0-9A-F]{6}", text)
        assert label == for_installation(tmp_path / site).study_label(study)
        assert study.patient_id not in text
        labels.append(label)
    assert labels[0] != labels[1]  # each installation its own secret


def test_a_data_folder_that_cannot_be_created_exits_1_with_a_message(
    card: Path,
    small_zip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ICH_REVIEW_DATA", str(blocker / "data"))
    argv = [
        str(small_zip),
        "--weights",
        str(card),
        "--allow-unverified",
        "--report-dir",
        str(tmp_path / "r"),
    ]
    assert main(argv) == EXIT_OUTPUT
    err = capsys.readouterr().err
    assert err.startswith(f"error: The data folder {blocker / 'data'} cannot be created")
    assert len(err.strip().splitlines()) == 1  # one line, no traceback
    assert not (tmp_path / "r").exists()  # stopped before writing anything
