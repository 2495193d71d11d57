"""The prediction JSON: one document of per-study, per-slice probabilities, as
``python -m core.predict --json`` writes it and the training run writes ``val_predictions.json``.

Why one module: both files have the same layout, and core.training.evaluate and
core.training.crossval read either; built in one place, the two cannot drift apart. The
layout, in this key order::

    {"notice", "model": {...}, **runtime, "labels", "study_score", **evaluation, "studies"}

``runtime`` says where the model ran (core.predict: device, backend), ``evaluation`` what the
studies were and how they scored (the training run: split, metrics). Each study is
``StudyPrediction.to_dict()`` plus what its writer adds (warnings, bleed estimate, each
slice's target, ...).

Why here and not in core.reports: the training room may import core.inference but never
core.reports (see tests/test_layering.py), and the document is the serialised form of this
room's results.

The file is written atomically (a temporary file beside it, then ``os.replace``): a reader
such as core.training.crossval never sees half a document, and a failed write leaves the old
file, or none, behind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.inference.predictor import STUDY_BY_CONTEXT, STUDY_BY_MAX, Predictor
from core.labels import LABELS
from core.notice import NOTICE

#: How ``core.predict`` scores a study with a slice-context model; without one, STUDY_BY_MAX.
STUDY_SCORE_WITH_CONTEXT = (
    "'any': " + STUDY_BY_CONTEXT + "; subtypes: maximum of their refined slice "
    "probabilities (per slice, 'cnn_probabilities' are the CNN's own)"
)


def prediction_document(
    model: Mapping[str, object],
    study_score: str,
    studies: Sequence[Mapping[str, object]],
    *,
    runtime: Mapping[str, object] | None = None,
    evaluation: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """The document, keys in the order the files have always had them.

    >>> doc = prediction_document({"arch": "tiny"}, "maximum", [], runtime={"device": "cpu"})
    >>> list(doc)
    ['notice', 'model', 'device', 'labels', 'study_score', 'studies']
    >>> doc["labels"][:2]
    ['any', 'epidural']
    """
    return {
        "notice": NOTICE,
        "model": dict(model),
        **(runtime or {}),
        "labels": list(LABELS),
        "study_score": study_score,
        **(evaluation or {}),
        "studies": list(studies),
    }


def predictor_model(predictor: Predictor) -> dict[str, object]:
    """The ``model`` block for results of a Predictor: which weights, whether verified (and
    why not), the card's name and file, the network's architecture and input size."""
    trust = predictor.loaded.trust
    return {
        "weights_identity": predictor.weights_identity,
        "status": trust.label,
        **({"unverified_reason": trust.reason} if not trust.verified else {}),
        "name": predictor.loaded.name,
        "card": predictor.loaded.card_path.name,
        "arch": predictor.spec.arch,
        "input_size": predictor.spec.input_size,
    }


def predictor_study_score(predictor: Predictor) -> str:
    """How a Predictor's study-level scores are obtained, for people reading the JSON."""
    if predictor.context is not None:
        return STUDY_SCORE_WITH_CONTEXT
    return STUDY_BY_MAX + " of the series"


def predictor_document(
    predictor: Predictor, studies: Sequence[Mapping[str, object]]
) -> dict[str, object]:
    """The document ``python -m core.predict --json`` writes for a Predictor's results."""
    return prediction_document(
        predictor_model(predictor),
        predictor_study_score(predictor),
        studies,
        runtime={"device": predictor.device, "backend": predictor.backend_name},
    )


def dumps(document: Mapping[str, object], indent: int = 2) -> str:
    """The document as text: UTF-8 characters kept as they are, one trailing newline."""
    return json.dumps(document, indent=indent, ensure_ascii=False) + "\n"


def write_prediction_json(path: Path, document: Mapping[str, object], indent: int = 2) -> None:
    """Write the document to ``path`` atomically (UTF-8, trailing newline).

    The text is serialised before any file is touched, written to ``<name>.tmp`` beside the
    target and moved over it with ``os.replace``; on any failure the temporary file is removed
    and the exception raised, so no partial file remains. A target that exists and is not a
    regular file (a FIFO, ``/dev/stdout``) cannot be replaced: it is written in place.
    """
    text = dumps(document, indent)
    if path.exists() and not path.is_file():
        path.write_text(text, encoding="utf-8")
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
