"""The dashboard's flows through streamlit's AppTest (the script runs in this process)."""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import zipfile
from pathlib import Path

import pydicom
import pytest
from dicom_helpers import edit, write_zip
from streamlit.testing.v1 import AppTest
from viewer_component import viewer_args, viewer_images

from core.dicom.study import load_studies
from core.dicom.uids import valid_uid
from core.inspect import main as inspect_main
from core.model.checkpoint import find_default_checkpoint, load_checkpoint
from core.predict import main as predict_main
from core.review.pseudonym import KEY_NAME, for_installation
from dashboard.text import plain

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")
TIMEOUT = 180


def _start() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def _upload(at: AppTest, *files: Path | tuple[str, bytes]) -> AppTest:
    values = [
        (f.name, f.read_bytes(), "application/zip")
        if isinstance(f, Path)
        else (*f, "application/zip")
        for f in files
    ]
    at.sidebar.file_uploader[0].set_value(values if len(values) > 1 else values[0]).run()
    assert not at.exception, at.exception
    return at


def _viewer_args(at: AppTest) -> dict:
    return viewer_args(at)


def _image(at: AppTest) -> tuple[str, str]:
    """(caption, data URL) of the slice the viewer shows: the caption under it and the image
    of the slice it holds."""
    caption = next((c.value for c in at.main.caption if c.value.startswith("Slice ")), None)
    assert caption is not None, "no slice caption on the page"
    args, images = viewer_images(at)
    return caption, images[args["index"] - 1]


def _captions(at: AppTest) -> str:
    return " | ".join(c.value for c in at.caption)


def _worklist_rows(at: AppTest) -> int:
    frames = at.main.get("dataframe")
    assert frames, "no worklist table"
    return len(frames[0].value)


def _slice_key(at: AppTest) -> str:
    return next(s.key for s in at.slider if s.key and s.key.startswith("slice-"))


def test_upload_real_zip_then_worklist_viewer_probabilities(small_zip: Path, app_env: Path) -> None:
    n = load_studies(small_zip)[0].default_series.n_slices
    at = _upload(_start(), small_zip)
    assert _worklist_rows(at) == 1
    caption, _ = _image(at)
    assert f"of {n} ·" in caption
    assert len(at.main.get("plotly_chart")) == 2  # bars beside the image, strip below
    # the model ran: the worklist has a P(any) for the study and the review form shows scores
    assert any("(model " in r.label for r in at.radio)
    table = at.main.get("dataframe")[0].value
    assert 0.0 <= table["P(any)"][0] <= 1.0
    patient = table["Patient"][0]
    assert patient.startswith("Patient ")
    assert any(m.value.startswith(f"#### {patient} ·") for m in at.main.markdown)


def test_the_dashboard_and_the_command_line_name_the_patient_alike(
    small_zip: Path, app_env: Path, tiny_weights: Path, tmp_path: Path, capsys
) -> None:
    """One pseudonym everywhere: the worklist (whose rows are also the CSV export), the
    inspect command and the PDF the predict command writes, from one key in the data folder."""
    at = _upload(_start(), small_zip)
    shown = at.main.get("dataframe")[0].value["Patient"][0]
    study = load_studies(small_zip)[0]
    assert shown == for_installation(app_env).study_label(study)
    assert stat.S_IMODE((app_env / KEY_NAME).stat().st_mode) == 0o600

    assert inspect_main([str(small_zip), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["patient"] == shown

    card = find_default_checkpoint(tiny_weights)
    assert card is not None
    out = tmp_path / "reports"
    argv = [str(small_zip), "--weights", str(card), "--allow-unverified", "--no-volume"]
    argv += ["--report-dir", str(out)]
    assert predict_main(argv) == 0
    pdf = next(out.glob("*_report.pdf"))
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    assert re.findall(r"Patient [0-9A-F]{6}", text) == [shown]


def test_a_data_folder_that_cannot_be_created_is_said_in_words(
    app_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ICH_REVIEW_DATA", str(blocker / "data"))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception
    [error] = [e.value for e in at.error]
    assert error.startswith(f"The data folder {blocker / 'data'} cannot be created")
    assert "ICH_REVIEW_DATA" in error


def test_slider_and_preset_change_the_image(small_zip: Path, app_env: Path) -> None:
    at = _upload(_start(), small_zip)
    caption, url = _image(at)
    at.slider(key=_slice_key(at)).set_value(2).run()
    caption2, url2 = _image(at)
    assert caption2.startswith("Slice 2 of") and url2 != url
    at.selectbox(key="preset").set_value("bone").run()
    caption3, url3 = _image(at)
    assert "W 2800 L 600" in caption3 and url3 != url2
    at.slider(key="level-bone").set_value(300).run()
    assert "L 300" in _image(at)[0]
    at.button(
        key=next(b.key for b in at.button if b.key and b.key.startswith("next-"))
    ).click().run()
    assert _image(at)[0].startswith("Slice 3 of")


def test_heatmap_is_shown_with_its_probability(small_zip: Path, app_env: Path) -> None:
    at = _upload(_start(), small_zip)
    at.toggle(key="cam-on").set_value(True).run()
    at.selectbox(key="cam-label").set_value("subdural").run()
    caption, _ = _image(at)
    assert "Grad-CAM 'subdural', P = " in caption
    assert "relative Grad-CAM" in _captions(at)


def test_review_saved_and_read_back_after_restart(small_zip: Path, app_env: Path) -> None:
    at = _upload(_start(), small_zip)
    uid = load_studies(small_zip)[0].study_instance_uid
    at.radio(key=f"agree-{uid}-subdural").set_value("disagree")
    at.radio(key=f"overall-{uid}").set_value("no hemorrhage")
    at.text_area(key=f"notes-{uid}").input("calcified falx, not blood")
    at.text_input(key=f"reviewer-{uid}").input("Dr Test")
    next(b for b in at.button if b.label == "Save review").click().run()
    assert not at.exception
    assert any("Review saved" in s.value for s in at.success)
    assert (app_env / "reviews.sqlite3").exists()

    restarted = _start()  # a new session: nothing uploaded, the saved study is on the worklist
    assert _worklist_rows(restarted) == 1
    table = restarted.main.get("dataframe")[0].value
    assert table["Review"][0].startswith("no hemorrhage · Dr Test")
    assert table["Images"][0] == "upload again"
    restarted = _upload(restarted, small_zip)
    assert any(
        "Latest review: **no hemorrhage** by Dr Test" in s.value and "calcified falx" in s.value
        for s in restarted.success
    )


def test_notes_and_names_render_as_plain_text(small_zip: Path, app_env: Path) -> None:
    """A note cannot print a bold verdict that looks like the app's, nor fetch an image."""
    at = _upload(_start(), small_zip)
    uid = load_studies(small_zip)[0].study_instance_uid
    at.radio(key=f"overall-{uid}").set_value("hemorrhage")
    at.text_area(key=f"notes-{uid}").input("**NO BLEED** ![b](http://192.0.2.1/beacon.png)")
    at.text_input(key=f"reviewer-{uid}").input("<b>Dr_X</b>")
    next(b for b in at.button if b.label == "Save review").click().run()
    at.run()
    assert not at.exception
    latest = next(s.value for s in at.success if s.value.startswith("Latest review"))
    assert "**hemorrhage**" in latest  # the app's own bold stays
    assert "**NO BLEED**" not in latest and "![b](" not in latest and "<b>" not in latest
    assert r"\*\*NO BLEED\*\*" in latest and r"\<b\>Dr\_X\</b\>" in latest


def test_review_needs_an_overall_call(small_zip: Path, app_env: Path) -> None:
    at = _upload(_start(), small_zip)
    uid = load_studies(small_zip)[0].study_instance_uid
    at.text_input(key=f"reviewer-{uid}").input("Dr Test")
    next(b for b in at.button if b.label == "Save review").click().run()
    assert any("choose an overall call" in e.value for e in at.main.error)
    assert not (app_env / "reviews.sqlite3").exists() or not any(
        "Review saved" in s.value for s in at.success
    )


def test_bad_zip_beside_good_one(small_zip: Path, app_env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "holiday-photos.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("beach.jpg", b"\xff\xd8\xff\xe0 not a CT")
    at = _upload(_start(), ("holiday-photos.zip", bad.read_bytes()), small_zip)
    errors = [e.value for e in at.sidebar.error]
    # The file name is shown as plain text (Markdown characters escaped).
    assert any(plain("holiday-photos.zip") in e and "no CT images" in e for e in errors)
    assert _worklist_rows(at) == 1
    assert _image(at)[0].startswith("Slice ")


def test_without_weights_the_viewer_works_and_says_why(
    small_zip: Path, app_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ICH_WEIGHTS", str(tmp_path / "empty-weights"))
    at = _upload(_start(), small_zip)
    assert _image(at)[0].startswith("Slice ")
    assert not at.main.get("plotly_chart")
    assert any("No trained model is installed" in w.value for w in at.sidebar.warning)
    assert any("No probabilities for this study" in i.value for i in at.main.info)


def test_one_users_upload_is_not_shown_to_another(small_zip: Path, app_env: Path) -> None:
    first = _upload(_start(), small_zip)
    assert _worklist_rows(first) == 1
    second = _start()
    assert not second.main.get("dataframe")  # nothing saved: nothing shared


def test_demo_study_opens_with_one_click(app_env: Path) -> None:
    at = _start()
    at.button(key="open-demo").click().run()
    assert not at.exception
    assert _image(at)[0].startswith("Slice ") and "of 32" in _image(at)[0]


def test_outline_toggle_draws_the_candidate_and_names_the_volume(
    small_zip: Path, app_env: Path
) -> None:
    at = _upload(_start(), small_zip)
    _, url = _image(at)
    at.toggle(key="outline-on").set_value(True).run()
    assert not at.exception
    caption, _ = _image(at)
    assert "outlined" in caption and "mm²" in caption
    assert any("Estimated bleed volume" in m.value for m in at.main.markdown)
    assert "not a segmentation" in _captions(at)


def _follow_up(source: Path, out: Path) -> Path:
    """The same patient scanned again a day later: new study, series and instance UIDs."""
    files = []
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue

            def change(ds) -> None:
                ds.StudyInstanceUID = ds.StudyInstanceUID + ".2"
                ds.SeriesInstanceUID = ds.SeriesInstanceUID + ".2"
                ds.SOPInstanceUID = ds.SOPInstanceUID + ".2"
                ds.StudyDate = "20260102"
                ds.StudyTime = "101500"

            files.append((f"followup/{Path(info.filename).name}", edit(zf.read(info), change)))
    return write_zip(files, out)


def test_patient_view_shows_the_timeline_of_one_patients_studies(
    small_zip: Path, app_env: Path, tmp_path: Path
) -> None:
    second = _follow_up(small_zip, tmp_path / "followup.zip")
    at = _upload(_start(), small_zip, second)
    assert _worklist_rows(at) == 2
    assert any("Patient timeline" in e.label and "2 studies" in e.label for e in at.expander)
    assert any("This patient's studies" in str(c.proto.spec) for c in at.main.get("plotly_chart"))
    assert any("Expansion: growth ≥ 33%" in c.value for c in at.caption)


def test_reports_are_prepared_then_offered_for_download(small_zip: Path, app_env: Path) -> None:
    at = _upload(_start(), small_zip)
    uid = load_studies(small_zip)[0].study_instance_uid
    buttons = {b.key: b for b in at.get("download_button")}
    assert buttons[f"pdf-{uid}"].proto.disabled
    at.button(key=f"prepare-{uid}").click().run()
    assert not at.exception
    buttons = {b.key: b for b in at.get("download_button")}
    assert not buttons[f"pdf-{uid}"].proto.disabled
    assert not buttons[f"dcm-{uid}"].proto.disabled


def _prepared(at: AppTest, uid: str) -> tuple:
    """What "Prepare reports" made for a study with no review, identities hidden."""
    return at.session_state[f"report-{uid}-0-0"]


def test_the_bleed_outline_is_offered_as_a_dicom_seg(small_zip: Path, app_env: Path) -> None:
    at = _upload(_start(), small_zip)
    study = load_studies(small_zip)[0]
    uid = study.study_instance_uid
    seg_button = {b.key: b for b in at.get("download_button")}[f"seg-{uid}"]
    assert seg_button.label == "Download DICOM SEG" and seg_button.proto.disabled
    assert any(c.startswith("The bleed outline on every slice") for c in _captions(at).split(" | "))
    at.button(key=f"prepare-{uid}").click().run()
    assert not at.exception
    seg_button = {b.key: b for b in at.get("download_button")}[f"seg-{uid}"]
    assert not seg_button.proto.disabled
    # what the button hands out: the study's outline as a SEG (the tiny model outlines some
    # blood-dense voxels on this study), filed in the study
    _, _, seg, why_not = _prepared(at, uid)
    assert why_not == ""
    ds = pydicom.dcmread(io.BytesIO(seg))
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == valid_uid(uid)
    assert int(ds.NumberOfFrames) >= 1 and ds.SegmentSequence[0].SegmentLabel == "Hemorrhage"


def test_without_an_outline_the_seg_button_stays_off_and_says_why(
    small_zip: Path, app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dashboard.views import reports as view

    reason = "The model outlined no bleed on this study: no DICOM SEG is written."
    monkeypatch.setattr(view, "report_segmentation", lambda data: (None, reason))
    at = _upload(_start(), small_zip)
    uid = load_studies(small_zip)[0].study_instance_uid
    at.button(key=f"prepare-{uid}").click().run()
    assert not at.exception
    buttons = {b.key: b for b in at.get("download_button")}
    assert not buttons[f"pdf-{uid}"].proto.disabled and buttons[f"seg-{uid}"].proto.disabled
    assert reason in _captions(at)


def test_the_shipped_model_is_the_default(
    small_zip: Path, app_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ICH_WEIGHTS")  # a fresh clone: nothing configured
    at = _start()
    assert any("About this model." in i.value for i in at.sidebar.info)
    assert any(e.label.startswith("Model: ich-resnext101") for e in at.sidebar.expander)
    assert not any("nverified" in e.label for e in at.sidebar.expander)  # on the manifest
    assert not any("Unverified model" in e.value for e in at.sidebar.error)
    at = _upload(at, small_zip)
    table = at.main.get("dataframe")[0].value
    threshold = load_checkpoint(find_default_checkpoint()).card.operating_thresholds
    cut = threshold["study_any"]  # None: the model has no usable operating point
    flagged = cut is not None and table["P(any)"][0] >= cut
    assert table["Flag"][0] == ("above operating point" if flagged else "")


def test_saved_review_is_on_the_worklist_at_once_with_its_answers(
    small_zip: Path, app_env: Path
) -> None:
    """Saving puts the review on the worklist in the same click (no extra step), the per-label
    answers are shown back, and the reviewer's name survives a reload (kept in the address)."""
    at = _upload(_start(), small_zip)
    uid = load_studies(small_zip)[0].study_instance_uid
    assert at.main.get("dataframe")[0].value["Review"][0] == "not reviewed"
    at.radio(key=f"agree-{uid}-subdural").set_value("disagree")
    at.radio(key=f"agree-{uid}-any").set_value("agree")
    at.radio(key=f"overall-{uid}").set_value("hemorrhage")
    at.text_input(key=f"reviewer-{uid}").input("Dr Rowe")
    next(b for b in at.button if b.label == "Save review").click().run()
    assert not at.exception
    assert at.main.get("dataframe")[0].value["Review"][0].startswith("hemorrhage · Dr Rowe")
    assert any("Review saved" in s.value for s in at.success)
    latest = next(s.value for s in at.success if s.value.startswith("Latest review"))
    assert "Per label: any agree · subdural disagree" in latest
    assert at.query_params["reviewer"] == "Dr Rowe"

    reloaded = AppTest.from_file(APP, default_timeout=TIMEOUT)
    reloaded.query_params["reviewer"] = "Dr Rowe"  # what the browser's address keeps
    reloaded = _upload(reloaded.run(), small_zip)
    assert reloaded.text_input(key=f"reviewer-{uid}").value == "Dr Rowe"


def test_a_study_opens_at_its_most_suspicious_slice_once_scored(
    small_zip: Path, app_env: Path, tiny_weights: Path
) -> None:
    """The page is drawn (middle slice) before the model runs; when the probabilities arrive
    the viewer moves to the peak slice, unless the reader scrolled meanwhile."""
    from core.inference.predictor import Predictor, ResultCache

    study = load_studies(small_zip)[0]
    uid = study.study_instance_uid
    predictor = Predictor(
        load_checkpoint(tiny_weights, allow_unverified=True), "cpu", cache=ResultCache()
    )
    peak = int(predictor.predict(study).peak_slice["any"]) + 1
    middle = (study.default_series.n_slices + 1) // 2
    assert peak != middle  # else this test could not tell the two apart
    at = _upload(_start(), small_zip)
    assert at.slider(key=f"slice-{uid}").value == peak


def test_show_identity_turns_the_worklist_and_the_viewer_at_once(
    small_zip: Path, app_env: Path
) -> None:
    at = _upload(_start(), small_zip)
    study = load_studies(small_zip)[0]
    assert at.main.get("dataframe")[0].value["Patient"][0].startswith("Patient ")
    at.toggle(key="show-identity").set_value(True).run()
    assert not at.exception
    shown = at.main.get("dataframe")[0].value["Patient"][0]
    assert not shown.startswith("Patient ") and study.patient_id in shown
    assert any(m.value.startswith(f"#### {plain(shown)} ·") for m in at.main.markdown)
