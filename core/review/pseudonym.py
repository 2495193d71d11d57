"""The one way a patient is named when identity is hidden: "Patient 94D994", the same in the
dashboard, the worklist CSV, the JSON and PDF reports and the command-line tools.

Why a per-installation secret: a hash of the PatientID alone can be reversed by hashing every
plausible hospital ID (they are short); mixed with a secret that never leaves the site, it
cannot, and two sites' pseudonyms cannot be matched. The secret is a file in the app's data
folder (``pseudonym.key``, readable by its owner only, mode 0600), created once, atomically:
two processes starting together agree on one secret. Versions before kept it as
``pseudonym_salt`` in the review database; the first open moves that value into the file (so
every pseudonym already shown stays the same) and removes it from the database.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from core.dicom.study import Study
from core.errors import StoreError
from core.review.store import DB_NAME, ReviewStore, StudyRecord, data_dir, ensure_folder

KEY_NAME = "pseudonym.key"
#: Hex characters of a secret: 32 is what the database salt had (128 bits); new keys get 64.
MIN_SECRET_CHARS = 32


@dataclass(frozen=True)
class Pseudonymizer:
    """Names patients with this installation's secret (never shown: not in repr)."""

    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret.strip()) < MIN_SECRET_CHARS:
            raise ValueError(f"a pseudonym secret needs at least {MIN_SECRET_CHARS} characters")

    def pseudonym(self, identifier: str) -> str:
        """A short stable label that tells patients apart without showing who they are."""
        digest = hashlib.sha256(f"{self.secret}\x00{identifier}".encode()).hexdigest()
        return f"Patient {digest[:6].upper()}"

    def label(
        self, patient_id: str, patient_name: str, study_uid: str, show_identity: bool = False
    ) -> str:
        """Name and ID when the user asked for them, otherwise the pseudonym of the PatientID
        (of the study when the file has no PatientID)."""
        if show_identity:
            name = patient_name.replace("^", " ").strip()
            return " · ".join(p for p in (name, patient_id) if p) or "(no name or ID)"
        return self.pseudonym(patient_id or study_uid)

    def study_label(self, study: Study, show_identity: bool = False) -> str:
        return self.label(
            study.patient_id, study.patient_name, study.study_instance_uid, show_identity
        )

    def record_label(self, record: StudyRecord, show_identity: bool = False) -> str:
        return self.label(
            record.patient_id, record.patient_name, record.study_instance_uid, show_identity
        )


def for_installation(folder: Path | None = None) -> Pseudonymizer:
    """The pseudonymizer of this installation: the key in ``folder`` (default: the app's data
    folder, the same one the dashboard uses), created on first use."""
    return Pseudonymizer(installation_secret(data_dir() if folder is None else folder))


def installation_secret(folder: Path) -> str:
    """The secret in ``folder/pseudonym.key``; created (or moved from an older review
    database in the same folder) when absent."""
    ensure_folder(folder)
    path = folder / KEY_NAME
    try:
        secret = _read(path)
        if secret is None:
            db = folder / DB_NAME
            legacy = ReviewStore(db).legacy_pseudonym_salt() if db.is_file() else None
            _create_exclusive(path, legacy or secrets.token_hex(32))
            secret = _read(path)
            if legacy is not None and secret == legacy:
                ReviewStore(db).forget_legacy_pseudonym_salt(legacy)
    except OSError as exc:
        raise StoreError(
            f"The pseudonym key {path} cannot be read or created ({exc.strerror or exc}). "
            "Ask IT to check the data folder's permissions."
        ) from exc
    if secret is None or len(secret) < MIN_SECRET_CHARS:
        raise StoreError(
            f"The pseudonym key {path} is damaged (empty or too short). Restore it from a "
            "backup; deleting it would give every patient a new pseudonym."
        )
    return secret


def _read(path: Path) -> str | None:
    """The key's text, or None when there is no key file yet. A key readable by others is
    made owner-only again."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return ""
    if os.name == "posix" and path.stat().st_mode & 0o077:
        path.chmod(0o600)
    return text


def _create_exclusive(path: Path, secret: str) -> None:
    """Write the key to a private temporary file, then link it into place: the key appears
    whole or not at all, and if another process linked its key first, that one is kept."""
    tmp = path.with_name(f".{KEY_NAME}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secret + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return  # another process created the key first: use theirs
        _fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
