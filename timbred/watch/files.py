"""What the watch service does with directory entries (blocking; run in worker threads).

Which names are candidates, what one ``lstat`` says (:class:`Sig`, for the stability rule),
reading a complete file without following links (:func:`read_candidate`), moving a file into
``done/`` or ``rejected/`` without overwriting (:func:`move_into`), and finding a claimed file
again after a crash (:func:`locate`). The rules themselves are described in
:mod:`timbred.watch.service`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from timbred.errors import InvalidParams, WatchFolderError
from timbred.takes.options import SUFFIX_FORMATS
from timbred.takes.sidecars import SIDECAR_SUFFIX
from timbred.watch import promptfile
from timbred.watch.promptfile import PromptRequest
from timbred.watch.store import FileRecord

__all__ = [
    "DONE_DIR",
    "ERROR_SUFFIX",
    "OUTBOX_DIR",
    "OWN_SUBFOLDERS",
    "REJECTED_DIR",
    "RESULT_SUFFIX",
    "Changed",
    "Refused",
    "Sig",
    "Survey",
    "Valid",
    "folder_identity",
    "identity",
    "is_candidate_name",
    "locate",
    "move_into",
    "numbered",
    "read_candidate",
    "survey",
]

DONE_DIR: Final = "done"
REJECTED_DIR: Final = "rejected"
OUTBOX_DIR: Final = "outbox"
OWN_SUBFOLDERS: Final = frozenset({DONE_DIR, REJECTED_DIR, OUTBOX_DIR})
RESULT_SUFFIX: Final = ".result.json"
ERROR_SUFFIX: Final = ".error.txt"

_TEMP_SUFFIXES: Final = (".swp", ".swo", ".swx", ".tmp", ".temp", ".part", ".partial",
                         ".crdownload", ".download", ".bak", RESULT_SUFFIX, ERROR_SUFFIX)
_LINK_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK,
                                      errno.EXDEV, errno.ENOSYS})


def is_candidate_name(name: str) -> bool:
    """Whether a directory entry's name is one the service considers taking."""
    if name.startswith(".") or name.endswith("~") or (name.startswith("#") and
                                                       name.endswith("#")):
        return False
    folded = name.casefold()
    if folded.endswith(_TEMP_SUFFIXES):
        return False
    if folded.endswith(SIDECAR_SUFFIX) and Path(folded[:-len(SIDECAR_SUFFIX)]).suffix in \
            SUFFIX_FORMATS:
        return False  # a take's sidecar (take.wav.json), written beside it in "beside" mode
    return promptfile.prompt_kind(name) is not None


@dataclass(frozen=True)
class Sig:
    """What one ``lstat`` says about a directory entry."""

    kind: Literal["file", "link", "dir", "other"]
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Sig:
        mode = st.st_mode
        kind: Literal["file", "link", "dir", "other"] = (
            "file" if stat.S_ISREG(mode) else "link" if stat.S_ISLNK(mode)
            else "dir" if stat.S_ISDIR(mode) else "other")
        return cls(kind, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @property
    def stable_key(self) -> tuple[int, int, int, int]:
        return (self.dev, self.ino, self.size, self.mtime_ns)

    @property
    def renamed_in(self) -> bool:
        """A complete file that arrived by rename or link (see the module's stability rule)."""
        return self.kind == "file" and self.size > 0 and self.ctime_ns > self.mtime_ns


def identity(st: os.stat_result) -> str:
    """``"st_dev:st_ino"``: a file's identity, kept as it moves within one file system."""
    return f"{st.st_dev}:{st.st_ino}"


def folder_identity(path: Path) -> tuple[int, int]:
    """The watched folder's (device, inode); WatchFolderError saying why there is none."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        raise WatchFolderError(str(path), "does not exist") from exc
    except OSError as exc:
        raise WatchFolderError(str(path), exc.strerror or str(exc)) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise WatchFolderError(str(path), "is not a directory")
    return st.st_dev, st.st_ino


@dataclass
class Survey:
    """One tick's look at a folder: why it is gone, new names, each name's lstat."""

    gone: str | None = None
    found: list[str] = field(default_factory=list)
    stats: dict[str, Sig | None] = field(default_factory=dict)


def survey(path: Path, attached: tuple[int, int], names: list[str],
           known: set[str] | None) -> Survey:
    """Check the folder is still the one attached, list it if ``known`` is given, lstat names."""
    try:
        if folder_identity(path) != attached:
            return Survey(gone="was replaced (another directory now has its path)")
    except WatchFolderError as exc:
        return Survey(gone=exc.data["problem"])
    result = Survey()
    if known is not None:
        try:
            with os.scandir(path) as entries:
                for entry in entries:
                    if entry.name not in known and is_candidate_name(entry.name):
                        result.found.append(entry.name)
        except FileNotFoundError:  # went away between the stat and the listing
            return Survey(gone="does not exist")
        except OSError as exc:
            return Survey(gone=exc.strerror or str(exc))
    for name in (*names, *result.found):
        try:
            result.stats[name] = Sig.of(os.lstat(path / name))
        except OSError:
            result.stats[name] = None
    return result


def numbered(name: str, *, keep_suffix: bool = True) -> Iterator[str]:
    """``name``, then ``stem.2.suffix``, ``stem.3.suffix``, ... (``name.2`` ... without
    ``keep_suffix``)."""
    yield name
    dot = name.rfind(".")
    stem, suffix = (name[:dot], name[dot:]) if dot > 0 and keep_suffix else (name, "")
    n = 2
    while True:
        yield f"{stem}.{n}{suffix}"
        n += 1




def move_into(src: Path, dest_dir: Path, name: str, companion: str) -> Path:
    """Move ``src`` into ``dest_dir`` under a free name (also free with ``companion`` appended).

    Never overwrites: the file is hard-linked to its new name (which fails if the name exists)
    and then unlinked; file systems without hard links fall back to a checked rename.
    """
    dest_dir.mkdir(exist_ok=True)
    for candidate in numbered(name):
        dst = dest_dir / candidate
        if os.path.lexists(dst) or os.path.lexists(dest_dir / (candidate + companion)):
            continue
        try:
            os.link(src, dst, follow_symlinks=False)
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno not in _LINK_UNSUPPORTED:
                raise
            src.rename(dst)  # no hard links here; only this service writes dest_dir
            return dst
        src.unlink()
        return dst
    raise AssertionError("unreachable")  # numbered never ends



def locate(record: FileRecord, *, resuming: bool) -> Path | None:
    """Where a claimed file is now: in ``done/`` (moved) or still under its name.

    A fresh claim's file is under its name; only after a crash (``resuming``) can it be in
    ``done/`` without the record saying so, or in both (linked, not yet unlinked).
    """
    folder = Path(record.folder)

    def ours(p: Path) -> bool:
        try:
            return identity(os.lstat(p)) == record.identity
        except OSError:
            return False

    def find(directory: Path) -> Path | None:
        with contextlib.suppress(OSError), os.scandir(directory) as entries:
            for entry in entries:
                if ours(directory / entry.name):
                    return directory / entry.name
        return None

    original = folder / record.name
    if not ours(original):  # renamed inside the folder in the instant after the claim?
        original = find(folder) or original
    in_folder = ours(original)
    if in_folder and not resuming and record.location is None:
        return original
    moved = folder / record.location if record.location else None
    if moved is None or not ours(moved):
        moved = find(folder / DONE_DIR)
    if moved is not None and in_folder:  # a crash between link and unlink
        original.unlink()
    return moved or (original if in_folder else None)


@dataclass
class Valid:
    """A complete prompt file, read and parsed: its lstat, content hash and requests."""

    st: os.stat_result
    sha256: str
    requests: list[PromptRequest]


@dataclass
class Refused:
    """A file that will never be taken, and the reason written beside it in rejected/."""

    st: os.stat_result
    reason: str


class Changed(Exception):
    """The file changed or went away between the stability check and reading it."""


def read_candidate(path: Path, sig: Sig, max_bytes: int) -> Valid | Refused:
    """Read and parse a file that was found complete; never follows a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise Changed from exc
    if stat.S_ISLNK(st.st_mode):
        try:
            target = str(path.readlink())
        except OSError:
            target = "?"
        return Refused(st, f"{path.name}: is a symbolic link (to {target!r}); links are "
                        "refused so that nothing outside the watched folder is ever read; "
                        "copy or move the file itself into the folder")
    if not stat.S_ISREG(st.st_mode):
        return Refused(st, f"{path.name}: not a regular file (a FIFO, socket or device)")
    if Sig.of(st).stable_key != sig.stable_key:
        raise Changed
    try:
        promptfile.check_size(path.name, st.st_size, max_bytes)
    except InvalidParams as exc:
        return Refused(st, exc.message)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT):
            raise Changed from exc  # replaced by a link, or gone, since the lstat
        return Refused(st, f"{path.name}: cannot be read: {exc.strerror or exc}")
    try:
        fst = os.fstat(fd)
        if identity(fst) != identity(st):
            raise Changed
        chunks: list[bytes] = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise Changed
    data = b"".join(chunks)
    try:
        requests = promptfile.parse(path.name, data, max_bytes=max_bytes)
    except InvalidParams as exc:
        return Refused(st, exc.message)
    return Valid(st, hashlib.sha256(data).hexdigest(), requests)

