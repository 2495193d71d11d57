"""Pixels in HU → images: window presets and the 3-window model input, the candidate bleed
volume (mask, mL, ABC/2, outline), and synthetic bleeds painted into normal slices with their
exact masks (for training). Pure numpy/torch/scipy over arrays; it may import the base modules
and core.dicom, nothing above.
"""
