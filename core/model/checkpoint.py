"""The slice classifier (ResNeXt from torchvision) and its checkpoint format.

A checkpoint is three files side by side, so that weights can be checked and understood without
running any code from them:

* ``<name>.safetensors`` (or ``<name>-00001-of-0000N.safetensors`` shards, each below the size
  limit of a GitHub file): the state dict, stored with safetensors, never pickle, so loading a
  file cannot execute anything;
* ``<name>.json``, the model card: architecture, input size, windows, label order, the sha256 of
  every weights file, creation date, plus what the trainer recorded (data, split, command,
  metrics);
* ``<name>.md``, the same card rendered for people.

A checkpoint may also hold the slice-context model (core.model.context) trained after the CNN: its
tensors sit in the same files under the ``context.`` prefix and the card's ``context`` entry
describes it, so the CNN and the model that refines its output are verified and versioned as one.

Loading verifies the checksums and the label order before any output is shown, because a
damaged file or a permuted label list would silently attach probabilities to the wrong finding;
it range-checks every card field (core.model.card_checks) and compares the card's content
digest with the manifest of shipped models (core.model.integrity, which has the table of what
is refused and what loads only as an "unverified model").
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file
from torch import nn

import core.model.tv_compat  # noqa: F401  (must precede every torchvision import)

# isort: split
from torchvision.models.resnet import Bottleneck, ResNet

from core.errors import ModelError, UnverifiedModelError
from core.imaging.windowing import MODEL_WINDOWS, Window
from core.labels import LABELS, check_label_order
from core.model.bleed_map import MAP_STRIDE, BleedMapResNet
from core.model.card import CARD_FORMAT, RESERVED_CARD_KEYS, ModelCard
from core.model.card_checks import problems as card_problems
from core.model.context import ContextSpec, SliceContext
from core.model.integrity import NOT_LOADED, UNVERIFIED_LABEL, ModelTrust, assess, stamp
from core.model.manifest import SHIPPED
from core.notice import NOTICE

log = logging.getLogger(__name__)

#: Where the app looks for an installed model.
DEFAULT_WEIGHTS_DIR: Path = Path(__file__).resolve().parents[2] / "weights"

#: Environment variable naming another folder of model cards and weights (every tool reads it).
WEIGHTS_ENV = "ICH_WEIGHTS"


def default_weights_dir() -> Path:
    """``$ICH_WEIGHTS`` (a folder of model cards and weights) or the project's weights/: the one
    place the dashboard and every command-line tool look for the installed model."""
    choice = os.environ.get(WEIGHTS_ENV)
    return Path(choice) if choice else DEFAULT_WEIGHTS_DIR


#: Largest weights file written; GitHub refuses files over 100 MB, so stay clearly below.
MAX_SHARD_BYTES: int = 95 * 1000 * 1000

#: Key prefix of the slice-context model's tensors inside the weights files.
CONTEXT_PREFIX = "context."

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- architectures


def _resnext101_32x8d(cls: type[ResNet]) -> ResNet:
    # torchvision.models.resnext101_32x8d(weights=None) is this very call.
    return cls(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=8)


def _resnext101_32x4d(cls: type[ResNet]) -> ResNet:
    # torchvision ships no builder for 32x4d; this is its definition with width 4.
    return cls(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4)


def _tiny(cls: type[ResNet]) -> ResNet:
    """Test-only: the same ResNet class (so ``layer4[-1]`` exists) at a fraction of the cost."""
    return cls(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4)


#: Architecture name → builder of a torchvision ResNet of the given class (ResNet, or
#: BleedMapResNet with the segmentation head); its 1000-class head is replaced.
#: Adding a variant is one line here.
BUILDERS: dict[str, Callable[[type[ResNet]], ResNet]] = {
    "resnext101_32x8d": _resnext101_32x8d,
    "resnext101_32x4d": _resnext101_32x4d,
    "tiny": _tiny,
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything besides the weights that decides what the model computes."""

    arch: str
    input_size: int
    windows: tuple[Window, ...] = MODEL_WINDOWS
    labels: tuple[str, ...] = LABELS
    #: Whether the network has the segmentation head (core.model.bleed_map) and so gives a
    #: bleed map with its probabilities.
    bleed_map: bool = False

    def __post_init__(self) -> None:
        if self.arch not in BUILDERS:
            raise ValueError(f"unknown architecture {self.arch!r}; known: {', '.join(BUILDERS)}")
        if not isinstance(self.input_size, int) or self.input_size < 32:
            raise ValueError(f"input size must be an integer of at least 32, got {self.input_size}")
        if len(self.windows) != 3:
            raise ValueError(f"the model takes 3 windows as channels, got {len(self.windows)}")
        object.__setattr__(self, "windows", tuple(self.windows))
        object.__setattr__(self, "labels", tuple(self.labels))
        check_label_order(self.labels)

    def to_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "input_size": self.input_size,
            "windows": [{"name": w.name, "level": w.level, "width": w.width} for w in self.windows],
            "labels": list(self.labels),
            **({"bleed_map": {"stride": MAP_STRIDE}} if self.bleed_map else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        return cls(
            arch=str(data["arch"]),
            input_size=int(data["input_size"]),
            windows=tuple(
                Window(str(w["name"]), float(w["level"]), float(w["width"]))
                for w in data["windows"]
            ),
            labels=tuple(data.get("labels", LABELS)),
            bleed_map=bool(data.get("bleed_map")),
        )


def build_model(spec: ModelSpec) -> nn.Module:
    """Untrained network for ``spec``: (n, 3, size, size) in [0, 1] → logits (n, 6), and with
    ``spec.bleed_map`` a BleedMapResNet whose ``forward_with_map`` adds the bleed map."""
    model = BUILDERS[spec.arch](BleedMapResNet if spec.bleed_map else ResNet)
    model.fc = nn.Linear(model.fc.in_features, len(spec.labels))
    return model


# --------------------------------------------------------------------------- saving


def _display(path: Path) -> str:
    """Path as a person would recognise it: relative to the project when it lies inside."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(_PROJECT_ROOT))
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def combined_sha256(file_hashes: list[str]) -> str:
    """One hash for the whole weights: the file's own for one file, a hash of hashes for shards."""
    if len(file_hashes) == 1:
        return file_hashes[0]
    return hashlib.sha256("\n".join(file_hashes).encode("ascii")).hexdigest()


def weights_identity(name: str, sha256: str) -> str:
    """Short stable id of a set of weights, for caches and for labelling results."""
    return f"{name}@{sha256[:12]}"


def identity_status(identity: str | None) -> str:
    """ "verified" when ``identity`` (a saved result's weights_identity) names the weights of a
    model this version ships (core.model.manifest), UNVERIFIED_LABEL otherwise, "" for None.

    For results saved earlier, where only the identity was kept: it vouches for the weights,
    not for the card they were loaded with (load_checkpoint checks both for the model in use).
    """
    if not identity:
        return ""
    shipped = {weights_identity(m.name, m.weights_sha256) for m in SHIPPED}
    return "verified" if identity in shipped else UNVERIFIED_LABEL


def _tensor_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _header_bytes(name: str, t: torch.Tensor) -> int:
    """Generous bound on a tensor's entry in the safetensors JSON header."""
    return len(name) + 96 + 24 * t.ndim


def _plan_shards(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Split tensor names, in state-dict order, into groups whose files stay below max_bytes."""
    overhead = 8 + 64  # header length field, "__metadata__" and padding
    groups: list[list[str]] = [[]]
    size = overhead
    for key, t in tensors.items():
        need = _tensor_bytes(t) + _header_bytes(key, t)
        if need + overhead >= max_bytes:
            raise ValueError(
                f"tensor {key} alone needs {need} bytes, more than the shard limit {max_bytes}"
            )
        if groups[-1] and size + need >= max_bytes:
            groups.append([])
            size = overhead
        groups[-1].append(key)
        size += need
    return groups


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _stored(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``v`` in the storage dtype, unless it holds a value that dtype cannot (a batch norm's
    running variance can exceed float16's 65504: cast, it would read as infinity and zero its
    channel), which stays float32; loading reads every tensor back as float32."""
    if not v.is_floating_point():
        return v
    if dtype == torch.float16 and v.numel() and float(v.abs().max()) > torch.finfo(dtype).max:
        return v.to(torch.float32)
    return v.to(dtype)


def save_checkpoint(
    model: nn.Module,
    spec: ModelSpec,
    directory: str | Path,
    name: str,
    card: Mapping[str, object] | None = None,
    *,
    context: SliceContext | None = None,
    context_info: Mapping[str, object] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    created: datetime | None = None,
    storage_dtype: torch.dtype | None = None,
) -> Path:
    """Write weights, card (JSON) and its Markdown twin; return the card's path.

    ``card`` holds what only the trainer knows, by convention ``training_data``, ``split``,
    ``command`` and ``metrics``. ``metrics`` must say what data each number was measured on:
    either ``{"<data>": {"<metric>": value, ...}, ...}`` or a list of
    ``{"measured_on": "<data>", "values": {...}}``. The card JSON is written last, so a card
    never points to weights that were not completely written. ``context`` (with what is known
    of its training in ``context_info``) is stored in the same files and described in the card.
    ``storage_dtype=torch.float16`` stores floating tensors at half size (a ResNeXt-101 32x4d in
    84 MB instead of 168, one file under the repository's 100 MB limit), but for the few whose
    values exceed float16's range; loading casts them back to float32, and the card's
    ``weights_dtype`` says so. A tensor with NaN or infinity is refused (ValueError).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise ValueError(f"checkpoint name {name!r}: use letters, digits, '.', '_' or '-'")
    extra = dict(card or {})
    clash = RESERVED_CARD_KEYS & extra.keys()
    if clash:
        raise ValueError(f"card keys {sorted(clash)} are written by save_checkpoint itself")
    if "metrics" in extra:
        _check_metrics(extra["metrics"])

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    damaged = [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]
    if damaged:
        raise ValueError(
            f"{len(damaged)} tensors hold NaN or infinity ({', '.join(damaged[:3])}): a model "
            "that computes them is not saved (core.training.batch_norm re-estimates statistics)"
        )
    if storage_dtype is not None:
        if storage_dtype not in (torch.float16, torch.float32):
            raise ValueError(f"weights are stored as float16 or float32, not {storage_dtype}")
        tensors = {k: _stored(v, storage_dtype) for k, v in tensors.items()}
    if any(k.startswith(CONTEXT_PREFIX) for k in tensors):
        raise ValueError(f"the CNN's tensor names may not start with {CONTEXT_PREFIX!r}")
    if context is not None:
        for k, v in context.state_dict().items():
            tensors[CONTEXT_PREFIX + k] = v.detach().to("cpu").contiguous()
    groups = _plan_shards(tensors, max_shard_bytes)
    if len(groups) == 1:
        files = [f"{name}.safetensors"]
    else:
        files = [
            f"{name}-{i:05d}-of-{len(groups):05d}.safetensors" for i in range(1, len(groups) + 1)
        ]

    hashes: list[str] = []
    for file_name, keys in zip(files, groups, strict=True):
        path = directory / file_name
        tmp = path.with_name(path.name + ".tmp")
        save_file({k: tensors[k] for k in keys}, str(tmp), metadata={"format": "pt"})
        size = tmp.stat().st_size
        if size >= max_shard_bytes:  # the header bound above was wrong: never write silently
            tmp.unlink()
            raise RuntimeError(f"{file_name} would be {size} bytes, over {max_shard_bytes}")
        os.chmod(tmp, 0o644)  # safetensors creates it owner-only; weights are not secret
        os.replace(tmp, path)
        hashes.append(_sha256(path))

    when = (created or datetime.now(UTC)).astimezone(UTC)
    full: dict[str, Any] = {
        "format": CARD_FORMAT,
        "name": name,
        **spec.to_dict(),
        "weights_files": [
            {"file": f, "sha256": h, "bytes": (directory / f).stat().st_size}
            for f, h in zip(files, hashes, strict=True)
        ],
        "weights_sha256": combined_sha256(hashes),
        "created": when.isoformat(timespec="seconds"),
        **({"weights_dtype": str(storage_dtype).removeprefix("torch.")} if storage_dtype else {}),
        "notice": NOTICE,
        **extra,
    }
    if context is not None:
        full["context"] = {**context.spec.to_dict(), **dict(context_info or {})}
    card_path = directory / f"{name}.json"
    _atomic_write_text(directory / f"{name}.md", render_card_markdown(full))
    _atomic_write_text(card_path, ModelCard.from_dict(stamp(full)).to_json())
    return card_path


def _check_metrics(metrics: object) -> None:
    """A metric without the data it was measured on cannot be interpreted, so refuse it."""
    if isinstance(metrics, Mapping):
        bad = [k for k, v in metrics.items() if not isinstance(v, Mapping)]
        if bad:
            raise ValueError(
                "metrics must map the data they were measured on to {metric: value}; "
                f"entries {bad} are not such mappings"
            )
    elif isinstance(metrics, list):
        for item in metrics:
            if not (isinstance(item, Mapping) and item.get("measured_on") and "values" in item):
                raise ValueError("each metrics entry needs 'measured_on' and 'values'")
    else:
        raise ValueError("metrics must be a mapping or a list, see save_checkpoint")


# --------------------------------------------------------------------------- Markdown twin


def _md_value(value: object, indent: int = 0) -> str:
    """Any JSON value as Markdown: scalars inline, mappings and lists as nested bullets."""
    pad = "  " * indent
    if isinstance(value, Mapping):
        lines = []
        for k, v in value.items():
            if isinstance(v, Mapping | list) and v:
                lines.append(f"{pad}- **{k}**:\n{_md_value(v, indent + 1)}")
            else:
                lines.append(f"{pad}- **{k}**: {_md_scalar(v)}")
        return "\n".join(lines) if lines else f"{pad}- (none)"
    if isinstance(value, list):
        lines = []
        for v in value:
            if isinstance(v, Mapping | list) and v:
                lines.append(f"{pad}-\n{_md_value(v, indent + 1)}")
            else:
                lines.append(f"{pad}- {_md_scalar(v)}")
        return "\n".join(lines) if lines else f"{pad}- (none)"
    return f"{pad}{_md_scalar(value)}"


def _md_scalar(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list):
        return "(none)"
    return str(value)


def _metric_rows(values: Mapping[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """Nested metrics as table rows: dotted names, intervals as "low – high"."""
    rows: list[tuple[str, str]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _metric_rows(value, name + ".")
        elif isinstance(value, list) and all(isinstance(v, int | float) for v in value):
            rows.append((name, " – ".join(_md_scalar(float(v)) for v in value) or "(none)"))
        else:
            rows.append((name, _md_scalar(value)))
    return rows


def _md_metrics(metrics: object) -> str:
    if isinstance(metrics, Mapping):
        items = [(str(k), v) for k, v in metrics.items()]
    elif isinstance(metrics, list):
        items = [
            (str(m.get("measured_on", "(data not recorded)")), m.get("values")) for m in metrics
        ]
    else:
        return _md_value(metrics)
    parts = []
    for data, values in items:
        parts.append(f"Measured on: **{data}**\n\n")
        if isinstance(values, Mapping) and values:
            rows = "\n".join(f"| {k} | {v} |" for k, v in _metric_rows(values))
            parts.append(f"| Metric | Value |\n|---|---|\n{rows}\n\n")
        else:
            parts.append(_md_value(values) + "\n\n")
    return "".join(parts).rstrip()


def _md_recipes(recipes: list[Mapping[str, Any]]) -> str:
    """The recipes tried as one table: a column per key, in the order they first appear."""
    columns: list[str] = []
    for r in recipes:
        columns += [k for k in r if k not in columns]
    rows = [
        "| " + " | ".join(c.replace("_", " ") for c in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    rows += [
        "| "
        + " | ".join(
            "—" if r.get(c) is None else _md_scalar(r[c]).replace("|", "/") for c in columns
        )
        + " |"
        for r in recipes
    ]
    return "\n".join(rows)


def render_card_markdown(card: Mapping[str, Any]) -> str:
    """The card for people; regenerated from the JSON, which stays the reference."""
    not_recorded = "(not recorded)"
    windows = card.get("windows", [])
    labels = card.get("labels", [])
    out = [
        f"# Model card: {card.get('name', not_recorded)}",
        "",
        f"**{NOTICE}**",
        "",
        *([f"{card['summary']}", ""] if card.get("summary") else []),
        "| | |",
        "|---|---|",
        f"| Architecture | {card.get('arch', not_recorded)} |",
        f"| Input size | {card.get('input_size', '?')} × {card.get('input_size', '?')} pixels |",
        f"| Created | {card.get('created', not_recorded)} |",
        f"| Weights sha256 | `{card.get('weights_sha256', not_recorded)}` |",
        "",
        "## Input windows (channels, in order)",
        "",
    ]
    out += [
        f"{i}. {w.get('name')}: level {_md_scalar(w.get('level'))} HU, "
        f"width {_md_scalar(w.get('width'))} HU"
        for i, w in enumerate(windows, 1)
    ] or [not_recorded]
    out += ["", "## Label order (model outputs)", "", "| Output | Finding |", "|---|---|"]
    out += [f"| {i} | {label} |" for i, label in enumerate(labels)]
    out += ["", "## Training data", "", _md_value(card.get("training_data", not_recorded))]
    out += ["", "## Split", "", _md_value(card.get("split", not_recorded))]
    command = card.get("command")
    out += ["", "## Training command", ""]
    out += [f"```\n{command}\n```" if command else not_recorded]
    out += ["", "## Metrics", ""]
    out += [_md_metrics(card["metrics"]) if card.get("metrics") else not_recorded]
    out += ["", "## Weights files", "", "| File | Bytes | sha256 |", "|---|---|---|"]
    out += [
        f"| {f.get('file')} | {f.get('bytes')} | `{f.get('sha256')}` |"
        for f in card.get("weights_files", [])
    ]
    recipes = card.get("recipes_tried")
    if recipes:
        out += ["", "## Recipes tried", "", _md_recipes(recipes)]
    context = card.get("context")
    if context:
        out += ["", "## Slice-context model", "", _md_value(context)]
    shown = RESERVED_CARD_KEYS | {
        "training_data",
        "split",
        "command",
        "metrics",
        "summary",
        "recipes_tried",
    }
    other = {k: v for k, v in card.items() if k not in shown}
    if other:
        out += ["", "## Other details", "", _md_value(other)]
    out += ["", "---", "", NOTICE, ""]
    return "\n".join(out)


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A verified model ready for inference (eval mode) and what is known about it."""

    model: nn.Module
    spec: ModelSpec
    card: ModelCard
    weights_sha256: str
    name: str
    card_path: Path = field(default=Path())
    #: The slice-context model stored with the CNN, or None when the checkpoint has none.
    context: SliceContext | None = None
    #: Whether this model is one this version shipped (core.model.integrity).
    trust: ModelTrust = NOT_LOADED

    @property
    def weights_identity(self) -> str:
        return weights_identity(self.name, self.weights_sha256)

    @property
    def temperature(self) -> tuple[float, ...]:
        """Per-label temperature T (probability = sigmoid(logit / T)), fitted on validation
        data and stored in the card's ``calibration``; 1.0 for a label without one. A network
        trained with a weighted loss on a few thousand slices is over-confident; dividing the
        logit keeps the ranking and makes "0.7" mean roughly 70 %."""
        return card_temperature(self.card)


def card_temperature(card: ModelCard) -> tuple[float, ...]:
    """The card's per-label temperatures in LABELS order (1.0 where none is recorded).

    >>> card_temperature(ModelCard(calibration={"temperature": {"any": 2.0}}))[:2]
    (2.0, 1.0)
    """
    given = (card.calibration or {}).get("temperature") or {}
    if not isinstance(given, Mapping):
        raise ModelError("The model card's calibration temperature is not a table by finding.")
    out = []
    for label in LABELS:
        value = given.get(label, 1.0)
        number = isinstance(value, int | float) and math.isfinite(value)
        if not number or not 0.05 <= value <= 20:
            raise ModelError(
                f"The model card's temperature for {label} ({value!r}) is not a number between "
                "0.05 and 20; the card was edited or damaged. Re-install the model."
            )
        out.append(float(value))
    return tuple(out)


def _reinstall(path: Path) -> str:
    return f"Re-install the model files in {_display(path.parent)}."


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number")


def _read_card(card_path: Path) -> dict[str, Any]:
    if not card_path.is_file():
        raise ModelError(f"No trained model is installed: {_display(card_path)} is missing.")
    try:
        # NaN and Infinity are not JSON; Python's reader would accept them as numbers.
        card = json.loads(card_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (OSError, UnicodeDecodeError, ValueError):
        raise ModelError(
            f"The model card {_display(card_path)} is damaged and cannot be read. "
            + _reinstall(card_path)
        ) from None
    if not isinstance(card, dict):
        raise ModelError(f"{_display(card_path)} is not a model card. " + _reinstall(card_path))
    return card


def _check_fields(card: dict[str, Any], where: str, card_path: Path) -> None:
    """Refuse a card with any field out of range (core.model.card_checks), in one message."""
    labels = card.get("labels")
    try:
        check_label_order(labels if isinstance(labels, list | tuple) else [])
    except ValueError:
        raise ModelError(
            f"The model card {where} lists the findings in the order {labels}, but this tool "
            f"expects {list(LABELS)}. Its probabilities would be shown under the wrong "
            "findings, so the model is not used."
        ) from None
    found = card_problems(card, BUILDERS)
    if "metrics" in card:
        try:
            _check_metrics(card["metrics"])
        except ValueError as exc:
            found.append(str(exc))
    if found:
        raise ModelError(
            f"The model card {where} holds values this tool refuses: " + "; ".join(found) + ". "
            "The card was edited or damaged, so the model is not used. " + _reinstall(card_path)
        )


def unverified_message(where: str, trust: ModelTrust) -> str:
    """Why an unverified model is not loaded, and how to load it anyway."""
    return (
        f"The model {where} is not verified: {trust.reason}. Nobody vouches for its card "
        "(windows, thresholds, summary, metrics), so it is not used. To use it anyway, run the "
        "command with --allow-unverified (the dashboard: set ICH_ALLOW_UNVERIFIED=1); it is "
        f'then shown as "{UNVERIFIED_LABEL}" everywhere. To ship it, add its line from '
        "`python -m core.model.integrity CARD.json` to core/model/manifest.py."
    )


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    name: str | None = None,
    with_context: bool = True,
    allow_unverified: bool = False,
) -> LoadedModel:
    """Load a checkpoint after checking every file against its card.

    ``path`` is the card (``<name>.json``), or a directory with ``name=``, or a directory alone
    (its newest card, see find_default_checkpoint). Any problem raises ModelError with a
    message for the person running the tool: no weights are used unless all checks pass.
    ``with_context=False`` loads the CNN alone, leaving out a stored slice-context model.

    Every card field is range-checked and every weights file checked against its entry; a
    failure is refused whatever the flags. A model that is not on the manifest, or whose card
    fails its content digest (core.model.integrity), raises UnverifiedModelError unless
    ``allow_unverified``; loaded anyway, its ``trust`` says so and every output shows it.
    """
    path = Path(path)
    if name is not None:
        card_path = path / f"{name}.json"
    elif path.is_dir():
        found = find_default_checkpoint(path)
        if found is None:
            raise ModelError(
                f"No trained model is installed: {_display(path)} holds no model card (.json)."
            )
        card_path = found
    else:
        card_path = path
    card = _read_card(card_path)
    where = _display(card_path)
    _check_fields(card, where, card_path)
    try:
        spec = ModelSpec.from_dict(card)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"The model card {where} does not describe a model this tool can run ({exc}). "
            + _reinstall(card_path)
        ) from None

    # Each file is read once: its bytes are hashed and then parsed, so what runs is exactly
    # what was checked (no window for the file to change between the two).
    blobs: list[tuple[Path, bytes]] = []
    for entry in card["weights_files"]:  # a non-empty list of plain names (checked above)
        file_path = card_path.parent / entry["file"]
        if not file_path.is_file():
            raise ModelError(
                f"No trained model is installed: {_display(file_path)} is missing "
                f"(listed in {where})."
            )
        size = entry.get("bytes")
        try:
            data = file_path.read_bytes() if size in (None, file_path.stat().st_size) else b""
        except OSError as exc:
            raise ModelError(
                f"The weights file {_display(file_path)} cannot be read ({exc.strerror}). "
                + _reinstall(card_path)
            ) from None
        if not data or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ModelError(
                f"The weights file {_display(file_path)} was changed or damaged after it was "
                f"installed (its size or checksum does not match {where}). " + _reinstall(card_path)
            )
        blobs.append((file_path, data))
    combined = combined_sha256([entry["sha256"] for entry in card["weights_files"]])
    if combined != card["weights_sha256"]:
        raise ModelError(
            f"The model card {where} names weights ({card['weights_sha256'][:12]}…) other than "
            f"its files ({combined[:12]}…). " + _reinstall(card_path)
        )
    trust = assess(card)
    if not trust.verified:
        if not allow_unverified:
            raise UnverifiedModelError(unverified_message(where, trust))
        log.info("loading an unverified model %s: %s", where, trust.reason)  # callers say so

    state: dict[str, torch.Tensor] = {}
    while blobs:
        file_path, data = blobs.pop(0)
        try:
            part = load_bytes(data)
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"The weights file {_display(file_path)} cannot be read ({exc}). "
                + _reinstall(card_path)
            ) from None
        del data
        dup = state.keys() & part.keys()
        if dup:
            raise ModelError(
                f"The weights files of {where} hold {len(dup)} tensors twice. "
                + _reinstall(card_path)
            )
        # Weights stored at half size (see save_checkpoint) run in float32.
        state.update({k: v.float() if v.dtype == torch.float16 else v for k, v in part.items()})

    # Built on the meta device, then given fresh memory: random initialisation of 40-90 M
    # parameters would be wasted, and copying (not assigning) the loaded tensors keeps them
    # aligned: tensors mapped from a safetensors file can sit at unaligned offsets, which
    # changes the CPU kernels' rounding so outputs would differ from the trained model's.
    context_state = {
        k[len(CONTEXT_PREFIX) :]: state.pop(k) for k in list(state) if k.startswith(CONTEXT_PREFIX)
    }
    with torch.device("meta"):
        model = build_model(spec)
    model.to_empty(device="cpu")
    detail = _load_strict(model, state)
    if detail:
        raise ModelError(
            f"The weights of {where} do not fit the architecture {spec.arch} named in the card "
            f"({detail}). " + _reinstall(card_path)
        )
    context = (
        _load_context(card.get("context"), context_state, where, card_path)
        if with_context
        else None  # the CNN alone (core.training.crossval replaces the context model)
    )
    del state
    model.to(device).eval()
    log.info("loaded model %s", weights_identity(card_path.stem, combined))
    return LoadedModel(
        model=model,
        spec=spec,
        card=ModelCard.from_dict(card),
        weights_sha256=combined,
        name=str(card.get("name", card_path.stem)),
        card_path=card_path,
        context=context,
        trust=trust,
    )


def _load_context(
    info: Any, state: dict[str, torch.Tensor], where: str, card_path: Path
) -> SliceContext | None:
    """The slice-context model when the card describes one; its tensors must all be there."""
    if info is None:
        if state:
            raise ModelError(
                f"The weights of {where} hold a slice-context model that the card does not "
                "describe. " + _reinstall(card_path)
            )
        return None
    try:
        context = SliceContext(ContextSpec.from_dict(info))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(
            f"The model card {where} describes its slice-context model wrongly ({exc}). "
            + _reinstall(card_path)
        ) from None
    detail = _load_strict(context, state)
    if detail:
        raise ModelError(
            f"The slice-context weights of {where} do not fit the card ({detail}). "
            + _reinstall(card_path)
        )
    return context.eval()


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> str:
    """Load ``state`` into ``module`` exactly; '' on success, else why it does not fit."""
    detail = _state_mismatch(module.state_dict(), state)
    if not detail:
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = str(exc).strip().splitlines()[-1].strip() or type(exc).__name__
    return detail


def _state_mismatch(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> str:
    """Short account of why ``found`` cannot be loaded into a model with ``expected``; '' if ok."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    shape = [k for k in expected.keys() & found.keys() if expected[k].shape != found[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing, e.g. {min(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected, e.g. {min(unexpected)}")
    if shape:
        parts.append(f"{len(shape)} of the wrong shape, e.g. {min(shape)}")
    return "; ".join(parts)


def _card_date(card_path: Path) -> tuple[int, datetime, str]:
    """Sort key: valid cards by their date; unreadable .json files last but still candidates."""
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return (0, datetime.min.replace(tzinfo=UTC), card_path.name)
    if not isinstance(card, dict) or "arch" not in card or "weights_files" not in card:
        return (-1, datetime.min.replace(tzinfo=UTC), card_path.name)
    try:
        when = datetime.fromisoformat(str(card.get("created")))
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    except ValueError:
        when = datetime.min.replace(tzinfo=UTC)
    return (1, when, card_path.name)


def find_default_checkpoint(weights_dir: str | Path = DEFAULT_WEIGHTS_DIR) -> Path | None:
    """The card the app should load (newest by card date), or None: "no model is installed".

    Only ``*.json`` directly in ``weights_dir`` are considered. JSON files that are clearly not
    model cards are ignored; a card that cannot be parsed is still returned when nothing better
    exists, so that loading reports it as damaged instead of claiming nothing is installed.
    """
    weights_dir = Path(weights_dir)
    if not weights_dir.is_dir():
        return None
    ranked = [(key, p) for p in weights_dir.glob("*.json") if (key := _card_date(p))[0] >= 0]
    if not ranked:
        return None
    return max(ranked)[1]


__all__ = [
    "BUILDERS",
    "CARD_FORMAT",
    "RESERVED_CARD_KEYS",
    "ModelCard",
    "DEFAULT_WEIGHTS_DIR",
    "MAX_SHARD_BYTES",
    "LoadedModel",
    "ModelSpec",
    "build_model",
    "combined_sha256",
    "default_weights_dir",
    "find_default_checkpoint",
    "load_checkpoint",
    "render_card_markdown",
    "save_checkpoint",
    "weights_identity",
]
