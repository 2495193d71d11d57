"""Inference engine: slice order, study scores, batch invariance, cache, progress, heatmaps.

A tiny network at 64 px keeps this fast; it is saved and loaded through the real checkpoint
path, and run on a real RSNA study.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from core.dicom.study import Study, load_studies
from core.errors import ModelError, UnverifiedModelError
from core.imaging.volume import FALLBACK_PREFIX
from core.imaging.windowing import model_input
from core.inference.predictor import (
    InferenceTiming,
    Predictor,
    ResultCache,
    SlicePrediction,
    StudyPrediction,
    usable_cpus,
)
from core.labels import LABELS
from core.model.checkpoint import (
    LoadedModel,
    ModelSpec,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from core.model.context import SliceContext, apply_context
from core.model.gradcam import Heatmap

SPEC = ModelSpec("tiny", 64)


def make_tiny_checkpoint(directory: Path, name: str = "tiny-test", seed: int = 0) -> Path:
    """Tiny model with non-default BatchNorm statistics (so outputs vary between slices)."""
    torch.manual_seed(seed)
    net = build_model(SPEC)
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, 64, 64))
    return save_checkpoint(net.eval(), SPEC, directory, name)


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def loaded(card: Path) -> LoadedModel:
    return load_checkpoint(card, allow_unverified=True)


@pytest.fixture(scope="module")
def study(small_zip: Path) -> Study:
    return load_studies(small_zip)[0]


def _predictor(loaded: LoadedModel, batch_size: int = 4) -> Predictor:
    """A CPU predictor with its own cache, so tests do not see each other's results."""
    return Predictor(loaded, device="cpu", batch_size=batch_size, cache=ResultCache())


class ForwardCounter:
    """Counts the network's forward calls through a hook on the shared model."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def test_real_study_slices_in_series_order(loaded: LoadedModel, study: Study) -> None:
    predictor = _predictor(loaded)
    pred = predictor.predict(study)
    series = study.default_series
    n = series.n_slices

    assert isinstance(pred, StudyPrediction)
    assert pred.study_instance_uid == study.study_instance_uid
    assert pred.series_instance_uid == series.series_instance_uid
    assert pred.weights_identity == loaded.weights_identity
    assert [s.sop_instance_uid for s in pred.slices] == [s.sop_instance_uid for s in series.slices]
    assert [s.index for s in pred.slices] == list(range(n))
    assert [s.z for s in pred.slices] == [s.z for s in series.slices]

    assert pred.probs.shape == (n, 6) and pred.probs.dtype == np.float32
    assert not pred.probs.flags.writeable
    assert np.isfinite(pred.probs).all()
    assert pred.probs.min() >= 0.0 and pred.probs.max() <= 1.0
    assert pred.probs.std(axis=0).max() > 1e-4  # the slices really differ
    for row, s in zip(pred.probs, pred.slices, strict=True):
        assert isinstance(s, SlicePrediction)
        assert len(s.probabilities) == 6
        assert s.probabilities == tuple(float(v) for v in row)
        assert list(s.by_label()) == list(LABELS)

    # Row i belongs to slice i: compare a few rows with the network run on that slice alone.
    model = loaded.model
    for i in (0, n // 2, n - 1):
        with torch.inference_mode():
            x = model_input(series.hu[i : i + 1], SPEC.input_size, SPEC.windows)
            direct = torch.sigmoid(model(x))[0].numpy()
        np.testing.assert_allclose(pred.probs[i], direct, atol=1e-5)


def test_study_scores_are_max_and_peak(loaded: LoadedModel, study: Study) -> None:
    pred = _predictor(loaded).predict(study)
    assert list(pred.study_scores) == list(LABELS)
    assert list(pred.peak_slice) == list(LABELS)
    for j, label in enumerate(LABELS):
        column = pred.probs[:, j]
        assert pred.study_scores[label] == pytest.approx(float(column.max()), abs=0)
        peak = pred.peak_slice[label]
        assert column[peak] == column.max()
        assert pred.slices[peak].probabilities[j] == pred.study_scores[label]
    subtypes = {k: v for k, v in pred.study_scores.items() if k != "any"}
    assert pred.top_subtype == max(subtypes, key=subtypes.__getitem__)
    assert pred.top_subtype != "any"


def test_batch_size_does_not_change_results(loaded: LoadedModel, study: Study) -> None:
    results = [_predictor(loaded, bs).predict(study).probs for bs in (1, 4, 16)]
    np.testing.assert_allclose(results[0], results[1], atol=1e-4, rtol=0)
    np.testing.assert_allclose(results[0], results[2], atol=1e-4, rtol=0)


def test_second_predict_comes_from_cache(loaded: LoadedModel, study: Study, small_zip) -> None:
    predictor = _predictor(loaded, batch_size=8)
    counter = ForwardCounter(predictor.model)
    try:
        first = predictor.predict(study)
        n = study.default_series.n_slices
        assert counter.calls == math.ceil(n / 8)
        assert not first.cached
        assert predictor.last_timing is not None and not predictor.last_timing.cached

        second = predictor.predict(study)
        assert counter.calls == math.ceil(n / 8)  # the model did not run again
        assert second.cached and predictor.last_timing.cached
        assert np.array_equal(first.probs, second.probs)
        assert second.seconds < 0.5

        # Reopening the study (a new Series object with the same pixels) is a hit as well,
        # also through another Predictor sharing the cache.
        reopened = load_studies(small_zip)[0]
        other = Predictor(loaded, device="cpu", cache=predictor.cache)
        assert other.predict(reopened).cached
        assert counter.calls == math.ceil(n / 8)
        assert len(predictor.cache) == 1
    finally:
        counter.close()


def test_other_weights_are_another_cache_entry(loaded: LoadedModel, study: Study) -> None:
    cache = ResultCache()
    a = Predictor(loaded, device="cpu", cache=cache)
    renamed = dataclasses.replace(loaded, name="tiny-other")
    b = Predictor(renamed, device="cpu", cache=cache)
    assert a.weights_identity != b.weights_identity
    counter = ForwardCounter(loaded.model)
    try:
        a.predict(study)
        calls = counter.calls
        pred_b = b.predict(study)
        assert not pred_b.cached
        assert counter.calls > calls
        assert pred_b.weights_identity == renamed.weights_identity
        assert len(cache) == 2
        assert a.predict(study).cached and b.predict(study).cached
    finally:
        counter.close()


def test_progress_goes_up_to_total(loaded: LoadedModel, study: Study) -> None:
    calls: list[tuple[int, int]] = []
    predictor = _predictor(loaded, batch_size=4)
    predictor.predict(study, progress=lambda done, total: calls.append((done, total)))
    n = study.default_series.n_slices
    dones = [d for d, _ in calls]
    assert all(t == n for _, t in calls)
    assert dones == sorted(set(dones))  # strictly increasing
    assert dones[-1] == n
    assert len(calls) >= math.ceil(n / 4)

    cached_calls: list[tuple[int, int]] = []
    predictor.predict(study, progress=lambda done, total: cached_calls.append((done, total)))
    assert cached_calls == [(n, n)]  # the progress bar still completes


def test_predict_a_series_needs_its_study(loaded: LoadedModel, study: Study) -> None:
    predictor = _predictor(loaded)
    series = study.default_series
    with pytest.raises(ValueError, match="study_instance_uid"):
        predictor.predict(series)
    pred = predictor.predict(series, study_instance_uid=study.study_instance_uid)
    assert pred.study_instance_uid == study.study_instance_uid
    with pytest.raises(TypeError):
        predictor.predict("study.zip")  # type: ignore[arg-type]


def test_timing_splits_forward(loaded: LoadedModel, study: Study) -> None:
    predictor = _predictor(loaded)
    predictor.predict(study)
    timing = predictor.last_timing
    assert isinstance(timing, InferenceTiming)
    assert timing.n_slices == study.default_series.n_slices
    assert 0 < timing.forward_s <= timing.total_s
    assert 0.0 <= timing.outside_forward_share < 1.0
    assert timing.device == "cpu" and not timing.cached


def test_cpu_setup(loaded: LoadedModel) -> None:
    predictor = _predictor(loaded)
    assert predictor.device == "cpu" and not predictor.half
    assert torch.get_num_threads() == usable_cpus()
    assert predictor.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert predictor.explainer.lock is predictor.lock
    # Any Predictor on the same model serialises with this one.
    assert Predictor(loaded, device="cpu").lock is predictor.lock


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_requested_without_gpu(loaded: LoadedModel) -> None:
    with pytest.raises(ModelError, match="GPU"):
        Predictor(loaded, device="cuda")


def test_non_finite_output_is_refused(loaded: LoadedModel, study: Study) -> None:
    predictor = _predictor(loaded)
    handle = predictor.model.register_forward_hook(
        lambda _m, _i, out: torch.full_like(out, float("nan"))
    )
    try:
        with pytest.raises(ModelError, match="invalid numbers"):
            predictor.predict(study)
    finally:
        handle.remove()
    assert len(predictor.cache) == 0  # nothing wrong was cached
    assert np.isfinite(predictor.predict(study).probs).all()


def test_from_default_without_model(tmp_path: Path) -> None:
    empty = tmp_path / "weights"
    empty.mkdir()
    with pytest.raises(ModelError, match="No trained model is installed"):
        Predictor.from_default("cpu", weights_dir=empty)
    with pytest.raises(ModelError, match="No trained model is installed"):
        Predictor.from_default("cpu", weights_dir=tmp_path / "missing")


def test_from_default_loads_the_installed_card(tmp_path: Path) -> None:
    card = make_tiny_checkpoint(tmp_path, name="installed", seed=1)
    with pytest.raises(UnverifiedModelError, match="not one of the models shipped"):
        Predictor.from_default("cpu", weights_dir=tmp_path)
    predictor = Predictor.from_default(
        "cpu", weights_dir=tmp_path, batch_size=2, allow_unverified=True
    )
    assert predictor.loaded.card_path == card and not predictor.loaded.trust.verified
    assert predictor.weights_identity.startswith("installed@")
    assert predictor.batch_size == 2


def test_explain_gives_heatmap_on_slice_grid(loaded: LoadedModel, study: Study) -> None:
    predictor = _predictor(loaded)
    series = study.default_series
    pred = predictor.predict(study)
    i = pred.peak_slice["subdural"]
    heatmap = predictor.explain(series, i, "subdural")
    assert isinstance(heatmap, Heatmap)
    assert heatmap.cam.shape == series.hu[i].shape
    assert heatmap.label == "subdural"
    assert heatmap.probability == pytest.approx(pred.study_scores["subdural"], abs=1e-4)
    with pytest.raises(IndexError):
        predictor.explain(series, series.n_slices, "any")


def test_explain_and_predict_from_threads(loaded: LoadedModel, study: Study) -> None:
    """Grad-CAM hooks must never leak into a concurrent forward pass (shared lock)."""
    predictor = _predictor(loaded, batch_size=2)
    reference = _predictor(loaded).predict(study).probs
    series = study.default_series
    errors: list[BaseException] = []

    def explain_many() -> None:
        try:
            for i in range(0, series.n_slices, 4):
                predictor.explain(series, i, "any")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=explain_many)
    thread.start()
    probs = predictor.predict(study).probs
    thread.join()
    assert not errors
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    assert all(not m._forward_hooks for m in predictor.model.modules())


def test_result_cache_lru_and_single_compute() -> None:
    cache = ResultCache(max_entries=2)
    computed: list[str] = []

    def make(key: str) -> np.ndarray:
        computed.append(key)
        return np.zeros(1)

    for key in ("a", "b", "a", "c"):  # 'a' used again, so 'b' is the oldest when 'c' comes
        cache.get_or_compute(key, lambda k=key: make(k))
    assert computed == ["a", "b", "c"]
    assert "a" in cache and "c" in cache and "b" not in cache

    # Two threads asking for the same key: one computes, the other waits for its result.
    gate = threading.Event()
    calls = []

    def slow() -> np.ndarray:
        calls.append(1)
        gate.wait(5)
        return np.ones(1)

    results: list[tuple[np.ndarray, bool]] = []
    threads = [
        threading.Thread(target=lambda: results.append(cache.get_or_compute("d", slow)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(cached for _, cached in results) == [False, True]

    with pytest.raises(RuntimeError):
        cache.get_or_compute("e", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert "e" not in cache


def test_to_dict_is_json_ready(loaded: LoadedModel, study: Study) -> None:
    pred = _predictor(loaded).predict(study)
    d = pred.to_dict()
    assert d["StudyInstanceUID"] == study.study_instance_uid
    assert list(d["probabilities"]) == list(LABELS)
    assert [s["SOPInstanceUID"] for s in d["slices"]] == [
        s.sop_instance_uid for s in study.default_series.slices
    ]
    identity = [v for v in (study.patient_id, study.patient_name) if v]
    assert identity  # the real data has a PatientID: the check below means something
    assert not any(v in repr(d) for v in identity)


def test_context_model_refines_slices_and_gives_the_study_score(
    tmp_path: Path, study: Study
) -> None:
    torch.manual_seed(3)
    context = SliceContext().eval()
    torch.nn.init.normal_(context.kernel_logits, std=2.0)  # a context model that changes things
    torch.nn.init.normal_(context.position[2].bias, std=1.0)
    net = load_checkpoint(make_tiny_checkpoint(tmp_path / "a"), allow_unverified=True).model
    card = save_checkpoint(net, SPEC, tmp_path / "b", "ctx", context=context)
    loaded = load_checkpoint(card, allow_unverified=True)

    plain = Predictor(loaded, device="cpu", cache=ResultCache(), use_context=False).predict(study)
    refined = Predictor(loaded, device="cpu", cache=ResultCache()).predict(study)
    assert not plain.context_used and refined.context_used
    np.testing.assert_array_equal(refined.cnn_probs, plain.probs)  # CNN output kept
    assert not np.allclose(refined.probs, plain.probs)
    expected, study_any = apply_context(loaded.context, plain.probs)
    np.testing.assert_allclose(refined.probs, expected, rtol=1e-6)
    assert refined.study_scores["any"] == pytest.approx(study_any)
    assert refined.study_scores["subdural"] == pytest.approx(float(expected[:, 5].max()))
    assert plain.study_scores["any"] == pytest.approx(float(plain.probs[:, 0].max()))
    doc = refined.to_dict()
    assert "slice-context" in doc["study_score"]
    assert set(doc["slices"][0]["cnn_probabilities"]) == set(LABELS)
    assert "cnn_probabilities" not in plain.to_dict()["slices"][0]


def test_localise_examines_the_flagged_slices_with_their_heatmaps(
    loaded: LoadedModel, study: Study
) -> None:
    predictor = _predictor(loaded)
    prediction = predictor.predict(study)
    p = prediction.probs[:, 0]
    cut = float(np.sort(p)[-3])  # the three most probable slices
    est = predictor.localise(study.default_series, prediction, threshold=cut)
    assert set(est.flagged) == set(np.flatnonzero(p >= cut).tolist())
    assert est.mask.shape == study.default_series.hu.shape
    assert not est.mask[[i for i in range(len(p)) if i not in est.flagged]].any()
    assert est.to_dict()["volume_ml"] >= 0
    capped = predictor.localise(study.default_series, prediction, threshold=0.0, max_slices=2)
    assert len(capped.flagged) == 2
    assert predictor.slice_threshold == 0.5  # the tiny card records no operating threshold


def test_a_model_with_the_bleed_map_gives_it_in_the_same_pass(tmp_path: Path, study: Study) -> None:
    """One forward per batch gives probabilities and map; the outline and volume come from the
    map (every slice, the card's threshold), not from the fallback rule or Grad-CAM."""
    spec = ModelSpec("tiny", 64, bleed_map=True)
    torch.manual_seed(0)
    net = build_model(spec)
    with torch.no_grad():  # a map that is high on the left half of every slice
        net.bleed_map.out.weight.zero_()
        net.bleed_map.out.bias.fill_(4.0)
    card = save_checkpoint(net.eval(), spec, tmp_path, "with-map")
    predictor = _predictor(load_checkpoint(card, allow_unverified=True))
    counter = ForwardCounter(predictor.model)
    series = study.default_series
    prediction = predictor.predict(study)
    assert counter.calls == math.ceil(series.n_slices / 4)
    assert prediction.bleed_map is not None and prediction.bleed_map.shape == (
        series.n_slices,
        16,
        16,
    )
    assert not prediction.bleed_map.flags.writeable
    assert float(prediction.bleed_map.min()) > 0.95  # sigmoid(4)
    again = predictor.predict(study)
    assert again.cached and again.bleed_map is prediction.bleed_map
    est = predictor.localise(series, prediction)
    assert counter.calls == math.ceil(series.n_slices / 4)  # no Grad-CAM, no further pass
    assert est.method.startswith("the model's bleed map") and est.threshold is None
    assert "bleed map" in est.notice
    # Inside the skull only: the map says "blood" everywhere, the mask keeps the cavity.
    inside = est.mask.sum(axis=(1, 2))
    assert inside.max() > 0 and est.mask.sum() < 0.6 * est.mask.size
    assert est.volume_ml > 100  # the whole cranial cavity of the slices with one
    # Without the head: the fallback, named as such.
    plain = _predictor(
        loaded_plain := load_checkpoint(make_tiny_checkpoint(tmp_path / "p"), allow_unverified=True)
    )
    assert loaded_plain.spec.bleed_map is False
    p2 = plain.predict(study)
    assert p2.bleed_map is None
    fallback = plain.localise(series, p2, threshold=float(np.sort(p2.probs[:, 0])[-2]))
    assert fallback.method.startswith(FALLBACK_PREFIX)
