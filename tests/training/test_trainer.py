"""core.training.trainer: loss, steps that learn, resume, --init, the CLI outputs, and two processes
under torchrun, all on real RSNA slices with the tiny network at 64 px (seconds, on a CPU)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_paths import DATA, LABELLED, ROOT, require

from core.dicom.study import load_studies
from core.inference.predictor import Predictor
from core.labels import LABELS
from core.model.checkpoint import ModelSpec, build_model, load_checkpoint
from core.train import main, parse_args
from core.training.checkpointing import CHECKPOINT_NAME, state_digest
from core.training.trainer import Trainer

LABELS_CSV = LABELLED / "rsna_dev_stage_2_train.csv"


@pytest.fixture(scope="module")
def two_zips(study_zips: list[Path]) -> list[Path]:
    """The two smallest studies: one without hemorrhage, one with (subarachnoid)."""
    return sorted(study_zips, key=lambda p: p.stat().st_size)[:2]


def tiny_args(zips: list[Path], out: Path, *extra: str) -> list[str]:
    return [
        "--zips",
        *map(str, zips),
        "--labels",
        str(LABELS_CSV),
        "--arch",
        "tiny",
        "--size",
        "64",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_a_few_steps_on_real_slices_lower_the_loss(tmp_path: Path, two_zips) -> None:
    args = parse_args(
        tiny_args(two_zips, tmp_path, "--no-val", "--no-augment", "--lr", "1e-3")
        + ["--epochs", "50", "--warmup", "0"]
    )
    trainer = Trainer(args)
    trainer.setup()
    table = trainer.table
    positive = table.labels[:, 0] > 0
    rows = np.concatenate([np.flatnonzero(positive)[:6], np.flatnonzero(~positive)[:10]])
    hu = torch.from_numpy(table.load_batch(rows))[:, None]
    target = torch.from_numpy(table.labels[rows])
    losses = [float(trainer.train_step(hu, target)) for _ in range(15)]
    trainer.close()
    assert trainer.global_step == 15
    assert losses[-1] < 0.5 * losses[0], losses


def test_cpu_training_precision_follows_the_bf16_units_and_the_probe(
    tmp_path: Path, two_zips, monkeypatch
) -> None:
    import core.training.trainer as trainer_module
    from core.training.precision import PrecisionProbe

    probes: list[bool] = []

    def probe(faster: bool) -> PrecisionProbe:
        probes.append(faster)
        return PrecisionProbe(fp32_s=1.0, bf16_s=0.5 if faster else 3.0)

    # (bf16 units, bf16 step faster in the probe) -> precision; no units: no probe at all
    cases = [((True, True), "bf16"), ((True, False), "fp32"), ((False, True), "fp32")]
    for (units, faster), expected in cases:
        monkeypatch.setattr(trainer_module, "cpu_has_bf16", lambda units=units: units)
        monkeypatch.setattr(trainer_module, "probe_cpu_bf16", lambda faster=faster: probe(faster))
        argv = tiny_args(two_zips, tmp_path / f"{units}{faster}", "--no-val", "--epochs", "1")
        trainer = Trainer(parse_args(argv))
        assert trainer.precision == expected
        assert trainer.amp_dtype == (torch.bfloat16 if expected == "bf16" else None)
    assert probes == [True, False]


def test_resume_continues_from_the_saved_step(tmp_path: Path, two_zips) -> None:
    common = tiny_args(two_zips, tmp_path / "run", "--val-fraction", "0.5", "--no-embeddings")
    common += ["--epochs", "2"]
    assert main(common + ["--max-steps", "2"]) == 0
    saved = torch.load(tmp_path / "run" / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert (saved["global_step"], saved["epoch"], saved["step_in_epoch"]) == (2, 0, 2)

    trainer = Trainer(parse_args(common + ["--resume", "--max-steps", "5"]))
    trainer.setup()
    assert trainer.global_step == 2 and trainer.step_in_epoch == 2
    state = trainer.model.state_dict()
    assert state.keys() == saved["model"].keys()
    assert all(torch.equal(state[k].cpu(), saved["model"][k]) for k in state)
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 2
    trainer.fit()
    trainer.close()
    resumed = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert resumed["global_step"] == 5 and trainer.steps_per_epoch < 5 and resumed["epoch"] == 1

    # Bit for bit the run that never stopped: same data order, augmentation and schedule.
    assert main(tiny_args(two_zips, tmp_path / "straight", "--val-fraction", "0.5",
                          "--no-embeddings", "--epochs", "2", "--max-steps", "5")) == 0  # fmt: skip
    straight = torch.load(tmp_path / "straight" / CHECKPOINT_NAME, weights_only=True)
    assert state_digest(resumed["model"]) == state_digest(straight["model"])

    changed = Trainer(parse_args(common + ["--resume", "--lr", "1e-2"]))
    with pytest.raises(ValueError, match=r"changed: lr"):
        changed.setup()


def test_cli_writes_checkpoint_predictions_embeddings_and_a_loadable_model(
    tmp_path: Path, study_zips, caplog
) -> None:
    zips = sorted(study_zips, key=lambda p: p.stat().st_size)[:4]
    out = tmp_path / "run"
    torch.save(build_model(ModelSpec("tiny", 64)).state_dict(), tmp_path / "imagenet.pth")
    caplog.set_level(logging.INFO, logger="core.training.trainer")
    argv = tiny_args(zips, out, "--folds", "2", "--fold", "1", "--epochs", "1")
    argv += ["--init", str(tmp_path / "imagenet.pth"), "--save-weights", "cv-fold1"]
    argv += ["--weights-dir", str(tmp_path / "weights")]
    assert main(argv) == 0
    log = caplog.text
    assert "--init imagenet.pth: initialised" in log
    assert "epoch 1/1  step " in log and "train loss" in log and "AUC(any)" in log
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["epoch"] == 1 and "val_weighted_log_loss" in history[-1]

    document = json.loads((out / "val_predictions.json").read_text())
    assert document["labels"] == list(LABELS) and document["split"]["fold"] == 1
    val_studies = {s["StudyInstanceUID"] for s in document["studies"]}
    embeddings = np.load(out / "embeddings.npz")
    assert embeddings["features"].shape == (len(embeddings["sop_ids"]), 2048)
    assert embeddings["features"].dtype == np.float16
    split = dict(zip(embeddings["study_ids"], embeddings["split"], strict=True))
    assert {s for s, side in split.items() if side == "val"} == val_studies
    assert len(split) == 4 and "train" in split.values()
    by_study = {}
    for study in document["studies"]:
        indices = [s["index"] for s in study["slices"]]
        assert indices == sorted(indices)
        assert set(study["slices"][0]["probabilities"]) == set(LABELS)
        assert set(study["slices"][0]["target"]) == set(LABELS)
        by_study[study["StudyInstanceUID"]] = study

    card = tmp_path / "weights" / "cv-fold1.json"
    meta = json.loads(card.read_text())
    assert meta["command"].startswith("python -m core.train --zips ")
    assert meta["split"]["val_study_uids"] == sorted(val_studies)
    assert not set(meta["split"]["train_study_uids"]) & val_studies
    (where,) = meta["metrics"]
    assert where.startswith("validation split (fold 1 of 2 by patient")
    assert meta["training"]["init"] == "imagenet.pth"
    # --amp auto: bf16 autocast only where it measured faster here; the card says which
    assert meta["training"]["precision"] in ("bf16", "fp32")

    # The app loads the card and scores a validation study as the trainer did.
    predictor = Predictor(load_checkpoint(card, allow_unverified=True), "cpu")
    zip_of = {p.stem: p for p in zips}
    uid = sorted(val_studies)[0]
    prediction = predictor.predict(load_studies(zip_of[uid])[0])
    app = {s.sop_instance_uid: s.probabilities for s in prediction.slices}
    for s in by_study[uid]["slices"]:
        ours = [s["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(app[s["SOPInstanceUID"]], ours, atol=2e-2)

    with pytest.raises(SystemExit):  # the same name again would overwrite a model
        parse_args(argv)


def test_challenge_folder_layout_trains(tmp_path: Path, two_zips) -> None:
    folder = tmp_path / "stage_2_train_images"
    folder.mkdir()
    for path in two_zips:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if name.endswith(".dcm"):  # the shared zips name each file ID_<sop>.dcm
                    (folder / name.rsplit("/", 1)[-1]).write_bytes(zf.read(name))
    out = tmp_path / "run"
    argv = ["--dicom-dir", str(folder), "--labels", str(LABELS_CSV), "--arch", "tiny"]
    argv += ["--size", "64", "--batch-size", "8", "--val-fraction", "0.5", "--max-steps", "2"]
    argv += ["--workers", "0", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    assert (out / "dicom_index.csv").is_file()
    assert torch.load(out / CHECKPOINT_NAME, weights_only=True)["global_step"] == 2
    embeddings = np.load(out / "embeddings.npz")
    assert len(embeddings["sop_ids"]) == len(list(folder.glob("*.dcm")))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_processes_under_torchrun_end_with_the_same_model(tmp_path: Path, two_zips) -> None:
    out, digests = tmp_path / "run", tmp_path / "digests"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1"]
    cmd += ["--nproc-per-node", "2", "--master-addr", "127.0.0.1"]
    cmd += ["--master-port", str(_free_port()), "-m", "core.train"]
    cmd += tiny_args(two_zips, out, "--val-fraction", "0.5", "--batch-size", "4")
    cmd += ["--epochs", "2", "--max-steps", "4", "--digest-dir", str(digests)]
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rank0, rank1 = ((digests / f"rank{r}.sha256").read_text().split() for r in (0, 1))
    assert rank0 == rank1 and rank0[1] == "4"
    state = torch.load(out / CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert state["args"]["world_size"] == 2 and state["global_step"] == 4
    assert state_digest(state["model"]) == rank0[0]
    assert "2 processes" in proc.stdout and proc.stdout.count("train loss") >= 1
    # Validation slices were split between the ranks and gathered back, each exactly once.
    document = json.loads((out / "val_predictions.json").read_text())
    val_slices = [s["SOPInstanceUID"] for st in document["studies"] for s in st["slices"]]
    assert len(val_slices) == len(set(val_slices)) == document["split"]["val_slices"]
    embeddings = np.load(out / "embeddings.npz")
    assert len(set(embeddings["sop_ids"].tolist())) == len(embeddings["sop_ids"])
    assert np.isfinite(embeddings["features"].astype(np.float32)).all()


def test_png_folder_with_id_hash_split_and_ema_trains(tmp_path: Path) -> None:
    """The third source: brain-window PNGs, split by image id with forced validation ids; the
    moving average is what is saved, and the forced ids never reach training."""
    png_dir = require(DATA / "rsna_png" / "images")
    png_labels = DATA / "rsna_png" / "rsna_png_stage_2_train.csv"
    folder = tmp_path / "png"
    folder.mkdir()
    names = sorted(p.name for p in png_dir.glob("*.png"))[:40]
    for name in names:
        (folder / name).write_bytes((png_dir / name).read_bytes())
    forced = tmp_path / "masks.csv"
    forced.write_text("image_id,pixels\n" + "".join(f"{n[:-4]},0\n" for n in names[:3]))
    out = tmp_path / "run"
    argv = ["--png-dir", str(folder), "--labels", str(png_labels), "--arch", "tiny"]
    argv += ["--size", "64", "--batch-size", "8", "--val-hash", "0.2", "--val-ids", str(forced)]
    argv += ["--ema", "0.9", "--epochs", "1", "--out", str(out), "--no-progress"]
    argv += ["--save-weights", "png", "--weights-dir", str(tmp_path / "weights")]
    assert main(argv) == 0
    document = json.loads((out / "val_predictions.json").read_text())
    val_ids = {s["StudyInstanceUID"] for s in document["studies"]}
    assert {n[:-4] for n in names[:3]} <= val_ids and len(val_ids) < len(names)
    embeddings = np.load(out / "embeddings.npz")
    train_ids = set(embeddings["sop_ids"][embeddings["split"] == "train"].tolist())
    assert not train_ids & val_ids and len(train_ids) + len(val_ids) == len(names)
    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert state["ema"] and state["args"]["ema"] == 0.9
    card = json.loads((tmp_path / "weights" / "png.json").read_text())
    assert card["split"]["kind"] == "id-hash" and card["training"]["ema_decay"] == 0.9
    saved = load_checkpoint(
        tmp_path / "weights" / "png.json", allow_unverified=True
    ).model.state_dict()
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items()}
    raw = state["model"]
    key = "fc.weight"
    assert torch.equal(saved[key], ema[key]) and not torch.equal(saved[key], raw[key])
    # Resumed after the last epoch with --final weights: the weights themselves, at half size.
    argv += ["--resume", "--final", "weights", "--weights-dtype", "float16"]
    argv[argv.index("png")] = "png-raw"
    assert main(argv) == 0
    card = json.loads((tmp_path / "weights" / "png-raw.json").read_text())
    assert card["training"]["saved"] == "the weights at the last step"
    assert card["weights_dtype"] == "float16"
    plain = load_checkpoint(
        tmp_path / "weights" / "png-raw.json", allow_unverified=True
    ).model.state_dict()
    torch.testing.assert_close(plain[key], raw[key], atol=1e-3, rtol=1e-3)


def test_bleed_map_with_synthetic_bleeds_trains_both_heads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--bleed-map --synthetic: the head learns from synthetic masks (its weights move), the
    card says how it was trained, and the saved model gives a map."""
    png_dir = require(DATA / "rsna_png" / "images")
    png_labels = DATA / "rsna_png" / "rsna_png_stage_2_train.csv"
    folder = tmp_path / "png"
    folder.mkdir()
    for name in sorted(p.name for p in png_dir.glob("*.png"))[:32]:
        (folder / name).write_bytes((png_dir / name).read_bytes())
    out = tmp_path / "run"
    argv = ["--png-dir", str(folder), "--labels", str(png_labels), "--arch", "tiny"]
    argv += ["--size", "64", "--batch-size", "8", "--val-hash", "0.2", "--epochs", "1"]
    argv += ["--bleed-map", "--synthetic", "1.0", "--out", str(out), "--no-progress"]
    argv += ["--no-embeddings", "--save-weights", "m", "--weights-dir", str(tmp_path / "w")]
    torch.manual_seed(0)
    initial = build_model(ModelSpec("tiny", 64, bleed_map=True)).state_dict()
    assert main(argv) == 0
    loaded = load_checkpoint(tmp_path / "w" / "m.json", allow_unverified=True)
    assert loaded.spec.bleed_map and loaded.card.bleed_map == {"stride": 4}
    training = loaded.card.training or {}
    assert "bleed map" in training["loss"] and "100%" in training["synthetic_bleeds"]
    state = loaded.model.state_dict()
    assert not torch.equal(state["bleed_map.out.weight"], initial["bleed_map.out.weight"])
    with torch.no_grad():
        _, bleed = loaded.model.forward_with_map(torch.rand(1, 3, 64, 64))
    assert bleed.shape == (1, 1, 16, 16)
    # A resumed run must keep the synthetic share (it decides what the head learnt).
    argv[argv.index("1.0")] = "0.5"
    argv = argv[: argv.index("--save-weights")] + ["--resume"]
    assert main(argv) == 2
    assert "synthetic (was 1.0, now 0.5)" in capsys.readouterr().err
