"""Shared fixtures: a short private temp dir, an in-process daemon, raw socket connections."""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import RawConnection
from timbrectl.client import Client, connect
from timbred import presets
from timbred.daemon.app import Daemon
from timbred.testing.daemon import running_daemon
from timbred.testing.tiny_musicgen import build_tiny_musicgen

# No test may reach the real OS keyring of whoever runs the suite (an unlock dialog, or a
# real key read into a test): keyring's own "fail" backend, here and in every child process,
# unless a test chooses a backend itself (tests/hosted/test_keys.py: a file one).
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
for _provider_key in ("REPLICATE_API_TOKEN", "STABILITY_API_KEY", "ELEVENLABS_API_KEY"):
    os.environ.pop(_provider_key, None)  # a developer's own keys must not leak into tests


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pulse_backend() -> Iterator[None]:
    """The test-only ``pulse`` family (tests/backends/pulse.py) registered for one test."""
    from tests.backends import pulse
    from timbred.backends import registry

    registry.register(pulse.SPEC)
    yield
    registry.unregister(pulse.SPEC.name)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A private (0700) directory with a short path, for sockets (sun_path is ~100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="tb-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight MusicGen test fixture (noise, not music), built once a session."""
    return build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_demucs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random HTDemucs test fixture (separates nothing), built once a session."""
    from timbred.testing.tiny_demucs import build_tiny_htdemucs

    return build_tiny_htdemucs(tmp_path_factory.mktemp("demucs") / "tiny-htdemucs")


@pytest.fixture(scope="session")
def tiny_melody(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The melody variant of the tiny test fixture."""
    return build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny-melody", melody=True)


@pytest.fixture
async def daemon(short_tmp: Path) -> AsyncIterator[Daemon]:
    """A daemon with default limits, served in-process on a real socket."""
    async with running_daemon(short_tmp) as d:
        yield d


#: Settings that keep daemon tests quick with the tiny model: 2 s windows, fast watch checks.
FAST: dict[str, Any] = {"models__window_s": 2.0, "models__stride_s": 1.0,
                        "watch__stable_interval_s": 0.1, "watch__stable_checks": 2}


@pytest.fixture
async def gen(short_tmp: Path, tiny: Path) -> AsyncIterator[Daemon]:
    """A daemon whose default model is the tiny test fixture."""
    async with running_daemon(short_tmp, models__default=str(tiny), **FAST) as d:
        yield d


@pytest.fixture
async def client(gen: Daemon) -> AsyncIterator[Client]:
    """A client of ``gen`` subscribed to every event (tests filter what they wait for)."""
    async with connect(gen.socket_path) as c:
        await c.subscribe(["*"])
        yield c


@pytest.fixture
async def raw(daemon: Daemon) -> AsyncIterator[Callable[[], Awaitable[RawConnection]]]:
    """Open raw connections to ``daemon``; all are closed at teardown."""
    opened: list[RawConnection] = []

    async def open_() -> RawConnection:
        conn = await RawConnection.open(daemon.socket_path)
        opened.append(conn)
        return conn

    yield open_
    for conn in opened:
        await conn.aclose()


@pytest.fixture
def user_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The user presets directory (created, empty) that an in-process daemon reads.

    The daemon looks presets up in platformdirs' config dir, so that is pointed at a private
    one: the tests never see (or write) the real user's presets.
    """
    monkeypatch.setattr("platformdirs.user_config_dir",
                        lambda app: str(tmp_path / "config" / app))
    directory = presets.default_user_dir()
    directory.mkdir(parents=True)
    return directory
