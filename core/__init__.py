"""The domain of the ICH review tool; it never imports streamlit.

Doors (``python -m core.<verb>``: parse arguments, call a room): inspect, predict, train,
crossval, evaluate, bench, verify_reviews. Base modules every room may import: labels, errors,
notice.
Rooms, along the road a study takes (a room imports only rooms before it in this list and the
base modules; training sits beside review and reports and imports neither):
dicom → imaging → model → inference → review → reports, and training.
"""
