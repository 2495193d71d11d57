"""The dashboard through streamlit's AppTest: demo study opens, slices and windows change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "dashboard" / "app.py")


def _image_bytes(at: AppTest) -> bytes:
    images = at.get("image")
    assert images, "no image on the page"
    return images[0].proto.imgs[0].url.encode()


def test_demo_study_opens_and_window_and_slice_change_the_image() -> None:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    demo = next(b for b in at.sidebar.button if b.label == "Open the demo study")
    demo.click().run()
    assert not at.exception
    assert any("Slice 16 of 32" in c.value for c in at.caption)
    first = _image_bytes(at)
    at.selectbox(key="preset").set_value("bone").run()
    assert _image_bytes(at) != first
    slider = at.slider(key=next(s.key for s in at.slider if s.key.startswith("slice-")))
    slider.set_value(3).run()
    assert any("Slice 3 of 32" in c.value for c in at.caption)
    assert not np.any([m.value for m in at.error])
