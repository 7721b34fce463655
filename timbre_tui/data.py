"""Everything the studio asks the daemon, in one place.

:class:`DaemonLink` follows the daemon's events with :func:`timbrectl.client.follow_events`
(which reconnects and replays by ``seq``), reloads the state by RPC when it (re)connects having
missed events (status and jobs, then families, models and presets), hands every event to
``on_event`` too (the live preview's feed), and keeps one connection open for requests. What a
job record does not say of its takes (the measured tempo and key) it asks the history for
(``takes.show``), once per take, as jobs are loaded or finish.
:func:`describe_error` is the one translation of errors into the line the user reads. Library
queries go to the daemon's history (``history.search``, in :meth:`DaemonLink.library`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.abc

from timbre_tui.state import Cost, Preset, StudioState, Take, hosted_provider
from timbrectl.client import Client, connect, follow_events
from timbrectl.query import BadQuery, parse_query
from timbred.errors import DaemonUnavailable, InvalidParams, MethodNotFound, TimbreError

EVENT_TYPES = ("job.*", "model.*", "daemon.stopping", "worker.*")
JOBS_LOADED = 200
START_HINT = "start it with `timbrectl daemon start`"


class FeatureMissing(Exception):
    """Raised when the daemon lacks a method a command needs (a feature not released yet)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def describe_error(exc: BaseException) -> str:
    """One line a user can act on, for any error a request can end with (never a traceback)."""
    if isinstance(exc, DaemonUnavailable):
        return f"not connected to timbred ({exc.data.get('reason', exc)}); {START_HINT}"
    if isinstance(exc, InvalidParams):
        return f"refused: {exc.message}"
    if isinstance(exc, MethodNotFound):
        return f"this timbred does not offer that ({exc.message}); is it older than the studio?"
    if isinstance(exc, TimbreError | FeatureMissing):
        return exc.message
    if isinstance(exc, TimeoutError):
        return "timbred did not answer in time"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    if isinstance(exc, ValueError):
        return str(exc)
    return f"unexpected {type(exc).__name__}: {exc}"


class DaemonLink:
    """The studio's connection to timbred: events in, requests out, state kept current."""

    def __init__(self, state: StudioState, socket_path: Path, on_change: Callable[[], None], *,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 retry_interval: float = 0.5, timeout: float = 15.0) -> None:
        self.state = state
        self.socket_path = socket_path
        self._on_change = on_change
        self._on_event = on_event
        self._retry_interval = retry_interval
        self._timeout = timeout
        self._tg: anyio.abc.TaskGroup | None = None
        self._rpc: Client | None = None
        self._rpc_lock = anyio.Lock()

    # --- the event loop -------------------------------------------------------------------

    async def run(self) -> None:
        """Follow events until cancelled, reconnecting for ever."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            try:
                await self._follow()
            finally:
                self._tg = None
                tg.cancel_scope.cancel()

    async def _follow(self) -> None:
        # follow_events is an async generator (typed as an iterator): close it in this task.
        events = cast(AsyncGenerator[dict[str, Any], None], follow_events(
            self.socket_path, EVENT_TYPES, retry_interval=self._retry_interval))
        async with contextlib.aclosing(events) as stream:
            async for item in stream:
                await self.handle(item)

    async def handle(self, item: dict[str, Any]) -> None:
        """Take one item of the event stream: a connection change or a daemon event."""
        if item["method"] == "connection":
            await self._on_connection(item)
        elif item["method"] == "event":
            if self.state.apply_event(item) and item["type"].startswith("model.") \
                    and self._tg is not None:
                self._tg.start_soon(self._refresh_status)
            if item["type"] == "job.state":
                self.look_up_takes()  # a job done: its takes' tempo and key
            if self._on_event is not None:
                self._on_event(item)  # after the state has it (the preview reads it)
        self._on_change()

    async def _on_connection(self, item: dict[str, Any]) -> None:
        state = self.state
        if item["state"] == "connected":
            first = not state.ever_connected
            state.connection = "connected"
            state.connection_note = ""
            state.ever_connected = True
            if first or item["missed"]:
                await self.reload()
            else:
                await self._refresh_status()
                self.look_up_takes()  # those a lost connection cut short
            if not first:
                state.say("reconnected to timbred" +
                          (" (state reloaded)" if item["missed"] else ""))
            return
        if state.connection == "connected":
            state.say(f"lost the connection to timbred; retrying ({START_HINT} if it "
                      "does not come back)", "error", seconds=8)
        state.connection = "disconnected"
        state.connection_note = f"no timbred at {self.socket_path}; {START_HINT}"

    async def reload(self) -> None:
        """Replace the daemon's part of the state with fresh answers (after missing events)."""
        try:
            status, page = await self.batch([("daemon.status", None),
                                             ("jobs.list", {"limit": JOBS_LOADED})])
        except (TimbreError, TimeoutError) as exc:
            self.state.say(f"could not load the daemon's state: {describe_error(exc)}", "error")
            return
        if isinstance(status, dict):
            self.state.set_status(status)
        if isinstance(page, dict):
            self.state.load_jobs(page["jobs"])
        self._on_change()
        if self._tg is not None:
            self._tg.start_soon(self._refresh_backends)
            self._tg.start_soon(self._refresh_models)
            self._tg.start_soon(self._refresh_presets_quietly)
        self.look_up_takes()

    def look_up_takes(self) -> None:
        """Ask the history (``takes.show``) about the done takes not asked about yet, in the
        background: their lines gain the tempo and key as the answers come."""
        if self._tg is None:
            return
        paths = self.state.claim_take_lookups()
        if paths:
            self._tg.start_soon(self._look_up, paths)

    async def _look_up(self, paths: list[str]) -> None:
        """One ``takes.show`` at a time (a reload can bring hundreds of takes, more than a
        batch may hold). Nothing is said of a failure: the line then shows what the job
        record says, as before the history measured anything."""
        for i, path in enumerate(paths):
            try:
                record = await self.call("takes.show", {"take": path})
            except MethodNotFound:
                return  # a daemon older than the history: none of them will be found
            except DaemonUnavailable:
                self.state.unclaim_take_lookups(paths[i:])  # asked again on reconnecting
                return
            except (TimbreError, TimeoutError):
                continue  # deleted since, or never recorded
            if isinstance(record, Mapping) and self.state.learn_take(path, record):
                self._on_change()

    async def _refresh_status(self) -> None:
        with contextlib.suppress(TimbreError, TimeoutError):
            self.state.set_status(await self.call("daemon.status"))
            self._on_change()

    async def _refresh_models(self) -> None:
        with contextlib.suppress(TimbreError, TimeoutError):
            listing = await self.call("models.list")
            # A daemon older than the hosted providers lists none.
            self.state.set_models(listing["installed"], listing["catalogue"],
                                  listing.get("hosted") or ())
            self._on_change()

    async def _refresh_backends(self) -> None:
        """Learn the daemon's model families, whose schemas draw the parameter panel."""
        with contextlib.suppress(TimbreError, TimeoutError):
            try:
                listing = await self.call("backends.list")
            except MethodNotFound:  # older than the registry: the panel keeps MusicGen's
                self.state.set_backends(None)
            else:
                self.state.set_backends(listing["backends"])
            self._on_change()

    async def _refresh_presets_quietly(self) -> None:
        with contextlib.suppress(TimbreError, TimeoutError):
            await self.refresh_presets()
        self._on_change()

    async def refresh_presets(self) -> None:
        """Load the daemon's presets (``presets.list``, then ``presets.show`` for each one
        that reads), replacing the ones known. A daemon without presets offers none."""
        try:
            listing = await self.call("presets.list")
        except MethodNotFound:
            self.state.presets = {}
            return
        entries = listing["presets"]
        usable = [e["name"] for e in entries if e.get("problem") is None]
        answers = await self.batch([("presets.show", {"name": n}) for n in usable]) \
            if usable else []
        shown = dict(zip(usable, answers, strict=True))
        presets: dict[str, Preset] = {}
        for e in entries:
            name, about, detail = e["name"], e.get("description") or "", shown.get(e["name"])
            if isinstance(detail, dict):
                presets[name] = Preset(name, about, dict(detail.get("params") or {}),
                                       export=dict(detail.get("export") or {}))
            else:  # broken on disk, or it broke between the two calls
                problem = e.get("problem") or (describe_error(detail) if isinstance(
                    detail, BaseException) else "the daemon did not describe it")
                presets[name] = Preset(name, about, problem=problem)
        self.state.presets = presets

    # --- requests -------------------------------------------------------------------------

    async def _client(self) -> Client:
        async with self._rpc_lock:
            if self._rpc is None or self._rpc.closed.is_set():
                if self._tg is None:
                    raise DaemonUnavailable(str(self.socket_path), "the studio is not running")
                self._rpc = await self._tg.start(self._hold)
            return self._rpc

    async def _hold(self, *, task_status: anyio.abc.TaskStatus[Client]) -> None:
        async with connect(self.socket_path, timeout=self._timeout) as client:
            task_status.started(client)
            await client.closed.wait()

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Call ``method``; raise TimbreError (DaemonUnavailable when not connected)."""
        client = await self._client()
        return await client.call(method, params, timeout=self._timeout)

    async def batch(self, calls: list[tuple[str, Mapping[str, Any] | None]]) -> list[Any]:
        client = await self._client()
        results = await client.batch(calls, timeout=self._timeout)
        for r in results:
            if isinstance(r, DaemonUnavailable):
                raise r
        return results

    async def call_feature(self, method: str, params: Mapping[str, Any], feature: str) -> Any:
        """Call a method that arrives with a later feature; FeatureMissing when absent."""
        try:
            return await self.call(method, params)
        except MethodNotFound:
            raise FeatureMissing(f"{feature} (this timbred has no {method} yet)") from None

    # --- library --------------------------------------------------------------------------

    async def library(self, query: str) -> tuple[list[Take], str]:
        """Past takes matching ``query`` (newest first) from the daemon's history, and a note.

        Words are prompt text; ``rating:up|down|unrated``, ``tag:NAME`` (the first tag on
        the daemon, any further ones here), ``bpm:120``, ``bpm:118-122`` and ``key:Am``
        filter, read as ``timbrectl history`` reads them (:mod:`timbrectl.query`). A filter
        word that does not parse is the note, and nothing is asked.
        """
        try:
            parsed = parse_query(query)
        except BadQuery as exc:
            return [], str(exc)
        page = await self.call("history.search", {"limit": JOBS_LOADED, **parsed.params})
        takes = [take_from_history(t) for t in page["takes"]]
        takes = [t for t in takes if all(tag in t.tags for tag in parsed.more_tags)]
        return takes, ""

def take_from_history(record: Mapping[str, Any]) -> Take:
    """A ``history.search`` take record as the studio's Take."""
    recipe = record.get("recipe") or {}
    made = recipe.get("params") or {}
    lyrics, backend = made.get("lyrics"), recipe.get("backend")
    model = str(recipe.get("model", ""))
    takes = made.get("variations")
    return Take(job_id=record["job_id"], index=record["take_index"], path=record["path"],
                duration_s=record["duration_s"], prompt=record["prompt"],
                seed=made.get("seed"), model=model,
                created_at=record["created_at"], loudness=record["loudness_after_lufs"],
                rating=record["rating"], tags=tuple(record["tags"]),
                lyrics=lyrics if isinstance(lyrics, str) and lyrics else None,
                backend=backend if isinstance(backend, str) else None,
                provider=hosted_provider(model, recipe), cost=Cost.from_record(recipe.get("cost")),
                job_takes=takes if isinstance(takes, int) and takes > 0 else 1,
                bpm=record.get("bpm"), musical_key=record.get("key"))
