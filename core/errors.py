"""One exception family. Every message is written for a radiologist, not a programmer.

The dashboard and the command-line tools show ``str(error)`` as it is, so a message says what
was wrong with the input and what to do, and never contains a traceback or patient data.
"""

from __future__ import annotations


class ICHError(Exception):
    """Base of every error this tool raises on purpose."""


class InputError(ICHError):
    """The file or folder given cannot be read as a CT study (not a zip, empty, damaged…)."""


class UnsafeArchiveError(InputError):
    """The zip looks like an attack or exceeds a safety limit (zip bomb, too many files…)."""


class NoImagesError(InputError):
    """The input was readable but holds no CT images this tool can show."""


class ModelError(ICHError):
    """Weights are missing, damaged or do not match the code."""


class UnverifiedModelError(ModelError):
    """The model is sound but not one this version shipped (core.model.integrity): it is used
    only when the person asks for it explicitly (``--allow-unverified``)."""


class StoreError(ICHError):
    """The app's data folder, its review database or its pseudonym key cannot be used (cannot
    be created, locked, damaged, read-only, written by a newer version…)."""


class PacsError(InputError):
    """The PACS (a DICOMweb server) cannot be reached, refused the login or the request, cut a
    transfer short, or holds no CT study under the name asked for."""


class NotCTStudyError(PacsError):
    """The study asked for on the PACS holds no CT series (an MR, an SR…): nothing to score."""
