"""Model management: name resolution, the local cache, pulls, removal and memory estimates.

Models live in the ordinary Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``), so a
model downloaded by ``transformers`` or ``hf download`` is already installed for Timbre, and
``hf cache`` commands keep working on Timbre's models. A model is named by

* a catalogue alias (``musicgen-small``; see :data:`CATALOGUE`),
* a raw Hugging Face repo id (``facebook/musicgen-small``, ``someone/my-finetune``), or
* a local directory holding a MusicGen ``config.json`` (absolute, relative or ``~``-prefixed).

Nothing here loads a model (no torch import): it only names files and counts bytes. Every
function does blocking file or network I/O; the daemon calls them through ``anyio.to_thread``.

huggingface_hub reads ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` once, when it is
imported. This module reads them again at every call and passes them explicitly, so that a
daemon (or a test) that changes its environment after start-up gets what it asked for.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

from huggingface_hub import HfApi, constants, hf_hub_download, scan_cache_dir
from huggingface_hub.errors import (
    CacheNotFound,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from timbred.backends import registry
from timbred.backends.files import (
    index_shards,
    pipeline_components,
    transformers_checkpoint_missing,
)
from timbred.backends.spec import BackendSpec
from timbred.errors import (
    InvalidParams,
    ModelLoadFailed,
    ModelNotFound,
    NetworkUnavailable,
    OutputError,
    TimbreError,
)

__all__ = [
    "CATALOGUE",
    "CatalogueEntry",
    "Dtype",
    "InstalledModel",
    "ModelRef",
    "PullProgress",
    "RemovedModel",
    "estimate_memory",
    "hub_cache_dir",
    "list_installed",
    "pull",
    "remove",
    "resolve",
]

Dtype = Literal["float32", "float16", "bfloat16"]
_DTYPE_BYTES: Mapping[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2}

# Told to users whenever a model is missing; the one place that names the pull command.
PULL_HINT = "download it first with `timbrectl pull NAME`"

# --- the catalogue -----------------------------------------------------------------------

# The T5-base text encoder and the EnCodec audio codec ship in every MusicGen checkpoint beside the
# language model. The figure is calibrated so that musicgen-small (a "300M" language model) lands on
# its published 591M-parameter checkpoint; it is an estimate for the other sizes.
_ENCODER_AND_CODEC_PARAMS = 291_000_000


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """A model Timbre knows by a short name."""

    name: str
    repo: str
    lm_params: int
    """Size class of the MusicGen language model, as published (300M, 1.5B, 3.3B)."""
    melody: bool
    """Whether the model accepts a melody (chroma) condition."""
    stereo: bool
    """Whether the model generates two channels."""
    backend: str = "musicgen"
    """The family that loads it (:mod:`timbred.backends`)."""
    licence: str = "CC-BY-NC-4.0"
    """The weights' licence, as its model card names it (MusicGen's: non-commercial)."""
    gated: bool = False
    """Whether the Hub asks a user to accept the licence (and a token) before downloading."""
    total_params: int | None = None
    """Parameters of the whole model when it is not a MusicGen (``lm_params`` is then 0)."""

    @property
    def approx_params(self) -> int:
        """Approximate parameters of the whole checkpoint (language model, T5 encoder, EnCodec)."""
        if self.total_params is not None:
            return self.total_params
        return self.lm_params + _ENCODER_AND_CODEC_PARAMS

    @property
    def approx_bytes(self) -> int:
        """Approximate download size: the checkpoints are stored in float32."""
        return self.approx_params * 4


def _entry(name: str, lm_params: int) -> CatalogueEntry:
    return CatalogueEntry(
        name=name,
        repo=f"facebook/{name}",
        lm_params=lm_params,
        melody="melody" in name,
        stereo="stereo" in name,
    )


_SMALL, _MEDIUM, _LARGE = 300_000_000, 1_500_000_000, 3_300_000_000

CATALOGUE: Mapping[str, CatalogueEntry] = MappingProxyType(
    {
        e.name: e
        for e in (
            _entry("musicgen-small", _SMALL),
            _entry("musicgen-medium", _MEDIUM),
            _entry("musicgen-large", _LARGE),
            _entry("musicgen-melody", _MEDIUM),
            _entry("musicgen-melody-large", _LARGE),
            _entry("musicgen-stereo-small", _SMALL),
            _entry("musicgen-stereo-medium", _MEDIUM),
            _entry("musicgen-stereo-large", _LARGE),
            _entry("musicgen-stereo-melody", _MEDIUM),
            _entry("musicgen-stereo-melody-large", _LARGE),
            # Its paper's component sizes: a 1057M DiT, the 109M T5-base encoder and a 157M
            # autoencoder (Evans et al. 2024, "Stable Audio Open", table 1).
            CatalogueEntry(name="stable-audio-open-1.0",
                           repo="stabilityai/stable-audio-open-1.0", lm_params=0, melody=False,
                           stereo=True, backend="stable-audio",
                           licence="Stability AI Community License", gated=True,
                           total_params=1_323_000_000),
            # The two Stable Audio 3 checkpoints diffusers' pipelines name: the distilled
            # Medium (8 steps) and its base model (100 steps); "2B" on their Hub pages, the
            # T5Gemma text encoder included (hence Gemma's terms too). diffusers names no Small
            # model, so they are not listed.
            *(CatalogueEntry(name=name, repo=f"stabilityai/{name}", lm_params=0,
                             melody=False, stereo=True, backend="stable-audio",
                             licence="Stability AI Community License + Gemma Terms of Use",
                             gated=True, total_params=2_000_000_000)
              for name in ("stable-audio-3-medium", "stable-audio-3-medium-base")),
            # The ACE-Step 1.5 checkpoint diffusers' documentation names in its own format:
            # the XL turbo, a ~4.7B DiT with its condition encoder and audio tokenizer (about
            # 9 GB in bf16, ACE-Step's model zoo), the 0.6B Qwen3-Embedding text encoder and
            # the 0.17B autoencoder. MIT-licensed, not gated.
            # Stem separation (takes.stems), not generation: Hybrid Transformer Demucs
            # (Rouard et al. 2023) where demucs 4.1 loads it from (demucs/hf.py names the
            # repos): htdemucs is one model, htdemucs_ft a bag of four fine-tuned ones, one per
            # source (better, four times slower). Sizes: HTDemucs's default widths, 26.9M
            # parameters counted here; an estimate until pulled. MIT-licensed.
            CatalogueEntry(name="htdemucs", repo="adefossez/HTDemucs", lm_params=0,
                           melody=False, stereo=True, backend="demucs", licence="MIT",
                           total_params=27_000_000),
            CatalogueEntry(name="htdemucs_ft", repo="adefossez/HTDemucs-ft", lm_params=0,
                           melody=False, stereo=True, backend="demucs", licence="MIT",
                           total_params=108_000_000),
            CatalogueEntry(name="ace-step-1.5-xl-turbo",
                           repo="ACE-Step/acestep-v15-xl-turbo-diffusers", lm_params=0,
                           melody=False, stereo=True, backend="ace-step", licence="MIT",
                           gated=False, total_params=5_500_000_000),
        )
    }
)
"""Known model names, each mapped to its Hugging Face repo."""

_BY_REPO: Mapping[str, CatalogueEntry] = MappingProxyType(
    {e.repo.lower(): e for e in CATALOGUE.values()}
)

# --- public data types -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """What a model name points at, as found on disk right now.

    For ``kind == "hub"`` ``repo`` is set and ``local_path`` is the cached snapshot directory
    (``None`` until pulled); for ``kind == "local"`` ``path`` and ``local_path`` are the directory.
    ``missing`` names the files a load needs that the local copy lacks (empty when complete).
    """

    id: str
    kind: Literal["hub", "local"]
    repo: str | None
    path: Path | None
    revision: str | None
    local_path: Path | None
    missing: tuple[str, ...] = ()
    entry: CatalogueEntry | None = None
    backend: str | None = None
    """The family that loads it (see :mod:`timbred.backends`); ``None`` for a hub model
    not downloaded yet that the catalogue does not know."""

    @property
    def ready(self) -> bool:
        """Whether every file a load needs is on disk."""
        return self.local_path is not None and not self.missing


@dataclass(frozen=True, slots=True)
class InstalledModel:
    """One model on disk: a cached revision of a Hub repo, or a local directory."""

    name: str
    """The catalogue alias when the repo has one, else the repo id, or a local directory's path."""
    kind: Literal["hub", "local"]
    repo: str | None
    revision: str | None
    """The commit hash of a cached revision; ``None`` for a local directory."""
    refs: tuple[str, ...]
    """Branch or tag names pointing at this revision (``("main",)`` usually)."""
    path: Path
    """The snapshot directory (or the local directory) to load from."""
    size_bytes: int
    last_modified: float
    """Seconds since the epoch."""
    missing: tuple[str, ...] = ()
    backend: str | None = None
    """The family that loads it (see :mod:`timbred.backends`); ``None`` when no family
    recognises the files (a pull cut short) and the catalogue does not name one."""
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """The model's own defaults for its family's parameters, where they differ from the
    family's schema (:attr:`BackendSpec.model_defaults`)."""


@dataclass(frozen=True, slots=True)
class PullProgress:
    """A progress report from :func:`pull`.

    ``bytes_done`` counts bytes on disk (cached files and resumed partial downloads included).
    """

    model: str
    repo: str
    phase: Literal["checking", "downloading", "done"]
    revision: str | None = None
    file: str | None = None
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0


@dataclass(frozen=True, slots=True)
class RemovedModel:
    """What :func:`remove` deleted."""

    name: str
    repo: str
    revisions: tuple[str, ...]
    bytes_freed: int
    path: Path
    """The repo's folder in the cache (gone when every revision was removed)."""


# --- environment -------------------------------------------------------------------------

_TRUE = {"1", "on", "yes", "true"}


def hub_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The Hugging Face hub cache in effect now: ``cache_dir``, else what the environment says.

    Follows huggingface_hub's own precedence (``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``,
    ``HF_HOME/hub``, ``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``).
    """
    if cache_dir is not None:
        raw = str(cache_dir)
    else:
        env = os.environ
        raw = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or ""
        if not raw:
            xdg = env.get("XDG_CACHE_HOME") or "~/.cache"
            home = env.get("HF_HOME") or str(Path(xdg) / "huggingface")
            raw = str(Path(home) / "hub")
    # Resolved, because scan_cache_dir reports resolved paths and we compare against them.
    return Path(os.path.expandvars(raw)).expanduser().resolve()


def _offline_requested() -> bool:
    env = os.environ
    flag = env.get("HF_HUB_OFFLINE") or env.get("TRANSFORMERS_OFFLINE") or ""
    return flag.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str | None:
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return value or None


# --- resolution --------------------------------------------------------------------------

_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _repo_folder(cache: Path, repo: str) -> Path:
    # The cache's documented layout: models--{org}--{name}/{blobs,refs,snapshots}.
    return cache / ("models--" + repo.replace("/", "--"))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "~", "./", "../")) or name in {".", ".."}


def _check_revision(revision: str | None) -> None:
    if revision is None:
        return
    parts = revision.split("/")
    if not revision.strip() or revision.startswith("/") or ".." in parts or "" in parts:
        raise InvalidParams(
            f"revision {revision!r} is not a branch, tag or commit hash", param="revision"
        )


#: Longest file name component (NAME_MAX) and path (PATH_MAX, with its NUL) on Linux and macOS.
NAME_MAX: Final = 255
PATH_MAX: Final = 4095


def _check_name_length(name: str) -> None:
    """Refuse a name the file system cannot hold, before any ``stat`` says ENAMETOOLONG.

    A name becomes a path twice: as itself when it is a directory, and as
    ``models--org--name`` in the hub cache; each must fit in NAME_MAX bytes per component.
    """
    encoded = os.fsencode(name)
    longest = max(len(part) for part in encoded.split(b"/"))
    cache_folder = len(b"models--") + len(encoded.replace(b"/", b"--"))
    if len(encoded) > PATH_MAX or longest > NAME_MAX or (
            not _looks_like_path(name) and cache_folder > NAME_MAX):
        raise InvalidParams(
            f"the model name is too long for a file name ({len(encoded)} bytes): each part "
            f"between slashes may have at most {NAME_MAX} bytes, a Hugging Face repo id at "
            f"most {NAME_MAX - len(b'models----')} in all",
            param="model", max_bytes=NAME_MAX,
        )


def resolve(
    name_or_path: str, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> ModelRef:
    """Say what a model name points at: a catalogue alias, a repo id or a local directory.

    An existing directory wins over a repo id of the same spelling, as in
    ``transformers.from_pretrained``; a catalogue alias wins over a directory of the same name.
    Relative paths are taken from this process's working directory, so clients should send
    absolute ones. A hub name resolves even when it is not downloaded yet
    (``local_path`` is then ``None``); ``revision`` (branch, tag or commit) defaults to ``main``.

    Raises :class:`ModelNotFound` for an unknown name (with close catalogue names as a hint)
    and for a directory without a MusicGen ``config.json``; :class:`InvalidParams` for an empty
    name or a malformed revision.
    """
    name = name_or_path.strip()
    if not name:
        raise InvalidParams("the model name is empty", param="model")
    _check_name_length(name)
    _check_revision(revision)

    # A catalogue alias wins over a same-named directory in the working directory (spell that
    # "./musicgen-small"): the daemon's working directory is not the user's.
    entry = CATALOGUE.get(name.lower())
    candidate = Path(os.path.expandvars(name)).expanduser()
    if entry is None and candidate.is_dir():
        if revision is not None:
            raise InvalidParams(
                f"{name!r} is a local directory; revisions apply to Hub models only",
                param="revision",
            )
        return _resolve_local(name, candidate.resolve())
    if _looks_like_path(name):
        raise ModelNotFound(name, f"no directory {str(candidate)!r}")

    if entry is not None:
        repo = entry.repo
    elif _REPO_ID_RE.match(name) and "--" not in name and ".." not in name:
        repo = name
        entry = _BY_REPO.get(name.lower())
    else:
        raise ModelNotFound(name, _unknown_hint(name))

    cache = hub_cache_dir(cache_dir)
    commit, snapshot = _cached_snapshot(_repo_folder(cache, repo), revision)
    spec = registry.for_directory(snapshot) if snapshot is not None else None
    return ModelRef(
        id=entry.name if entry is not None and name.lower() == entry.name else name,
        kind="hub",
        repo=repo,
        path=None,
        revision=commit,
        local_path=snapshot,
        missing=_missing_files(snapshot, spec) if snapshot is not None else (),
        entry=entry,
        backend=spec.name if spec is not None else entry.backend if entry is not None else None,
    )


def _missing_files(snapshot: Path, spec: BackendSpec | None = None) -> tuple[str, ...]:
    """What a load of ``snapshot`` lacks, as its family says (a transformers checkpoint's
    files while no family recognises it yet, as for a pull cut short before config.json)."""
    if spec is None:
        spec = registry.for_directory(snapshot)
    return (spec.missing if spec is not None else transformers_checkpoint_missing)(snapshot)


def _unknown_hint(name: str) -> str:
    close = difflib.get_close_matches(name.lower(), list(CATALOGUE), n=3, cutoff=0.6)
    did_you_mean = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return (
        f"{did_you_mean}Use a catalogue name ({', '.join(CATALOGUE)}), a Hugging Face repo id "
        "such as 'facebook/musicgen-small', or a directory holding a MusicGen config.json; "
        f"to get a Hub model, {PULL_HINT}"
    )


def _resolve_local(name: str, directory: Path) -> ModelRef:
    spec = registry.for_directory(directory)
    if spec is None:
        config = directory / "config.json"
        if not config.is_file():
            raise ModelNotFound(
                name,
                f"{directory} has no config.json, so it is not a MusicGen model directory "
                "(expected the files of a Hugging Face MusicGen checkpoint: config.json, "
                f"model.safetensors, tokenizer files), nor one another backend loads "
                f"({registry.hints()})",
            )
        model_type = _read_json(name, config).get("model_type")
        raise ModelNotFound(name, f"{config} describes a {model_type!r} model, not MusicGen "
                            f"nor another family Timbre loads ({registry.hints()})")
    return ModelRef(
        id=str(directory),
        kind="local",
        repo=None,
        path=directory,
        revision=None,
        local_path=directory,
        missing=spec.missing(directory),
        backend=spec.name,
    )


def _read_json(model: str, path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadFailed(model, f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadFailed(model, f"{path} does not hold a JSON object")
    return data


def _cached_snapshot(repo_dir: Path, revision: str | None) -> tuple[str | None, Path | None]:
    """The commit and snapshot directory of ``revision`` in a cached repo, if present."""
    snapshots = repo_dir / "snapshots"
    wanted = revision or "main"
    if _COMMIT_RE.match(wanted):
        commit: str | None = wanted
    else:
        try:
            commit = (repo_dir / "refs" / wanted).read_text(encoding="utf-8").strip() or None
        except OSError:
            commit = None
    if commit is not None:
        snapshot = snapshots / commit
        return (commit, snapshot) if snapshot.is_dir() else (None, None)
    if revision is not None:
        return None, None
    # No main ref (a pull of an explicit commit writes none): fall back to the newest snapshot.
    try:
        candidates = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None, None
    if not candidates:
        return None, None
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    return newest.name, newest


# --- listing -----------------------------------------------------------------------------


def list_installed(
    local_dirs: Iterable[str | Path] = (), *, cache_dir: str | Path | None = None
) -> list[InstalledModel]:
    """Every cached revision of every model repo in the hub cache, then each of ``local_dirs``.

    A missing cache directory is an empty cache. Repos that huggingface_hub reports as corrupted
    are skipped, as are entries of ``local_dirs`` that are not MusicGen directories (so one stale
    entry in a configuration does not hide the rest). Sorted by name, newest revision first.
    """
    cache = hub_cache_dir(cache_dir)
    found: list[InstalledModel] = []
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        info = None
    if info is not None:
        for repo in info.repos:
            if repo.repo_type != "model":
                continue
            entry = _BY_REPO.get(repo.repo_id.lower())
            for rev in repo.revisions:
                snapshot = Path(rev.snapshot_path)
                spec = registry.for_directory(snapshot)
                found.append(
                    InstalledModel(
                        name=entry.name if entry is not None else repo.repo_id,
                        kind="hub",
                        repo=repo.repo_id,
                        revision=rev.commit_hash,
                        refs=tuple(sorted(rev.refs)),
                        path=snapshot,
                        size_bytes=rev.size_on_disk,
                        last_modified=rev.last_modified,
                        missing=_missing_files(snapshot, spec),
                        # As resolve() says it: the files' family, else the catalogue's.
                        backend=spec.name if spec is not None
                        else entry.backend if entry is not None else None,
                        defaults=_model_defaults(spec, snapshot),
                    )
                )
    found.sort(key=lambda m: (m.name, -m.last_modified))
    for directory in local_dirs:
        try:
            ref = resolve(str(directory))
        except TimbreError:
            continue
        if ref.kind == "local" and ref.path is not None:
            found.append(_installed_local(ref))
    return found


def _installed_local(ref: ModelRef) -> InstalledModel:
    assert ref.path is not None  # invariant of kind == "local", not input validation
    size, mtime = _du(ref.path)
    return InstalledModel(
        name=ref.id,
        kind="local",
        repo=None,
        revision=None,
        refs=(),
        path=ref.path,
        size_bytes=size,
        last_modified=mtime,
        missing=ref.missing,
        backend=ref.backend,
        defaults=_model_defaults(registry.get(ref.backend) if ref.backend else None, ref.path),
    )


def _model_defaults(spec: BackendSpec | None, directory: Path) -> Mapping[str, Any]:
    if spec is None or spec.model_defaults is None:
        return MappingProxyType({})
    return MappingProxyType(dict(spec.model_defaults(directory)))


def _du(root: Path) -> tuple[int, float]:
    """Bytes of the regular files under ``root`` (symlinks followed once) and the newest mtime."""
    total = 0
    newest = root.stat().st_mtime if root.exists() else 0.0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(root):
        for fname in files:
            try:
                st = Path(dirpath, fname).stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
            newest = max(newest, st.st_mtime)
    return total, newest


def _installed_hub(cache: Path, repo: str, commit: str) -> InstalledModel:
    for model in list_installed(cache_dir=cache):
        same_repo = model.repo is not None and model.repo.lower() == repo.lower()
        if same_repo and model.revision == commit:
            return model
    # Only reachable when the cache changed under us (a concurrent remove).
    raise ModelNotFound(repo, f"revision {commit} vanished from {cache} while it was being used")


# --- pull --------------------------------------------------------------------------------

# The files a transformers or diffusers load reads. Weights come as safetensors when the repo
# has them; ``.bin`` files only when it has none (the facebook repos carry both, plus the
# audiocraft-format state_dict.bin, which would triple the download).
_WANTED_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*", "spiece*",
                    "*.yaml")  # a Demucs bag's file
_BIN_FALLBACK_PATTERNS = ("pytorch_model*.bin", "diffusion_pytorch_model*.bin")
_PROGRESS_INTERVAL_S = 0.2


def _select_files(files: Mapping[str, int]) -> dict[str, int]:
    """What to download of a repo's files.

    A transformers checkpoint keeps everything at its root. A diffusers pipeline
    (``model_index.json``) keeps one folder per component, and its root may also hold the
    original tool's checkpoint (stabilityai/stable-audio-open-1.0 has a 4.8 GB
    ``model.safetensors`` and ``model.ckpt`` there for stable-audio-tools): only the
    component folders and root configs are taken. In each folder, weights come as
    safetensors, or as ``.bin`` only when it has none.
    """
    from fnmatch import fnmatchcase

    def wanted(path: str, patterns: tuple[str, ...]) -> bool:
        base = path.rsplit("/", 1)[-1]
        return any(fnmatchcase(base, p) for p in patterns)

    pipeline = "model_index.json" in files
    by_folder: dict[str, dict[str, int]] = {}
    for path, size in files.items():
        folder = path.rsplit("/", 1)[0] if "/" in path else ""
        if pipeline and (folder.count("/") > 0 or (not folder and not path.endswith(".json"))):
            continue
        by_folder.setdefault(folder, {})[path] = size
    chosen: dict[str, int] = {}
    for listing in by_folder.values():
        picked = {p: s for p, s in listing.items() if wanted(p, _WANTED_PATTERNS)}
        if not any(p.endswith(".safetensors") for p in picked):
            picked.update({p: s for p, s in listing.items()
                           if wanted(p, _BIN_FALLBACK_PATTERNS)})
        chosen.update(picked)
    return dict(sorted(chosen.items()))


class _PullTracker:
    """Turns byte counts from huggingface_hub's progress bars into throttled PullProgress calls."""

    def __init__(self, base: PullProgress, callback: Callable[[PullProgress], None] | None):
        self._state = base
        self._callback = callback
        self._lock = threading.Lock()
        self._done_before = 0  # bytes of finished files
        self._current = 0  # bytes of the file in flight
        self._current_size = 0
        self._last_emit = 0.0
        self._aborted: BaseException | None = None

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._state = replace(self._state, **changes)
        self._emit(force=True)

    def start_file(self, name: str, size: int) -> None:
        with self._lock:
            self._current, self._current_size = 0, size
            self._state = replace(self._state, phase="downloading", file=name)
        self._emit(force=True)

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self._current = min(max(self._current + n, 0), self._current_size)
            self._state = replace(self._state, bytes_done=self._done_before + self._current)
        self._emit(force=False)

    def finish_file(self, size: int) -> None:
        with self._lock:
            self._done_before += size
            self._current = self._current_size = 0
            self._state = replace(
                self._state, files_done=self._state.files_done + 1, bytes_done=self._done_before
            )
        self._emit(force=True)

    def _emit(self, *, force: bool) -> None:
        if self._aborted is not None:
            raise self._aborted
        if self._callback is None:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_emit < _PROGRESS_INTERVAL_S:
                return
            self._last_emit = now
            state = self._state
        try:
            self._callback(state)
        except BaseException as exc:
            # hf_xet reports progress from its own thread and may swallow what the callback
            # raises there; keeping it makes the next file boundary raise it on our thread.
            self._aborted = exc
            raise


def _bar_class(tracker: _PullTracker) -> type[Any]:
    """A stand-in for tqdm that huggingface_hub drives and that counts bytes into ``tracker``.

    Having ``update_transfer`` makes hf_xet downloads use one bar for bytes written (``update``)
    and bytes received (``update_transfer``); we report bytes written, as plain HTTP does.
    """

    class _ByteCounter:
        def __init__(self, *_args: Any, **kwargs: Any) -> None:
            self.n = 0
            self.total = kwargs.get("total")
            initial = kwargs.get("initial") or 0
            if initial:
                self.update(initial)

        def update(self, n: float | None = 1) -> None:
            step = int(n or 0)
            self.n += step
            tracker.add_bytes(step)

        def update_transfer(self, n: float | None = 1) -> None:
            pass

        def set_postfix_str(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        set_transfer_postfix_str = set_description = set_description_str = set_postfix_str

        def refresh(self, *_args: Any, **_kwargs: Any) -> None:
            pass

        def close(self) -> None:
            pass

        def __enter__(self) -> _ByteCounter:
            return self

        def __exit__(self, *_exc: object) -> None:
            pass

    return _ByteCounter


def pull(
    name: str,
    *,
    progress: Callable[[PullProgress], None] | None = None,
    revision: str | None = None,
    refresh: bool = False,
    timeout: float = 10.0,
    cache_dir: str | Path | None = None,
) -> InstalledModel:
    """Download the files a backend needs for ``name`` into the hub cache and return the result.

    A model whose files are all cached is returned without touching the network, unless
    ``refresh`` asks to look for a newer commit of the branch; even then an unreachable Hub falls
    back to the cached copy. Interrupted downloads resume where they stopped (huggingface_hub
    keeps ``*.incomplete`` blobs). A local directory is returned as it is.

    ``progress`` is called at most every 0.2 s plus at each phase and file boundary, from this
    thread or (for hf_xet transfers) from a thread of the download library; an exception it
    raises aborts the pull, at the latest at the next file boundary (partial files stay and
    resume next time).
    ``timeout`` bounds each request to the Hub, in seconds.

    Raises :class:`NetworkUnavailable` when files must be downloaded but ``HF_HUB_OFFLINE`` is
    set or the Hub cannot be reached; :class:`ModelNotFound` for an unknown name, repo or
    revision; :class:`ModelLoadFailed` when the files cannot be written (disk full, say).
    """
    ref = resolve(name, revision=revision, cache_dir=cache_dir)
    if ref.kind == "local":
        return _installed_local(ref)
    assert ref.repo is not None  # invariant of kind == "hub", not input validation
    repo = ref.repo
    cache = hub_cache_dir(cache_dir)
    tracker = _PullTracker(PullProgress(model=ref.id, repo=repo, phase="checking"), progress)

    def cached_result() -> InstalledModel:
        installed = _installed_hub(cache, repo, ref.revision or "")
        tracker.update(
            phase="done",
            revision=installed.revision,
            bytes_done=installed.size_bytes,
            bytes_total=installed.size_bytes,
        )
        return installed

    if ref.ready and not refresh:
        return cached_result()
    if _offline_requested():
        if ref.ready:
            return cached_result()
        what = (
            f"the cached copy lacks {', '.join(ref.missing)}"
            if ref.local_path is not None
            else f"it is not in the cache at {cache}"
        )
        raise NetworkUnavailable(ref.id, f"HF_HUB_OFFLINE is set (offline mode) and {what}",
                                 offline=True)

    tracker.update()
    endpoint = _endpoint()
    try:
        info = HfApi(endpoint=endpoint).model_info(
            repo, revision=revision, files_metadata=True, timeout=timeout
        )
    except Exception as exc:
        error = _translate_hub_error(exc, ref.id, repo, revision)
        if error is None:
            raise
        if isinstance(error, NetworkUnavailable) and ref.ready:
            return cached_result()
        raise error from exc
    commit = info.sha
    if commit is None:
        raise NetworkUnavailable(ref.id, f"the Hub sent no commit for {repo}")

    listing = {s.rfilename: int(s.size or 0) for s in info.siblings or ()}
    files = _select_files(listing)
    # Each family's entry file: a transformers config, a diffusers pipeline index, a Demucs
    # bag (NAME.yaml); a repo with none of them is refused before anything is downloaded.
    if "config.json" not in files and "model_index.json" not in files and not any(
            "/" not in name and name.endswith(".yaml") for name in files):
        raise ModelNotFound(ref.id, f"{repo} has neither config.json, model_index.json nor a "
                            f"Demucs bag file, so no Timbre backend loads it "
                            f"({registry.hints()})")
    repo_dir = _repo_folder(cache, repo)
    snapshot = repo_dir / "snapshots" / commit
    tracker.update(
        phase="downloading",
        revision=commit,
        files_total=len(files),
        bytes_total=sum(files.values()),
    )
    bar = _bar_class(tracker)
    for filename, size in files.items():
        tracker.start_file(filename, size)
        # A snapshot entry appears only once its blob is complete, so an existing one is whole.
        if not (snapshot / filename).is_file():
            try:
                hf_hub_download(
                    repo,
                    filename,
                    revision=commit,
                    cache_dir=cache,
                    endpoint=endpoint,
                    etag_timeout=timeout,
                    tqdm_class=bar,
                )
            except Exception as exc:
                error = _translate_hub_error(exc, ref.id, repo, revision)
                if error is None:
                    raise
                raise error from exc
        tracker.finish_file(size)

    wanted = revision or "main"
    if wanted != commit:
        _write_ref(ref.id, repo_dir, wanted, commit)
    installed = _installed_hub(cache, repo, commit)
    tracker.update(phase="done", file=None)
    return installed


def _write_ref(model: str, repo_dir: Path, name: str, commit: str) -> None:
    """Point ``refs/<name>`` at ``commit``, atomically, as huggingface_hub does after a download."""
    ref_path = repo_dir / "refs" / name
    try:
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref_path.with_name(ref_path.name + ".partial")
        tmp.write_text(commit, encoding="utf-8")
        tmp.replace(ref_path)
    except OSError as exc:
        raise ModelLoadFailed(model, f"cannot record revision {name!r}: {exc}") from exc


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Transport-level exception types of the HTTP client huggingface_hub uses.

    huggingface_hub has moved from requests to httpx to httpx2; whichever is importable counts.
    """
    found: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module, attr in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "ConnectionError"),
        ("requests", "Timeout"),
    ):
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def _translate_hub_error(
    exc: BaseException, model: str, repo: str, revision: str | None
) -> TimbreError | None:
    """Map a huggingface_hub failure into Timbre's tree; ``None`` for what we do not expect."""
    if isinstance(exc, TimbreError):
        return None  # ours already (raised by the progress callback, say): pass it through
    where = _endpoint() or constants.ENDPOINT
    if isinstance(exc, RevisionNotFoundError):
        return ModelNotFound(model, f"{repo} has no revision {revision or 'main'!r} on {where}")
    if isinstance(exc, GatedRepoError):
        return ModelNotFound(
            model, f"accept its licence at {where.rstrip('/')}/{repo}, then give Timbre a "
            "Hugging Face token: `hf auth login` (the daemon reads the token it stores) or "
            f"HF_TOKEN in the daemon's environment; {repo} is gated"
        )
    if isinstance(exc, RepositoryNotFoundError):
        return ModelNotFound(
            model, f"no repository {repo} on {where} (if it is private, log in: `hf auth login`)"
        )
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        return NetworkUnavailable(model, f"{where} answered HTTP {status} ({exc})")
    transport = _transport_errors()
    chain: BaseException | None = exc
    while chain is not None:
        if isinstance(chain, OfflineModeIsEnabled):
            return NetworkUnavailable(model, "huggingface_hub is in offline mode (HF_HUB_OFFLINE)",
                                      offline=True)
        if isinstance(chain, transport):
            return NetworkUnavailable(model, f"cannot reach {where}: {chain}")
        chain = chain.__cause__ or chain.__context__
    if isinstance(exc, LocalEntryNotFoundError):
        return NetworkUnavailable(model, f"cannot reach {where} and the files are not cached")
    if isinstance(exc, OSError):
        return ModelLoadFailed(model, f"download failed: {exc}")
    return None


# --- remove ------------------------------------------------------------------------------


def remove(
    name: str, *, revision: str | None = None, cache_dir: str | Path | None = None
) -> RemovedModel:
    """Delete a model's cached revisions (all of them, or just ``revision``) from the hub cache.

    Deletion goes through huggingface_hub's own strategy, so blobs another revision still uses
    are kept. Removing every revision removes the repo folder, partial downloads included.

    Raises :class:`ModelNotFound` when the name is unknown or the model (or revision) is not
    cached; :class:`InvalidParams` for a local directory, which Timbre never deletes;
    :class:`OutputError` when files could not be deleted.
    """
    ref = resolve(name, cache_dir=cache_dir)
    if ref.kind == "local":
        raise InvalidParams(
            f"{ref.id} is a local directory; Timbre only removes models from the Hugging Face "
            "cache, delete the directory yourself",
            param="model",
        )
    assert ref.repo is not None  # invariant of kind == "hub", not input validation
    _check_revision(revision)
    cache = hub_cache_dir(cache_dir)
    repo_dir = _repo_folder(cache, ref.repo)
    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        info = None
    cached = next(
        (
            r
            for r in (info.repos if info is not None else ())
            if r.repo_type == "model" and r.repo_id.lower() == ref.repo.lower()
        ),
        None,
    )
    if info is None or cached is None:
        if revision is None and repo_dir.is_dir():
            # An interrupted first download (no snapshot yet) or a repo with a broken snapshot:
            # huggingface_hub's scan reports it as corrupted and will not plan its deletion, so
            # delete the folder ourselves.
            size, _ = _du(repo_dir)
            shutil.rmtree(repo_dir, ignore_errors=True)
            _check_gone(repo_dir)
            return RemovedModel(ref.id, ref.repo, (), size, repo_dir)
        raise ModelNotFound(ref.id, f"{ref.repo} is not installed in {cache}; nothing to remove")

    if revision is None:
        revisions = sorted(r.commit_hash for r in cached.revisions)
    else:
        revisions = [
            r.commit_hash
            for r in cached.revisions
            if r.commit_hash == revision or revision in r.refs
        ]
        if not revisions:
            have = ", ".join(
                f"{r.commit_hash[:12]} ({', '.join(sorted(r.refs)) or 'no ref'})"
                for r in cached.revisions
            )
            raise ModelNotFound(ref.id, f"revision {revision!r} is not cached; cached: {have}")

    strategy = info.delete_revisions(*revisions)
    freed = strategy.expected_freed_size
    whole_repo = len(revisions) == len(cached.revisions)
    if whole_repo:
        freed += sum(
            p.stat().st_size for p in (repo_dir / "blobs").glob("*.incomplete") if p.is_file()
        )
    strategy.execute()
    for path in (*strategy.repos, *strategy.snapshots, *strategy.blobs):
        _check_gone(Path(path))
    return RemovedModel(ref.id, ref.repo, tuple(revisions), freed, repo_dir)


def _check_gone(path: Path) -> None:
    # huggingface_hub logs and swallows failed deletions (permission denied); we must not report
    # bytes freed that were not.
    if path.exists() or path.is_symlink():
        raise OutputError(str(path), "could not delete it while removing a model")


# --- memory estimate ---------------------------------------------------------------------

_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
_MAX_SAFETENSORS_HEADER = 100_000_000  # the format's own limit


def estimate_memory(ref: ModelRef, *, dtype: Dtype | None = None) -> int:
    """Bytes the weights of ``ref`` take once loaded (activations not included).

    From the safetensors files when present: their sizes, or with ``dtype`` their tensors'
    element counts at that precision (floating tensors only; integer buffers keep their size).
    Else from ``pytorch_model*.bin`` sizes, scaled by ``torch_dtype`` in config.json. Else, for
    a catalogue model not yet pulled, its approximate parameter count at ``dtype`` (float32).

    Raises :class:`ModelNotFound` for a hub model that is neither cached nor in the catalogue;
    :class:`ModelLoadFailed` when no weights are found or a safetensors header is corrupt;
    :class:`InvalidParams` for an unknown ``dtype``.
    """
    if dtype is not None and dtype not in _DTYPE_BYTES:
        raise InvalidParams(
            f"dtype must be one of {', '.join(_DTYPE_BYTES)}, got {dtype!r}", param="dtype"
        )
    directory = ref.local_path
    if directory is None:
        if ref.entry is not None:
            return ref.entry.approx_params * _DTYPE_BYTES[dtype or "float32"]
        raise ModelNotFound(ref.id, f"it is not downloaded, so its size is unknown; {PULL_HINT}")
    spec = registry.get(ref.backend) if ref.backend is not None else None
    if spec is not None and spec.estimate_memory is not None:
        return spec.estimate_memory(directory, dtype)

    # A diffusers pipeline keeps each component's weights in its own folder.
    folders = [directory / f for f in pipeline_components(directory)] or [directory]
    total = 0
    for folder in folders:
        total += folder_weight_bytes(ref.id, folder, dtype)
    if total:
        return total
    raise ModelLoadFailed(
        ref.id, f"no weights (*.safetensors or pytorch_model*.bin) in {directory}"
    )


def folder_weight_bytes(model: str, folder: Path, dtype: Dtype | None) -> int:
    """Bytes of one folder's weights (see :func:`estimate_memory`); 0 when it holds none."""
    safetensors = _weight_files(folder, ("model.safetensors.index.json",
                                         "diffusion_pytorch_model.safetensors.index.json"),
                                "*.safetensors")
    if safetensors:
        if dtype is None:
            return sum(_size(model, f) for f in safetensors)
        return sum(_safetensors_bytes(model, f, _DTYPE_BYTES[dtype]) for f in safetensors)
    bins = _weight_files(folder, ("pytorch_model.bin.index.json",), "pytorch_model*.bin")
    total = sum(_size(model, f) for f in bins)
    if dtype is None or not total:
        return total
    stored = _read_json(model, folder / "config.json").get("torch_dtype", "float32")
    return total * _DTYPE_BYTES[dtype] // _DTYPE_BYTES.get(str(stored), 4)


def _weight_files(directory: Path, indexes: tuple[str, ...], pattern: str) -> list[Path]:
    for index in indexes:
        shards = index_shards(directory / index)
        if shards is not None:
            return [directory / s for s in shards if (directory / s).is_file()]
    return sorted(p for p in directory.glob(pattern) if p.is_file())


def _size(model: str, path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ModelLoadFailed(model, f"cannot read {path}: {exc}") from exc


def _safetensors_bytes(model: str, path: Path, target: int) -> int:
    """Bytes of the tensors in a safetensors file with floating tensors at ``target`` bytes each."""
    try:
        with path.open("rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > _MAX_SAFETENSORS_HEADER:
                raise ValueError(f"header of {length} bytes")
            header = json.loads(fh.read(length))
        total = 0
        for key, meta in header.items():
            if key == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            if meta["dtype"] in _FLOAT_DTYPES:
                total += math.prod(int(d) for d in meta["shape"]) * target
            else:
                total += int(end) - int(start)
        return total
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelLoadFailed(model, f"{path} is not a valid safetensors file: {exc}") from exc
