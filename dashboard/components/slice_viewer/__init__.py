"""The slice viewer as a bidirectional Streamlit component: the study's slices go to the browser
once (8-bit PNGs at the current window), and scrolling, window/level dragging and showing the
overlays happen there, at the speed of the browser, not of a server round trip.

The frontend (``frontend/index.html`` and ``viewer.js``) speaks Streamlit's component protocol
by hand, so there is no npm build and nothing is fetched from a CDN. What comes back is a
:class:`ViewerState`: the slice the reader settled on, or the window they dragged or chose with
a hotkey; the page applies it to the same session keys as its slider and buttons.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, cast

import streamlit.components.v1 as components

from core.imaging.orientation import NOT_RECORDED, EdgeMarkers
from core.imaging.windowing import Window

T = TypeVar("T")

FRONTEND = Path(__file__).resolve().parent / "frontend"
_component = components.declare_component("slice_viewer", path=str(FRONTEND))

Event = Literal["slice", "window", "preset", "resend"]
_EVENTS: tuple[Event, ...] = ("slice", "window", "preset", "resend")

#: OHIF's hotkeys for the window presets, in the order of core.imaging.windowing.PRESETS.
HOTKEYS = ("1", "2", "3", "4", "5")


@dataclass(frozen=True)
class ViewerState:
    """What the reader did in the viewer, as its frontend last reported it.

    ``seq`` is unique per report, so the page applies each one once (a component keeps
    returning its last value on every later rerun). ``slice`` counts from 1. ``event`` says
    what changed: the slice (after scrolling stopped), the window (a drag released), a preset
    (a hotkey; ``preset`` names it), or "resend": the frame does not hold the images or the
    outline the page sent by key only (it was mounted again), so the page sends them again."""

    seq: str
    event: Event
    slice: int
    level: int
    width: int
    preset: str | None


class _State(Protocol):
    """What SentOnce needs of st.session_state (or a dict)."""

    def __contains__(self, key: str, /) -> bool: ...

    def __getitem__(self, key: str, /) -> Any: ...

    def __setitem__(self, key: str, value: Any, /) -> None: ...


class SentOnce:
    """Which image sets a page's viewer frame holds, so each is sent once per frame.

    ``state`` is the page's session state (a dict-like); the record lives under ``key``.
    ``payload(name, set_key, build)`` returns ``build()`` the first time a set key is seen for
    ``name`` ("images", "outline") and None after, until ``forget()`` (the frame asked for a
    resend).

    >>> state = {}
    >>> sent = SentOnce(state, "v")
    >>> sent.payload("images", "k1", lambda: ["a"]), sent.payload("images", "k1", lambda: ["a"])
    (['a'], None)
    >>> sent.payload("images", "k2", lambda: ["b"])
    ['b']
    >>> sent.forget(); sent.payload("images", "k2", lambda: ["b"])
    ['b']
    """

    def __init__(self, state: _State, key: str) -> None:
        self.state, self.key = state, key

    def payload(self, name: str, set_key: str, build: Callable[[], T]) -> T | None:
        held: dict[str, str] = dict(self.state[self.key]) if self.key in self.state else {}
        if held.get(name) == set_key:
            return None
        self.state[self.key] = {**held, name: set_key}
        return build()

    def forget(self) -> None:
        self.state[self.key] = {}


@dataclass(frozen=True)
class HeatmapLayer:
    """A Grad-CAM layer for one slice (``slice`` from 1), an RGBA PNG laid over it."""

    slice: int
    label: str
    probability: float
    png: bytes
    key: str


def data_url(png: bytes) -> str:
    """PNG bytes → a ``data:`` URL the frame can draw without any request.

    >>> data_url(b"\\x89PNG")
    'data:image/png;base64,iVBORw=='
    """
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def parse_state(value: object) -> ViewerState | None:
    """The frontend's value, checked (it comes from the browser): None when absent or not of
    the expected shape.

    >>> parse_state({"seq": "a-1", "event": "slice", "slice": 3, "level": 40, "width": 80})
    ViewerState(seq='a-1', event='slice', slice=3, level=40, width=80, preset=None)
    >>> parse_state({"seq": "a-1", "event": "rm -rf", "slice": 3}) is None
    True
    """
    if not isinstance(value, dict):
        return None
    try:
        seq, event = value["seq"], value["event"]
        slice_, level, width = (int(value[k]) for k in ("slice", "level", "width"))
    except (KeyError, TypeError, ValueError):
        return None
    preset = value.get("preset")
    if not isinstance(seq, str) or event not in _EVENTS or width < 1:
        return None
    return ViewerState(
        seq=seq,
        event=cast(Event, event),
        slice=slice_,
        level=level,
        width=width,
        preset=preset if isinstance(preset, str) else None,
    )


def slice_viewer(
    *,
    images: Sequence[str] | None,
    images_key: str,
    n: int,
    rows: int,
    cols: int,
    index: int,
    window: Window,
    preset: str | None,
    presets: Sequence[Window],
    z: Sequence[float],
    markers: EdgeMarkers | None,
    pixel_spacing: tuple[float, float] | None,
    applied_seq: str | None,
    outline: Sequence[str | None] | None = None,
    outline_key: str | None = None,
    heatmap: HeatmapLayer | None = None,
    key: str,
) -> ViewerState | None:
    """Draw the viewer and return the reader's last report (None before the first).

    ``images`` are data URLs of the slices windowed at ``window``, ``images_key`` names that
    set (the frame decodes a set once; a new key, e.g. a new window, is decoded again). Why
    ``None`` is allowed: a rerun (each settled scroll is one) would otherwise send every
    slice again, megabytes per slice change; the page sends a set once and then its key only
    (see :class:`SentOnce`), and a frame that lacks it answers "resend". ``outline`` likewise.
    ``index`` is the slice the page holds (from 1); ``applied_seq`` the last report the page
    applied, so the frame can tell a reply to its own report from a move made on the page.
    ``outline``: one data URL (or None) per slice, transparent but for the outline;
    ``outline_key`` names it (None: no outline).
    """
    args: dict[str, Any] = {
        "images": list(images) if images is not None else None,
        "images_key": images_key,
        "n": n,
        "rows": rows,
        "cols": cols,
        "index": index,
        "level": int(round(window.level)),
        "width": int(round(window.width)),
        "preset": preset,
        "presets": [
            {"hotkey": h, "name": w.name, "level": int(w.level), "width": int(w.width)}
            for h, w in zip(HOTKEYS, presets, strict=False)
        ],
        "z": [float(v) for v in z],  # unrounded: the frame rounds once, as the caption
        "markers": asdict(markers) if markers is not None else None,
        "orientation_note": NOT_RECORDED,
        "pixel_spacing": list(pixel_spacing) if pixel_spacing else None,
        "applied_seq": applied_seq,
        "outline": list(outline) if outline is not None else None,
        "outline_key": outline_key,
        "heatmap": (
            {
                "slice": heatmap.slice,
                "label": heatmap.label,
                "probability": heatmap.probability,
                "src": data_url(heatmap.png),
                "key": heatmap.key,
            }
            if heatmap is not None
            else None
        ),
    }
    return parse_state(_component(key=key, default=None, **args))
