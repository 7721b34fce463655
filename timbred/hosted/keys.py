"""Where a hosted provider's API key comes from: the environment, a client, or the OS keyring.

:func:`lookup` looks in that order: the provider's environment variable (``$REPLICATE_API_TOKEN``)
wins over everything, then a key a client sent with its request (``generate.submit``'s
``credentials``), then the OS keyring (service ``timbre``, the provider's name as the user),
where ``timbrectl auth set`` puts it. :func:`store` and :func:`remove` are ``timbrectl auth``'s.

Torch-free and httpx-free: ``timbrectl`` and the studio import this. ``keyring`` itself is
imported on first use, inside the functions, so a client that never reads a key never loads it.
Keyring calls block (a D-Bus round trip to the Secret Service): the daemon calls them from a
worker thread.

No function here puts a key into a message, a log record or an exception.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from timbred.errors import ConfigError, InvalidParams, TimbreError
from timbred.hosted.names import KEYRING_SERVICE, PROVIDERS, ProviderName, split

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["MAX_KEY_CHARS", "KeyringUnavailable", "Source", "backend_name", "check_key",
           "client_credentials", "keyring_available", "lookup", "remove", "source", "sources",
           "store"]

log = logging.getLogger(__name__)

Source = Literal["env", "client", "keyring"]

#: The longest key accepted (the providers' keys are 40 to 100 characters).
MAX_KEY_CHARS = 512

_INSTALL_ADVICE = ("install a keyring backend: gnome-keyring/KWallet, or "
                   "`pip install keyrings.alt`")


class KeyringUnavailable(ConfigError):
    """Raised by :func:`store` and :func:`remove` when there is no OS keyring to use (no
    backend, or keyring's ``fail``/``null`` backend), or when it fails (locked, a D-Bus
    error). The way forward, the provider's environment variable, comes first.

    Local to the client, never sent over the socket: it is a :class:`ConfigError` (bad local
    set-up, ``timbrectl`` exit status 5), which :func:`timbred.errors.wire_errors` leaves out.
    """

    kind = "keyring_unavailable"

    def __init__(self, provider: str, backend: str, reason: str | None = None) -> None:
        env_var = PROVIDERS[provider].env_var
        if reason is None:
            message = (f"set ${env_var} in timbred's environment instead (or "
                       f"{_INSTALL_ADVICE}); no OS keyring is available here "
                       f"(keyring: {backend})")
        else:
            message = (f"unlock the OS keyring and try again, or set ${env_var} in timbred's "
                       f"environment instead; the keyring ({backend}) failed: {reason}")
        # A message of our own (ConfigError's is "source: key: expected ...").
        TimbreError.__init__(self, message, source="keyring", provider=provider,
                             env_var=env_var, backend=backend, reason=reason)


def _provider(name: str) -> ProviderName:
    """The provider called ``name``; :class:`InvalidParams` naming the known ones otherwise."""
    found = PROVIDERS.get(name)
    if found is None:
        raise InvalidParams(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}",
                            param="provider")
    return found


def check_key(key: str) -> str:
    """``key`` without surrounding whitespace, if it can be a key; :class:`InvalidParams`
    (``param="key"``) saying what is wrong otherwise, without quoting it."""
    key = key.strip()
    if not key:
        raise InvalidParams("the key is empty; paste the key itself", param="key")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidParams(f"the key is {len(key)} characters long, more than the "
                            f"{MAX_KEY_CHARS} a key can be; paste just the key", param="key")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise InvalidParams("the key holds a space or a control character; paste just the "
                            "key, on one line", param="key")
    return key


# --- the keyring ----------------------------------------------------------------------------

_logged: set[str] = set()


def _log_once(what: str, exc: BaseException) -> None:
    """One debug line per kind of keyring failure (the exception's type, never a key)."""
    tag = f"{what}:{type(exc).__name__}"
    if tag not in _logged:
        _logged.add(tag)
        log.debug("the OS keyring cannot %s (%s: %s); counted as holding no key", what,
                  type(exc).__name__, _reason(exc))


def _ring() -> KeyringBackend:
    """keyring's active backend (imported here: a client that reads no key never loads it)."""
    import keyring

    return keyring.get_keyring()


def backend_name(ring: KeyringBackend | None = None) -> str:
    """The keyring backend in use, as ``keyring.backends.SecretService.Keyring``."""
    if ring is None:
        try:
            ring = _ring()
        except Exception as exc:  # a backend that fails to load (a broken keyringrc.cfg)
            return f"none ({type(exc).__name__}: {_reason(exc)})"
    cls = type(ring)
    return f"{cls.__module__}.{cls.__name__}"


def _usable(ring: KeyringBackend) -> bool:
    """False for keyring's stand-ins for "no keyring": ``fail`` raises on every call,
    ``null`` (and a chainer with nothing to chain) quietly forget what they are given."""
    from keyring.backends import chainer, fail, null

    if isinstance(ring, fail.Keyring | null.Keyring):
        return False
    return not (isinstance(ring, chainer.ChainerBackend) and not ring.backends)


def keyring_available() -> bool:
    """Whether a real keyring backend is in use (it may still be locked)."""
    try:
        return _usable(_ring())
    except Exception as exc:  # a backend that fails to load (a broken keyringrc.cfg)
        _log_once("load", exc)
        return False


def _keyring_get(provider: str) -> str | None:
    """The key stored for ``provider``; ``None`` when there is none or no keyring works."""
    try:
        found = _ring().get_password(KEYRING_SERVICE, provider)
    # Backends fail in their own ways (NoKeyringError, KeyringLocked, jeepney's D-Bus errors,
    # OSError): each means "no key from here", never a failure of the caller.
    except Exception as exc:
        _log_once("be read", exc)
        return None
    return (found.strip() or None) if found else None


def _reason(exc: BaseException, key: str | None = None) -> str:
    """An exception's text for a message, with ``key`` cut out should a backend quote it."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if key:
        text = text.replace(key, "<key>")
    return text[:200]


def store(provider: str, key: str) -> str:
    """Put ``key`` into the OS keyring as ``provider``'s (replacing any); return the
    backend's name. :class:`InvalidParams` for an unknown provider or a key that cannot be
    one; :class:`KeyringUnavailable` when there is no keyring or it refuses."""
    _provider(provider)
    key = check_key(key)
    try:
        ring = _ring()
    except Exception as exc:  # a backend that fails to load (a broken keyringrc.cfg)
        raise KeyringUnavailable(provider, "none", _reason(exc)) from exc
    name = backend_name(ring)
    if not _usable(ring):
        raise KeyringUnavailable(provider, name)
    try:
        ring.set_password(KEYRING_SERVICE, provider, key)
    except Exception as exc:
        # Not chained: a backend's exception (or its traceback's locals) may hold the key.
        raise KeyringUnavailable(provider, name, _reason(exc, key)) from None
    return name


def remove(provider: str) -> bool:
    """Delete ``provider``'s key from the OS keyring; False when it held none (or there is no
    keyring, which holds none). :class:`KeyringUnavailable` when the keyring fails."""
    _provider(provider)
    try:
        ring = _ring()
    except Exception as exc:
        raise KeyringUnavailable(provider, "none", _reason(exc)) from exc
    if not _usable(ring):
        return False
    from keyring.errors import PasswordDeleteError

    name = backend_name(ring)
    try:
        if ring.get_password(KEYRING_SERVICE, provider) is None:
            return False
        ring.delete_password(KEYRING_SERVICE, provider)
    except PasswordDeleteError:
        return False
    except Exception as exc:
        raise KeyringUnavailable(provider, name, _reason(exc)) from exc
    return True


# --- looking a key up -------------------------------------------------------------------------


def lookup(provider: str, *, environ: Mapping[str, str] | None = None,
           client: Mapping[str, str] | None = None) -> tuple[str, Source] | None:
    """``(key, source)`` for ``provider``, or ``None`` when no key is set anywhere.

    ``source`` is ``"env"`` (its variable in ``environ``, default :data:`os.environ`; it
    wins), ``"client"`` (``client[provider]``, a key a client sent with its request) or
    ``"keyring"``. A keyring that fails (no backend, locked, a D-Bus error) holds no key; the
    failure is logged once at debug level. :class:`InvalidParams` for an unknown provider.
    """
    spec = _provider(provider)
    env = os.environ if environ is None else environ
    key = env.get(spec.env_var, "").strip()
    if key:
        return key, "env"
    key = (client or {}).get(provider, "").strip()
    if key:
        return key, "client"
    stored = _keyring_get(provider)
    if stored:
        return stored, "keyring"
    return None


def source(provider: str, *, environ: Mapping[str, str] | None = None,
           client: Mapping[str, str] | None = None) -> Source | None:
    """Where :func:`lookup` finds ``provider``'s key (``"env"``, ``"client"``,
    ``"keyring"``), or ``None``; never the key."""
    found = lookup(provider, environ=environ, client=client)
    return None if found is None else found[1]


def sources(*, environ: Mapping[str, str] | None = None,
            client: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Each provider with its variable and where its key is found: ``auth.status``'s
    ``providers`` and ``timbrectl auth list``'s rows."""
    return [{"provider": p.name, "env_var": p.env_var,
             "key": source(p.name, environ=environ, client=client)}
            for p in PROVIDERS.values()]


def client_credentials(model: str | None, *,
                       environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``generate.submit``'s ``credentials`` for ``model``: ``{provider: key}`` when the
    model is hosted and ``environ`` (default :data:`os.environ`) has the provider's
    variable; ``{}`` otherwise (the daemon then uses its own environment or the keyring)."""
    hosted = split(model) if model else None
    if hosted is None:
        return {}
    provider = hosted[0]
    env = os.environ if environ is None else environ
    key = env.get(PROVIDERS[provider].env_var, "").strip()
    return {provider: key} if key else {}
