"""core.model.context: the slice-context model learns what a per-slice max cannot, and never
reverses the CNN's evidence."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ModelError
from core.model.checkpoint import ModelSpec, build_model, load_checkpoint, save_checkpoint
from core.model.context import SliceContext, StudyExample, apply_context, fit_context, positions
from core.training.metrics import roc_auc


def _study(rng: np.random.Generator, positive: bool, n: int = 30) -> StudyExample:
    """A CNN that fires falsely on the first slices (skull base) of every study, and truly on
    a run of adjacent slices in the middle of positive studies."""
    probs = rng.uniform(0.01, 0.1, size=(n, 6)).astype(np.float32)
    labels = np.zeros((n, 6), np.float32)
    probs[:3, 0] = rng.uniform(0.6, 0.95, size=3)  # false positives at the skull base
    if positive:
        start = int(rng.integers(10, 18))
        probs[start : start + 5, [0, 5]] = rng.uniform(0.5, 0.9, size=(5, 2))
        labels[start : start + 5, [0, 5]] = 1
    return StudyExample(probs, labels)


def test_untrained_context_returns_the_cnn_probabilities() -> None:
    rng = np.random.default_rng(0)
    ex = _study(rng, True)
    torch.manual_seed(0)
    refined, study = apply_context(SliceContext().eval(), ex.probs)
    # the kernel starts at 99 % on the slice itself (not 100 %: it must be able to learn)
    np.testing.assert_allclose(refined, ex.probs, atol=0.01)
    assert study == pytest.approx(refined[:, 0].max(), abs=1e-5)


def test_context_ranks_studies_better_than_the_slice_maximum() -> None:
    rng = np.random.default_rng(1)
    train = [_study(rng, i % 2 == 0) for i in range(16)]
    test = [_study(rng, i % 2 == 0) for i in range(16)]
    model = fit_context(train, epochs=200)
    y = np.array([e.labels[:, 0].max() for e in test])
    max_score = np.array([e.probs[:, 0].max() for e in test])
    ctx_score = np.array([apply_context(model, e.probs)[1] for e in test])
    assert roc_auc(y, max_score) < 0.8  # the skull-base false positives fool the maximum
    assert roc_auc(y, ctx_score) > 0.95
    refined, _ = apply_context(model, test[0].probs)
    assert refined.shape == test[0].probs.shape
    assert refined[:3, 0].max() < test[0].probs[:3, 0].min()  # skull-base slices discounted


def test_positions_run_from_first_to_last_slice() -> None:
    assert positions(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert positions(1).tolist() == [0.5]


def _fitted(seed: int = 2) -> SliceContext:
    rng = np.random.default_rng(seed)
    return fit_context([_study(rng, i % 2 == 0) for i in range(8)], epochs=30)


def test_context_is_stored_in_the_checkpoint_and_verified(tmp_path: Path) -> None:
    spec = ModelSpec("tiny", 64)
    torch.manual_seed(0)
    context = _fitted()
    card = save_checkpoint(
        build_model(spec).eval(),
        spec,
        tmp_path,
        "with-context",
        context=context,
        context_info={"trained_on": "synthetic studies"},
    )
    doc = json.loads(card.read_text())
    assert doc["context"] == {**context.spec.to_dict(), "trained_on": "synthetic studies"}
    assert "Slice-context model" in card.with_suffix(".md").read_text()
    loaded = load_checkpoint(card, allow_unverified=True)
    assert loaded.context is not None
    probs = _study(np.random.default_rng(5), True).probs
    a, sa = apply_context(context, probs)
    b, sb = apply_context(loaded.context, probs)
    np.testing.assert_array_equal(a, b)
    assert sa == sb

    # Weights with context tensors that the card does not describe are refused …
    del doc["context"]
    card.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="slice-context model that the card does not describe"):
        load_checkpoint(card, allow_unverified=True)
    # … and so is a card whose context does not fit the stored tensors.
    doc["context"] = {**context.spec.to_dict(), "hidden": context.spec.hidden + 1}
    card.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="slice-context weights .* do not fit"):
        load_checkpoint(card, allow_unverified=True)


def test_checkpoint_without_context_loads_without_one(tmp_path: Path) -> None:
    spec = ModelSpec("tiny", 64)
    card = save_checkpoint(build_model(spec).eval(), spec, tmp_path, "plain")
    assert load_checkpoint(card, allow_unverified=True).context is None


def test_refined_outputs_never_fall_when_the_cnn_rises() -> None:
    """Monotone by construction: raising one slice's CNN probability cannot lower any refined
    probability or the study score, whatever the (here random) parameters."""
    torch.manual_seed(7)
    model = SliceContext().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 2)
    probs = np.random.default_rng(0).uniform(0.05, 0.6, size=(20, 6)).astype(np.float32)
    base, base_study = apply_context(model, probs)
    raised = probs.copy()
    raised[10] = np.minimum(raised[10] + 0.3, 0.99)
    after, after_study = apply_context(model, raised)
    assert (after >= base - 1e-6).all()
    assert after_study >= base_study - 1e-6
    assert (after[8:13] > base[8:13]).any()  # and the neighbours do see it


def test_an_inverted_cnn_cannot_be_learned_as_evidence() -> None:
    """Trained where the CNN scores bleeding slices low, the context model cannot turn that
    around: it falls back towards a flat guess instead of ranking by the inverted score."""
    rng = np.random.default_rng(3)
    train = []
    for i in range(16):
        ex = _study(rng, i % 2 == 0)
        inverted = np.where(ex.labels == 1, 0.02, ex.probs + 0.3).astype(np.float32)
        train.append(StudyExample(np.clip(inverted, 0, 0.99), ex.labels))
    model = fit_context(train, epochs=200)
    probe = np.full((30, 6), 0.05, np.float32)
    low, _ = apply_context(model, probe)
    probe[15] = 0.9
    high, _ = apply_context(model, probe)
    assert high[15, 0] >= low[15, 0]
