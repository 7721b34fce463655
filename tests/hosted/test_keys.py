"""Hosted providers' keys: the environment wins, then a client's, then the OS keyring; a
missing or failing keyring is no key at all for lookups and a clear error for storing; a key
never appears in a message or a log record.

The keyring is keyring's own API over real backends: the test fixture's file backend
(:mod:`timbred.testing.file_keyring`), keyring's ``fail`` backend (what keyring uses when no
OS keyring is installed, as in this container), and a locked one. The real keyring of whoever
runs the tests is never touched.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import keyring
import keyring.backend
import pytest
from keyring.compat import properties
from keyring.core import load_keyring
from keyring.errors import KeyringLocked

from timbred.errors import ConfigError, InvalidParams, family_of, wire_errors
from timbred.hosted import keys
from timbred.hosted.names import KEYRING_SERVICE, PROVIDERS
from timbred.testing.file_keyring import ENV_VAR, FileKeyring

KEY = "r8_TestKey0123456789abcdefABCDEF"
NO_ENV: dict[str, str] = {}


@pytest.fixture
def backend() -> Iterator[None]:
    """Whatever keyring backend a test sets is replaced by the one before it afterwards."""
    previous = keyring.get_keyring()
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def file_ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
              backend: None) -> Path:
    """The file keyring (keyring's API, a JSON file) as the active backend; its file."""
    path = tmp_path / "keyring.json"
    monkeypatch.setenv(ENV_VAR, str(path))
    keyring.set_keyring(FileKeyring())
    return path


class LockedKeyring(keyring.backend.KeyringBackend):
    """A keyring that is there but will not open (the Secret Service, locked); its errors
    quote what they were given, as a careless backend might."""

    @properties.classproperty
    def priority(cls) -> float:
        raise RuntimeError("only for these tests")  # never picked by keyring itself

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def get_password(self, service: str, username: str) -> str | None:
        raise KeyringLocked("Failed to unlock the collection!")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise KeyringLocked(f"Failed to unlock the collection to store {password}")

    def delete_password(self, service: str, username: str) -> None:
        raise KeyringLocked("Failed to unlock the collection!")


class TestLookup:
    def test_the_environment_wins_over_a_client_and_the_keyring(self, file_ring: Path) -> None:
        """$REPLICATE_API_TOKEN is used even when the keyring and a client hold other keys."""
        keys.store("replicate", "r8_fromKeyring")
        env = {"REPLICATE_API_TOKEN": " r8_fromEnv\n"}
        assert keys.lookup("replicate", environ=env, client={"replicate": "r8_fromClient"}) \
            == ("r8_fromEnv", "env")
        assert keys.source("replicate", environ=env) == "env"

    def test_a_clients_key_comes_before_the_keyring(self, file_ring: Path) -> None:
        keys.store("replicate", "r8_fromKeyring")
        assert keys.lookup("replicate", environ=NO_ENV, client={"replicate": "r8_fromClient"}) \
            == ("r8_fromClient", "client")

    def test_the_keyring_is_read_last(self, file_ring: Path) -> None:
        keys.store("stability", "sk-fromKeyring")
        assert keys.lookup("stability", environ=NO_ENV,
                           client={"replicate": "r8_other"}) == ("sk-fromKeyring", "keyring")

    def test_none_anywhere_is_none(self, file_ring: Path) -> None:
        """A blank variable or client key counts as none."""
        assert keys.lookup("elevenlabs", environ={"ELEVENLABS_API_KEY": "  "},
                           client={"elevenlabs": ""}) is None
        assert keys.source("elevenlabs", environ=NO_ENV) is None

    def test_the_default_environment_is_the_process(self, file_ring: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("STABILITY_API_KEY", "sk-process")
        assert keys.lookup("stability") == ("sk-process", "env")

    def test_sources_is_auth_status_shape(self, file_ring: Path) -> None:
        """Each provider, its variable and where its key is found (never the key)."""
        keys.store("replicate", KEY)
        rows = keys.sources(environ={"ELEVENLABS_API_KEY": "xi-1"})
        assert rows == [
            {"provider": "replicate", "env_var": "REPLICATE_API_TOKEN", "key": "keyring"},
            {"provider": "stability", "env_var": "STABILITY_API_KEY", "key": None},
            {"provider": "elevenlabs", "env_var": "ELEVENLABS_API_KEY", "key": "env"},
        ]
        assert KEY not in json.dumps(rows)

    def test_an_unknown_provider_names_the_known_ones(self) -> None:
        with pytest.raises(InvalidParams) as err:
            keys.lookup("suno", environ=NO_ENV)
        assert err.value.data["param"] == "provider"
        assert all(name in str(err.value) for name in PROVIDERS)


class TestStore:
    def test_store_replace_and_remove(self, file_ring: Path) -> None:
        """The key goes into the keyring under service ``timbre``, user = the provider."""
        assert keys.store("replicate", f"  {KEY}\n") == \
            "timbred.testing.file_keyring.FileKeyring"
        assert keyring.get_password(KEYRING_SERVICE, "replicate") == KEY
        keys.store("replicate", "r8_second")
        assert keys.lookup("replicate", environ=NO_ENV) == ("r8_second", "keyring")
        assert keys.remove("replicate") is True
        assert keys.remove("replicate") is False
        assert keys.lookup("replicate", environ=NO_ENV) is None

    def test_the_test_keyring_file_is_private(self, file_ring: Path) -> None:
        keys.store("replicate", KEY)
        assert stat.S_IMODE(file_ring.stat().st_mode) == 0o600

    @pytest.mark.parametrize(("key", "words"), [
        ("", "empty"),
        ("   \n", "empty"),
        ("r8_abc def", "space"),
        ("r8_abc\tdef", "space"),
        ("r8_abc\x00def", "control"),
        ("r8_abc\x1bdef", "control"),
        ("r8_abc\u2028def", "space"),
        ("r" * 513, "513 characters"),
    ], ids=["empty", "blank", "space", "tab", "nul", "escape", "line-separator", "long"])
    def test_a_key_that_cannot_be_one_is_refused_without_quoting_it(
            self, file_ring: Path, key: str, words: str) -> None:
        with pytest.raises(InvalidParams) as err:
            keys.store("replicate", key)
        assert err.value.data["param"] == "key"
        assert words in str(err.value)
        if key.strip():
            assert "r8_abc" not in str(err.value) and "rrrr" not in str(err.value)
        assert not file_ring.exists()

    def test_the_longest_key_is_kept(self, file_ring: Path) -> None:
        keys.store("replicate", "k" * keys.MAX_KEY_CHARS)
        assert keys.lookup("replicate", environ=NO_ENV) == ("k" * 512, "keyring")

    def test_an_unknown_provider_is_refused(self, file_ring: Path) -> None:
        with pytest.raises(InvalidParams, match="known: replicate, stability, elevenlabs"):
            keys.store("suno", KEY)
        with pytest.raises(InvalidParams):
            keys.remove("suno")


class TestNoKeyring:
    """keyring's ``fail`` backend, what it falls back to when no OS keyring is installed."""

    @pytest.fixture
    def failing(self, backend: None) -> None:
        keyring.set_keyring(load_keyring("keyring.backends.fail.Keyring"))

    def test_lookups_find_no_key_and_log_once_without_it(
            self, failing: None, caplog: pytest.LogCaptureFixture) -> None:
        keys._logged.clear()
        with caplog.at_level(logging.DEBUG, logger="timbred.hosted.keys"):
            assert keys.lookup("replicate", environ=NO_ENV) is None
            assert keys.lookup("stability", environ=NO_ENV) is None
        records = [r for r in caplog.records if r.name == "timbred.hosted.keys"]
        assert len(records) == 1 and records[0].levelno == logging.DEBUG
        assert "NoKeyringError" in records[0].getMessage()

    def test_the_environment_still_works(self, failing: None) -> None:
        assert keys.lookup("replicate", environ={"REPLICATE_API_TOKEN": KEY}) == (KEY, "env")

    def test_storing_says_the_way_forward_first(self, failing: None) -> None:
        """Set the variable instead, or install a backend; the backend in use is named."""
        with pytest.raises(keys.KeyringUnavailable) as err:
            keys.store("replicate", KEY)
        message = str(err.value)
        assert message.startswith("set $REPLICATE_API_TOKEN in timbred's environment instead")
        assert "keyrings.alt" in message and "gnome-keyring" in message
        assert message.endswith("(keyring: keyring.backends.fail.Keyring)")
        assert KEY not in message and KEY not in json.dumps(err.value.data)
        assert err.value.data["kind"] == "keyring_unavailable"
        assert not keys.keyring_available()

    def test_the_null_keyring_is_no_keyring_either(self, backend: None) -> None:
        """keyring's ``null`` backend would forget the key silently: refused the same way."""
        keyring.set_keyring(load_keyring("keyring.backends.null.Keyring"))
        with pytest.raises(keys.KeyringUnavailable, match=r"keyring\.backends\.null\.Keyring"):
            keys.store("stability", KEY)

    def test_removing_from_no_keyring_removes_nothing(self, failing: None) -> None:
        assert keys.remove("replicate") is False

    def test_it_is_a_local_configuration_error_never_sent(self) -> None:
        """timbrectl exits 5 (bad local set-up); the daemon never sends it."""
        assert issubclass(keys.KeyringUnavailable, ConfigError)
        assert family_of(keys.KeyringUnavailable) is family_of(ConfigError)
        assert keys.KeyringUnavailable not in wire_errors().values()


class TestLockedKeyring:
    @pytest.fixture
    def locked(self, backend: None) -> None:
        keyring.set_keyring(LockedKeyring())

    def test_a_locked_keyring_holds_no_key(self, locked: None) -> None:
        assert keys.lookup("replicate", environ=NO_ENV) is None
        assert keys.lookup("replicate", environ=NO_ENV, client={"replicate": "r8_c"}) == \
            ("r8_c", "client")

    def test_storing_into_it_says_unlock_and_never_quotes_the_key(self, locked: None) -> None:
        with pytest.raises(keys.KeyringUnavailable) as err:
            keys.store("replicate", KEY)
        message = str(err.value)
        assert message.startswith("unlock the OS keyring and try again, or set "
                                  "$REPLICATE_API_TOKEN")
        assert "Failed to unlock the collection" in message
        assert KEY not in message and KEY not in json.dumps(err.value.data)
        assert err.value.__cause__ is None and err.value.__suppress_context__

    def test_removing_from_it_says_so(self, locked: None) -> None:
        with pytest.raises(keys.KeyringUnavailable, match=r"^unlock the OS keyring"):
            keys.remove("replicate")


class TestClientCredentials:
    ENV: ClassVar[dict[str, str]] = {"REPLICATE_API_TOKEN": "r8_client", "STABILITY_API_KEY": ""}

    @pytest.mark.parametrize(("model", "expected"), [
        ("replicate:meta/musicgen", {"replicate": "r8_client"}),
        ("replicate:meta/musicgen:0123abcd", {"replicate": "r8_client"}),
        ("stability:stable-audio-2.5", {}),  # its variable is empty
        ("elevenlabs:music", {}),  # not set
        ("musicgen-small", {}),
        ("/models/local:thing", {}),
        ("replicate", {}),
        (None, {}),
    ])
    def test_only_a_hosted_models_own_provider_key_from_the_environment(
            self, model: str | None, expected: dict[str, str]) -> None:
        assert keys.client_credentials(model, environ=self.ENV) == expected


class TestFileKeyring:
    def test_not_viable_unless_a_test_names_its_file(self,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """keyring never picks the plaintext test backend on its own."""
        monkeypatch.delenv(ENV_VAR, raising=False)
        assert not FileKeyring.viable
        monkeypatch.setenv(ENV_VAR, "/nonexistent/keyring.json")
        assert FileKeyring.viable and FileKeyring.priority < 1

    def test_selected_through_keyrings_own_loading(self, tmp_path: Path) -> None:
        """PYTHON_KEYRING_BACKEND names it, as a user names any backend: a key stored in one
        process is found in the next, and the file is the keyring's."""
        ring = tmp_path / "keyring.json"
        env = {k: v for k, v in os.environ.items()
               if k not in {p.env_var for p in PROVIDERS.values()}}
        env.update(PYTHON_KEYRING_BACKEND="timbred.testing.file_keyring.FileKeyring",
                   **{ENV_VAR: str(ring)},
                   PYTHONPATH=os.pathsep.join(p for p in sys.path if p))

        def child(code: str) -> str:
            return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                  capture_output=True, text=True, timeout=60).stdout.strip()

        assert child("from timbred.hosted import keys; print(keys.store('replicate', "
                     f"{KEY!r}))") == "timbred.testing.file_keyring.FileKeyring"
        assert json.loads(ring.read_text()) == {"timbre": {"replicate": KEY}}
        assert child("import keyring; from timbred.hosted import keys; "
                     "print(type(keyring.get_keyring()).__name__, "
                     "keys.source('replicate'))") == "FileKeyring keyring"
