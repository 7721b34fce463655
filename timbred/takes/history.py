"""Takes and their history: writing finished audio as takes, and everything done to them later.

This is where the generation service hands over audio: each take is analysed (tempo, beats,
key: :mod:`timbred.takes.analysis`), mastered or loudness-normalised, encoded, tagged and
published atomically by :mod:`timbred.takes.writer` under
``<output dir>/YYYY/MM/DD/[<session>/]take-<n>.<ext>`` (or the exact path a request named), and
recorded in the history (:mod:`timbred.takes.library`). Every method here blocks (files, SQLite);
the daemon calls them through ``anyio.to_thread``.

Re-rendering: every take's recipe carries ``audio_sha256``, the SHA-256 of the raw generated
samples (float32, before loudness and encoding). A replay regenerates from the recipe and
compares that hash, so "bit-identical" means the model produced exactly the same samples, in
whatever format the take was stored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from timbred import __version__, presets
from timbred.config import Settings
from timbred.errors import InvalidParams, OutputError, TakeNotFound, os_reason
from timbred.request import Request
from timbred.takes import publish
from timbred.takes.library import Library, Take
from timbred.takes.metadata import TakeMetadata
from timbred.takes.options import EXPORT_KEYS, ExportOptions, format_from_path
from timbred.takes.sidecars import sidecar_path
from timbred.takes.writer import (
    WrittenTake,
    export_existing,
    read_take,
    write_next_take,
    write_take,
)
from timbred.testing import failpoints

log = logging.getLogger(__name__)


def request_export(request: Mapping[str, Any],
                   preset_export: Mapping[str, Any]) -> dict[str, Any]:
    """The export options ``request`` names itself: the top layer of ``export_options``.

    An ``output`` path's extension names the format when neither the request nor the preset
    does: the name the user typed outranks the configured (or a take's recorded) format, but
    not a format someone chose on purpose, which the extension must then match.
    """
    own = {k: request[k] for k in EXPORT_KEYS if request.get(k) is not None}
    if request.get("output") and "format" not in own and "format" not in preset_export:
        own["format"] = format_from_path(request["output"])
    return own


def _found(analysis: Mapping[str, Any] | None) -> dict[str, Any]:
    """What the library indexes of an analysis: ``bpm`` and ``key`` (as TKEY writes it)."""
    if analysis is None:
        return {}
    return {"bpm": analysis.get("bpm"), "key": analysis.get("key_short")}


def audio_sha256(audio: npt.NDArray[np.float32]) -> str:
    """The hash that defines "bit-identical" for a take: its raw float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


class History:
    """Writes takes and answers for them (show, export, rate, tag, delete)."""

    def __init__(self, settings: Settings, library: Library, output_root: Path) -> None:
        self.settings = settings
        self.library = library
        self.output_root = output_root

    # --- export options -----------------------------------------------------------------

    def default_export(self) -> dict[str, Any]:
        s = self.settings
        return {
            "format": s["output.format"], "wav_subtype": s["output.wav_subtype"],
            "mp3_bitrate_kbps": s["output.mp3_bitrate_kbps"],
            "ogg_quality": s["output.ogg_quality"],
            "loudness_target_lufs": s["output.loudness_target_lufs"]
            if s["output.normalise"] else None,
            "true_peak_ceiling_dbtp": s["output.true_peak_ceiling_dbtp"],
            "master": s["output.master"] or None,
        }

    def export_options(self, *layers: Mapping[str, Any]) -> ExportOptions:
        """Configuration defaults overlaid by each layer in turn (preset, then request).

        ``loudness_target_lufs: false`` switches normalisation off; build the request's layer
        with :func:`request_export`, so that a ``.mp3`` (etc.) output path chooses the format
        when neither the request nor the preset names one.
        """
        merged = self.default_export()
        for layer in layers:
            for key in EXPORT_KEYS:
                if layer.get(key) is not None:
                    merged[key] = layer[key]
        if merged["loudness_target_lufs"] is False:
            merged["loudness_target_lufs"] = None
        return ExportOptions.from_dict(merged)

    # --- writing ------------------------------------------------------------------------

    def write(self, *, job_id: str, params: Mapping[str, Any], recipe: Mapping[str, Any],
              audio: npt.NDArray[np.float32], sample_rate: int,
              indices: list[int] | None = None) -> list[Take]:
        """Write the takes of a finished job and record them; returns them in order.

        ``indices`` (1-based) limits which variations are written (a replay writes only the
        take it re-renders).
        """
        options = ExportOptions.from_dict(params["export"])
        session = self.library.session(params.get("session"))
        folder = publish.session_dir(self.output_root, dt.datetime.now(), session.name)
        explicit = params.get("output")
        count = audio.shape[0]
        paths = publish.explicit_paths(Path(explicit), count) if explicit else None
        written: list[Take] = []
        for i in indices or range(1, count + 1):
            raw = audio[i - 1]
            take_recipe = {**recipe, "take_index": i, "audio_sha256": audio_sha256(raw),
                           "export": options.to_dict()}
            analysis = self.analyse(raw, sample_rate, params.get("asked"))
            meta = TakeMetadata(
                prompt=params["prompt"], seed=params["seed"], model=recipe.get("model"),
                revision=recipe.get("revision"), backend=recipe.get("backend"),
                device=recipe.get("device"),
                params=Request.from_recipe(recipe["params"]).job_params(),
                timbre_version=__version__, job_id=job_id, take_index=i, recipe=take_recipe,
                analysis=analysis)
            if paths is not None:
                out = write_take(paths[i - 1], raw, sample_rate, options, meta)
            else:
                out = write_next_take(folder, raw, sample_rate, options, meta)
            loud = out.loudness
            written.append(self.library.record_take(
                job_id=job_id, session=session, prompt=params["prompt"], take_index=i,
                path=str(out.path), format=out.format, sample_rate=out.sample_rate,
                channels=out.channels, duration_s=out.duration_s,
                loudness_before=None if loud is None else loud.before_lufs,
                loudness_after=None if loud is None else loud.after_lufs,
                recipe=take_recipe, **_found(analysis)))
            if params.get("loop_bars"):
                self._write_loop(out, raw, sample_rate, options, meta, analysis, params,
                                 written[-1].id)
            failpoints.hit("take-recorded")
        return written

    def _write_loop(self, take: WrittenTake, audio: npt.NDArray[np.float32],
                    sample_rate: int, options: ExportOptions, metadata: TakeMetadata,
                    analysis: Mapping[str, Any] | None, params: Mapping[str, Any],
                    take_id: str) -> None:
        """``generate --loop N``: the loop beside the take it was cut from. A take with no
        tempo to cut bars by keeps its take and gets no loop, and the log says why (the
        job's audio is written; failing it now would lose nothing but say too much)."""
        request = {"bars": params["loop_bars"]}
        try:
            loop, looped = self._cut_loop(audio, sample_rate, analysis, request, take_id)
        except InvalidParams as exc:
            log.warning("take %s: no loop written: %s", take_id, exc.message)
            return
        _beside(take.path, f"{take.path.stem}-loop{request['bars']}bars", options.extension,
                lambda dest: write_take(dest, loop, sample_rate, options, looped(metadata)),
                "loop")

    def analyse(self, audio: npt.NDArray[np.float32], sample_rate: int,
                asked: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Tempo, beats and key of a take (``output.analyse``), as its metadata holds them,
        with what the request ``asked`` for (``--bpm``, ``--key``) and how close it came.

        Measured on the audio as generated: mastering and loudness change levels, not where
        the beats fall or the key."""
        if not self.settings["output.analyse"]:
            return None
        from timbred.takes.analysis import analyse, parse_key

        found = analyse(audio, sample_rate).to_dict()
        if asked:
            bpm, key = asked.get("bpm"), asked.get("key")
            found["asked"] = {"bpm": bpm, "key": key}
            found["bpm_off"] = (None if bpm is None or found["bpm"] is None
                                else round(float(found["bpm"]) - float(bpm), 1))
            found["key_match"] = (None if key is None or found["key"] is None
                                  else parse_key(str(found["key"])) == parse_key(str(key)))
        return found

    # --- takes --------------------------------------------------------------------------

    def show(self, take: str) -> Take:
        return self.library.get(take)

    def existing(self, take: str) -> Take:
        """The take, whose file is still there; TakeNotFound for a deleted or missing one
        (what export, loop and stems start from)."""
        record = self.library.get(take)
        if record.deleted_at is not None or not Path(record.path).is_file():
            raise TakeNotFound(take)
        return record

    def export_take(self, take: str, request: Mapping[str, Any]) -> WrittenTake:
        """Re-encode a take; the new file sits beside it unless ``output`` says where.

        Options, each layer over the one before: the configuration, the take's recorded
        export options, the ``[export]`` table of ``request["preset"]`` (if named), and the
        request's own. Only a preset's export settings apply: its ``[params]`` and prompt
        words shape a generation, and this take is already made. An output path's extension
        names the format as for ``generate.submit`` (:func:`request_export`). PresetNotFound
        or PresetInvalid, like every refusal, comes before anything is written.
        """
        record = self.existing(take)
        source = Path(record.path)
        preset_export = presets.load(request["preset"]).export if request.get("preset") \
            else {}
        options = self._existing_export(record, preset_export, request)
        output = request.get("output")
        if output:
            dest = publish.check_output(output, 1, extensions=[options.extension])[0]
            return export_existing(source, dest, options)
        # A second export to one format is no error: take-1.mp3, then take-1-2.mp3.
        return _beside(source, source.stem, options.extension,
                       lambda dest: export_existing(source, dest, options), "export")

    def _existing_export(self, record: Take, preset_export: Mapping[str, Any],
                         request: Mapping[str, Any]) -> ExportOptions:
        """Export options for a take already written: the configuration, the take's own,
        the preset's and the request's. A mastering chain applies only when the preset or
        the request names one now: the take's file has been through its chain already."""
        recorded = record.recipe.get("export", {})
        options = self.export_options(recorded, preset_export,
                                      request_export(request, preset_export))
        if request.get("master") or preset_export.get("master"):
            return options
        options = dataclasses.replace(options, master=None)
        if recorded.get("master") and all(layer.get("loudness_target_lufs") is None
                                          for layer in (request, preset_export)):
            # A mastered take keeps the level its chain gave it, unless a loudness is asked.
            options = dataclasses.replace(options, loudness_target_lufs=None)
        return options

    def loop_take(self, take: str, request: Mapping[str, Any]) -> WrittenTake:
        """A loop of ``request["bars"]`` whole bars cut from a take (:func:`make_loop`),
        written beside it as ``<name>-loop<N>bars<ext>`` (or at ``output``) with the take's
        metadata and a ``loop`` record; export options layer as for :meth:`export_take`.

        The tempo and downbeat are the take's recorded analysis, else measured now; a take
        with no tempo to measure is an InvalidParams naming ``take``, before anything is
        written."""
        record = self.existing(take)
        source = Path(record.path)
        audio, rate, metadata = read_take(source)
        options = self._existing_export(record, {}, request)
        loop, looped = self._cut_loop(audio, rate, metadata.analysis, request, record.id)
        output = request.get("output")
        if output:
            dest = publish.check_output(output, 1, extensions=[options.extension])[0]
            return write_take(dest, loop, rate, options, looped(metadata))
        return _beside(source, f"{source.stem}-loop{request['bars']}bars", options.extension,
                       lambda dest: write_take(dest, loop, rate, options, looped(metadata)),
                       "loop")

    def _cut_loop(self, audio: npt.NDArray[np.float32], sample_rate: int,
                  analysis: Mapping[str, Any] | None, request: Mapping[str, Any],
                  source: str | None) -> tuple[npt.NDArray[np.float32],
                                               Callable[[TakeMetadata], TakeMetadata]]:
        """The loop's audio, and how to turn the take's metadata into the loop's."""
        from timbred.takes.analysis import analyse
        from timbred.takes.loops import make_loop

        found = dict(analysis or {})
        if found.get("bpm") is None or found.get("downbeat") is None:
            found = analyse(audio, sample_rate).to_dict()
        if found.get("bpm") is None or found.get("downbeat") is None:
            raise InvalidParams("take: no steady tempo could be measured in it, so it has no "
                                "bars to cut a loop from", param="take")
        bars = int(request["bars"])
        per_bar = int(request.get("beats_per_bar") or 4)
        loop = make_loop(audio, sample_rate, bpm=float(found["bpm"]),
                         downbeat=float(found["downbeat"]), bars=bars, beats_per_bar=per_bar)
        record = {"bars": bars, "beats_per_bar": per_bar, "bpm": float(found["bpm"]),
                  "start_s": float(found["downbeat"]), "source": source}

        def looped(metadata: TakeMetadata) -> TakeMetadata:
            return dataclasses.replace(metadata, loop=record, loudness=None, mastering=None,
                                       analysis=None if metadata.analysis is None else {
                                           **metadata.analysis, "beats": [],
                                           "downbeat": 0.0,
                                           "duration_s": loop.shape[1] / sample_rate})

        return loop, looped

    # --- stems --------------------------------------------------------------------------

    def stems_source(self, take: str
                     ) -> tuple[Take, npt.NDArray[np.float32], int, TakeMetadata]:
        """The take a separation starts from: its record, its audio as the file holds it
        (what the user hears: the stems then add up to about it), its rate and its metadata."""
        record = self.existing(take)
        audio, rate, metadata = read_take(record.path)
        return record, audio, rate, metadata

    def write_stems(self, take: Take, metadata: TakeMetadata, *, job_id: str, model: str,
                    names: Sequence[str], stems: npt.NDArray[np.float32], sample_rate: int,
                    request: Mapping[str, Any], separation: Mapping[str, Any]
                    ) -> list[WrittenTake]:
        """Write each stem beside its take as ``<name>-<stem><ext>`` (the take's format
        unless the request names one) with the take's metadata and its stem name, and record
        them in the history. A failure (a full disk) removes the stems written so far: a
        set is whole or absent, and a retry writes it again.

        Stems are neither loudness-normalised nor mastered: each keeps its level in the
        mix (Demucs's stems add up to about the take).
        """
        source = Path(take.path)
        options = dataclasses.replace(
            self._existing_export(take, {}, {k: v for k, v in request.items()
                                             if k in EXPORT_KEYS and k != "master"}),
            loudness_target_lufs=None, master=None)
        written: list[WrittenTake] = []
        try:
            for name, audio in zip(names, stems, strict=True):
                meta = dataclasses.replace(metadata, stem=name, loudness=None, mastering=None,
                                           separation=dict(separation))
                written.append(_beside(
                    source, f"{source.stem}-{name}", options.extension,
                    lambda dest, audio=audio, meta=meta: write_take(  # type: ignore[misc]
                        dest, audio, sample_rate, options, meta), "stem"))
            self.library.record_stems(take.id, job_id=job_id, model=model, stems=[
                (name, str(w.path), options.format)
                for name, w in zip(names, written, strict=True)])
        except BaseException:
            for done in written:
                for path in (Path(done.path), sidecar_path(done.path)):
                    path.unlink(missing_ok=True)
            raise
        return written

    def rate(self, take: str, value: str, note: str | None) -> Take:
        return self.library.rate(self.library.get(take).id, value,  # type: ignore[arg-type]
                                 note)

    def tag(self, take: str, add: list[str], remove: list[str]) -> Take:
        return self.library.tag(self.library.get(take).id, add=add, remove=remove)

    def remove(self, take: str) -> Take:
        """Delete the take's audio and sidecar, and its stems'; keep the records, marked
        deleted."""
        record = self.library.get(take)
        files = [record.path, *(stem["path"] for stem in record.stems)]
        for path in (p for f in files for p in (Path(f), sidecar_path(f))):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise OutputError(str(path), os_reason(exc)) from exc
        return self.library.mark_deleted(record.id)


def _beside(source: Path, name: str, extension: str,
            write: Callable[[Path], WrittenTake], what: str) -> WrittenTake:
    """``write`` a new file beside ``source`` under the first free name (``name.ext``, then
    ``name-2.ext``, ...), as generate names takes. write_take links the final name only if
    it is free, so a name taken meanwhile means: try the next."""
    for n in range(1, 10_000):
        dest = source.with_name((name if n == 1 else f"{name}-{n}") + extension)
        if dest.exists():
            continue
        try:
            return write(dest)
        except OutputError:
            if not dest.exists():
                raise
    raise OutputError(str(source.parent), f"no free name left for another {what}")
