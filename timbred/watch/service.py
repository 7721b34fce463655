"""Watch folders: drop a prompt file into a folder, get a take.

:class:`WatchService` watches folders (non-recursively) with watchfiles inside the daemon's event
loop, and turns each complete prompt file (:mod:`timbred.watch.promptfile`) into generation jobs
exactly once. Per folder it keeps three subfolders of its own, which it never watches:
``done/`` (taken files, each with ``<name>.result.json``), ``rejected/`` (refused files, each
with ``<name>.error.txt`` saying exactly what was wrong) and ``outbox/`` (the takes; or the
takes go beside the prompt files, in the watched folder itself, with ``outputs="beside"``).
Names that clash in those folders get a numeric suffix (``a.2.txt``, ``song.2.wav``); nothing
is ever overwritten.

Outputs
    Each prompt's take is ``<output dir>/<name><ext>``: the prompt's ``output`` name, else the
    file's stem (``<stem>-<n>`` when the file holds several prompts), the first of ``name``,
    ``name.2``, ... whose files (variations add ``-1``, ``-2``; and their ``.json`` sidecars)
    exist nowhere and are promised to no unfinished claim. ``ext`` is that of the format the
    takes will be written in.

Resolved once, at claim
    When a file is claimed, each prompt's export options are resolved, once: the ones the
    prompt names (``format``, or the output name's suffix), over (in the daemon) its preset's
    ``[export]`` table and the configuration; else the format is WAV. The claim stores them
    with the output path, and every attempt to submit the prompt (a restart's included)
    sends exactly that request: the format named outright, never read back from the output's
    extension, so a preset or configuration edited between a crash and the restart changes
    nothing about a file already taken.

What is taken
    Regular files named ``*.txt``, ``*.toml`` or ``*.json`` (any case), in the folder itself
    (subfolders are not watched). Hidden files, editor and download temporaries (``~``,
    ``#…#``, ``.swp``, ``.tmp``, ``.part``, ``.crdownload``, …), take sidecars
    (``*.wav.json`` …), other suffixes and directories are left alone. Symbolic links are all
    refused (moved to ``rejected/``, the link itself, never its target), and files are opened
    with ``O_NOFOLLOW``: nothing outside the folder is ever read. Files over
    ``max_file_bytes`` are refused by their ``lstat`` size, unread.

When a file is complete (the stability rule)
    Every ``stable_interval_s`` the service ``lstat``s each waiting file. A file is taken once
    its (device, inode, size, mtime) was the same on ``stable_checks`` consecutive checks
    (defaults: 3 checks 0.5 s apart, so unchanged for at least 1 s), or at once when it
    arrived by rename or hard link: a non-empty file whose ctime is later than its mtime
    (renaming or linking changes the ctime, not the mtime; writing sets both to the same
    instant). A writer that pauses longer than the stability window mid-file, or that
    ``chmod``s before it finishes writing, can have a partial file taken: write elsewhere
    (or under a hidden or ``.part`` name) and rename into the folder to be safe.

Exactly once
    The database row is the claim. For each complete, valid file the service, in order:

    1. records a claim (content SHA-256, size, (st_dev, st_ino), name, the parsed requests,
       their resolved export options and the output paths it reserved), committed with
       ``synchronous=FULL``. An open claim with the same folder, identity and hash means
       this file is already ours (a rescan, a restart); it is never claimed twice;
    2. moves the file into ``done/`` (``link`` + ``unlink``; never overwriting), so that a
       touch, a rename inside the folder or a rescan can no longer see it;
    3. per prompt: commits ``submitting`` (the first one also records where the file went),
       calls ``submit``, commits ``submitted`` and the job id (a refused prompt is recorded
       with its error; if every prompt is refused the file goes on to ``rejected/``);
    4. writes ``<name>.result.json`` and waits for the jobs; the final result file is
       rewritten (and fsynced) when the last one finishes, then the claim is closed.

    So ``done/`` means *taken*: the result file's ``state`` says ``submitted`` until the jobs
    end, then ``done`` or ``failed``. A one-prompt file costs four commits.

    After a crash: a claim whose file was not moved yet is found by its identity (in the
    folder, also under a new name, or in ``done/``) and finished (a file deleted before
    anything was submitted is given up: ``failed``). Prompts still ``pending`` were never
    handed to ``submit`` and are submitted, once. A prompt caught ``submitting`` may or may
    not have become a job (the daemon died inside ``submit``): every prompt is submitted
    under an idempotency key fixed by its claim (``watch:<claim>:<created>:<index>``), so it
    is submitted again under that key and gets the job its first attempt made, if it made
    one, else a new one: exactly one job either way. Submitted jobs are waited for again,
    never resubmitted. A graceful stop shields each ``submit`` and the commit after it. The
    same content dropped again later as a new file (another inode), or moved back from
    ``done/``, is a new request and makes new takes. In a folder where files cannot be
    moved (read-only), the finished claim keeps the file from being taken again.

Bounded work
    At most ``max_inflight_files`` files are taken but not finished (read, claimed, submitted,
    waited for) at once, across folders; the rest wait their turn as small entries of
    name and ``lstat`` result.

Folders that go away
    The service notices within ``stable_interval_s`` when a watched folder is deleted,
    replaced or unmounted (its device and inode change), publishes ``watch.folder`` with
    status ``missing``, and retries with backoff (``retry_initial_s`` doubling to
    ``retry_max_s``) until it is back, then re-attaches and rescans. A full rescan also runs
    every ``rescan_interval_s`` in case the OS dropped events.

Events
    ``watch.file`` ``{folder, file, status: accepted|rejected|done|failed, jobs, reason}``
    and ``watch.folder`` ``{folder, status: watching|missing, reason}``.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.abc
import anyio.to_thread
from watchfiles import Change, awatch

from timbred.errors import (
    InternalError,
    QueueFull,
    ShuttingDown,
    StoreError,
    TimbreError,
    WatchFolderError,
)
from timbred.takes.options import EXTENSIONS
from timbred.takes.publish import explicit_paths, rewrite
from timbred.takes.sidecars import sidecar_path
from timbred.watch import files, promptfile
from timbred.watch.files import (
    DONE_DIR,
    ERROR_SUFFIX,
    OUTBOX_DIR,
    OWN_SUBFOLDERS,
    REJECTED_DIR,
    RESULT_SUFFIX,
)
from timbred.watch.promptfile import PromptRequest
from timbred.watch.store import FileRecord, WatchStore

__all__ = [
    "DONE_DIR",
    "OUTBOX_DIR",
    "REJECTED_DIR",
    "ExportFor",
    "FormatFor",
    "ResolveFor",
    "WatchService",
]

log = logging.getLogger(__name__)

Submit = Callable[[dict[str, Any]], Awaitable[str]]
Wait = Callable[[str], Awaitable[dict[str, Any]]]
Publish = Callable[[str, dict[str, Any]], None]
#: The format a prompt's takes will be written in (asked once, at claim).
FormatFor = Callable[[PromptRequest], str]
#: The export options a prompt's takes will be written with, ``format`` always named (asked
#: once, at claim).
ExportFor = Callable[[PromptRequest], Mapping[str, Any]]
#: The whole request as the daemon will queue it, ``{"model", "params"}`` (``params`` holding
#: the resolved ``export``), or None when it would be refused (then submitting it the plain way
#: refuses it, naming why). Asked once, at claim.
ResolveFor = Callable[[PromptRequest], Mapping[str, Any] | None]
OutputsMode = Literal["outbox", "beside"]

_TERMINAL_JOB_STATES: Final = frozenset({"done", "failed", "cancelled", "interrupted"})
#: Refusals that say "not now" rather than "never": the prompt is retried with backoff.
_TRANSIENT: Final = (QueueFull, ShuttingDown)


def _own_format(request: PromptRequest) -> str:
    """The format the prompt file names, else WAV."""
    return str(request.export.get("format", "wav"))


def _export_naming(format_for: FormatFor) -> ExportFor:
    """The export options of a service given only ``format_for``: the prompt's own, with the
    format it names."""

    def export_for(request: PromptRequest) -> dict[str, Any]:
        return {**request.export, "format": format_for(request)}

    return export_for


def _idempotency_key(record: FileRecord, prompt: Mapping[str, Any]) -> str:
    """The key a claim's prompt is submitted under, the same on every attempt (the claim's
    row id and creation time make it unique to this claim for as long as jobs are kept)."""
    return f"watch:{record.id}:{record.created_at:.6f}:{prompt['request']['index']}"


def _submission(record: FileRecord, prompt: Mapping[str, Any]) -> dict[str, Any]:
    """What ``submit`` gets for one prompt of a claim: the request as the claim resolved it
    (with ``resolved``, the whole request, when the service was given ``resolve_for``).

    Claims made before export options were resolved at claim time hold none; theirs are the
    prompt's own, as those versions sent them, so that a resubmission after an upgrade is the
    same request under its idempotency key.
    """
    request = prompt["request"]
    out = {"params": {**request["params"], "output": prompt["output"]},
           "export": dict(prompt.get("export", request["export"])),
           "preset": request["preset"], "idempotency_key": _idempotency_key(record, prompt)}
    if prompt.get("resolved") is not None:
        out["resolved"] = prompt["resolved"]
    return out


def _write_text(path: Path, text: str, *, durable: bool = True) -> None:
    """Write one of the service's own files (a result or error file) atomically, replacing
    an older one (see :func:`timbred.takes.publish.rewrite`)."""
    rewrite(path, text.encode("utf-8"), durable=durable)


# --- the service --------------------------------------------------------------------------------


@dataclass(eq=False)
class _Pending:
    """A directory entry waiting to be taken."""

    state: Literal["checking", "ready", "taking", "held"] = "checking"
    sig: files.Sig | None = None
    count: int = 0


@dataclass(eq=False)
class _Folder:
    path: Path
    source: Literal["config", "added"]
    state: str = "starting"
    problem: str | None = None
    pending: dict[str, _Pending] = field(default_factory=dict)
    ready: deque[str] = field(default_factory=deque)
    ready_event: anyio.Event = field(default_factory=anyio.Event)
    stop: anyio.Event = field(default_factory=anyio.Event)
    scope: anyio.CancelScope | None = None
    polling: bool = False
    inflight: int = 0
    taken: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, Any]:
        waiting = sum(1 for e in self.pending.values() if e.state in ("checking", "ready"))
        return {"path": str(self.path), "source": self.source, "state": self.state,
                "problem": self.problem, "pending": waiting, "inflight": self.inflight,
                "taken": self.taken, "rejected": self.rejected}


class WatchService:
    """Watch folders and turn each complete prompt file into generation jobs, exactly once.

    ``folders`` are absolute paths (WatchFolderError otherwise); ones that do not exist yet
    are waited for. ``database`` is the shared ``timbre.sqlite3`` (opened in :meth:`run`,
    after the job store created it). ``submit(request)`` gets ``{"params": {generate.submit
    params, "output" an absolute path in the output folder}, "export": {format, ...},
    "preset": name | None}`` and returns the job id once the job is committed, or raises a
    TimbreError when the request is refused (QueueFull and ShuttingDown are retried with
    backoff; any other refuses that prompt). ``wait(job_id)`` returns the finished job as a
    dict with ``state``, ``outputs`` and ``error``. ``publish(type, data)`` publishes a daemon
    event and must not block. ``export_for(request)`` resolves the export options a prompt's
    takes will be written with, ``format`` always among them (the daemon layers the prompt's
    own over its preset's and the configuration's); ``format_for(request)`` is the short form
    for a caller that only picks the format (default: the prompt file's, else WAV). Either is
    asked once, when the file is claimed; the options and the output path they imply are
    recorded with the claim and submitted as they are, so a prompt submitted again after a
    crash is the same request even if a preset or the configuration changed in between. The
    other settings are described in the module's docstring; ``max_file_bytes`` caps a
    prompt file's size.

    ``resolve_for(request)``, when given, resolves the whole request at claim (the model,
    the preset applied, every default, the seed, the export options); what it returns is
    recorded with the claim and handed to ``submit`` as ``resolved`` (the output path added
    to its ``params``), and its export options name the output. Where it returns None,
    ``export_for`` names the output and ``submit`` gets only the plain request.
    """

    def __init__(
        self,
        folders: Iterable[str | os.PathLike[str]],
        *,
        database: str | os.PathLike[str],
        submit: Submit,
        wait: Wait,
        publish: Publish,
        max_inflight_files: int = 16,
        stable_checks: int = 3,
        stable_interval_s: float = 0.5,
        outputs: OutputsMode = "outbox",
        max_file_bytes: int = promptfile.MAX_FILE_BYTES,
        rescan_interval_s: float = 30.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
        format_for: FormatFor | None = None,
        export_for: ExportFor | None = None,
        resolve_for: ResolveFor | None = None,
    ) -> None:
        if max_inflight_files < 1:
            raise ValueError(f"max_inflight_files must be at least 1, got {max_inflight_files}")
        if stable_checks < 1:
            raise ValueError(f"stable_checks must be at least 1, got {stable_checks}")
        if stable_interval_s <= 0 or rescan_interval_s <= 0 or retry_initial_s <= 0:
            raise ValueError("intervals must be positive")
        if outputs not in ("outbox", "beside"):
            raise ValueError(f"outputs must be 'outbox' or 'beside', got {outputs!r}")
        self.database = Path(database)
        self.max_inflight_files = max_inflight_files
        self.stable_checks = stable_checks
        self.stable_interval_s = stable_interval_s
        self.outputs: OutputsMode = outputs
        self.max_file_bytes = max_file_bytes
        self.rescan_interval_s = rescan_interval_s
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = max(retry_max_s, retry_initial_s)
        self._submit = submit
        self._export_for: ExportFor = export_for or _export_naming(format_for or _own_format)
        self._resolve_for = resolve_for
        self._wait = wait
        self._publish = publish
        self._folders: dict[Path, _Folder] = {}
        for raw in folders:
            path = _normalise(raw)
            self._folders.setdefault(path, _Folder(path, "config"))
        self._store: WatchStore | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._slots = anyio.Semaphore(max_inflight_files)
        self._driving: set[int] = set()  # record ids some task is taking care of
        self._reserved: set[str] = set()  # output paths promised to open claims
        self._reserved_lock = threading.Lock()
        #: Files taken and not finished right now, and the most there ever were.
        self.inflight = 0
        self.max_inflight_seen = 0

    # --- public API ------------------------------------------------------------------------

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Open the tables, resume unfinished claims, watch every folder until cancelled."""
        store = await anyio.to_thread.run_sync(WatchStore, self.database)
        self._store = store
        try:
            for raw in await anyio.to_thread.run_sync(store.folders):
                path = Path(raw)
                self._folders.setdefault(path, _Folder(path, "added"))
            counts = await anyio.to_thread.run_sync(store.counts)
            for path, folder in self._folders.items():
                folder.taken, folder.rejected = counts.get(str(path), (0, 0))
            unfinished = await anyio.to_thread.run_sync(store.open_records)
            with self._reserved_lock:
                for record in unfinished:
                    for p in record.prompts:
                        self._reserved.update(_take_paths(p))
            async with anyio.create_task_group() as tg:
                self._tg = tg
                for record in unfinished:
                    self._driving.add(record.id)
                    tg.start_soon(self._resume, record)
                for folder in self._folders.values():
                    self._start_folder(folder)
                if unfinished:
                    log.info("resuming %d unfinished watch-folder file(s)", len(unfinished))
                task_status.started()
                await anyio.sleep_forever()
        finally:
            self._tg = None
            for folder in self._folders.values():
                folder.stop.set()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(store.close)
            self._store = None

    async def add(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Watch one more folder, now and after restarts; return its :meth:`list` entry.

        Raises WatchFolderError when the path is not absolute, does not exist, is not a
        directory, or is one of a watched folder's own subfolders (or holds one as such).
        Adding a folder already watched returns its entry.
        """
        if self._store is None or self._tg is None:
            raise WatchFolderError(str(path), "the watch service is not running")
        folder_path = _normalise(path)
        existing = self._folders.get(folder_path)
        if existing is not None:
            return existing.to_dict()
        for watched in self._folders:
            if folder_path.parent == watched and folder_path.name in OWN_SUBFOLDERS:
                raise WatchFolderError(str(folder_path), f"it is the {folder_path.name}/ "
                                       f"subfolder of the watched folder {watched}")
            if watched.parent == folder_path and watched.name in OWN_SUBFOLDERS:
                raise WatchFolderError(str(folder_path), f"its {watched.name}/ subfolder is "
                                       "watched as a folder of its own; remove that first")
        await anyio.to_thread.run_sync(files.folder_identity, folder_path)
        await anyio.to_thread.run_sync(self._store.add_folder, str(folder_path))
        folder = _Folder(folder_path, "added")
        counts = await anyio.to_thread.run_sync(self._store.counts)
        folder.taken, folder.rejected = counts.get(str(folder_path), (0, 0))
        self._folders[folder_path] = folder
        self._start_folder(folder)
        log.info("watching %s", folder_path)
        return folder.to_dict()

    async def remove(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Stop watching a folder; files already taken still finish. Return its last entry.

        A folder added with :meth:`add` is forgotten for good; one from the configuration is
        watched again after a restart (remove it from the configuration to stop that).
        Raises WatchFolderError when the folder is not watched.
        """
        folder_path = _normalise(path)
        folder = self._folders.pop(folder_path, None)
        if folder is None:
            raise WatchFolderError(str(folder_path), "is not watched")
        folder.stop.set()
        if folder.scope is not None:
            folder.scope.cancel()
        folder.state = "stopped"
        if folder.source == "added" and self._store is not None:
            await anyio.to_thread.run_sync(self._store.remove_folder, str(folder_path))
        log.info("stopped watching %s", folder_path)
        return folder.to_dict()

    def list(self) -> builtins.list[dict[str, Any]]:
        """One entry per watched folder: path, source (config|added), state
        (starting|watching|missing), problem, pending, inflight, taken, rejected."""
        return [f.to_dict() for f in self._folders.values()]

    # --- folders -----------------------------------------------------------------------------

    def _start_folder(self, folder: _Folder) -> None:
        assert self._tg is not None  # only called while run() is running
        folder.scope = anyio.CancelScope()
        self._tg.start_soon(self._folder_task, folder, folder.scope)

    async def _folder_task(self, folder: _Folder, scope: anyio.CancelScope) -> None:
        with scope:
            delay = self.retry_initial_s
            while True:
                try:
                    identity = await anyio.to_thread.run_sync(files.folder_identity, folder.path)
                except WatchFolderError as exc:
                    problem = exc.data["problem"]
                    if folder.state != "missing" or folder.problem != problem:
                        log.warning("watch folder %s %s; retrying until it is back",
                                    folder.path, problem)
                        self._publish("watch.folder", {"folder": str(folder.path),
                                                       "status": "missing", "reason": problem})
                    folder.state, folder.problem = "missing", problem
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                delay = self.retry_initial_s
                if folder.state == "missing":
                    log.info("watch folder %s is back", folder.path)
                if folder.state != "watching":
                    folder.state, folder.problem = "watching", None
                    self._publish("watch.folder", {"folder": str(folder.path),
                                                   "status": "watching", "reason": None})
                gone = await self._attached(folder, identity)
                if gone is None:
                    folder.polling = True  # notify failed once (watch limit?): poll instead
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)
                    continue
                log.warning("watch folder %s %s", folder.path, gone)
                folder.state, folder.problem = "missing", gone
                self._publish("watch.folder", {"folder": str(folder.path), "status": "missing",
                                               "reason": gone})

    async def _attached(self, folder: _Folder, identity: tuple[int, int]) -> str | None:
        """Watch one incarnation of the folder; return why it went away, or None when the
        watcher itself failed (then it is re-attached, polling from then on)."""
        folder.stop = stop = anyio.Event()
        folder.pending.clear()
        folder.ready.clear()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_events, folder, stop)
            tg.start_soon(self._dispatch, folder)
            try:
                gone = await self._tick(folder, identity, stop)
            finally:
                stop.set()  # lets awatch's thread return now, not at its timeout
                tg.cancel_scope.cancel()
        return gone

    async def _watch_events(self, folder: _Folder, stop: anyio.Event) -> None:
        try:
            async for changes in awatch(folder.path, stop_event=stop, watch_filter=None,
                                        recursive=False, debounce=400, step=50,
                                        rust_timeout=1000, ignore_permission_denied=True,
                                        force_polling=folder.polling):
                for change, raw in changes:
                    path = Path(raw)
                    if path == folder.path:
                        if change == Change.deleted:
                            stop.set()  # the folder itself went; _tick confirms and detaches
                        continue
                    if path.parent != folder.path or not files.is_candidate_name(path.name):
                        continue
                    # Events are hints (one batch is an unordered set: a "deleted" for the
                    # file just moved out may come with an "added" for a new one of the same
                    # name); the next lstat decides what is there.
                    entry = folder.pending.get(path.name)
                    if entry is None:
                        if change != Change.deleted:
                            folder.pending[path.name] = _Pending()
                    elif entry.state in ("held", "ready"):
                        entry.state, entry.count = "checking", 0
        except Exception as exc:  # the notify backend failed: re-attach (rescan) via _tick
            log.warning("watching %s failed (%s: %s); re-attaching", folder.path,
                        type(exc).__name__, exc)
            stop.set()

    async def _tick(self, folder: _Folder, identity: tuple[int, int],
                    stop: anyio.Event) -> str | None:
        next_rescan = 0.0
        while True:
            now = anyio.current_time()
            rescan = now >= next_rescan
            names = [n for n, e in folder.pending.items() if e.state == "checking"]
            known = set(folder.pending) if rescan else None
            seen = await anyio.to_thread.run_sync(files.survey, folder.path, identity, names,
                                                  known)
            if seen.gone is not None:
                return seen.gone
            if stop.is_set():
                return None  # the watcher ended on its own: re-attach
            if rescan:
                next_rescan = now + self.rescan_interval_s
            self._apply(folder, seen)
            with anyio.move_on_after(self.stable_interval_s):
                await stop.wait()

    def _apply(self, folder: _Folder, seen: files.Survey) -> None:
        for name in seen.found:
            folder.pending.setdefault(name, _Pending())
        for name, sig in seen.stats.items():
            entry = folder.pending.get(name)
            if entry is None or entry.state != "checking":
                continue
            if sig is None or sig.kind == "dir":
                del folder.pending[name]
                continue
            if entry.sig is not None and sig.stable_key == entry.sig.stable_key:
                entry.count += 1
            else:
                entry.sig, entry.count = sig, 1
            if sig.kind != "file" or entry.count >= self.stable_checks or sig.renamed_in:
                entry.state = "ready"
                folder.ready.append(name)
                folder.ready_event.set()

    async def _dispatch(self, folder: _Folder) -> None:
        """Hand ready files to take tasks, one slot of the in-flight bound each."""
        while True:
            if not folder.ready:
                folder.ready_event = anyio.Event()
                await folder.ready_event.wait()
                continue
            await self._slots.acquire()
            while folder.ready:
                name = folder.ready.popleft()
                entry = folder.pending.get(name)
                if entry is not None and entry.state == "ready" and self._tg is not None:
                    entry.state = "taking"
                    self._occupy(folder)
                    self._tg.start_soon(self._take, folder, name, entry)
                    break
            else:
                self._slots.release()

    def _occupy(self, folder: _Folder) -> None:
        self.inflight += 1
        folder.inflight += 1
        self.max_inflight_seen = max(self.max_inflight_seen, self.inflight)

    def _vacate(self, folder: _Folder | None) -> None:
        self.inflight -= 1
        if folder is not None:
            folder.inflight -= 1
        self._slots.release()

    # --- one file --------------------------------------------------------------------------

    async def _take(self, folder: _Folder, name: str, entry: _Pending) -> None:
        try:
            await self._take_file(folder, name, entry)
        except Exception as exc:  # the database or the disk failed (or a bug): keep serving
            log.error("watch folder %s: %s: %s: %s", folder.path, name, type(exc).__name__, exc,
                      exc_info=not isinstance(exc, TimbreError | OSError))
            entry.state = "held"
            self._publish("watch.file", {"folder": str(folder.path), "file": name,
                                         "status": "failed", "jobs": [], "reason": str(exc)})
        finally:
            if folder.pending.get(name) is entry and entry.state == "taking":
                del folder.pending[name]
            self._vacate(folder)

    async def _take_file(self, folder: _Folder, name: str, entry: _Pending) -> None:
        assert entry.sig is not None and self._store is not None  # ready entries have a sig
        path = folder.path / name
        try:
            result = await anyio.to_thread.run_sync(files.read_candidate, path, entry.sig,
                                                    self.max_file_bytes)
        except files.Changed:
            if folder.pending.get(name) is entry:
                entry.state, entry.count = "checking", 0
            return
        if isinstance(result, files.Refused):
            await self._reject(folder, path, result.st, result.reason)
            entry.state = "held"  # until the watcher reports it gone (moved) or changed
            return
        requests = [r.with_base(folder.path) for r in result.requests]
        record, new = await anyio.to_thread.run_sync(
            self._claim, folder.path, name, result, requests)
        if not new and (record.id in self._driving or record.state == "finished"):
            entry.state = "held"  # ours already (being handled, or stuck in a read-only folder)
            return
        if new:  # a claim resumed after a restart was counted when it was made
            folder.taken += 1
            await self._count(folder.path, taken=1)
        if folder.pending.get(name) is entry:
            # The file leaves the folder now; a new file under its name gets its own entry.
            del folder.pending[name]
        self._driving.add(record.id)
        try:
            await self._drive(record, resuming=not new)
        finally:
            self._driving.discard(record.id)

    def _claim(self, folder: Path, name: str, valid: files.Valid,
               requests: Sequence[PromptRequest]) -> tuple[FileRecord, bool]:
        assert self._store is not None
        out_dir = folder / OUTBOX_DIR if self.outputs == "outbox" else folder
        stem = Path(name).stem[:150] or "take"
        several = len(requests) > 1
        prompts: builtins.list[dict[str, Any]] = []
        # Resolved once, here, and asked before taking the lock: the daemon's answer reads
        # the preset file and the model's directory.
        resolved = [None if self._resolve_for is None else self._resolve_for(req)
                    for req in requests]
        exports = [dict(self._export_for(req)) if r is None else dict(r["params"]["export"])
                   for req, r in zip(requests, resolved, strict=True)]
        with self._reserved_lock:
            for req, export, r in zip(requests, exports, resolved, strict=True):
                base = req.output or (f"{stem}-{req.index}" if several else stem)
                ext = EXTENSIONS.get(str(export.get("format")), ".wav")
                output = self._free_output(out_dir, base, ext,
                                           int(req.params.get("variations", 1)))
                prompt: dict[str, Any] = {
                    "request": req.to_dict(), "export": export, "output": str(output),
                    "status": "pending", "job_id": None, "outputs": [], "error": None}
                if r is not None:
                    prompt["resolved"] = dict(r)
                self._reserved.update(_take_paths(prompt))
                prompts.append(prompt)
        try:
            record, new = self._store.claim(
                folder=str(folder), name=name, size=valid.st.st_size, sha256=valid.sha256,
                identity=files.identity(valid.st), prompts=prompts)
        except BaseException:
            self._unreserve(prompts)
            raise
        if not new:
            self._unreserve(prompts)
        return record, new

    def _free_output(self, out_dir: Path, base: str, ext: str, variations: int) -> Path:
        """The first ``base``, ``base.2``, ... whose take files (and their sidecars) exist
        nowhere and are promised to no open claim (caller holds ``_reserved_lock``)."""
        for candidate in files.numbered(base, keep_suffix=False):
            output = out_dir / f"{candidate}{ext}"
            paths = explicit_paths(output, variations)
            if not any(os.path.lexists(p) or str(p) in self._reserved
                       or os.path.lexists(sidecar_path(p))
                       for p in paths):
                return output
        raise AssertionError("unreachable")  # numbered never ends

    def _unreserve(self, prompts: Iterable[Mapping[str, Any]]) -> None:
        with self._reserved_lock:
            for p in prompts:
                self._reserved.difference_update(_take_paths(p))

    async def _resume(self, record: FileRecord) -> None:
        await self._slots.acquire()
        folder = self._folders.get(Path(record.folder))
        self.inflight += 1
        self.max_inflight_seen = max(self.max_inflight_seen, self.inflight)
        if folder is not None:
            folder.inflight += 1
        try:
            await self._drive(record, resuming=True)
        except Exception as exc:
            log.error("watch folder %s: %s: cannot resume: %s: %s", record.folder, record.name,
                      type(exc).__name__, exc, exc_info=not isinstance(exc, TimbreError | OSError))
        finally:
            self._driving.discard(record.id)
            self._vacate(folder)

    async def _save(self, record: FileRecord) -> None:
        assert self._store is not None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._store.save, record)

    async def _drive(self, record: FileRecord, *, resuming: bool = False) -> None:
        """Carry a claim to its end from wherever it stands (fresh, or after a restart).

        Commits for a one-prompt file: the claim, ``submitting`` (with the file's place in
        done/), ``submitted`` (with the state ``waiting``), and ``finished``.
        """
        folder_path = Path(record.folder)
        if record.state == "claimed":
            with anyio.CancelScope(shield=True):
                found = await anyio.to_thread.run_sync(self._move_to_done, record, resuming)
            if not found:
                await self._abandon(record)
                return
            for p in record.prompts:
                if p["status"] == "submitting":
                    # Stopped inside submit: it may or may not have become a job. Submitted
                    # again under the same idempotency key, it gets that job if there is one.
                    p["status"] = "pending"
            if not any(p["status"] == "pending" for p in record.prompts):
                await self._save(record)  # else the first "submitting" commit carries it
            await self._submit_all(record)
            if not any(p["status"] in ("submitted", "unknown") for p in record.prompts):
                await self._refused(record)
                return
            if record.state != "waiting":
                record.state = "waiting"
                await self._save(record)
            await anyio.to_thread.run_sync(self._write_result, record, False)
            self._publish("watch.file", self._event(record, "accepted", self._problems(record)))
        for p in record.prompts:
            if p["status"] == "submitted":
                self._settle(p, await self._wait_job(p["job_id"]))
        record.state = "finished"
        record.outcome = "done" if all(p["status"] == "done" for p in record.prompts) \
            else "failed"
        record.finished_at = time.time()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._write_result, record)
            await self._save(record)
        self._unreserve(record.prompts)
        self._publish("watch.file", self._event(record, record.outcome, self._problems(record)))
        log.info("watch folder %s: %s %s", folder_path, record.name, record.outcome)

    def _move_to_done(self, record: FileRecord, resuming: bool) -> bool:
        """Find the claimed file and move it into done/; False if it is gone unsubmitted."""
        located = files.locate(record, resuming=resuming)
        if located is None:
            # Moved before (then a prompt may be submitted already): carry on without it.
            return record.location is not None
        folder = Path(record.folder)
        if located.parent == folder:
            try:
                located = files.move_into(located, folder / DONE_DIR, record.name, RESULT_SUFFIX)
            except OSError as exc:  # a read-only folder: the claim still holds it once
                log.warning("cannot move %s into %s/: %s", located, DONE_DIR, exc)
        record.location = str(located.relative_to(folder))
        return True

    async def _submit_all(self, record: FileRecord) -> None:
        for p in record.prompts:
            if p["status"] != "pending":
                continue
            delay = self.retry_initial_s
            while p["status"] == "pending":
                payload = _submission(record, p)
                p["status"] = "submitting"
                await self._save(record)
                transient: TimbreError | None = None
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(_make_parent, Path(p["output"]))
                        job_id = await self._submit(payload)
                    except _TRANSIENT as exc:
                        p["status"], transient = "pending", exc
                    except TimbreError as exc:
                        p["status"], p["error"] = "refused", _error_dict(exc)
                    except Exception as exc:
                        log.exception("submit failed unexpectedly")
                        p["status"] = "refused"
                        p["error"] = _error_dict(InternalError(f"{type(exc).__name__}: {exc}"))
                    else:
                        p["status"], p["job_id"] = "submitted", job_id
                    if transient is None and not any(q["status"] == "pending"
                                                     for q in record.prompts):
                        record.state = "waiting"  # the last submit: one commit for both
                    await self._save(record)
                if transient is not None:
                    log.info("%s: prompt %d not accepted yet (%s); retrying in %.1f s",
                             record.name, p["request"]["index"], transient, delay)
                    await anyio.sleep(delay)
                    delay = min(delay * 2, self.retry_max_s)

    async def _wait_job(self, job_id: str) -> dict[str, Any]:
        while True:
            try:
                job = await self._wait(job_id)
            except TimbreError as exc:
                return {"state": "failed", "outputs": [], "error": _error_dict(exc)}
            if job.get("state") in _TERMINAL_JOB_STATES:
                return job
            await anyio.sleep(1.0)

    @staticmethod
    def _settle(p: dict[str, Any], job: Mapping[str, Any]) -> None:
        if job.get("state") == "done":
            p["status"], p["outputs"] = "done", list(job.get("outputs") or [])
            return
        p["status"] = "failed"
        error = job.get("error")
        if isinstance(error, Mapping):
            p["error"] = {"kind": error.get("kind", "failed"),
                          "message": error.get("message", str(error))}
        else:
            p["error"] = {"kind": str(job.get("state")), "message": f"the job ended "
                          f"{job.get('state')}"}

    async def _refused(self, record: FileRecord) -> None:
        """Every prompt was refused at submit: the file goes to rejected/ with the reasons."""
        reason = self._problems(record) or "refused"
        folder = Path(record.folder)

        def move() -> None:
            if record.location is not None:
                src = folder / record.location
                try:
                    dst = files.move_into(src, folder / REJECTED_DIR, record.name, ERROR_SUFFIX)
                except OSError as exc:
                    log.warning("cannot move %s into %s/: %s", src, REJECTED_DIR, exc)
                    return
                record.location = str(dst.relative_to(folder))
                _write_text(dst.with_name(dst.name + ERROR_SUFFIX),
                            (self._problems(record, "\n") or reason) + "\n")

        record.state, record.outcome, record.finished_at = "finished", "rejected", time.time()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(move)
            await self._save(record)
        self._unreserve(record.prompts)
        live = self._folders.get(folder)
        if live is not None:
            live.rejected += 1
        with anyio.CancelScope(shield=True):
            await self._count(folder, rejected=1)
        self._publish("watch.file", self._event(record, "rejected", reason))

    async def _count(self, folder: Path, *, taken: int = 0, rejected: int = 0) -> None:
        """Persist a counter step; losing one is harmless, so a store error is only logged."""
        store = self._store
        if store is None:
            return
        try:
            await anyio.to_thread.run_sync(
                lambda: store.count(str(folder), taken=taken, rejected=rejected))
        except StoreError as exc:
            log.warning("watch counters of %s not saved: %s", folder, exc)

    async def _abandon(self, record: FileRecord) -> None:
        reason = "the file disappeared after it was claimed and before anything was submitted; " \
                 "nothing was submitted"
        for p in record.prompts:
            p["status"], p["error"] = "refused", {"kind": "abandoned", "message": reason}
        record.state, record.outcome, record.finished_at = "finished", "abandoned", time.time()
        await self._save(record)
        self._unreserve(record.prompts)
        self._publish("watch.file", self._event(record, "failed", reason))

    async def _reject(self, folder: _Folder, path: Path, st: os.stat_result,
                      reason: str) -> None:
        """An invalid file: into rejected/ with ``<name>.error.txt`` holding the reason."""

        def move() -> None:
            try:
                if files.identity(os.lstat(path)) != files.identity(st):
                    return  # replaced meanwhile: the new file gets its own turn
            except FileNotFoundError:
                return
            dst = files.move_into(path, folder.path / REJECTED_DIR, path.name, ERROR_SUFFIX)
            _write_text(dst.with_name(dst.name + ERROR_SUFFIX), reason + "\n")

        try:
            await anyio.to_thread.run_sync(move)
        except OSError as exc:
            log.warning("cannot move %s into %s/: %s", path, REJECTED_DIR, exc)
        folder.rejected += 1
        await self._count(folder.path, rejected=1)
        log.info("watch folder %s: rejected %s: %s", folder.path, path.name, reason)
        self._publish("watch.file", {"folder": str(folder.path), "file": path.name,
                                     "status": "rejected", "jobs": [], "reason": reason})

    # --- results -----------------------------------------------------------------------------

    def _write_result(self, record: FileRecord, durable: bool = True) -> None:
        if record.location is None:
            return
        target = Path(record.folder) / record.location
        result = {
            "file": record.name,
            "folder": record.folder,
            "taken_as": str(target),
            "sha256": record.sha256,
            "size": record.size,
            "state": record.outcome or "submitted",
            "taken_at": record.created_at,
            "finished_at": record.finished_at,
            "prompts": [{
                "index": p["request"]["index"],
                "prompt": p["request"]["params"]["prompt"],
                "status": p["status"],
                "job_id": p["job_id"],
                "output": p["output"],
                "outputs": p["outputs"],
                "export": p["request"]["export"],
                "preset": p["request"]["preset"],
                "error": p["error"],
            } for p in record.prompts],
        }
        try:
            _write_text(target.with_name(target.name + RESULT_SUFFIX),
                        json.dumps(result, indent=2, ensure_ascii=False) + "\n",
                        durable=durable)
        except OSError as exc:
            log.warning("cannot write the result file of %s: %s", target, exc)

    @staticmethod
    def _problems(record: FileRecord, sep: str = "; ") -> str | None:
        lines = [f"prompt {p['request']['index']}: {p['error']['message']}"
                 for p in record.prompts if p.get("error")]
        return sep.join(lines) or None

    @staticmethod
    def _event(record: FileRecord, status: str, reason: str | None) -> dict[str, Any]:
        return {"folder": record.folder, "file": record.name, "status": status,
                "jobs": record.job_ids, "reason": reason}


def _normalise(path: str | os.PathLike[str]) -> Path:
    raw = os.fspath(path)
    if not Path(raw).is_absolute():
        raise WatchFolderError(raw, "is not an absolute path (clients resolve relative ones)")
    return Path(os.path.normpath(raw))


def _make_parent(path: Path) -> None:
    path.parent.mkdir(exist_ok=True)


def _take_paths(prompt: Mapping[str, Any]) -> list[str]:
    """The files a prompt's job will write (variations add -1, -2 ...)."""
    count = int(prompt["request"]["params"].get("variations", 1))
    return [str(p) for p in explicit_paths(Path(prompt["output"]), count)]


def _error_dict(exc: TimbreError) -> dict[str, Any]:
    return {"kind": exc.kind, "message": exc.message}
