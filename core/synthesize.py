"""Door to the bleed synthesis: a contact sheet of synthetic bleeds on real normal slices.

Why a picture: whether a painted bleed looks like a bleed is judged by eye, by a person who
reads head CT. Each example is shown twice, plain (to judge it) and with the mask's outline
(to see what the labels claim), on real normal brain-window slices from rsna_png.

    python -m core.synthesize --contact-sheet test-output/synthesis_contact_sheet.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from core.imaging.synthesis import KINDS, feasible_kinds, find_anatomy, synthesize
from core.imaging.windowing import apply_window
from core.shared_data import shared_data_root
from core.training.dataset import read_challenge_labels, read_png_hu

DEFAULT_PNG = shared_data_root() / "rsna_png"
COLOURS = {
    "epidural": "#ff3b30",
    "intraparenchymal": "#ffcc00",
    "intraventricular": "#34c759",
    "subarachnoid": "#00c7ff",
    "subdural": "#ff2d92",
}


def normal_ids(labels_csv: Path) -> list[str]:
    """Image ids whose label 'any' is 0, sorted (a stable order for a seeded draw)."""
    return sorted(k for k, v in read_challenge_labels(labels_csv).items() if v[0] == 0)


def contact_sheet(
    out: Path, png_dir: Path, labels_csv: Path, n: int = 24, seed: int = 0, tile: int = 256
) -> list[tuple[str, str]]:
    """Write a grid of ``n`` examples (kinds in turn) to ``out``; return (image id, kind) of each.

    Slices are drawn at random (seeded) from the normal ones; a slice that cannot take the
    kind in turn (no ventricles, skull base, empty image) is passed over for the next one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    ids = normal_ids(labels_csv)
    order = rng.permutation(len(ids))
    shown: list[tuple[str, np.ndarray, np.ndarray, str]] = []
    pos = 0
    while len(shown) < n and pos < len(order):
        kind = KINDS[len(shown) % len(KINDS)]
        image_id = ids[order[pos]]
        pos += 1
        path = png_dir / "images" / f"{image_id}.png"
        if not path.exists():
            continue
        hu = read_png_hu(path)
        anatomy = find_anatomy(hu)
        if kind not in feasible_kinds(anatomy):
            continue
        try:
            s = synthesize(hu, rng, kind=kind, anatomy=anatomy)
        except ValueError:
            continue
        shown.append((image_id, s.hu, s.mask, kind))
    if not shown:
        raise SystemExit(f"no usable normal slice found under {png_dir}")

    cols = 4  # pairs per row
    rows = -(-len(shown) // cols)
    dpi = 100
    fig, axes = plt.subplots(
        rows, 2 * cols, figsize=(2 * cols * tile / dpi, rows * (tile + 22) / dpi), dpi=dpi
    )
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image_id, hu, mask, kind) in enumerate(shown):
        r, c = divmod(i, cols)
        img = apply_window(hu, 40, 80)
        for j in (0, 1):
            ax = axes[r, 2 * c + j]
            ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="lanczos")
            if j == 1:
                ax.contour(mask.astype(float), levels=[0.5], colors=COLOURS[kind], linewidths=0.8)
        axes[r, 2 * c].set_title(f"{kind} · {image_id}", fontsize=8, loc="left")
    fig.subplots_adjust(left=0.005, right=0.995, top=0.97, bottom=0.005, wspace=0.02, hspace=0.12)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    plt.close(fig)
    return [(i, k) for i, _, _, k in shown]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m core.synthesize", description=__doc__.split("\n")[0]
    )
    p.add_argument("--contact-sheet", type=Path, required=True, metavar="OUT.png")
    p.add_argument("--png-dir", type=Path, default=DEFAULT_PNG, help="rsna_png layout folder")
    p.add_argument("--labels", type=Path, default=None, help="challenge-format label CSV")
    p.add_argument("--n", type=int, default=24, help="number of examples (default 24)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    labels = args.labels or args.png_dir / "rsna_png_stage_2_train.csv"
    for need in (args.png_dir / "images", labels):
        if not need.exists():
            print(f"not found: {need}", file=sys.stderr)
            return 2
    if args.n < 1:
        print("--n must be at least 1", file=sys.stderr)
        return 2
    shown = contact_sheet(args.contact_sheet, args.png_dir, labels, args.n, args.seed)
    print(f"wrote {args.contact_sheet} with {len(shown)} examples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
