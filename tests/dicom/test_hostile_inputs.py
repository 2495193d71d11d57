"""The hostile-input corpus (tests/dicom/hostile_inputs.py) against the loader: every input ends
in a message a user can read, an InputError or a skipped-file reason beside the slices that
still load, never a traceback, and within bounded time and memory.

The bounds are safety nets for a busy machine (a test box shares its cores), far above what
each input takes (see the figures printed with ``pytest -s``, each input's line and a table of
all of them at the end); a regression such as the zip of zeros read member by member, or a
decoder allocating a declared 30000×30000 image, crosses them. Nothing may be written while an
input is read: not beside the upload, not where a member's name points (../../x, /etc/x).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dicom_helpers import Files, read_ds
from hostile_inputs import CORPUS, Cost, Hostile, measure

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


#: (id, upload MB, seconds, traced peak MiB, process peak rise MiB, outcome) of each input run.
Row = tuple[str, float, float, float, float, str]


@pytest.fixture(scope="module")
def summary() -> Iterator[list[Row]]:
    """Collects one row per input; prints them as a table, the slowest first, at the end."""
    rows: list[Row] = []
    yield rows
    if not rows:
        return
    print(f"\n\nhostile-input corpus: {len(rows)} inputs (figures, not asserted)")
    print(f"{'input':<34} {'upload MB':>10} {'s':>6} {'traced MiB':>10} {'+RSS MiB':>8}  outcome")
    for row in sorted(rows, key=lambda r: -r[2]):
        name, mb, seconds, traced, rss, outcome = row
        print(f"{name:<34} {mb:>10.2f} {seconds:>6.2f} {traced:>10.1f} {rss:>8.0f}  {outcome}")
    slowest = max(rows, key=lambda r: r[2])
    largest = max(rows, key=lambda r: r[3])
    print(
        f"slowest: {slowest[0]} {slowest[2]:.2f} s; largest traced peak: {largest[0]} "
        f"{largest[3]:.1f} MiB; largest process peak rise: {max(r[4] for r in rows):.0f} MiB"
    )


def _disk_state(tmp_path: Path) -> tuple[object, ...]:
    """What a loader that used member names as paths, or followed links, would change: the
    files under the test's tmp dir, the names beside it and in the working directory, and an
    ``x`` wherever ../../x, /x or /tmp/x would land, from tmp or from the working directory."""
    cwd = Path.cwd()
    tree = sorted(
        os.path.join(d, n)
        for d, dirs, files in os.walk(tmp_path, followlinks=False)
        for n in dirs + files
    )
    bases = {tmp_path, *tmp_path.parents, cwd, *cwd.parents}
    lands = [b / "x" for b in bases] + [Path("/etc/x"), Path("/abs"), Path("/tmp/x")]
    passwd = Path("/etc/passwd").stat()
    return (
        tree,
        sorted(os.listdir(tmp_path.parent)),
        sorted(os.listdir(cwd)),
        {str(p): os.path.lexists(p) for p in lands},
        (passwd.st_mtime_ns, passwd.st_size),
    )


def test_the_corpus_covers_the_audit() -> None:
    ids = {case.id for case in CORPUS}
    assert len(ids) == len(CORPUS) >= 32
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
        "symlink-members",
        "folder-with-symlinks",
        "tiny-100000-members",
        "tiny-20000-members",
        "one-member-listed-1000000-times",
        "mr-only",
        "mr-beside-ct",
        "enhanced-ct-multi-frame",
        "multi-frame-beside-slices",
        "single-slice",
        "random-bytes",
        "zip-as-dcm-tail-overwritten",
        "zip-as-dcm-head-overwritten",
        "zip-in-zip",
        "longest-nul-and-control-names",
        "absolute-and-windows-names",
        "sparse-1100MB-file",
        "zip-declares-5000MB",
    ):
        assert needed in ids, needed


@pytest.mark.parametrize("case", CORPUS, ids=lambda case: case.id)
def test_hostile_input_ends_in_a_readable_message(
    case: Hostile, three_slices: Files, tmp_path: Path, summary: list[Row]
) -> None:
    upload = case.build(tmp_path, three_slices)
    disk = _disk_state(tmp_path)
    cost = measure(lambda: load_studies(upload))  # timed untraced: tracemalloc slows it 4×
    traced = measure(lambda: load_studies(upload), traced=True)
    size = upload.stat().st_size / 1e6  # a folder's own entry, a sparse file's apparent size
    print(
        f"\n{case.id}: {size:.2f} MB upload, {cost.seconds:.2f} s, "
        f"traced peak {traced.traced_peak / 2**20:.1f} MiB, "
        f"process peak +{cost.rss_rise / 2**20:.0f} MiB"
    )
    mib = 2.0**20
    summary.append(
        (case.id, size, cost.seconds, traced.traced_peak / mib, cost.rss_rise / mib, _said(cost))
    )
    assert _disk_state(tmp_path) == disk, "reading the upload wrote or changed a file"
    assert type(traced.outcome) is type(cost.outcome)
    if case.loads is None:
        assert isinstance(cost.outcome, InputError), f"{case.id} loaded: {cost.outcome}"
        text = str(cost.outcome)
    else:
        assert isinstance(cost.outcome, list), f"{case.id} was refused: {cost.outcome}"
        assert len(cost.outcome) == 1
        study = cost.outcome[0]
        assert study.default_series.n_slices == case.loads
        assert all(len(x.source) <= 80 for x in study.default_series.slices)
        text = _text(study)
    if case.says is not None:
        assert case.says in text, text
    for phrase in case.hides:
        assert phrase not in text, f"{phrase!r} was read: {text}"
    assert "Traceback" not in text and 'File "' not in text
    assert all(ch.isprintable() for line in text.splitlines() for ch in line), repr(text)
    shown = ("../", "..\\", "/abs", "/etc", "C:")
    assert not any(path in text for path in shown), f"a path was shown: {text}"
    assert cost.seconds < MAX_SECONDS, f"{case.id}: {cost.seconds:.1f} s"
    assert traced.traced_peak < MAX_TRACED_PEAK, f"{case.id}: {traced.traced_peak >> 20} MiB"
    assert cost.rss_rise < MAX_RSS_RISE, f"{case.id}: +{cost.rss_rise >> 20} MiB"


def _said(cost: Cost) -> str:
    """The outcome in a few words for the table: refused (the error's class) or slices loaded."""
    if isinstance(cost.outcome, InputError):
        return f"refused: {type(cost.outcome).__name__}"
    studies = cost.outcome
    assert isinstance(studies, list)
    return f"loaded {studies[0].default_series.n_slices} slice(s)" if studies else "loaded nothing"
