"""Writing takes: a float32 take in, a normalised, encoded, tagged file and its sidecar out.

:func:`write_take` normalises the loudness (:mod:`timbred.takes.loudness`), encodes
(:mod:`timbred.takes.encoding`), tags (:mod:`timbred.takes.tags`), and publishes the file and
its sidecar (:mod:`timbred.takes.sidecars`) through :mod:`timbred.takes.publish` (temporary
name, fsync, ``os.link``, never overwriting). :func:`write_next_take` picks
``take-<n>.<ext>`` in a session directory; :func:`export_existing` re-encodes a take that is
already on disk. Every refusal comes before the first byte is written.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import platformdirs
import soundfile as sf

from timbred.errors import AudioInputError, InvalidParams, OutputError, TakeNotFound
from timbred.takes import publish
from timbred.takes.audio import as_audio, check_rate
from timbred.takes.encoding import check_mp3, encode
from timbred.takes.loudness import LoudnessReport, measure, normalise, true_peak_dbtp
from timbred.takes.metadata import TakeMetadata
from timbred.takes.options import ExportOptions, format_from_path
from timbred.takes.sidecars import read_sidecar, sidecar_bytes, sidecar_path
from timbred.takes.tags import metadata_from_tags, read_tags, tag_bytes

__all__ = ["WrittenTake", "export_existing", "read_take", "write_next_take", "write_take"]


@dataclass(frozen=True)
class WrittenTake:
    """A take as written: where, how, how long, how loud, and its sidecar.

    ``frames`` is the number of sample frames encoded (an MP3 or Vorbis decoder may return a
    few more or fewer, within the codec's padding).
    """

    path: Path
    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    bytes: int
    loudness: LoudnessReport | None
    sidecar_path: Path

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (paths as strings)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["path"] = str(self.path)
        out["sidecar_path"] = str(self.sidecar_path)
        out["loudness"] = None if self.loudness is None else self.loudness.to_dict()
        return out


@dataclass(frozen=True)
class _Encoded:
    """A take encoded and tagged in memory, not yet published anywhere."""

    data: bytes
    options: ExportOptions
    sample_rate: int
    channels: int
    frames: int
    metadata: TakeMetadata

    def sidecar(self, file_name: str) -> bytes:
        """The sidecar for this take published as ``file_name``."""
        return sidecar_bytes(self.metadata, self.options, file_name=file_name, data=self.data,
                             sample_rate=self.sample_rate, channels=self.channels,
                             frames=self.frames)


def _prepare(audio: npt.ArrayLike, sample_rate: int, options: ExportOptions,
             metadata: TakeMetadata, name: str) -> _Encoded:
    if not isinstance(options, ExportOptions):
        raise InvalidParams("options must be ExportOptions", param="options")
    if not isinstance(metadata, TakeMetadata):
        raise InvalidParams("metadata must be TakeMetadata", param="metadata")
    rate = check_rate(sample_rate)
    x = as_audio(audio)
    if options.format == "mp3":
        check_mp3(options, rate, x.shape[0], name)
    report: LoudnessReport
    if options.master is not None:
        out, report, mastered = _master(x, rate, options.master)
        metadata = dataclasses.replace(metadata, mastering=mastered)
    elif options.loudness_target_lufs is not None:
        out, report = normalise(x, rate, target_lufs=options.loudness_target_lufs,
                                ceiling_dbtp=options.true_peak_ceiling_dbtp)
    else:
        out = np.ascontiguousarray(x, dtype=np.float32)
        report = measure(x, rate)
    metadata = dataclasses.replace(metadata, loudness=report)
    data = tag_bytes(encode(out, rate, options, name=name), options.format, metadata)
    return _Encoded(data, options, rate, out.shape[0], out.shape[1], metadata)



def _master(x: npt.NDArray[np.float64], rate: int, name: str
            ) -> tuple[npt.NDArray[np.float32], LoudnessReport, dict[str, Any]]:
    """``x`` through the mastering chain ``name`` (its loudness target and ceiling included):
    the audio, the loudness report every take carries (measured before and after, like
    :func:`normalise`'s), and the metadata's ``mastering`` record (every setting of the
    chain, so that it can be applied again, and what it measured)."""
    from timbred.takes import mastering

    chain = mastering.load_chain(name, chain_dir())
    out, done = mastering.master(x, rate, chain)
    out = np.ascontiguousarray(out, dtype=np.float32)
    # master measured the loudness before and after and the true peak after; only the
    # true peak before is left to measure.
    gain = (done.after_lufs - done.before_lufs
            if done.after_lufs is not None and done.before_lufs is not None else 0.0)
    report = LoudnessReport(done.before_lufs, done.after_lufs, true_peak_dbtp(x),
                            done.true_peak_after_dbtp, gain_db=gain, limited=done.limited)
    return out, report, {"chain": chain.to_dict(), "report": done.to_dict()}


def chain_dir() -> Path:
    """Where a user's own mastering chains live: ``<config dir>/mastering`` (beside the
    presets), whether it exists or not."""
    return Path(platformdirs.user_config_dir("timbre")) / "mastering"


def _written(enc: _Encoded, path: Path) -> WrittenTake:
    return WrittenTake(
        path=path, format=enc.options.format, subtype=enc.options.subtype,
        sample_rate=enc.sample_rate, channels=enc.channels, frames=enc.frames,
        duration_s=enc.frames / enc.sample_rate, bytes=len(enc.data),
        loudness=enc.metadata.loudness, sidecar_path=sidecar_path(path))


def _check_suffix(path: Path, options: ExportOptions) -> None:
    if format_from_path(path) != options.format:
        raise InvalidParams(f"{path.name}: the extension does not match the format "
                            f"{options.format!r} (use {options.extension})", param="path")


def write_take(path: str | os.PathLike[str], audio: npt.ArrayLike, sample_rate: int,
               options: ExportOptions, metadata: TakeMetadata) -> WrittenTake:
    """Normalise, encode, tag and publish one take at ``path``, then its sidecar.

    ``audio`` is ``(channels, samples)``. The file and the sidecar are each written to a
    temporary name in the same directory and fsynced *both* before the take is linked to its
    final name and the sidecar after it, so a full disk or a read-only directory fails with
    OutputError and leaves nothing under a final name. Nothing is ever overwritten: if
    ``path`` or its sidecar exists, OutputError. The extension of ``path`` must match
    ``options.format`` (InvalidParams naming ``path``).
    """
    final = Path(path)
    _check_suffix(final, options)
    side = sidecar_path(final)
    for p in (final, side):
        if os.path.lexists(p):
            raise OutputError(str(p), "a file with that name already exists; it was left "
                              "untouched (Timbre never overwrites a file)")
    enc = _prepare(audio, sample_rate, options, metadata, str(final))
    publish.publish([(final, enc.data), (side, enc.sidecar(final.name))])
    return _written(enc, final)


def write_next_take(directory: str | os.PathLike[str], audio: npt.ArrayLike, sample_rate: int,
                    options: ExportOptions, metadata: TakeMetadata) -> WrittenTake:
    """Like :func:`write_take`, at ``directory/take-<n>.<ext>`` for the smallest free ``n``.

    Concurrent writers (threads or processes) never get the same name: each claims it with
    ``os.link`` and moves to the next number on EEXIST
    (:func:`timbred.takes.publish.link_numbered`).
    """
    folder = Path(directory)
    enc = _prepare(audio, sample_rate, options, metadata, str(folder))
    ext = options.extension.lstrip(".")
    final = publish.link_numbered(
        folder, ext, enc.data, companions=lambda p: [(sidecar_path(p), enc.sidecar(p.name))])
    return _written(enc, final)



def export_existing(src: str | os.PathLike[str], dst_or_dir: str | os.PathLike[str],
                    options: ExportOptions, metadata: TakeMetadata | None = None) -> WrittenTake:
    """Re-encode the take at ``src`` as ``options`` say, with :func:`write_take`.

    ``dst_or_dir`` is the new file (its extension must match ``options.format``) or an
    existing directory, where ``<src stem><ext>`` is written. The metadata is, in order:
    ``metadata``, the source's sidecar, the source's own Timbre tags, or a bare record (the
    file name as prompt). Loudness is normalised again (a no-op up to a few hundredths of a
    dB for a take Timbre already normalised to the same target). TakeNotFound if ``src``
    does not exist, AudioInputError (``param`` ``src``) if it cannot be decoded.
    """
    source = Path(src)
    audio, rate, found = read_take(source)
    dst = Path(dst_or_dir)
    if dst.is_dir():
        dst = dst / (source.stem + options.extension)
    return write_take(dst, audio, rate, options,
                      dataclasses.replace(metadata or found, loudness=None))


def read_take(src: str | os.PathLike[str]) -> tuple[npt.NDArray[np.float32], int, TakeMetadata]:
    """A take file's audio ``(channels, samples)``, its sample rate and its metadata: from
    its sidecar, else its own Timbre tags, else a bare record (the file name as prompt).
    TakeNotFound if ``src`` does not exist, AudioInputError (``param`` ``src``) if it cannot
    be decoded, InvalidParams naming the sidecar if that is damaged."""
    source = Path(src)
    if not source.is_file():
        raise TakeNotFound(str(source))
    try:
        frames, rate = sf.read(source, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioInputError(str(source), "src", str(exc)) from exc
    side = read_sidecar(source)
    if side is not None:
        try:
            metadata = TakeMetadata.from_dict(side)
        except InvalidParams as exc:
            raise InvalidParams(f"{sidecar_path(source)}: {exc.message}",
                                param="sidecar") from exc
    else:
        try:
            tags = read_tags(source)
        except AudioInputError:
            tags = {}
        metadata = metadata_from_tags(tags, source.stem)
    return np.ascontiguousarray(frames.T), int(rate), metadata
