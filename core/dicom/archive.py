"""Read the files of an upload (zip, folder, single file or bytes) safely, without extracting.

Why this module exists: an uploaded zip is untrusted. Its member names are never used as paths
(nothing is written to disk at all: members are read into memory one at a time), and limits on
member count, total uncompressed size and compression ratio stop zip bombs before they inflate.

What an upload may cost is bounded while it is read, too. Each member is inflated only when
asked for (its first bytes alone when they are enough to refuse it) and never past its declared
size, so the declared total, checked before anything inflates, bounds the bytes inflated; no
member's bytes are kept once handed out, so memory holds only the members being parsed; and the
whole upload has a deadline (ArchiveLimits.max_seconds), checked before each member is read.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from core.errors import InputError, UnsafeArchiveError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    """Safety limits for one upload. Defaults fit a thin-slice head CT with room to spare."""

    max_members: int = 20_000
    max_total_bytes: int = 4 << 30  # uncompressed, whole upload
    max_member_bytes: int = 512 << 20  # one file (a multi-frame object can be large)
    # uncompressed / compressed: checked for each member above 1 MiB, and for the whole zip once
    # it unpacks to more than 64 MiB (many small members of zeros are a bomb too)
    max_ratio: float = 200.0
    # Wall-clock time to read one upload, parsing included: past it the upload is stopped with a
    # message rather than left to hang. The real studies read at up to 0.35 s a slice on two
    # busy cores, so a 1,500-slice thin series still fits.
    max_seconds: float = 600.0


DEFAULT_LIMITS = ArchiveLimits()
#: Bytes of a zip's central directory (its list of files) allowed for each member of
#: ArchiveLimits.max_members: a real entry is 46 bytes, a name and a few extra fields (~200
#: bytes). zipfile parses the whole list (~10 µs and ~270 bytes of memory an entry) before the
#: members can be counted, so the list's size is checked first, from the zip's end record.
_DIRECTORY_BYTES_PER_MEMBER = 1024
#: A zip that unpacks to less than this is not checked for its overall ratio: it costs little.
_WHOLE_ZIP_RATIO_FROM = 64 << 20


class _Deadline:
    """The time one upload may take, from the moment it is opened; every member read checks it
    first (from any thread), so a slow upload stops within one member's parse per thread."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self._seconds = limits.max_seconds
        self._at = time.monotonic() + limits.max_seconds

    def check(self) -> None:
        if time.monotonic() >= self._at:
            raise UnsafeArchiveError(
                f"Reading this upload took longer than the {self._seconds:.0f} s allowed, so it "
                "was stopped: it holds far more than one head CT, or files built to be slow to "
                "read. Upload one study at a time."
            )


#: Reads a member: all of it (None) or its first n bytes, inflated afresh on each call.
Loader = Callable[[int | None], bytes]


class Member:
    """One file of an upload: a name (shown, never used as a path) and its bytes, read lazily
    so that several members can be inflated in parallel.

    ``read()`` inflates the bytes each time it is called and keeps nothing, so a member costs
    memory only while its reader holds the bytes; ``read(n)`` inflates only the first n bytes,
    enough to refuse a file that is not DICOM. ``data`` and ``error`` read once and keep the
    result (for callers that want the bytes to stay): ``error`` says why the archive itself
    could not give them (a damaged member), ``data`` is then empty.
    """

    __slots__ = ("name", "_data", "_error", "_loader")

    def __init__(
        self,
        name: str,
        data: bytes | None = None,
        error: str | None = None,
        loader: Loader | None = None,
    ) -> None:
        self.name = name
        self._data = data
        self._error = error
        self._loader = loader

    def read(self, limit: int | None = None) -> bytes:
        """The member's bytes (only the first ``limit`` when given), not kept by the member.

        Raises DamagedMemberError when the archive cannot give them, UnsafeArchiveError when the
        upload has taken longer than ArchiveLimits.max_seconds.
        """
        if self._error is not None:
            raise DamagedMemberError(self._error)
        if self._data is not None:
            return self._data if limit is None else self._data[:limit]
        return self._loader(limit) if self._loader else b""

    def _load(self) -> None:
        if self._data is None and self._error is None:
            try:
                self._data = self._loader(None) if self._loader else b""
            except DamagedMemberError as exc:
                self._data, self._error = b"", str(exc)
            self._loader = None

    @property
    def data(self) -> bytes:
        self._load()
        return self._data  # type: ignore[return-value]

    @property
    def error(self) -> str | None:
        self._load()
        return self._error

    def __repr__(self) -> str:
        return f"Member({self.name!r})"


def display_name(name: str, limit: int = 80) -> str:
    """A member name made safe to show: printable, no directories, bounded length."""
    base = name.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or "(unnamed)"
    base = "".join(ch if ch.isprintable() else "?" for ch in base)
    return base if len(base) <= limit else base[: limit - 1] + "…"


@contextmanager
def open_upload(
    source: str | os.PathLike[str] | bytes | io.IOBase, limits: ArchiveLimits = DEFAULT_LIMITS
) -> Iterator[list[Member]]:
    """Every regular file of ``source``, as lazily read Members valid inside the ``with``.

    ``source`` is a zip (path, bytes or file object), a folder (walked at any depth, links not
    followed) or a single file. Raises InputError / UnsafeArchiveError before any member is
    inflated when the upload breaks a limit; reading a member raises UnsafeArchiveError once the
    upload has taken longer than ``limits.max_seconds``.
    """
    deadline = _Deadline(limits)
    if isinstance(source, io.IOBase):
        source = bytes(source.read())
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise InputError("The upload is empty (0 bytes).")
        if not zipfile.is_zipfile(io.BytesIO(data)) and not _starts_like_zip(data):
            _check_file_size("upload", len(data), limits)
            yield [Member("upload", data)]
            return
        with _open_zip(io.BytesIO(data), limits) as zf:
            yield _zip_members(zf, limits, deadline)
        return
    path = Path(source)
    if path.is_dir():
        yield _folder_members(path, limits, deadline)
    elif path.is_file() and (zipfile.is_zipfile(path) or _starts_like_zip(path)):
        with path.open("rb") as fh, _open_zip(fh, limits) as zf:
            yield _zip_members(zf, limits, deadline)
    elif path.is_file():
        _check_file_size(path.name, path.stat().st_size, limits)
        yield [Member(path.name, loader=partial(_read_file, path, deadline))]
    else:
        raise InputError(f"Nothing found at {display_name(str(path))}: no such file or folder.")


def _check_file_size(name: str, size: int, limits: ArchiveLimits) -> None:
    """A single file (not a zip) is one member: above ArchiveLimits.max_member_bytes it is
    refused from its size, before a byte of it is read."""
    if size > limits.max_member_bytes:
        raise UnsafeArchiveError(
            f"{display_name(name)} is {size >> 20} MB, more than the "
            f"{limits.max_member_bytes >> 20} MB one file may be; it was not read."
        )


def _starts_like_zip(source: bytes | Path) -> bool:
    """A zip's first local header: a zip cut short (no readable end record, so not is_zipfile)
    is then opened as a zip and reported damaged, not read as one "not DICOM" file. A DICOM
    file whose 128-byte preamble happens to start this way still has 'DICM' after it."""
    if isinstance(source, Path):
        with source.open("rb") as fh:
            source = fh.read(132)
    return source[:4] == b"PK\x03\x04" and source[128:132] != b"DICM"


def iter_members(
    source: str | os.PathLike[str] | bytes | io.IOBase, limits: ArchiveLimits = DEFAULT_LIMITS
) -> Iterator[Member]:
    """Yield every file of ``source`` in turn (see open_upload)."""
    with open_upload(source, limits) as members:
        for member in members:
            member.data  # noqa: B018 - read while the archive is open
            yield member


def _read_file(path: Path, deadline: _Deadline, limit: int | None = None) -> bytes:
    deadline.check()
    with path.open("rb") as fh:
        return fh.read(-1 if limit is None else limit)


def _folder_members(root: Path, limits: ArchiveLimits, deadline: _Deadline) -> list[Member]:
    members: list[Member] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for fname in sorted(filenames):
            fpath = Path(dirpath, fname)
            if fpath.is_symlink() or not fpath.is_file():
                continue
            size = fpath.stat().st_size
            total += size
            if len(members) >= limits.max_members or total > limits.max_total_bytes:
                raise UnsafeArchiveError(
                    "This folder holds more files or data than one upload may "
                    f"({limits.max_members} files, {limits.max_total_bytes >> 20} MB)."
                )
            if size <= limits.max_member_bytes:
                members.append(
                    Member(
                        str(fpath.relative_to(root)), loader=partial(_read_file, fpath, deadline)
                    )
                )
    return members


@contextmanager
def _open_zip(fh: io.IOBase, limits: ArchiveLimits) -> Iterator[zipfile.ZipFile]:
    directory = _declared_directory_bytes(fh)
    if directory > limits.max_members * _DIRECTORY_BYTES_PER_MEMBER:
        raise UnsafeArchiveError(
            f"This zip lists far more files than the {limits.max_members} allowed for one "
            f"upload (its list of files alone is {directory >> 20} MB); it was rejected."
        )
    try:
        zf = zipfile.ZipFile(fh)
    except zipfile.BadZipFile as exc:
        raise InputError(
            "This zip is damaged and cannot be opened; export the study again."
        ) from exc
    except (OSError, EOFError, ValueError) as exc:
        raise InputError("This zip cannot be read; export the study again.") from exc
    with zf:
        yield zf


def _declared_directory_bytes(fh: io.IOBase) -> int:
    """How many bytes of central directory zipfile will parse: the size the end record
    declares (the zip64 record's when a zip64 locator precedes the end record, as zipfile
    believes it), but no more than the file holds (zipfile reads what is there). 0 when no end
    record is found (zipfile then calls the zip damaged).

    The records are found the way zipfile finds them: the last end-record signature within the
    final 64 KiB + 22 bytes (a comment may follow it), the zip64 record just before its locator.
    """
    end = fh.seek(0, io.SEEK_END)
    fh.seek(max(0, end - (22 + 0xFFFF + 20 + 56)))
    tail = fh.read()
    fh.seek(0)
    at = tail.rfind(b"PK\x05\x06", 0, len(tail) - 18)  # a whole 22-byte record after it
    if at < 0:
        return 0
    size = struct.unpack_from("<I", tail, at + 12)[0]
    locator, zip64 = at - 20, at - 20 - 56  # the zip64 locator, and its record before it
    if (
        zip64 >= 0
        and tail[locator : locator + 4] == b"PK\x06\x07"
        and tail[zip64 : zip64 + 4] == b"PK\x06\x06"
    ):
        size = struct.unpack_from("<Q", tail, zip64 + 40)[0]
    return int(min(size, end))


def _zip_members(zf: zipfile.ZipFile, limits: ArchiveLimits, deadline: _Deadline) -> list[Member]:
    """Check the whole archive against the limits, then hand out lazy members.

    zipfile reads different members of one archive safely from several threads, and each
    member is capped at its declared size while inflating, so the declared total bounds it all.
    """
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if not infos:
        raise InputError("This zip is empty: it holds no files.")
    if len(infos) > limits.max_members:
        raise UnsafeArchiveError(
            f"This zip holds {len(infos)} files, more than the {limits.max_members} allowed "
            "for one upload."
        )
    if any(i.flag_bits & 0x1 for i in infos):
        raise InputError(
            "This zip is password-protected. Export the study without a password and upload "
            "it again."
        )
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_total_bytes:
        raise UnsafeArchiveError(
            f"This zip would unpack to {declared >> 20} MB, more than the "
            f"{limits.max_total_bytes >> 20} MB allowed for one upload."
        )
    for info in infos:
        _check_ratio(info, limits)
    compressed = sum(i.compress_size for i in infos)
    if declared > _WHOLE_ZIP_RATIO_FROM and declared > limits.max_ratio * max(compressed, 1):
        raise UnsafeArchiveError(
            f"This zip looks like a zip bomb (its {len(infos)} files are compressed more than "
            f"{limits.max_ratio:.0f}:1 overall); it was rejected."
        )
    return [
        Member(i.filename, loader=partial(_read_capped, zf, i, limits, deadline)) for i in infos
    ]


def _check_ratio(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    if info.file_size > limits.max_member_bytes:
        raise UnsafeArchiveError(
            f"{display_name(info.filename)} would unpack to {info.file_size >> 20} MB, more than "
            "one file may; the zip was rejected."
        )
    if info.file_size > (1 << 20) and info.file_size > limits.max_ratio * max(
        info.compress_size, 1
    ):
        raise UnsafeArchiveError(
            "This zip looks like a zip bomb (a file compressed more than "
            f"{limits.max_ratio:.0f}:1); it was rejected."
        )


def _read_capped(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    limits: ArchiveLimits,
    deadline: _Deadline,
    limit: int | None = None,
) -> bytes:
    """Read one member (its first ``limit`` bytes only, when given), never inflating past its
    declared size (headers can lie)."""
    deadline.check()
    cap = min(info.file_size, limits.max_member_bytes)
    want = cap + 1 if limit is None else min(limit, cap)  # +1: find a member longer than declared
    parts: list[bytes] = []
    got = 0
    try:
        with zf.open(info) as member:
            while got < want and (chunk := member.read(min(_CHUNK, want - got))):
                got += len(chunk)
                if got > cap:
                    raise UnsafeArchiveError(
                        f"{display_name(info.filename)} unpacks to more than it declares; "
                        "the zip was rejected."
                    )
                parts.append(chunk)
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as exc:
        # A damaged member (bad CRC, unsupported method): raise what marks it unreadable.
        raise DamagedMemberError(
            f"{display_name(info.filename)} is damaged inside the zip and was skipped."
        ) from exc
    return b"".join(parts)


class DamagedMemberError(InputError):
    """The archive cannot give one member's bytes (bad CRC, unsupported compression); the
    message names the member. The rest of the upload can still be read."""
