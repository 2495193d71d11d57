"""DICOM UIDs for the objects this tool writes (Secondary Capture, SEG, SR).

Every object written for one study must name that study, its series and its images by the same
UIDs, or a PACS files them under different studies. Anonymised exports (RSNA's among them) use
names like 'ID_…' that are not valid UIDs and that no PACS accepts; such a name is replaced by a
stable UID derived from it, the same in every object and every run.
"""

from __future__ import annotations

import uuid

import pydicom.uid


def valid_uid(uid: str) -> str:
    """``uid`` when it is a valid DICOM UID, else a stable ``2.25.`` UID derived from it.

    >>> valid_uid("1.2.840.10008.5.1.4.1.1.2")
    '1.2.840.10008.5.1.4.1.1.2'
    >>> valid_uid("ID_4d28912ba6") == valid_uid("ID_4d28912ba6") != valid_uid("ID_other")
    True
    >>> valid_uid("ID_4d28912ba6").startswith("2.25.")
    True
    """
    if pydicom.uid.UID(uid).is_valid:
        return uid
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID, uid).int)


def frame_of_reference_uid(series_instance_uid: str, source_frame_of_reference: str = "") -> str:
    """The Frame of Reference UID of a series' patient coordinates: the source's own (made
    valid), or, when the source names none (RSNA's de-identified files), a stable UID derived
    from the series UID, so that every object drawn on that series (SEG, SR) shares one frame.

    >>> frame_of_reference_uid("1.2.3", "1.2.3.4")
    '1.2.3.4'
    >>> a = frame_of_reference_uid("ID_7e2939f5a2")
    >>> a == frame_of_reference_uid("ID_7e2939f5a2") and a.startswith("2.25.")
    True
    >>> a != valid_uid("ID_7e2939f5a2")  # not the series' own UID
    True
    """
    if source_frame_of_reference:
        return valid_uid(source_frame_of_reference)
    return valid_uid(f"frame-of-reference:{series_instance_uid}")
