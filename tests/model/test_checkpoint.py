"""Model builders and the checkpoint format: round trip, sharding, and every refusal path."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.errors import ModelError
from core.imaging.windowing import PRESETS
from core.labels import LABELS
from core.model.checkpoint import (
    LoadedModel,
    ModelSpec,
    build_model,
    find_default_checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_identity,
)

SPEC = ModelSpec("tiny", 64)
CARD = {
    "training_data": "synthetic test tensors",
    "split": "none",
    "command": "pytest tests/test_model.py",
    "metrics": {"nothing (untrained)": {"auc_any": 0.5}},
}


def _calibrated_tiny(seed: int = 0) -> torch.nn.Module:
    """Tiny model whose BatchNorm running stats are not the defaults, so buffers matter."""
    torch.manual_seed(seed)
    model = build_model(SPEC)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _calibrated_tiny()


@pytest.fixture()
def saved(tiny: torch.nn.Module, tmp_path: Path) -> Path:
    return save_checkpoint(tiny, SPEC, tmp_path, "tiny-test", CARD)


def _fixed_input() -> torch.Tensor:
    return torch.linspace(0, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)


def _message(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return str(excinfo.value)


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch", ["resnext101_32x8d", "resnext101_32x4d"])
def test_resnext101_variants_give_six_logits(arch: str) -> None:
    model = build_model(ModelSpec(arch, 64)).eval()
    with torch.inference_mode():
        out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, len(LABELS)) == (1, 6)


@pytest.mark.parametrize(("arch", "width"), [("resnext101_32x4d", 4), ("resnext101_32x8d", 8)])
def test_resnext_cardinality_and_width(arch: str, width: int) -> None:
    model = build_model(ModelSpec(arch, 64))
    conv = model.layer1[0].conv2
    assert conv.groups == 32
    assert conv.in_channels == conv.out_channels == 32 * width  # groups × width per group
    assert len(model.layer3) == 23  # 101 layers: [3, 4, 23, 3]


def test_tiny_is_a_torchvision_resnet_with_layer4() -> None:
    model = build_model(SPEC)
    assert model.layer4[-1].conv2.groups == 4
    assert model.fc.out_features == 6


def test_spec_dict_round_trip_and_validation() -> None:
    spec = ModelSpec(
        "resnext101_32x4d", 256, (PRESETS["brain"], PRESETS["stroke"], PRESETS["bone"])
    )
    data = json.loads(json.dumps(spec.to_dict()))
    assert ModelSpec.from_dict(data) == spec
    with pytest.raises(ValueError, match="unknown architecture"):
        ModelSpec("vgg", 64)
    with pytest.raises(ValueError, match="label order"):
        ModelSpec("tiny", 64, labels=tuple(reversed(LABELS)))


# --------------------------------------------------------------------------- round trip


def test_round_trip_gives_identical_outputs(tiny: torch.nn.Module, saved: Path) -> None:
    loaded = load_checkpoint(saved, allow_unverified=True)
    assert isinstance(loaded, LoadedModel)
    assert not loaded.model.training
    assert loaded.spec == SPEC
    assert loaded.name == "tiny-test"
    x = _fixed_input()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), tiny(x))
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_card_json_and_markdown(saved: Path) -> None:
    card = json.loads(saved.read_text(encoding="utf-8"))
    weights = saved.with_suffix(".safetensors")
    assert weights.is_file()
    assert card["labels"] == list(LABELS)
    assert card["arch"] == "tiny" and card["input_size"] == 64
    assert card["weights_files"] == [
        {"file": weights.name, "sha256": card["weights_sha256"], "bytes": weights.stat().st_size}
    ]
    assert card["training_data"] == CARD["training_data"]
    assert card["metrics"] == CARD["metrics"]
    datetime.fromisoformat(card["created"])

    md = saved.with_suffix(".md").read_text(encoding="utf-8")
    assert card["weights_sha256"] in md
    assert "Research use only — not a medical device." in md
    for text in ("tiny", "64 × 64", "subdural", "synthetic test tensors", "pytest tests/"):
        assert text in md
    assert "Measured on: **nothing (untrained)**" in md and "auc_any" in md


def test_load_by_directory_and_name(saved: Path) -> None:
    by_name = load_checkpoint(saved.parent, name="tiny-test", allow_unverified=True)
    by_dir = load_checkpoint(saved.parent, "cpu", allow_unverified=True)
    assert by_name.weights_sha256 == by_dir.weights_sha256
    assert by_name.weights_identity == weights_identity("tiny-test", by_name.weights_sha256)
    assert by_name.weights_identity == f"tiny-test@{by_name.weights_sha256[:12]}"


def test_loaded_weights_keep_requires_grad(saved: Path) -> None:
    """Grad-CAM needs ordinary (not inference) parameters."""
    model = load_checkpoint(saved, allow_unverified=True).model
    assert all(p.requires_grad and not p.is_inference() for p in model.parameters())


# --------------------------------------------------------------------------- refusals


def test_tampered_weights_are_refused(saved: Path) -> None:
    weights = saved.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError) as excinfo:
        load_checkpoint(saved, allow_unverified=True)
    message = _message(excinfo)
    assert "tiny-test.safetensors" in message
    assert "changed or damaged" in message
    assert "Re-install" in message


def test_wrong_label_order_is_refused(saved: Path) -> None:
    card = json.loads(saved.read_text(encoding="utf-8"))
    swapped = [LABELS[0], LABELS[2], LABELS[1], *LABELS[3:]]
    card["labels"] = swapped
    saved.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelError) as excinfo:
        load_checkpoint(saved, allow_unverified=True)
    message = _message(excinfo)
    assert str(swapped) in message  # the order found
    assert str(list(LABELS)) in message  # the order expected
    assert "wrong findings" in message


def test_missing_card_says_no_model_installed(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as excinfo:
        load_checkpoint(tmp_path / "absent.json", allow_unverified=True)
    assert _message(excinfo).startswith("No trained model is installed: ")
    assert "absent.json is missing" in _message(excinfo)
    with pytest.raises(ModelError, match="No trained model is installed"):
        load_checkpoint(tmp_path, allow_unverified=True)  # a directory without any card


def test_missing_weights_says_no_model_installed(saved: Path) -> None:
    saved.with_suffix(".safetensors").unlink()
    with pytest.raises(ModelError) as excinfo:
        load_checkpoint(saved, allow_unverified=True)
    message = _message(excinfo)
    assert message.startswith("No trained model is installed: ")
    assert "tiny-test.safetensors is missing" in message


def test_damaged_card_is_refused(saved: Path) -> None:
    saved.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ModelError, match="is damaged and cannot be read"):
        load_checkpoint(saved, allow_unverified=True)


def test_weights_of_another_architecture_are_refused(saved: Path) -> None:
    card = json.loads(saved.read_text(encoding="utf-8"))
    card["arch"] = "resnext101_32x4d"
    saved.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelError) as excinfo:
        load_checkpoint(saved, allow_unverified=True)
    message = _message(excinfo)
    assert "do not fit the architecture resnext101_32x4d" in message
    assert "tensors missing" in message and "of the wrong shape" in message


def test_weights_outside_the_card_folder_are_refused(saved: Path) -> None:
    card = json.loads(saved.read_text(encoding="utf-8"))
    card["weights_files"][0]["file"] = "../elsewhere.safetensors"
    saved.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ModelError, match="is not a plain file name beside the card"):
        load_checkpoint(saved, allow_unverified=True)


def test_save_refuses_reserved_keys_and_metrics_without_data(
    tiny: torch.nn.Module, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="written by save_checkpoint"):
        save_checkpoint(tiny, SPEC, tmp_path, "x", {"labels": ["any"]})
    with pytest.raises(ValueError, match="measured_on"):
        save_checkpoint(tiny, SPEC, tmp_path, "x", {"metrics": [{"values": {"auc": 0.9}}]})
    with pytest.raises(ValueError, match="measured on"):
        save_checkpoint(tiny, SPEC, tmp_path, "x", {"metrics": {"auc": 0.9}})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- sharding


def test_sharded_checkpoint_round_trips(tiny: torch.nn.Module, tmp_path: Path) -> None:
    limit = 10_000_000  # the tiny model is ~13.6 MB; its largest tensor ~8.4 MB
    card_path = save_checkpoint(tiny, SPEC, tmp_path, "sharded", CARD, max_shard_bytes=limit)
    card = json.loads(card_path.read_text(encoding="utf-8"))
    files = [entry["file"] for entry in card["weights_files"]]
    n = len(files)
    assert n >= 2
    assert files == [f"sharded-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert not (tmp_path / "sharded.safetensors").exists()
    keys: list[str] = []
    for name in files:
        assert (tmp_path / name).stat().st_size < limit
        keys += list(load_file(str(tmp_path / name)))
    assert sorted(keys) == sorted(tiny.state_dict())
    md = card_path.with_suffix(".md").read_text(encoding="utf-8")
    assert all(name in md for name in files)

    loaded = load_checkpoint(card_path, allow_unverified=True)
    x = _fixed_input()
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), tiny(x))

    # A damaged shard is caught like a damaged single file.
    (tmp_path / files[-1]).write_bytes(b"\0" + (tmp_path / files[-1]).read_bytes()[1:])
    with pytest.raises(ModelError, match="changed or damaged"):
        load_checkpoint(card_path, allow_unverified=True)


def test_shard_limit_below_one_tensor_is_refused(tiny: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shard limit"):
        save_checkpoint(tiny, SPEC, tmp_path, "x", max_shard_bytes=1_000_000)


# --------------------------------------------------------------------------- default model


def test_find_default_checkpoint(tiny: torch.nn.Module, tmp_path: Path) -> None:
    assert find_default_checkpoint(tmp_path / "absent") is None
    assert find_default_checkpoint(tmp_path) is None
    (tmp_path / "settings.json").write_text('{"not": "a card"}', encoding="utf-8")
    assert find_default_checkpoint(tmp_path) is None
    save_checkpoint(tiny, SPEC, tmp_path, "newer", created=datetime(2025, 6, 1, tzinfo=UTC))
    save_checkpoint(tiny, SPEC, tmp_path, "older", created=datetime(2024, 1, 1, tzinfo=UTC))
    assert find_default_checkpoint(tmp_path) == tmp_path / "newer.json"
    assert load_checkpoint(tmp_path, allow_unverified=True).name == "newer"


def test_weights_stored_at_half_size_load_as_float32_and_predict_alike(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = ModelSpec("tiny", 64)
    model = build_model(spec)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    model.eval()
    full = save_checkpoint(model, spec, tmp_path / "full", "m")
    half = save_checkpoint(model, spec, tmp_path / "half", "m", storage_dtype=torch.float16)
    size = {
        k: sum(f["bytes"] for f in json.loads(p.read_text())["weights_files"])
        for k, p in (("full", full), ("half", half))
    }
    assert size["half"] < 0.55 * size["full"]
    card = json.loads(half.read_text())
    assert card["weights_dtype"] == "float16"
    assert "weights_dtype" not in json.loads(full.read_text())
    stored = load_file(str(half.parent / card["weights_files"][0]["file"]))
    assert stored["fc.weight"].dtype == torch.float16
    assert stored["bn1.num_batches_tracked"].dtype == torch.int64  # integers stay as they are
    loaded = load_checkpoint(half, allow_unverified=True)
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    x = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        np_a, np_b = model(x), loaded.model(x)
    torch.testing.assert_close(np_a, np_b, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="float16 or float32"):
        save_checkpoint(model, spec, tmp_path / "bf", "m", storage_dtype=torch.bfloat16)


def test_half_size_keeps_what_float16_cannot_hold_and_refuses_nan(tmp_path: Path) -> None:
    """A running variance above float16's 65504 (v3's bleed-map head had one) would be stored
    as infinity and zero its channel: it stays float32 and loads back exact; a model holding
    NaN or infinity is not saved at all."""
    torch.manual_seed(0)
    spec = ModelSpec("tiny", 64)
    model = build_model(spec).eval()
    with torch.no_grad():
        model.bn1.running_var[0] = 1.0e5
    half = save_checkpoint(model, spec, tmp_path / "half", "m", storage_dtype=torch.float16)
    stored = load_file(str(half.parent / json.loads(half.read_text())["weights_files"][0]["file"]))
    assert stored["bn1.running_var"].dtype == torch.float32
    assert stored["bn1.running_mean"].dtype == torch.float16  # only what must stays wide
    loaded = load_checkpoint(half, allow_unverified=True)
    assert loaded.model.bn1.running_var[0].item() == 1.0e5
    with torch.no_grad():
        model.bn1.running_var[1] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinity.*bn1.running_var"):
        save_checkpoint(model, spec, tmp_path / "bad", "m", storage_dtype=torch.float16)
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").glob("*.json"))
