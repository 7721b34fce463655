"""Driving a real studio in-process: pipe input, a sized dummy output, a fake clock, and the
screen as text (rendered from the live layout at any size)."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from prompt_toolkit.application import Application
from prompt_toolkit.application.current import create_app_session, set_app
from prompt_toolkit.data_structures import Size
from prompt_toolkit.input import PipeInput, create_pipe_input
from prompt_toolkit.layout.mouse_handlers import MouseHandlers
from prompt_toolkit.layout.screen import Screen, WritePosition
from prompt_toolkit.output import DummyOutput

from tests.tui.factories import job
from timbre_tui.app import Studio
from timbre_tui.playback import NullBackend
from timbred.errors import MethodNotFound, TimbreError
from timbred.protocol.schema import check, openrpc, params_specs, rooted

#: Daemon settings: windowed generation with a 2 s window keeps the tiny model's takes quick.
WINDOW: dict[str, Any] = {"models__window_s": 2.0, "models__stride_s": 1.0}

#: What a terminal sends for the keys the tests press.
KEYS = {
    "enter": "\r", "tab": "\t", "escape": "\x1b", "up": "\x1b[A", "down": "\x1b[B",
    "right": "\x1b[C", "left": "\x1b[D", "alt-enter": "\x1b\r", "alt-up": "\x1b\x1b[A",
    "alt-down": "\x1b\x1b[B", "c-p": "\x10", "c-z": "\x1a", "c-y": "\x19", "c-q": "\x11",
    "c-c": "\x03", "c-j": "\n", "f1": "\x1bOP", "f2": "\x1bOQ", "f3": "\x1bOR", "f4": "\x1bOS",
    "f5": "\x1b[15~", "f6": "\x1b[17~", "f7": "\x1b[18~", "f8": "\x1b[19~",
    "f9": "\x1b[20~", "f10": "\x1b[21~", "f12": "\x1b[24~",
}


class SizedOutput(DummyOutput):
    """A dummy output that reports a terminal size (the layout collapses by it)."""

    def __init__(self, columns: int, rows: int) -> None:
        self.size = Size(rows=rows, columns=columns)

    def get_size(self) -> Size:
        return self.size


class FakeClock:
    """A clock the null audio backend reads; tests move it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def render(app: Application[int], columns: int, rows: int) -> str:
    """The layout drawn at ``columns`` x ``rows``, as text (trailing spaces stripped)."""
    screen = Screen()
    with set_app(app):
        app.layout.container.write_to_screen(
            screen, MouseHandlers(), WritePosition(0, 0, columns, rows), parent_style="",
            erase_bg=False, z_index=None)
        screen.draw_all_floats()
    lines = []
    for y in range(rows):
        row = screen.data_buffer[y]
        lines.append("".join(row[x].char for x in range(columns)).rstrip())
    return "\n".join(lines)


@dataclass
class Harness:
    studio: Studio
    pipe: PipeInput
    clock: FakeClock
    output: SizedOutput

    def type(self, text: str) -> None:
        self.pipe.send_text(text)

    def press(self, *keys: str) -> None:
        for key in keys:
            self.pipe.send_text(KEYS[key])

    def screen(self) -> str:
        size = self.output.size
        return render(self.studio.app, size.columns, size.rows)

    @property
    def message(self) -> str:
        msg = self.studio.state.current_message()
        return msg.text if msg else ""

    async def until(self, predicate: Callable[[], object], what: str,
                    timeout: float = 30.0) -> None:
        """Wait until ``predicate()`` holds, re-checking whenever the studio asks for a redraw
        (every change to what it shows does); fail with the screen."""
        app = self.studio.app
        changed = anyio.Event()

        def on_invalidate(_: object) -> None:
            changed.set()

        app.on_invalidate += on_invalidate
        try:
            with anyio.fail_after(timeout):
                while not predicate():
                    with anyio.move_on_after(0.25):  # a safety net, not the mechanism
                        await changed.wait()
                    changed = anyio.Event()
        except TimeoutError:
            log = "\n".join(f"  {m.level}: {m.text}" for m in self.studio.state.message_log)
            raise AssertionError(f"timed out waiting for {what}; the screen:\n"
                                 f"{self.screen()}\nmessages:\n{log}") from None
        finally:
            app.on_invalidate -= on_invalidate


@asynccontextmanager
async def running_studio(socket_path: Path, *, columns: int = 120, rows: int = 40,
                         preview: bool = True) -> AsyncIterator[Harness]:
    """A studio attached to ``socket_path`` with pipe input and a silent, fake-clock player
    (``preview``: ask for and play live previews, as ``[preview] enabled`` does)."""
    clock = FakeClock()
    output = SizedOutput(columns, rows)
    with create_pipe_input() as pipe:
        studio = Studio(socket_path, backend=NullBackend("no audio device (test)", clock=clock),
                        preview=preview, retry_interval=0.1, input=pipe, output=output)
        harness = Harness(studio, pipe, clock, output)
        async with anyio.create_task_group() as tg:
            # Its own app session: get_app() inside this studio's task means this studio
            # even when several run on one loop.
            with create_app_session(input=pipe, output=output):
                tg.start_soon(partial(studio.run, handle_signals=False))
            await harness.until(lambda: studio.app.is_running, "the application to run")
            try:
                yield harness
            finally:
                studio.quit()


def check_result(method: str, result: Any) -> None:
    """Fail unless ``result`` is what schemas/openrpc.json says ``method`` answers (so a
    fake's answers cannot drift from the daemon's contract)."""
    (spec,) = (m for m in openrpc()["methods"] if m["name"] == method)
    check(f"{method} result", rooted(spec["result"]["schema"]), result)


class RecordingDaemon:
    """Stands in for :meth:`DaemonLink.call` (and ``batch``): each request is checked
    against the daemon's own params check (schemas/openrpc.json) and kept in ``calls``;
    ``generate.submit``'s are kept in ``sent`` too and answered with a queued job as timbred
    answers, or refused with ``refuse`` (an error as the client raises it).

    ``answers`` are other methods' results (``models.list``), each checked against the
    method's result schema first; ``handlers`` answer from the params (their results checked
    as they are made, their errors raised as the client raises them). Any other method fails
    the test, or with ``older`` is refused with MethodNotFound, as a daemon that predates it
    refuses it."""

    def __init__(self, answers: Mapping[str, Any] | None = None, *,
                 refuse: TimbreError | None = None,
                 handlers: Mapping[str, Callable[[dict[str, Any]], Any]] | None = None,
                 older: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.answers = dict(answers or {})
        for method, result in self.answers.items():
            check_result(method, result)
        self.handlers = dict(handlers or {})
        self.refuse = refuse
        self.older = older
        self.specs = params_specs()

    def asked(self, method: str) -> list[dict[str, Any]]:
        """The params of each call of ``method``, in order."""
        return [params for name, params in self.calls if name == method]

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        sent = dict(params or {})
        if method in self.specs:
            self.specs[method].normalise(dict(sent))
        self.calls.append((method, sent))
        if method in self.answers:
            return copy.deepcopy(self.answers[method])
        if method in self.handlers:
            result = self.handlers[method](sent)
            check_result(method, result)
            return result
        if method != "generate.submit":
            if self.older:
                raise MethodNotFound(f"no method {method!r}")
            raise AssertionError(f"the test expected only generate.submit, not {method}")
        self.sent.append(sent)
        if self.refuse is not None:
            raise self.refuse
        job_id = f"j-sent-{len(self.sent)}"
        return {"job_id": job_id, "job": job(job_id, "queued", sent["prompt"],
                                             created_at=1_900_000_000.0 + len(self.sent))}

    async def batch(self, calls: list[tuple[str, Mapping[str, Any] | None]]) -> list[Any]:
        """Each call in turn, an error in its place as the client's batch gives it."""
        out: list[Any] = []
        for method, params in calls:
            try:
                out.append(await self.call(method, params))
            except TimbreError as exc:
                out.append(exc)
        return out
