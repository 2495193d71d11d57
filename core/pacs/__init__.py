"""Studies from a hospital's PACS over DICOMweb (QIDO-RS search, WADO-RS retrieval through the
upload loader, STOW-RS of the results), the watcher's feeds and state, and a local Orthanc to
try it against. The last room on the road: it may import every room below it (core.dicom,
core.imaging, core.model, core.inference, core.review, core.reports) and the base modules;
never core.training.
"""
