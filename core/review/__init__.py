"""What the radiologist records and sees in a list: the ReviewStore (SQLite, append-only) and
the hash chain that shows tampering (audit), patient pseudonyms (one per-installation key), the
worklist and its CSV, and patient monitoring (timeline, hematoma expansion). It may import the
base modules, core.dicom, core.imaging, core.model and core.inference.
"""
