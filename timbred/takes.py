"""Writing takes to disk: atomically, never over an existing file.

Each file is written under a temporary name in its final directory, flushed and fsynced, then
*linked* to its final name (``os.link`` fails if the name exists, so nothing is ever
overwritten, even by a concurrent writer), the temporary name is removed and the directory is
fsynced. A crash at any point leaves at most a ``.*.partial`` file, never a truncated take
under a final name.

Takes are 32-bit float WAV for now: lossless for the model's output, so a re-render can be
compared bit for bit. (Formats, loudness and tags arrive with the export work.)
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import secrets
from pathlib import Path

import numpy as np
import numpy.typing as npt
import soundfile as sf

from timbred.errors import InvalidParams, OutputError

PARTIAL_SUFFIX = ".partial"


def default_paths(root: Path, job_id: str, count: int, *, now: dt.datetime | None = None,
                  ext: str = "wav") -> list[Path]:
    """``root/YYYY/MM/DD/<job>-<n>.<ext>`` for takes 1..count."""
    day = (now or dt.datetime.now()).strftime("%Y/%m/%d")
    return [root / day / f"{job_id}-{n}.{ext}" for n in range(1, count + 1)]


def explicit_paths(output: Path, count: int) -> list[Path]:
    """The names for a user-chosen output: the path itself, or ``stem-<n>`` for variations."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{n}{output.suffix}") for n in range(1, count + 1)]


def check_output(output: str, count: int) -> list[Path]:
    """Validate a requested output path at submit time; InvalidParams naming ``output``."""
    path = Path(output)
    if not path.is_absolute():
        raise InvalidParams("output must be an absolute path (clients resolve relative ones)",
                            param="output")
    if path.suffix.lower() != ".wav":
        raise InvalidParams(f"output {output!r}: only .wav is written for now", param="output",
                            allowed=[".wav"])
    if not path.parent.is_dir():
        raise InvalidParams(f"output directory {path.parent} does not exist", param="output")
    paths = explicit_paths(path, count)
    for p in paths:
        if p.exists():
            raise InvalidParams(f"{p} already exists; Timbre never overwrites a file",
                                param="output")
    return paths


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_wav(path: Path, audio: npt.NDArray[np.float32], sample_rate: int) -> Path:
    """Write ``audio`` (channels, samples) to ``path`` atomically; OutputError on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(str(path.parent), exc.strerror or str(exc)) from exc
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        with tmp.open("xb") as f:
            sf.write(f, np.ascontiguousarray(audio.T), sample_rate, format="WAV",
                     subtype="FLOAT")
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError as exc:
        raise OutputError(str(path), "a file with that name appeared meanwhile; "
                          "it was left untouched") from exc
    except OSError as exc:
        reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        raise OutputError(str(path), reason) from exc
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise OutputError(str(path), f"encoding failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def sweep_partials(root: Path) -> list[Path]:
    """Remove leftovers of interrupted writes under ``root`` (run at start-up)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in root.rglob(f".*{PARTIAL_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            continue
    return removed
