"""Timbre's one exception tree.

Every error a user or a client can see is a :class:`TimbreError`. Each concrete class has a
stable ``kind`` (a snake_case name) and, when it can cross the wire, a stable JSON-RPC ``code``
in the application range -32000..-32099. The ``data`` object sent to clients always carries
``kind`` plus the fields a client needs to act on the error (a limit, a parameter name, a pid).

Foreign exceptions (OSError, sqlite3.Error, torch errors) are translated into this tree at the
edges, always with ``raise ... from exc``; the RPC layer turns the tree into JSON-RPC errors in
one place (:func:`timbred.protocol.jsonrpc.error_object`) and the client turns them back with
:func:`error_from_wire`.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, TypeVar, cast

# The standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class TimbreError(Exception):
    """Base of every error Timbre raises on purpose.

    ``code`` is the JSON-RPC code used when the error crosses the socket; ``kind`` is its
    stable name; ``data`` holds machine-readable details (always including ``kind``).
    """

    code: ClassVar[int] = INTERNAL_ERROR
    kind: ClassVar[str] = "internal_error"

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = {"kind": self.kind, **data}

    def __str__(self) -> str:
        return self.message


# --- families: what a caller can do about an error -------------------------------------------
#
# Every concrete error belongs to exactly one family, so that an edge (the CLI's exit status,
# a hosted-API runner's retry policy, the studio's status line) can decide by family instead of
# listing kinds. The families carry no wire code of their own: a client rebuilds the concrete
# class from its code (error_from_wire) and gets the family with it.


class NotFound(TimbreError, LookupError):
    """The thing named (a job, a take, a model, a preset, a method) does not exist."""


class InvalidInput(TimbreError, ValueError):
    """The request, file or setting is wrong; fixing the input is the way forward."""


class Conflict(TimbreError):
    """The request is well-formed but does not fit the current state (of a job, a lock)."""


class Unavailable(TimbreError):
    """Something needed cannot serve now (the daemon, the network, a disk, the worker, the
    queue's capacity); the same request may succeed later or elsewhere."""


class Internal(TimbreError):
    """A failure inside Timbre or a backend that no input caused and no retry will fix."""


FAMILIES: tuple[type[TimbreError], ...] = (NotFound, InvalidInput, Conflict, Unavailable,
                                           Internal)


def family_of(error: TimbreError | type[TimbreError]) -> type[TimbreError]:
    """The family ``error`` (an instance or a class) belongs to; :class:`Internal` for an
    error from outside the tree's families (a client's :class:`RemoteError`)."""
    cls = error if isinstance(error, type) else type(error)
    for family in FAMILIES:
        if issubclass(cls, family):
            return family
    return Internal


_E = TypeVar("_E", bound=BaseException)


@contextlib.contextmanager
def map_errors(kinds: type[_E] | tuple[type[_E], ...],
               make: Callable[[_E], TimbreError]) -> Iterator[None]:
    """Translate foreign exceptions of ``kinds`` raised in the block into ``make(exc)``,
    chained (``raise ... from exc``); Timbre's own errors pass through untouched, even those
    that are also an OSError or a ValueError.

    One line at each edge instead of a hand-written ``try``/``except``::

        with map_errors(OSError, lambda exc: OutputError(str(path), os_reason(exc))):
            path.write_bytes(data)
    """
    try:
        yield
    except TimbreError:
        raise
    except kinds as exc:
        raise make(exc) from exc


_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "the file is larger than this system allows (file size limit)",
    errno.ENAMETOOLONG: "the file name is too long",
}


def os_reason(exc: OSError) -> str:
    """A reason a user can act on, for an OSError (the disk is full, permission denied)."""
    return _OS_REASONS.get(exc.errno or 0, exc.strerror or str(exc))


# --- errors of the JSON-RPC envelope (standard codes) -------------------------------------


class ParseError(InvalidInput):
    """Raised when a message is not valid UTF-8 or not valid JSON."""

    code = PARSE_ERROR
    kind = "parse_error"


class InvalidRequest(InvalidInput):
    """Raised when a message is JSON but not a valid JSON-RPC 2.0 request object."""

    code = INVALID_REQUEST
    kind = "invalid_request"


class MethodNotFound(NotFound):
    """Raised when a request names a method the daemon does not have."""

    code = METHOD_NOT_FOUND
    kind = "method_not_found"


class InvalidParams(InvalidInput):
    """Raised when a method's parameters are missing, unknown, mistyped or out of range.

    ``param`` names the offending parameter (a dotted path for nested values).
    """

    code = INVALID_PARAMS
    kind = "invalid_params"

    def __init__(self, message: str, *, param: str | None, **data: Any) -> None:
        super().__init__(message, param=param, **data)


class InternalError(Internal):
    """Raised (or substituted) when a handler fails in a way nobody planned for."""

    code = INTERNAL_ERROR
    kind = "internal_error"


# --- application errors: one stable code per kind -----------------------------------------


class MessageTooLarge(InvalidInput):
    """Raised when an incoming message grows past the configured maximum size."""

    code = -32001
    kind = "message_too_large"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"message exceeds the maximum size of {limit} bytes; the connection is closed",
            limit=limit,
        )


class MessageIncomplete(InvalidInput):
    """Raised when a started message is not finished by a newline in time, or before EOF."""

    code = -32002
    kind = "message_incomplete"

    def __init__(self, reason: str, *, received: int, deadline_s: float | None = None) -> None:
        super().__init__(
            f"message not terminated by a newline ({reason}); the connection is closed",
            reason=reason,
            received=received,
            deadline_s=deadline_s,
        )


class BatchTooLarge(InvalidInput):
    """Raised when a batch holds more requests than the configured cap."""

    code = -32003
    kind = "batch_too_large"

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"batch of {size} requests exceeds the limit of {limit}", size=size, limit=limit
        )


class TooManyConnections(Unavailable):
    """Raised (and sent) when a new connection would exceed the connection cap."""

    code = -32004
    kind = "too_many_connections"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the daemon already serves {limit} connections", limit=limit)


class PeerRefused(Unavailable, PermissionError):
    """Raised when a connecting process belongs to another user."""

    code = -32005
    kind = "peer_refused"

    def __init__(self, uid: int, expected_uid: int) -> None:
        super().__init__(
            f"connections from uid {uid} are refused; this daemon serves uid {expected_uid}",
            uid=uid,
            expected_uid=expected_uid,
        )


class ShuttingDown(Unavailable):
    """Raised when a request arrives while the daemon is stopping."""

    code = -32006
    kind = "shutting_down"

    def __init__(self) -> None:
        super().__init__("the daemon is shutting down")


class SubscriptionNotFound(NotFound):
    """Raised when a subscription id is unknown on this connection."""

    code = -32007
    kind = "subscription_not_found"

    def __init__(self, subscription: str) -> None:
        super().__init__(f"no subscription {subscription!r} on this connection",
                         subscription=subscription)


class OutputOverflow(InvalidInput):
    """Raised when a client does not read its replies and the per-connection bound is hit."""

    code = -32008
    kind = "output_overflow"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the client is not reading its replies (more than {limit} bytes pending); "
            "the connection is closed",
            limit=limit,
        )


# --- jobs, models and generation (codes -32030..-32069) ---------------------------------------


class JobNotFound(NotFound):
    """Raised when a job id does not exist."""

    code = -32030
    kind = "job_not_found"

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job {job_id!r}", job_id=job_id)


class QueueFull(Unavailable):
    """Raised at submit time when the queue already holds the configured maximum of jobs."""

    code = -32031
    kind = "queue_full"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the job queue is full ({limit} jobs waiting); wait for some to finish or cancel some",
            limit=limit,
        )


class InvalidJobState(Conflict):
    """Raised when an operation does not fit the job's state (retry a running job, say)."""

    code = -32032
    kind = "invalid_job_state"

    def __init__(self, job_id: str, state: str, wanted: str) -> None:
        super().__init__(f"job {job_id} is {state}; {wanted}", job_id=job_id, state=state)


class ModelNotFound(NotFound):
    """Raised when a model name is neither a known alias, a cached repo, nor a local directory."""

    code = -32040
    kind = "model_not_found"

    def __init__(self, model: str, hint: str) -> None:
        super().__init__(f"model {model!r} not found: {hint}", model=model, hint=hint)


class ModelLoadFailed(Internal):
    """Raised when a model exists but cannot be loaded (corrupt files, out of memory, ...)."""

    code = -32041
    kind = "model_load_failed"

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"model {model!r} failed to load: {reason}", model=model, reason=reason)


class NetworkUnavailable(Unavailable, ConnectionError):
    """Raised when a model pull needs the network and there is none (or HF_HUB_OFFLINE is set)."""

    code = -32042
    kind = "network_unavailable"

    def __init__(self, model: str, reason: str, *, offline: bool = False) -> None:
        # The way forward first; the HF_HUB_OFFLINE advice only where it is not already set.
        super().__init__(
            f"to work offline, put {model} in the Hugging Face cache or a local directory "
            "(then pass its path as the model)"
            + ("" if offline else " and set HF_HUB_OFFLINE=1")
            + f"; cannot download {model!r}: {reason}",
            model=model,
            reason=reason,
        )


class WorkerCrashed(Unavailable):
    """Raised for the job that was running when the inference worker process died."""

    code = -32050
    kind = "worker_crashed"

    def __init__(self, reason: str, *, exitcode: int | None = None) -> None:
        super().__init__(f"the inference worker died: {reason}", reason=reason, exitcode=exitcode)


class ExecutorLost(WorkerCrashed):
    """Raised for the jobs a lost executor was running that the machine itself did not
    cause: a Ray actor or its node gone mid-job. Unlike a local worker's crash (often the
    job's own doing: out of memory, a fault in a backend), such a job is worth running
    again elsewhere, so the scheduler requeues it up to ``executor.retries`` times."""

    code = -32055
    kind = "executor_lost"

    def __init__(self, where: str, reason: str) -> None:
        TimbreError.__init__(self, f"lost {where}: {reason}", reason=reason, where=where,
                             exitcode=None)


class ClusterUnavailable(Unavailable, ConnectionError):
    """Raised when the Ray cluster named in ``[executor] address`` cannot be reached (or
    Ray is not installed)."""

    code = -32056
    kind = "cluster_unavailable"

    def __init__(self, address: str, reason: str) -> None:
        super().__init__(f"cannot reach the Ray cluster at {address}: {reason}",
                         address=address, reason=reason)


class GenerationFailed(Internal):
    """Raised when generation itself fails (out of memory, a backend error)."""

    code = -32051
    kind = "generation_failed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"generation failed: {reason}", reason=reason)


class Cancelled(Conflict):
    """Raised inside generation when its cancel token fires."""

    code = -32052
    kind = "cancelled"

    def __init__(self) -> None:
        super().__init__("cancelled")


class AudioInputError(InvalidInput):
    """Raised when a melody or continuation audio file is missing, unreadable or corrupt."""

    code = -32053
    kind = "audio_input_error"

    def __init__(self, path: str, param: str, reason: str) -> None:
        super().__init__(f"{param}: cannot read audio file {path}: {reason}",
                         path=path, param=param, reason=reason)


class OutputError(Unavailable, OSError):
    """Raised when a take cannot be written (disk full, read-only directory, ...)."""

    code = -32054
    kind = "output_error"

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot write {path}: {reason}", path=path, reason=reason)


# --- takes, history, presets, watch folders (codes -32060..-32069) ----------------------------


class TakeNotFound(NotFound):
    """Raised when a take id (or path) is not in the history."""

    code = -32060
    kind = "take_not_found"

    def __init__(self, take: str) -> None:
        super().__init__(f"no take {take!r} in the history", take=take)


class PresetNotFound(NotFound):
    """Raised when a preset name is neither shipped nor in the user's presets directory."""

    code = -32061
    kind = "preset_not_found"

    def __init__(self, preset: str, hint: str) -> None:
        super().__init__(f"no preset {preset!r}: {hint}", preset=preset, hint=hint)


class PresetInvalid(InvalidInput):
    """Raised when a preset file is malformed; names the file, the key and what was expected."""

    code = -32062
    kind = "preset_invalid"

    def __init__(self, path: str, key: str, expected: str) -> None:
        super().__init__(f"{path}: {key}: expected {expected}", path=path, key=key,
                         expected=expected)


class WatchFolderError(InvalidInput, OSError):
    """Raised when a folder cannot be watched (missing, not a directory, unsafe)."""

    code = -32063
    kind = "watch_folder_error"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"cannot watch {path}: {problem}", path=path, problem=problem)


class Interrupted(Conflict):
    """Recorded on a job that was running when the daemon stopped (it is never re-run)."""

    code = -32033
    kind = "interrupted"

    def __init__(self, state: str) -> None:
        super().__init__(
            f"timbred stopped while this job was {state}; it was not re-run "
            "(retry it with `timbrectl jobs retry`)", state=state)


# --- hosted providers (codes -32070..-32079) ----------------------------------------------------


class ProviderError(Unavailable):
    """A hosted provider refused or failed a request (after any retries): an HTTP error
    status, a malformed or oversized body, audio that does not decode, a prediction that
    failed. ``status`` is the HTTP status when there was one."""

    code = -32070
    kind = "provider_error"

    def __init__(self, provider: str, reason: str, *, status: int | None = None,
                 retryable: bool = False) -> None:
        super().__init__(f"{provider}: {reason}", provider=provider, reason=reason,
                         status=status, retryable=retryable)


class ProviderUnreachable(Unavailable, ConnectionError):
    """No answer from a provider's host: no network, DNS, refused, timed out."""

    code = -32071
    kind = "provider_unreachable"

    def __init__(self, provider: str, host: str, reason: str) -> None:
        super().__init__(
            f"check the network (or [providers.{provider}] base_url); cannot reach {host}: "
            f"{reason}", provider=provider, host=host, reason=reason)


class KeyMissing(Unavailable):
    """A hosted model was asked for and no key for its provider is set anywhere."""

    code = -32072
    kind = "key_missing"

    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(
            f"set a {provider} key with `timbrectl auth set {provider}` (or ${env_var}); "
            f"none is set", provider=provider, env_var=env_var)


class KeyRejected(Unavailable):
    """The provider refused the key (401 or 403)."""

    code = -32073
    kind = "key_rejected"

    def __init__(self, provider: str, status: int, reason: str) -> None:
        super().__init__(
            f"replace the {provider} key with `timbrectl auth set {provider}`; the provider "
            f"refused it ({status}: {reason})", provider=provider, status=status,
            reason=reason)


class BudgetExceeded(Conflict):
    """A hosted job would take a provider's spend this month past its monthly budget."""

    code = -32074
    kind = "budget_exceeded"

    def __init__(self, provider: str, budget: float, spent: float, estimate: float) -> None:
        super().__init__(
            f"raise [providers.{provider}] monthly_budget or wait for next month; this job "
            f"(about ${estimate:.2f}) would take {provider}'s spend this month (${spent:.2f}) "
            f"past its budget of ${budget:.2f}", provider=provider, budget=budget,
            spent=round(spent, 6), estimate=round(estimate, 6))


# --- local errors (raised before or outside the socket; never sent as replies) --------------


class ConfigError(InvalidInput):
    """Raised when a configuration file or environment variable is invalid.

    The message names the source (file or variable), the key and what was expected.
    """

    code = -32020
    kind = "config_error"

    def __init__(self, source: str, key: str, expected: str, got: object = None) -> None:
        got_part = "" if got is None else f", got {got!r}"
        super().__init__(f"{source}: {key}: expected {expected}{got_part}",
                         source=source, key=key, expected=expected)


class RuntimeDirError(InvalidInput, OSError):
    """Raised when the socket directory or socket path is unsafe or unusable."""

    code = -32021
    kind = "runtime_dir_error"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}", path=path, problem=problem)


class AlreadyRunning(Conflict):
    """Raised when another timbred already holds the lock beside the socket."""

    code = -32022
    kind = "already_running"

    def __init__(self, lock_path: str, pid: int | None) -> None:
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"timbred is already running ({who} holds {lock_path})",
                         lock_path=lock_path, pid=pid)


class StoreError(Internal):
    """Raised when a database file is corrupt, foreign, or newer than this version of Timbre."""

    code = -32024
    kind = "store_error"

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}", path=path, problem=problem)


class DaemonUnavailable(Unavailable, ConnectionError):
    """Raised by the client when no daemon answers on the socket."""

    code = -32023
    kind = "daemon_unavailable"

    def __init__(self, socket_path: str, reason: str) -> None:
        super().__init__(f"no timbred answering at {socket_path}: {reason}",
                         socket_path=socket_path, reason=reason)


class NoAnswer(Unavailable, TimeoutError):
    """Reported by the client when the daemon did not answer within the caller's timeout."""

    code = -32025
    kind = "timed_out"

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no answer within {timeout:g} s", timeout=timeout)


class RemoteError(TimbreError):
    """Raised by the client for a JSON-RPC error whose code it does not know.

    Its ``code`` is the instance's, not the class's.
    """

    def __init__(self, code: int, message: str, data: dict[str, Any] | None) -> None:
        super().__init__(message, **(data or {}))
        self.remote_code = code
        if data and "kind" in data:
            self.data["kind"] = data["kind"]


def _all_subclasses(cls: type[TimbreError]) -> list[type[TimbreError]]:
    out: list[type[TimbreError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


def wire_errors() -> dict[int, type[TimbreError]]:
    """Every error class that can be sent over the socket, by its stable code.

    Local-only errors (config, runtime dir, lock, client side) are excluded.
    """
    local = (ConfigError, RuntimeDirError, AlreadyRunning, StoreError, DaemonUnavailable,
             NoAnswer, RemoteError)
    table: dict[int, type[TimbreError]] = {}
    for cls in _all_subclasses(TimbreError):
        if issubclass(cls, local) or cls in FAMILIES:
            continue
        if cls.code in table and table[cls.code] is not cls:
            raise RuntimeError(f"duplicate error code {cls.code}: {table[cls.code]} and {cls}")
        table[cls.code] = cls
    return table


def error_from_wire(code: int, message: str, data: Any) -> TimbreError:
    """Rebuild the matching exception from a JSON-RPC error object (used by clients)."""
    cls = wire_errors().get(code)
    payload: dict[str, Any] = data if isinstance(data, dict) else {}
    if cls is None:
        return RemoteError(code, message, payload)
    # Built without its own __init__ (the payload already holds its fields), by the builtin
    # base with the widest layout: an error that is both a ValueError and an OSError must be
    # made by OSError.__new__ (ValueError's refuses it as unsafe).
    solid = max((b for b in cls.__mro__ if b.__module__ == "builtins"),
                key=lambda b: b.__basicsize__)
    err: TimbreError = cast(Any, solid).__new__(cls)
    TimbreError.__init__(err, message, **{k: v for k, v in payload.items() if k != "kind"})
    return err
