"""The models shipped with this version of the code: the trust anchor of core.model.integrity.

A model is *verified* only when its card's name and content digest are listed here. The list
lives in the package, not in the weights folder, so that whoever can write weights/ (or point
``ICH_WEIGHTS`` elsewhere) cannot also vouch for what they put there. Adding a model is one
line, printed by ``python -m core.model.integrity weights/NAME.json``, in a reviewed commit.
"""

from __future__ import annotations

from typing import NamedTuple


class ShippedModel(NamedTuple):
    """One shipped model: its card's name, content digest and combined weights sha256."""

    name: str
    content_sha256: str
    weights_sha256: str


SHIPPED: tuple[ShippedModel, ...] = (
    ShippedModel(
        "ich-resnext101-32x4d-v4",
        "94bbb5c95b5c7e14f85cd29a25559b3d4a6eb082297e6148ec8e73d4168cd656",
        "72e83df0628d1610ab19f2c86eecf212e3925c7b2426dc78c47594019dd60ffd",
    ),
    # v3 and v2 are no longer in weights/ (git history has them); listed so that results they
    # scored, saved in a worklist, are still recognised as a shipped model's.
    ShippedModel(
        "ich-resnext101-32x4d-v3",
        "08376ef5f56a1538c419a944fbf3a34ecc601d1e9037e4b99fca96ab3968ca43",
        "9ea9aae88afc98c29bdd0542aac364404663a653c3ac76706705a6019ef03ed2",
    ),
    ShippedModel(
        "ich-resnext101-32x4d-v2",
        "90d4e9ed7bd825f722ba23cbe328a8961e7ef308253e09816f8bfcc69454b5f9",
        "63af8b71794e260c2d18dc74878dbfb0ffece66b5f63861d280833fcc4edd836",
    ),
)
