"""Outputs of a reviewed study: the JSON report, the one-page PDF, the DICOM Secondary
Capture of the key image (the key slice composed once, for both, by key_image) and the
Comprehensive SR of the findings. It may import every room below it (core.dicom, core.imaging,
core.model, core.inference, core.review) and the base modules; never core.training.
"""
