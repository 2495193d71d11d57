"""The six RSNA 2019 labels, in the one order used everywhere (model outputs, files, UI)."""

from __future__ import annotations

LABELS: tuple[str, ...] = (
    "any",
    "epidural",
    "intraparenchymal",
    "intraventricular",
    "subarachnoid",
    "subdural",
)

#: Weights of the challenge's multi-label log loss: 'any' counts twice.
LOSS_WEIGHTS: tuple[float, ...] = (2.0, 1.0, 1.0, 1.0, 1.0, 1.0)

#: Short names for narrow tables and charts, same order as LABELS.
SHORT_NAMES: tuple[str, ...] = ("ANY", "EDH", "IPH", "IVH", "SAH", "SDH")


def check_label_order(labels: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError unless ``labels`` is exactly LABELS (same names, same order)."""
    if tuple(labels) != LABELS:
        raise ValueError(f"label order {list(labels)} differs from the fixed order {list(LABELS)}")
