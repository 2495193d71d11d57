"""Outputs of a reviewed study: the JSON report, the one-page PDF and the DICOM Secondary
Capture of the key image. It may import every room below it (core.dicom, core.imaging,
core.model, core.inference, core.review) and the base modules; never core.training.
"""
