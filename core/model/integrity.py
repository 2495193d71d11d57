"""Whether a model is one this version shipped: the card's content digest and the manifest.

Why: the card decides what the model computes (input size, windows, temperatures, thresholds)
and what a reader is told (summary, notice, metrics). Checksums of the weights alone let an
edited card run silently: an audit changed the windows (P(any) 0.485 → 0.586), rewrote the
summary to "cleared for clinical use", edited the thresholds, replaced the weights and updated
their sha256, and dropped in a newer card; all were loaded without a word. So:

* **The content digest** binds the card to its weights. It is the sha256 of
  ``ich-review-model-card-content/1`` + a newline + the *canonical JSON* of the card's every
  key except ``content_sha256`` itself: keys sorted, no whitespace (``(",", ":")``
  separators), UTF-8 without escaping, NaN/Infinity refused, numbers as Python's ``json``
  writes them (so ``40`` and ``40.0`` differ, as they do in the file). Every key is covered —
  arch, input_size, windows, labels, bleed_map, calibration, operating_thresholds, summary,
  notice, metrics, training data, command, an unknown key a person added — and so are the
  weight shards: ``weights_files`` (each shard's sha256 and size) and ``weights_sha256`` are
  keys of the card, and the loader checks every shard's bytes against its entry before the
  digest counts. Key order and indentation are not covered (reformatting is harmless).
  The digest is stored in the card as ``content_sha256`` (written by save_checkpoint,
  core.calibrate and core.crossval; ``python -m core.model.integrity CARD`` prints it).
* **The manifest** (core.model.manifest.SHIPPED) lists the (name, content digest) of the models
  shipped with this version of the code. Only a model on it is *verified*. A card can recompute
  its own digest, so the stored digest alone proves nothing against a deliberate edit; the
  manifest, inside the package, is what an edit of the weights folder cannot change.

What happens to each kind of tampering (load_checkpoint):

======================================================  =========================================
Case                                                    Outcome
======================================================  =========================================
card unreadable, not JSON, NaN/Infinity in it           refused (ModelError), always
a field out of range (input_size 20000, a window of     refused, always: the message names each
width 0 or NaN, a temperature ≤ 0, a threshold          field (core.model.card_checks)
outside (0, 1), labels not in the fixed order, …)
a weights file missing, of another size, or whose       refused, always ("changed or damaged")
sha256 differs from its card entry; weights_sha256
not the shards' combined hash; tensors that do not
fit the architecture
card edited by hand after it was written (windows,      *unverified*: the stored digest does not
summary, thresholds, notice, metrics, a weights entry   match; loads only with --allow-unverified
with an updated sha256, …)                              / ICH_ALLOW_UNVERIFIED=1
card without a digest (written before digests)          *unverified*, likewise
self-consistent card not on the manifest (a newer       *unverified*, likewise; the message says
card dropped in, re-stamped edits, a model trained or   when it bears a shipped model's name
recalibrated here)
the shipped v4 (or v3 / v2), untouched                 verified
======================================================  =========================================

Refused means the model cannot run correctly or safely (a wrong input size, a permuted label,
weights that are not the ones the card describes): no flag changes that. Unverified means it
would run as its card says, but nobody vouches for the card: it runs only when asked for
explicitly, and is then labelled "unverified model" wherever its output is shown (dashboard
model panel, PDF and JSON reports, predict's table and JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from core.model.manifest import SHIPPED, ShippedModel

#: The card key holding the content digest (not itself covered by it).
DIGEST_KEY = "content_sha256"
_DIGEST_DOMAIN = b"ich-review-model-card-content/1\n"

#: How an unverified model is named wherever its output is shown.
UNVERIFIED_LABEL = "unverified model"

#: The environment variable that lets the dashboard load an unverified model.
ALLOW_UNVERIFIED_ENV = "ICH_ALLOW_UNVERIFIED"


def canonical_json(value: object) -> bytes:
    """The one byte form of a JSON value that the digest is taken over.

    >>> canonical_json({"b": [1, 2.5], "a": "é"})
    b'{"a":"\\xc3\\xa9","b":[1,2.5]}'
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def content_digest(card: Mapping[str, object]) -> str:
    """The card's content digest: every key but ``content_sha256`` (see the module docstring).

    >>> a = content_digest({"name": "m", "input_size": 64})
    >>> a == content_digest({"input_size": 64, "name": "m", "content_sha256": "x"})
    True
    >>> a == content_digest({"name": "m", "input_size": 65})
    False
    """
    content = {k: v for k, v in card.items() if k != DIGEST_KEY}
    return hashlib.sha256(_DIGEST_DOMAIN + canonical_json(content)).hexdigest()


def stamp(card: Mapping[str, object]) -> dict[str, object]:
    """The card with its content digest set (last key when new, in place when present)."""
    out = dict(card)
    out[DIGEST_KEY] = content_digest(card)
    return out


@dataclass(frozen=True)
class ModelTrust:
    """Whether a loaded model is one this version shipped, and if not, why not."""

    verified: bool
    #: The digest recomputed from the card as loaded.
    digest: str
    #: Why it is not verified, for people ("" when verified).
    reason: str = ""

    @property
    def label(self) -> str:
        """ "verified" or "unverified model": what every output shows."""
        return "verified" if self.verified else UNVERIFIED_LABEL


#: Trust of a LoadedModel built in code rather than loaded from a card.
NOT_LOADED = ModelTrust(False, "", "it was not loaded from a model card")


def assess(
    card: Mapping[str, object], shipped: tuple[ShippedModel, ...] | None = None
) -> ModelTrust:
    """Compare the card with its stored digest and with the manifest (``shipped``, default
    core.model.manifest.SHIPPED as imported here); its fields are already range-checked.

    >>> assess({"name": "m"}).reason
    'its card carries no content digest (written by hand or by an older version)'
    >>> t = assess(stamp({"name": "m"}))
    >>> t.verified, t.reason
    (False, 'it is not one of the models shipped with this version (core/model/manifest.py)')
    >>> entry = ShippedModel("m", content_digest({"name": "m"}), "")
    >>> assess(stamp({"name": "m"}), (entry,)).verified
    True
    """
    shipped = SHIPPED if shipped is None else shipped
    digest = content_digest(card)
    stored = card.get(DIGEST_KEY)
    name = card.get("name")
    if stored is None:
        return ModelTrust(
            False,
            digest,
            "its card carries no content digest (written by hand or by an older version)",
        )
    if stored != digest:
        return ModelTrust(
            False,
            digest,
            "its card was edited after it was written (its content digest does "
            "not match: windows, thresholds, summary, weights entries or another field changed)",
        )
    if any(m.name == name and m.content_sha256 == digest for m in shipped):
        return ModelTrust(True, digest)
    same_name = [m for m in shipped if m.name == name]
    if same_name:
        weights = card.get("weights_sha256")
        what = (
            "the same weights with a different card"
            if any(m.weights_sha256 == weights for m in same_name)
            else "different weights"
        )
        return ModelTrust(
            False, digest, f"it bears the name of the shipped model {name} but has {what}"
        )
    return ModelTrust(
        False,
        digest,
        "it is not one of the models shipped with this version (core/model/manifest.py)",
    )


def allow_unverified_from_env() -> bool:
    """``ICH_ALLOW_UNVERIFIED=1`` (or true/yes): the dashboard's explicit flag."""
    return os.environ.get(ALLOW_UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    """``python -m core.model.integrity CARD.json [...]``: each card's content digest, whether
    its stored one matches, and the manifest entry that would ship it."""
    parser = argparse.ArgumentParser(
        prog="python -m core.model.integrity",
        description="Print model cards' content digests and their manifest entries.",
    )
    parser.add_argument("cards", nargs="+", metavar="CARD")
    parser.add_argument(
        "--stamp", action="store_true", help="write the digest into each card (a JSON edit)"
    )
    args = parser.parse_args(argv)
    from core.model.card import ModelCard  # the card's own byte-stable writer

    for path in args.cards:
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            card = ModelCard.from_json(text).to_dict()
        except (OSError, ValueError) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 1
        digest = content_digest(card)
        state = "matches" if card.get(DIGEST_KEY) == digest else "missing or different"
        print(f"{path}: content_sha256 {digest} (stored: {state})")
        print(
            f'    ShippedModel("{card.get("name")}", "{digest}", "{card.get("weights_sha256")}"),'
        )
        if args.stamp and state != "matches":
            with open(path, "w", encoding="utf-8") as fh:
                fh.write(ModelCard.from_dict(stamp(card)).to_json())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
