"""What the page gives the slice viewer component, read through AppTest.

The page sends each set of slice images once and later runs carry only its key (the frame
keeps the set), so a test that wants the image on screen keeps the sets it has seen, and where
it missed the run that sent one, asks for it as a frame mounted again does ("resend") and
checks the page answers.
"""

from __future__ import annotations

import json

from streamlit.testing.v1 import AppTest

#: The image sets the page has sent, by key.
SENT: dict[str, list[str]] = {}


def viewer_args(at: AppTest) -> dict:
    """The arguments the page gave the slice viewer component in its last run (one viewer)."""
    viewers = [
        e
        for e in at.main.get("component_instance")
        if e.proto.component_name.endswith("slice_viewer")
    ]
    assert len(viewers) == 1, f"expected one slice viewer, found {len(viewers)}"
    args = json.loads(viewers[0].proto.json_args)
    if args["images"] is not None:
        SENT[args["images_key"]] = args["images"]
    return args


def viewer_images(at: AppTest) -> tuple[dict, list[str]]:
    """(args, the slice images the frame holds for them), asking the page to resend a set this
    test did not see sent. The resend names the slice and window on screen, so nothing moves."""
    args = viewer_args(at)
    if args["images_key"] not in SENT:
        keys = at.session_state.keys()  # noqa: SIM118 (the proxy is not iterable)
        (sent,) = [k for k in keys if k.startswith("viewer-sent-")]
        uid = sent[len("viewer-sent-") :]
        at.session_state[f"viewer-{uid}"] = {
            "seq": f"test-resend-{len(SENT)}",
            "event": "resend",
            **{k: args[k] for k in ("level", "width", "preset")},
            "slice": args["index"],
        }
        at.run()
        args = viewer_args(at)
        assert args["images"] is not None, "the page did not answer the frame's resend"
    return args, SENT[args["images_key"]]
