"""Pixels in HU → images: window presets and the 3-window model input, and the candidate bleed
volume (mask, mL, ABC/2, outline). Pure numpy/torch/scipy over arrays; it may import the base
modules and core.dicom, nothing above.
"""
