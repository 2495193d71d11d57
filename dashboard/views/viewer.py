"""The slice viewer: the slice large, scroll, windows, Grad-CAM beside the probabilities, and a
per-slice strip that shows where along the head each label fires.

The image is the slice_viewer component: wheel, keys, window drag, preset hotkeys and the
overlays' show/hide run in the browser, and the slice or window the reader settles on comes back
here to the same session keys as the slider, buttons and preset box (which stay, as the
keyboard-accessible and scriptable path). The series' slices are windowed and encoded once per
window (cached); the zip is never re-read and the model never re-run for a slice or window
change.
"""

from __future__ import annotations

import numpy as np
import plotly.colors as px
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from core.dicom.study import Study
from core.imaging.orientation import edge_markers
from core.imaging.png import png_bytes
from core.imaging.windowing import PRESETS, Window
from core.inference.predictor import IN_TRAINING_NOTE, Predictor, StudyPrediction
from core.labels import LABELS
from core.model.gradcam import colorbar_image, heatmap_layer
from dashboard import resources
from dashboard.components.slice_viewer import HeatmapLayer, SentOnce, parse_state, slice_viewer
from dashboard.text import plain

CAM_NOTE = (
    "Grad-CAM shows where the model looked for this label; every map is rescaled to 0–1, so "
    "read it with the probability beside it."
)


#: The outline's controls: (toggle, help) and (slider, help, key), for a model with the bleed
#: map and for the fallback rule of a model without one.
_MAP_TOGGLE = (
    "Outline bleed (model's bleed map)",
    "The outline and volume from the model's segmentation head, computed with the "
    "probabilities. Its agreement with hand-drawn outlines is on the model card.",
)
_MAP_SLIDER = (
    "Bleed map threshold",
    "Default: chosen on validation slices (model card), else 0.5.",
    "outline-map-threshold",
)
_FALLBACK_TOGGLE = (
    "Outline candidate bleed (fallback rule)",
    "This model has no bleed map: blood-density regions inside the skull where the Grad-CAM "
    "is high, on the slices the model flags. An estimate, not a segmentation.",
)
_FALLBACK_SLIDER = (
    "Outline slices from P(any)",
    "Default: the model's operating point from its card, else 0.5.",
    "outline-threshold",
)


LEVEL_RANGE = (-1000, 3000)
WIDTH_RANGE = (1, 4000)


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return min(max(int(value), bounds[0]), bounds[1])


def _window_keys(preset: str) -> tuple[str, str]:
    """The session keys of the level and width sliders that belong to a preset; they start at
    the preset's values (set here, not as the sliders' defaults, so the viewer may set them)."""
    keys = (f"level-{preset}", f"width-{preset}")
    window = PRESETS[preset]
    st.session_state.setdefault(keys[0], int(window.level))
    st.session_state.setdefault(keys[1], int(window.width))
    return keys


def _apply_viewer_report(uid: str, slice_key: str, n: int) -> None:
    """The viewer's latest report (the reader scrolled, dragged the window or pressed a
    preset hotkey), applied once to the keys the slider and preset box use."""
    state = parse_state(st.session_state.get(f"viewer-{uid}"))
    applied_key = f"viewer-applied-{uid}"
    if state is None or state.seq == st.session_state.get(applied_key):
        return
    st.session_state[applied_key] = state.seq
    st.session_state[slice_key] = min(max(state.slice, 1), n)
    if state.event == "resend":  # the frame was mounted again: it holds none of our images
        SentOnce(st.session_state, f"viewer-sent-{uid}").forget()
    if state.event == "preset" and state.preset in PRESETS:
        st.session_state["preset"] = state.preset
        level_key, width_key = _window_keys(state.preset)
        st.session_state[level_key] = int(PRESETS[state.preset].level)
        st.session_state[width_key] = int(PRESETS[state.preset].width)
    elif state.event == "window":
        preset = st.session_state.get("preset")
        level_key, width_key = _window_keys(preset if preset in PRESETS else next(iter(PRESETS)))
        st.session_state[level_key] = _clamp(state.level, LEVEL_RANGE)
        st.session_state[width_key] = _clamp(state.width, WIDTH_RANGE)


def _set_slice(key: str, value: int) -> None:
    st.session_state[key] = value


def _apply_strip_selection(uid: str, slice_key: str, n: int) -> None:
    """A click on the per-slice strip (the previous run's selection) moves the viewer there."""
    state = st.session_state.get(f"strip-{uid}")
    points = (state or {}).get("selection", {}).get("points", []) if state else []
    chosen = tuple(int(p["x"]) for p in points if "x" in p)
    if chosen and chosen != st.session_state.get(f"strip-applied-{uid}"):
        st.session_state[f"strip-applied-{uid}"] = chosen
        st.session_state[slice_key] = min(max(chosen[0], 1), n)


def _bar_chart(prediction: StudyPrediction, index: int) -> go.Figure:
    cnn = (
        [go.Bar(name="slice, CNN alone", x=list(LABELS), y=prediction.cnn_probs[index].tolist())]
        if prediction.cnn_probs is not None
        else []
    )
    fig = go.Figure(
        [
            go.Bar(name=f"slice {index + 1}", x=list(LABELS), y=prediction.probs[index].tolist()),
            *cnn,
            go.Bar(
                name="study" if prediction.context_used else "study (max)",
                x=list(LABELS),
                y=[prediction.study_scores[k] for k in LABELS],
            ),
        ]
    )
    fig.update_layout(
        barmode="group",
        template="plotly_dark",
        height=300,
        margin=dict(l=10, r=10, t=30, b=10),
        yaxis=dict(range=[0, 1], title="probability"),
        legend=dict(orientation="h", y=1.15, x=1, xanchor="right"),
        title=dict(text="Probabilities", font=dict(size=14)),
    )
    return fig


#: Inferno, written out: its first colour (#000004, near black) is the very value Streamlit's
#: frontend swaps for a theme colour (it came out red, then lavender), so P = 0 would read as a
#: finding. Written as rgb() the dark end stays dark.
STRIP_COLORS: list[list[float | str]] = [
    [i / (len(px.sequential.Inferno) - 1), "rgb(0, 0, 4)" if c == "#000004" else c]
    for i, c in enumerate(px.sequential.Inferno)
]


def _strip(prediction: StudyPrediction, index: int) -> go.Figure:
    probs = np.asarray(prediction.probs)
    n = probs.shape[0]
    xs = np.arange(1, n + 1)
    fig = go.Figure(
        go.Heatmap(
            z=probs.T,
            x=xs,
            y=list(LABELS),
            zmin=0,
            zmax=1,
            colorscale=STRIP_COLORS,
            colorbar=dict(title="P", thickness=10),
            hoverinfo="skip",
        )
    )
    # Heatmaps cannot be selected in plotly: invisible markers on every cell take the click
    # (and carry the hover text; "skip" would make them unclickable).
    grid_x, grid_y = np.meshgrid(xs, np.arange(len(LABELS)))
    fig.add_trace(
        go.Scatter(
            x=grid_x.ravel(),
            y=[LABELS[i] for i in grid_y.ravel()],
            customdata=probs.T.ravel(),
            mode="markers",
            marker=dict(size=14, opacity=0.0),
            hovertemplate="slice %{x} · %{y}: %{customdata:.2f}<extra></extra>",
            showlegend=False,
        )
    )
    fig.add_vline(x=index + 1, line=dict(color="#4da3ff", width=2))
    fig.update_layout(
        template="plotly_dark",
        height=240,
        margin=dict(l=10, r=10, t=30, b=10),
        title=dict(text="Per-slice probabilities (click a slice to open it)", font=dict(size=14)),
        xaxis=dict(title="slice (feet → head)", range=[0.5, n + 0.5]),
        yaxis=dict(autorange="reversed"),
        clickmode="event+select",
        dragmode=False,
    )
    return fig


@st.fragment
def _open_at_peak(slice_key: str, peak: int, scored: bool) -> None:
    """Open a study at its most suspicious slice. A study shown before it is scored opens in
    the middle; when its probabilities arrive it moves to the peak, unless the reader has
    scrolled meanwhile (their slice is never taken from them)."""
    waiting_key = f"{slice_key}-waiting-at"
    if slice_key not in st.session_state:
        st.session_state[slice_key] = peak
        if not scored:
            st.session_state[waiting_key] = peak
    elif (
        scored
        and waiting_key in st.session_state
        and st.session_state[slice_key] == st.session_state.pop(waiting_key)
    ):
        st.session_state[slice_key] = peak


def render(
    study: Study,
    prediction: StudyPrediction | None,
    predictor: Predictor | None,
    model_note: str,
    patient: str,
    pending: bool = False,
) -> DeltaGenerator | None:
    """Draw the viewer. ``pending``: the study waits for the model, which runs after the page
    is drawn; the returned slot, where the probabilities will appear, is where the caller
    shows the scoring's progress (None when nothing is pending)."""
    series = study.default_series
    uid = study.study_instance_uid
    n = series.n_slices
    slice_key = f"slice-{uid}"
    peak = int(prediction.peak_slice["any"]) + 1 if prediction is not None else (n + 1) // 2
    _open_at_peak(slice_key, peak, prediction is not None)
    if prediction is not None:
        _apply_strip_selection(uid, slice_key, n)
    _apply_viewer_report(uid, slice_key, n)
    slot: DeltaGenerator | None = None

    date = study.study_date.isoformat() if study.study_date else "no date"
    what = plain(series.description) if series.description else "axial CT"
    st.markdown(f"#### {plain(patient)} · {date} · {what} · {n} slices")
    if prediction is not None and predictor is not None and predictor.seen_in_training(uid):
        st.warning(IN_TRAINING_NOTE, icon="⚠️")
    if series.warnings:
        with st.expander(f"{len(series.warnings)} warning(s) about this series"):
            for w in series.warnings:
                st.warning(w)

    image_col, side_col = st.columns([3, 2], gap="medium")
    with side_col:
        nav = st.columns(3)
        nav[0].button(
            "◀ Previous",
            key=f"prev-{uid}",
            width="stretch",
            disabled=st.session_state[slice_key] <= 1,
            on_click=_set_slice,
            args=(slice_key, st.session_state[slice_key] - 1),
        )
        nav[1].button(
            "Next ▶",
            key=f"next-{uid}",
            width="stretch",
            disabled=st.session_state[slice_key] >= n,
            on_click=_set_slice,
            args=(slice_key, st.session_state[slice_key] + 1),
        )
        nav[2].button(
            "Most suspicious",
            key=f"peak-{uid}",
            width="stretch",
            disabled=prediction is None,
            on_click=_set_slice,
            args=(slice_key, peak),
            help="Jump to the slice with the highest P(any).",
        )
        if n > 1:
            st.slider("Slice", 1, n, key=slice_key)
        index = int(st.session_state[slice_key]) - 1
        info = series.slices[index]
        preset = st.selectbox("Window preset", list(PRESETS), key="preset")
        level_key, width_key = _window_keys(preset)
        wl = st.columns(2)
        level = wl[0].slider("Level (HU)", *LEVEL_RANGE, key=level_key)
        width = wl[1].slider("Width (HU)", *WIDTH_RANGE, key=width_key)

        heat = None
        bleed = None
        opacity = 0.4
        outline_cut: tuple[float | None, float | None] = (None, None)
        if prediction is not None and predictor is not None:
            with_map = predictor.has_bleed_map
            if with_map:
                toggle, toggle_help = _MAP_TOGGLE
                slider, slider_help, slider_key = _MAP_SLIDER
                default = predictor.bleed_map_threshold
            else:
                toggle, toggle_help = _FALLBACK_TOGGLE
                slider, slider_help, slider_key = _FALLBACK_SLIDER
                default = predictor.slice_threshold
            if st.toggle(toggle, key="outline-on", help=toggle_help):
                cut = st.slider(
                    slider,
                    0.05,
                    0.95,
                    round(default * 20) / 20,
                    0.05,
                    key=slider_key,
                    help=slider_help,
                )
                outline_cut = (None, cut) if with_map else (cut, None)
                bleed = resources.bleed_estimate(
                    predictor,
                    prediction.weights_identity,
                    series,
                    prediction,
                    series.pixel_hash,
                    threshold=outline_cut[0],
                    map_threshold=outline_cut[1],
                )
            cam_on = st.toggle("Grad-CAM heatmap", key="cam-on")
            if cam_on:
                label = st.selectbox("Heatmap label", list(LABELS), key="cam-label")
                opacity = st.slider("Opacity", 0.0, 1.0, 0.4, 0.05, key="cam-opacity")
                heat = resources.heatmap(
                    predictor, prediction.weights_identity, series, series.pixel_hash, index, label
                )
            st.plotly_chart(_bar_chart(prediction, index), key=f"bars-{uid}", theme=None)
        elif pending and predictor is not None:
            slot = st.empty()
            slot.info(f"Scoring… 0/{n} slices")
        else:
            st.info(f"No probabilities for this study. {model_note}".strip())

    with image_col:
        caption = f"Slice {index + 1} of {n} · z = {info.z:.1f} mm · W {width} L {level}"
        layer = None
        if heat is not None:
            caption += f" · Grad-CAM '{heat.label}', P = {heat.probability:.3f} on this slice"
            layer = HeatmapLayer(
                slice=index + 1,
                label=heat.label,
                probability=float(heat.probability),
                png=png_bytes(heatmap_layer(heat, opacity)),
                key=f"{series.pixel_hash}-{opacity}",
            )
        # Each set of images goes to the frame once; later reruns (a settled scroll is one)
        # send its key only (SentOnce), not megabytes of PNGs again.
        sent = SentOnce(st.session_state, f"viewer-sent-{uid}")
        outline, outline_key = None, None
        if bleed is not None and prediction is not None:
            caption += f" · outlined {bleed.area_mm2[index]:.0f} mm²"
            outline_key = f"{series.pixel_hash}-{prediction.weights_identity}-{outline_cut}"
            outline = sent.payload(
                "outline",
                outline_key,
                lambda: resources.outline_urls(
                    bleed, prediction.weights_identity, series.pixel_hash, *outline_cut
                ),
            )
        rows, cols = series.hu.shape[1:]
        images_key = f"{series.pixel_hash}-{level}-{width}"
        slice_viewer(
            images=sent.payload(
                "images",
                images_key,
                lambda: resources.slice_urls(series, series.pixel_hash, level, width),
            ),
            images_key=images_key,
            n=n,
            rows=int(rows),
            cols=int(cols),
            index=index + 1,
            window=Window(preset, level, width),
            preset=preset,
            presets=list(PRESETS.values()),
            z=[info.z for info in series.slices],
            markers=edge_markers(series.orientation),
            pixel_spacing=series.pixel_spacing,
            applied_seq=st.session_state.get(f"viewer-applied-{uid}"),
            outline=outline,
            outline_key=outline_key,
            heatmap=layer,
            key=f"viewer-{uid}",
        )
        st.caption(caption)
        if bleed is not None:
            st.markdown(
                f"**Estimated bleed volume: {bleed.volume_ml:.1f} mL** (voxel count; ABC/2 "
                f"{bleed.abc2_ml:.1f} mL) on {bleed.scope}."
            )
            st.caption(f"{bleed.notice} Method: {bleed.method}.")
        if heat is not None:
            st.image(colorbar_image(), width="stretch", output_format="PNG")
            st.caption(f"low ← relative Grad-CAM → high. {CAM_NOTE}")
        if series.tilt_deg:
            st.caption(
                f"Gantry tilt {series.tilt_deg:.1f}° (slices are sheared; shown as acquired)."
            )

    if prediction is not None:
        st.plotly_chart(
            _strip(prediction, index),
            key=f"strip-{uid}",
            # Streamlit's theme repaints Plotly's colour scales (Inferno's near-black start
            # became red, so P = 0 read as an alarm): the figures carry their own template.
            theme=None,
            on_select="rerun",
            selection_mode="points",
        )
    return slot
