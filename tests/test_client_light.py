"""Importing the client loads only the protocol core, the errors and the paths from timbred.

``timbrectl`` and the studio start on every keystroke of a shell session and inside other
programs; what they import from the daemon's package is an explicit allow-list here, so that a
new import of the daemon side (a store, the worker, torch through a backend) fails this test
instead of quietly slowing every client down. Each check runs in a fresh interpreter: this
test process has long since imported the whole daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

#: Everything a client may load from ``timbred``: the package itself, the error tree, the
#: socket path arithmetic, the sans-IO framing, the stdlib-only broken-pipe guard that all
#: three entry points wrap ``main`` in, and the hosted providers' names and key lookup
#: (``timbrectl auth``; keyring itself is imported only when a key is read or stored).
ALLOWED = frozenset({
    "timbred",
    "timbred.errors",
    "timbred.hosted",
    "timbred.hosted.keys",
    "timbred.hosted.names",
    "timbred.paths",
    "timbred.protocol",
    "timbred.protocol.framing",
    "timbred.stdio",
})

#: Never imported by a client: inference, audio, the stores, the daemon's request
#: validation (jsonschema is a third of timbrectl's start-up; ranged options read the schema
#: on first use instead), the hosted providers' HTTP client, and keyring (its backends load
#: D-Bus libraries; ``timbrectl auth`` imports it when it runs).
HEAVY = ("torch", "torchaudio", "transformers", "huggingface_hub", "audiocraft", "diffusers",
         "numpy", "soundfile", "sqlite3", "jsonschema", "jsonrpcserver", "httpx", "keyring")

_PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def _modules_after_importing(*names: str) -> set[str]:
    """``sys.modules`` of a fresh interpreter after importing ``names``, on this test's path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", _PROBE, *names], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    loaded: list[str] = json.loads(out)
    return set(loaded)


def _from_timbred(modules: set[str]) -> set[str]:
    return {m for m in modules if m == "timbred" or m.startswith("timbred.")}


def _top_level(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


@pytest.fixture(scope="module")
def cli_modules() -> set[str]:
    return _modules_after_importing("timbrectl.cli", "timbrectl.client")


@pytest.fixture(scope="module")
def studio_modules() -> set[str]:
    return _modules_after_importing("timbre_tui.app")


class TestTimbrectl:
    def test_only_protocol_errors_and_paths_come_from_timbred(self,
                                                              cli_modules: set[str]) -> None:
        """The CLI and the client library import nothing of the daemon beyond the allow-list."""
        extra = _from_timbred(cli_modules) - ALLOWED
        assert not extra, f"timbrectl now imports {sorted(extra)}"

    def test_nothing_heavy_is_imported(self, cli_modules: set[str]) -> None:
        """No inference, audio, store or schema-validation library is loaded by the client."""
        heavy = _top_level(cli_modules) & set(HEAVY)
        assert not heavy, f"timbrectl now imports {sorted(heavy)}"


#: The studio also reads the torch-free backend specs (MusicGen's parameters are its panel's
#: fallback until the daemon has answered backends.list; ACE-Step's track names complete
#: /extract and /add) and the request's defaults.
STUDIO_ALLOWED = ALLOWED | {"timbred.backends", "timbred.backends.spec",
                            "timbred.backends.files", "timbred.backends.musicgen",
                            "timbred.backends.ace_step", "timbred.request"}


class TestStudio:
    def test_only_protocol_errors_and_paths_come_from_timbred(self,
                                                              studio_modules: set[str]) -> None:
        """The studio reaches the daemon through timbrectl's client: the same allow-list,
        plus the backend specs (torch-free, declared as data)."""
        extra = _from_timbred(studio_modules) - STUDIO_ALLOWED
        assert not extra, f"the studio now imports {sorted(extra)}"

    def test_nothing_heavy_is_imported(self, studio_modules: set[str]) -> None:
        """The studio draws waveforms and plays takes (numpy, soundfile), but never loads
        inference, the daemon's stores or its request validation."""
        heavy = _top_level(studio_modules) & (set(HEAVY) - {"numpy", "soundfile"})
        assert not heavy, f"the studio now imports {sorted(heavy)}"
