"""The research-use notice, written once: every output a person reads carries it (the predict
and evaluate JSON, the model card, the reports, the dashboard)."""

NOTICE = "Research use only — not a medical device."
#: What the notice asks of the reader, where there is room for a second sentence.
CONFIRM = "Every finding must be confirmed by a radiologist."
