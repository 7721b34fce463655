"""A keyring backend that keeps passwords in a JSON file: a test fixture, never for users.

The passwords are stored in plain text (the file is 0600, nothing more) in the file that
``$TIMBRE_TEST_KEYRING`` names; without that variable the backend is not viable, so keyring
never picks it on its own. Tests select it the way a user selects any backend, through
keyring's own loading::

    PYTHON_KEYRING_BACKEND=timbred.testing.file_keyring.FileKeyring
    TIMBRE_TEST_KEYRING=/tmp/.../keyring.json

(or ``keyring.set_keyring(FileKeyring())`` in-process), so the code under test goes through
keyring's API exactly as it does with the Secret Service, and never touches the real keyring.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.compat import properties
from keyring.errors import PasswordDeleteError

__all__ = ["ENV_VAR", "FileKeyring"]

#: The variable naming the JSON file.
ENV_VAR = "TIMBRE_TEST_KEYRING"


class FileKeyring(KeyringBackend):
    """Passwords in ``$TIMBRE_TEST_KEYRING`` as ``{service: {username: password}}``
    (plain text, mode 0600). A test fixture: never for users."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    @properties.classproperty
    def priority(cls) -> float:
        """Low, and only viable where a test set ``$TIMBRE_TEST_KEYRING``."""
        if not os.environ.get(ENV_VAR):
            raise RuntimeError(f"${ENV_VAR} is not set (a test fixture, never for users)")
        return 0.1

    @property
    def path(self) -> Path:
        return Path(os.environ[ENV_VAR])

    def _load(self) -> dict[str, dict[str, str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        return {str(s): {str(u): str(p) for u, p in users.items()}
                for s, users in data.items()}

    def _save(self, data: dict[str, dict[str, str]]) -> None:
        partial = self.path.with_name(self.path.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        partial.chmod(0o600)  # an older partial file may have had another mode
        partial.replace(self.path)

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(service, {}).get(username)

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data.setdefault(service, {})[username] = password
        self._save(data)

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if username not in data.get(service, {}):
            raise PasswordDeleteError(f"no password for {username!r} in {service!r}")
        del data[service][username]
        self._save(data)
