"""The hostile-input corpus (tests/dicom/hostile_inputs.py) against the loader: every input ends
in a message a user can read, an InputError or a skipped-file reason beside the slices that
still load, never a traceback, and within bounded time and memory.

The bounds are safety nets for a busy machine (a test box shares its cores), far above what
each input takes (see the figures printed with ``pytest -s``); a regression such as the zip of
zeros read member by member, or a decoder allocating a declared 30000×30000 image, crosses them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from dicom_helpers import Files, read_ds
from hostile_inputs import CORPUS, Hostile, measure

from core.dicom.study import Study, load_studies
from core.errors import InputError

STUDY = "ID_1acc4b6d6c"
MAX_SECONDS = 20.0
MAX_TRACED_PEAK = 256 << 20  # bytes of Python objects and arrays held at once
MAX_RSS_RISE = 1 << 30  # bytes above the test process's earlier peak (native buffers too)


@pytest.fixture(scope="module")
def three_slices(study_zips: list[Path]) -> Files:
    """Three consecutive real slices from the middle of one study, in head order."""
    path = next(p for p in study_zips if p.stem == STUDY)
    with zipfile.ZipFile(path) as zf:
        files = [(n, zf.read(n)) for n in zf.namelist() if n.endswith(".dcm")]
    files.sort(key=lambda f: float(read_ds(f[1]).ImagePositionPatient[2]))
    middle = len(files) // 2
    return files[middle - 1 : middle + 2]


def _text(study: Study) -> str:
    return "\n".join(
        [
            *study.warnings,
            *(w for s in study.series for w in s.warnings),
            *(x.source for x in study.default_series.slices),
        ]
    )


def test_the_corpus_covers_the_audit() -> None:
    ids = {case.id for case in CORPUS}
    assert len(ids) == len(CORPUS) >= 14
    for needed in (
        "zeros-3800x1MiB",
        "rle-30000x30000",
        "slope-nan",
        "slope-0",
        "intercept-minus-inf",
        "slope-1e308",
        "padding-covers-image",
        "real-slice-named-DICOMDIR",
        "traversal-names",
        "truncated-zip",
        "encrypted-members",
        "zip-of-photos",
    ):
        assert needed in ids, needed


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.id)
def test_hostile_input_ends_in_a_readable_message(
    case: Hostile, three_slices: Files, tmp_path: Path
) -> None:
    upload = case.build(tmp_path, three_slices)
    cost = measure(lambda: load_studies(upload))  # timed untraced: tracemalloc slows it 4×
    traced = measure(lambda: load_studies(upload), traced=True)
    print(
        f"\n{case.id}: {upload.stat().st_size / 1e6:.2f} MB upload, {cost.seconds:.2f} s, "
        f"traced peak {traced.traced_peak / 2**20:.1f} MiB, "
        f"process peak +{cost.rss_rise / 2**20:.0f} MiB"
    )
    assert type(traced.outcome) is type(cost.outcome)
    if case.loads is None:
        assert isinstance(cost.outcome, InputError), f"{case.id} loaded: {cost.outcome}"
        text = str(cost.outcome)
    else:
        assert isinstance(cost.outcome, list), f"{case.id} was refused: {cost.outcome}"
        assert len(cost.outcome) == 1
        study = cost.outcome[0]
        assert study.default_series.n_slices == case.loads
        text = _text(study)
    if case.says is not None:
        assert case.says in text, text
    assert "Traceback" not in text and 'File "' not in text
    assert "../" not in text and "/abs" not in text and "/etc" not in text, "a path was shown"
    assert cost.seconds < MAX_SECONDS, f"{case.id}: {cost.seconds:.1f} s"
    assert traced.traced_peak < MAX_TRACED_PEAK, f"{case.id}: {traced.traced_peak >> 20} MiB"
    assert cost.rss_rise < MAX_RSS_RISE, f"{case.id}: +{cost.rss_rise >> 20} MiB"
