"""Live preview: hear the prompt this window just sent while it is still being generated.

The studio submits with ``"preview": true``; the daemon then writes the take as short WAV
chunks while it decodes and announces each with a ``job.preview`` event (``x-events`` in
``schemas/openrpc.json``; written by :mod:`timbred.queue.preview`). :class:`LivePreview` takes those
events and the submits' job ids in order, in one task, and feeds the first variation's chunks
to the player's stream (:meth:`~timbre_tui.playback.Player.open_stream`):

- the first chunk of the job just sent starts the preview, unless something else is playing
  (a musician listening to a take is not interrupted, and the preview is then skipped; a
  paused take gives way, as sending a prompt is a sign of having moved on);
- each further chunk extends it; one that cannot be read (removed, cut short) is reported in
  the message line and becomes silence, and the preview plays on;
- the job's last chunk, or its end whatever the reason (all ``job.preview`` events come before
  the job's final ``job.state``; after missed events, the reloaded state), finishes the
  stream, which then plays to its end and stops.

Why the preview is not swapped for the finished take: when the job ends every chunk is in,
so the preview can simply play on to its end without a seam; the take is loudness-normalised
and the preview is not, so switching mid-listen would jump in level. The finished take is
selected as usual (new takes take the selection), one key away.

Stopping the preview ends it for good (later chunks are not played); pausing keeps it filling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from timbre_tui.data import describe_error
from timbre_tui.playback import PlaybackError
from timbre_tui.state import ACTIVE_STATES

if TYPE_CHECKING:
    from timbre_tui.app import Studio

#: How many jobs' unclaimed chunks are held (a submit's answer may come after its first chunk).
PENDING_JOBS = 8


@dataclass(frozen=True)
class _Claim:
    """This window submitted ``job_id``: play its preview when its first chunk comes."""

    job_id: str


_Item = dict[str, Any] | _Claim


class LivePreview:
    """Feeds ``job.preview`` chunks of the job this window submitted to the studio's player."""

    def __init__(self, studio: Studio, *, enabled: bool = True) -> None:
        self.studio = studio
        #: Ask for previews when submitting (``[preview] enabled`` in tui.toml).
        self.enabled = enabled
        #: The job whose chunks feed the player's stream, if any.
        self.job_id: str | None = None
        #: Claims and events handled so far (what a test waits on before "nothing happened").
        self.handled = 0
        self._wanted: str | None = None
        self._ended_unseen: str | None = None
        # Chunks of jobs nobody has claimed yet: the submit's answer travels on another
        # connection than the events and may come after the first chunk.
        self._pending: dict[str, list[dict[str, Any]]] = {}
        self._send: MemoryObjectSendStream[_Item] | None = None  # while run() runs

    # --- called from the event loop's other tasks (never blocks) --------------------------

    def claim(self, job_id: str) -> None:
        """This window just submitted ``job_id`` (with preview)."""
        if self.enabled:
            self._put(_Claim(job_id))

    def on_event(self, event: dict[str, Any]) -> None:
        """Take a daemon event: chunks, and job ends (which finish a stream)."""
        if not self.enabled:
            return
        kind = event.get("type")
        if kind == "job.preview" or (
                kind == "job.state"
                and (event.get("data") or {}).get("job", {}).get("state") not in ACTIVE_STATES):
            self._put(event)

    def check(self) -> None:
        """Finish the stream of a job the state says has ended though no event said so (the
        daemon restarted, or events were missed: a reconnection reloads jobs, not events).
        Called by the studio's clock tick."""
        job = self.studio.state.jobs.get(self.job_id or "")
        if job is not None and job["state"] not in ACTIVE_STATES \
                and self._ended_unseen != job["id"]:
            self._ended_unseen = job["id"]
            self._put({"type": "job.state", "data": {"job": job}})

    def _put(self, item: _Item) -> None:
        if self._send is not None:
            self._send.send_nowait(item)

    # --- the feeding task -----------------------------------------------------------------

    async def run(self) -> None:
        """Handle claims and events in order until cancelled."""
        send, receive = anyio.create_memory_object_stream[_Item](math.inf)
        self._send = send
        try:
            with send, receive:
                async for item in receive:
                    await self._handle_one(item)
        finally:
            self._send = None

    async def _handle_one(self, item: _Item) -> None:
        try:
            await self._handle(item)
        except Exception as exc:  # a preview is a convenience: never the studio's end
            self.studio.say(f"live preview failed: {describe_error(exc)}", "error")
        self.handled += 1
        self.studio.invalidate()

    async def _handle(self, item: _Item) -> None:
        if isinstance(item, _Claim):
            self._wanted = item.job_id
            for chunk in self._pending.pop(item.job_id, []):
                await self._chunk(chunk)
            return
        data = item["data"]
        if item["type"] == "job.preview":
            await self._chunk(data)
            return
        job_id = data["job"]["id"]
        self._pending.pop(job_id, None)
        if job_id == self._wanted:
            self._wanted = None  # it ended before a chunk came (failed, cancelled)
        if job_id == self.job_id:
            await self._finish(job_id)

    async def _chunk(self, chunk: dict[str, Any]) -> None:
        job_id = chunk["job_id"]
        if job_id == self.job_id:
            await self._feed(chunk)
        elif job_id == self._wanted:
            self._wanted = None
            await self._start(chunk)
        else:
            held = self._pending.setdefault(job_id, [])
            held.append(chunk)
            while len(self._pending) > PENDING_JOBS:
                del self._pending[next(iter(self._pending))]

    async def _start(self, chunk: dict[str, Any]) -> None:
        player = self.studio.player
        if player.playing:
            return  # the musician is listening to something else
        job_id = chunk["job_id"]
        await player.open_stream((job_id, 1))
        self.job_id = job_id
        backend = player.backend
        how = "" if backend.audible else f" silently ({backend.note})"
        self.studio.say(f"playing the live preview of {job_id}{how}; it grows as it is made")
        await self._feed(chunk)

    async def _feed(self, chunk: dict[str, Any]) -> None:
        key = (chunk["job_id"], 1)  # the first variation's take, once it exists
        try:
            fed = await self.studio.player.append(key, chunk["paths"][0],
                                                  float(chunk["start_s"]))
        except PlaybackError as exc:
            self.studio.say(f"live preview: skipped chunk {chunk['index']} ({exc}); "
                            "playing on", "error")
            fed = True
        if not fed:
            self.job_id = None  # stopped, or another take is playing: the preview is over
        elif chunk["final"]:
            await self._finish(chunk["job_id"])

    async def _finish(self, job_id: str) -> None:
        await self.studio.player.finish_stream((job_id, 1))
        self.job_id = None
