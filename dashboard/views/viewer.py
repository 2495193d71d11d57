"""The slice viewer: one slice large, slice slider, window presets and free level/width.

Renders from the series' cached HU array; nothing is re-read when the slice or window changes.
"""

from __future__ import annotations

import streamlit as st

from core.study import Study
from core.windowing import PRESETS, apply_window


def render(study: Study) -> None:
    series = study.default_series
    n = series.n_slices
    for w in series.warnings:
        st.warning(w)
    cols = st.columns([3, 1])
    with cols[1]:
        preset = st.selectbox("Window", list(PRESETS), key="preset")
        window = PRESETS[preset]
        level = st.slider("Level (HU)", -1000, 3000, int(window.level), key=f"level-{preset}")
        width = st.slider("Width (HU)", 1, 4000, int(window.width), key=f"width-{preset}")
        index = (
            st.slider("Slice", 1, n, (n + 1) // 2, key=f"slice-{series.series_instance_uid}") - 1
            if n > 1
            else 0
        )
        info = series.slices[index]
        st.caption(f"Slice {index + 1} of {n} · z = {info.z:.1f} mm")
        if series.tilt_deg:
            st.caption(f"Gantry tilt {series.tilt_deg:.1f}°")
    with cols[0]:
        st.image(
            apply_window(series.hu[index], level, width),
            caption=f"Slice {index + 1}/{n} · z {info.z:.1f} mm · W {width} L {level}",
            width="stretch",
            output_format="PNG",  # lossless: JPEG artefacts have no place on a CT slice
        )
