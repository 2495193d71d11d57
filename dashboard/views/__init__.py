"""One module per view; each exposes ``render(...)`` and only calls into core/."""
