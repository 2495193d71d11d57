"""imaging: what is computed on HU pixels — windowing, bleed volume, bleed synthesis; imports
numpy/scipy/torch and core base modules only (never streamlit or the app), so that training,
the engine and the tests can all use it without pulling in a user interface."""
