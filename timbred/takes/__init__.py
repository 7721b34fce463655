"""The takes domain: writing takes as files, publishing them safely, and their history.

One module per topic:

* :mod:`~timbred.takes.options`: the formats and export options (:class:`ExportOptions`,
  :data:`EXPORT_KEYS`, the extension tables), written down once; no audio library.
* :mod:`~timbred.takes.audio`: the ``(channels, samples)`` arrays every stage takes.
* :mod:`~timbred.takes.loudness`: BS.1770-4 measurement, normalisation, true-peak limiting.
* :mod:`~timbred.takes.encoding`: samples to WAV, FLAC, MP3 or Ogg Vorbis bytes.
* :mod:`~timbred.takes.metadata`: what a take says about itself (:class:`TakeMetadata`).
* :mod:`~timbred.takes.tags`: that metadata inside the audio file (mutagen).
* :mod:`~timbred.takes.sidecars`: that metadata beside it, ``<take>.json``.
* :mod:`~timbred.takes.writer`: the stages in order, one take to one published file.
* :mod:`~timbred.takes.publish`: the layout of the output folder, atomic never-overwriting
  publication (shared with the watch folder), and the sweep of interrupted writes.
* :mod:`~timbred.takes.library`: the history database (takes, sessions, ratings, tags).
* :mod:`~timbred.takes.history`: the service that writes a job's takes into the library and
  answers for them later (show, export, rate, tag, delete).

The names below are the public API for writing and reading take files; the daemon's own
modules import from the topic modules, so that what each one depends on stays visible.
"""

from __future__ import annotations

from timbred.takes.encoding import encode, mp3_available, mp3_compression_level
from timbred.takes.loudness import (
    LoudnessReport,
    integrated_loudness,
    normalise,
    true_peak_dbtp,
)
from timbred.takes.metadata import TITLE_MAX_CHARS, TakeMetadata, short_title, utc_now
from timbred.takes.options import (
    EXPORT_KEYS,
    EXTENSIONS,
    FORMATS,
    MP3_BITRATES_KBPS,
    ExportOptions,
    format_from_path,
)
from timbred.takes.sidecars import SIDECAR_SCHEMA_VERSION, read_sidecar, sidecar_path
from timbred.takes.tags import read_tags, tag_items
from timbred.takes.writer import WrittenTake, export_existing, write_next_take, write_take

__all__ = [
    "EXPORT_KEYS",
    "EXTENSIONS",
    "FORMATS",
    "MP3_BITRATES_KBPS",
    "SIDECAR_SCHEMA_VERSION",
    "TITLE_MAX_CHARS",
    "ExportOptions",
    "LoudnessReport",
    "TakeMetadata",
    "WrittenTake",
    "encode",
    "export_existing",
    "format_from_path",
    "integrated_loudness",
    "mp3_available",
    "mp3_compression_level",
    "normalise",
    "read_sidecar",
    "read_tags",
    "short_title",
    "sidecar_path",
    "tag_items",
    "true_peak_dbtp",
    "utc_now",
    "write_next_take",
    "write_take",
]
