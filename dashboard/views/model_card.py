"""The model panel: which weights are loaded, their card, and the research-use notice."""

from __future__ import annotations

import streamlit as st

from core.inference.predictor import Predictor
from core.model.integrity import ALLOW_UNVERIFIED_ENV, UNVERIFIED_LABEL
from core.notice import CONFIRM, NOTICE


def render(predictor: Predictor | None, message: str) -> None:
    st.warning(f"**{NOTICE}** {CONFIRM}", icon="⚠️")
    if predictor is None:
        st.warning(
            f"{message} The viewer works without a model, but shows no hemorrhage "
            "probabilities or heatmaps. Random weights are never used in their place."
        )
        return
    card = predictor.loaded.card
    trust = predictor.loaded.trust
    if not trust.verified:
        # Said before the card's own words, which nobody vouches for.
        st.error(
            f"**{UNVERIFIED_LABEL.capitalize()}**: {trust.reason}. It was loaded because "
            f"{ALLOW_UNVERIFIED_ENV}=1 is set; its card (summary, thresholds, metrics) is not "
            "the one shipped with ICH review.",
            icon=":material/gpp_bad:",
        )
    summary = card.summary
    if not trust.verified and summary:
        st.caption("Its card says (unverified):")
        st.text(summary)
    elif summary:
        # The card's own verdict, with its cross-validated numbers, where it cannot be missed.
        st.info(f"**About this model.** {summary}")
    else:
        st.warning("This model's card records no cross-validated performance.")
    if predictor.context is not None:
        st.caption(
            "Slice probabilities are refined by the slice-context model (neighbouring slices); "
            "the study's 'any' score is that model's study output."
        )
    status = "" if trust.verified else f" — {UNVERIFIED_LABEL}"
    label = f"Model: {predictor.loaded.weights_identity}{status} · runs on {predictor.backend_name}"
    with st.expander(label, expanded=False):
        st.markdown(
            f"- **Architecture**: {card.arch} at {card.input_size} px\n"
            f"- **Created**: {card.created or '—'}\n"
            f"- **Windows**: {', '.join(w['name'] for w in card.windows)}\n"
            f"- **Training data**: {card.training_data or 'not recorded'}\n"
            f"- **Device**: {predictor.device}"
        )
        metrics = card.metrics
        if metrics:
            st.markdown("**Measured metrics**")
            st.json(metrics, expanded=False)
        else:
            st.warning("This model's card records no measured metrics.")
