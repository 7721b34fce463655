"""Configuration: one table of keys, read from TOML and overridden by the environment.

Precedence, lowest first: built-in defaults, the TOML file (``timbred --config FILE``, else
``$TIMBRE_CONFIG``, else ``timbred.toml`` in the platformdirs config dir), environment variables
``TIMBRE_<SECTION>_<KEY>`` (e.g. ``TIMBRE_LIMITS_MAX_BATCH=32``), then command-line flags.

Every key is declared once in :data:`KEYS` with its type, default, bounds and documentation;
the documented default file (``timbred --print-config``), the JSON Schema in
``schemas/config.schema.json`` and the error messages all come from that table.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from timbred.errors import ConfigError, map_errors
from timbred.hosted.names import PROVIDERS

APP = "timbre"
CONFIG_FILE_NAME = "timbred.toml"


@dataclass(frozen=True)
class Key:
    """One configuration key: ``section.name`` of ``type`` with a default and bounds."""

    section: str
    name: str
    type: type
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}"

    @property
    def env(self) -> str:
        return f"TIMBRE_{self.section.upper().replace('.', '_')}_{self.name.upper()}"

    def expected(self) -> str:
        """What a valid value looks like, for error messages."""
        kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
                list: "a list of strings"}[self.type]
        if self.choices:
            return f"one of {', '.join(repr(c) for c in self.choices)}"
        low, high = _number(self.minimum), _number(self.maximum)
        if low is not None and high is not None:
            return f"{kind} from {low} to {high}"
        if low is not None:
            return f"{kind} of at least {low}"
        return kind

    def check(self, value: Any, source: str) -> Any:
        """Return ``value`` converted to the key's type, or raise ConfigError."""
        ok = isinstance(value, self.type) and not (self.type is not bool and isinstance(value,
                                                                                         bool))
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if self.type is list:
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            value = list(value) if ok else value
        if not ok:
            raise ConfigError(source, self.dotted, self.expected(), value)
        if self.choices is not None and value not in self.choices:
            raise ConfigError(source, self.dotted, self.expected(), value)
        if isinstance(value, int | float) and not isinstance(value, bool) and (
            (self.minimum is not None and value < self.minimum)
            or (self.maximum is not None and value > self.maximum)
        ):
            raise ConfigError(source, self.dotted, self.expected(), value)
        return value

    def parse_env(self, text: str, source: str) -> Any:
        """Convert an environment variable's text to the key's type, then check it."""
        value: Any = text
        with map_errors(ValueError,
                        lambda exc: ConfigError(source, self.dotted, self.expected(), text)):
            if self.type is bool:
                lowered = text.strip().lower()
                if lowered not in _BOOLS:
                    raise ValueError(text)
                value = _BOOLS[lowered]
            elif self.type is int:
                value = int(text)
            elif self.type is float:
                value = float(text)
            elif self.type is list:
                value = [part for part in text.split(os.pathsep) if part]
        return self.check(value, source)


_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}
MiB = 1024 * 1024

KEYS: tuple[Key, ...] = (
    Key("daemon", "socket", str, "",
        "Path of the Unix socket. Empty: timbred.sock in a private runtime directory "
        "($XDG_RUNTIME_DIR/timbre/). Also settable with $TIMBRE_SOCKET."),
    Key("daemon", "log_level", str, "info", "Least severe level logged.",
        choices=("debug", "info", "warning", "error")),
    Key("daemon", "log_file", str, "",
        "Also log to this file. Empty: stderr only; \"default\": timbred.log in the "
        "platformdirs log directory."),
    Key("daemon", "device", str, "auto",
        "Inference device: auto (CUDA when the inference worker sees a GPU, else CPU), cpu, "
        "cuda or cuda:N."),
    Key("daemon", "threads", int, 0, "CPU threads for inference; 0 lets torch decide.",
        minimum=0, maximum=1024),
    Key("executor", "kind", str, "local",
        "Where local models run: local (inference worker processes on this machine) or ray "
        "(actors on a Ray cluster; needs the ray extra: install.sh --with ray).",
        choices=("local", "ray")),
    Key("executor", "devices", list, [],
        "Local workers: one worker process per entry, each on that device with its own warm "
        "models (\"cuda:0\", \"cuda:1\", \"cpu\"). Empty: executor.workers workers on "
        "daemon.device."),
    Key("executor", "workers", int, 1,
        "Local worker processes when executor.devices is empty (CPU workers share the cores: "
        "each gets its share of them unless daemon.threads says otherwise).",
        minimum=1, maximum=64),
    Key("executor", "address", str, "auto",
        "The Ray cluster: auto (the one `ray start` runs on this machine), HOST:PORT (its GCS "
        "port, 6379 by default) or ray://HOST:10001 (Ray Client)."),
    Key("executor", "namespace", str, "timbre",
        "The Ray namespace Timbre's actors live in."),
    Key("executor", "cpu_actors", int, 1,
        "Ray actors on each node that has no GPU (a node with GPUs gets one per GPU); each "
        "takes one CPU of the node. 0: only GPU nodes run jobs.", minimum=0, maximum=64),
    Key("executor", "retries", int, 1,
        "How often a job whose Ray actor or node was lost mid-job is queued again (on another "
        "actor); 0 leaves it interrupted.", minimum=0, maximum=10),
    Key("executor", "fallback", str, "local",
        "When the Ray cluster cannot be reached at start: run on the local worker (local) or "
        "fail each job saying why (fail).", choices=("local", "fail")),
    Key("limits", "max_message_bytes", int, MiB,
        "Largest accepted message, enforced while reading.", minimum=1024, maximum=64 * MiB),
    Key("limits", "max_batch", int, 64, "Most requests in one JSON-RPC batch.",
        minimum=1, maximum=10_000),
    Key("limits", "max_connections", int, 512, "Most simultaneous client connections.",
        minimum=1, maximum=100_000),
    Key("limits", "message_deadline_s", float, 10.0,
        "Seconds a client has to finish a message once it started sending it.",
        minimum=0.1, maximum=3600),
    Key("limits", "max_output_bytes", int, 8 * MiB,
        "Most reply and event bytes waiting to be sent to one connection; past it, event "
        "subscriptions are dropped with a notice and replies wait for the client to read.",
        minimum=64 * 1024, maximum=1024 * MiB),
    Key("limits", "write_timeout_s", float, 30.0,
        "Seconds a client may leave pending output unread before it is disconnected.",
        minimum=0.1, maximum=3600),
    Key("limits", "max_inflight", int, 32,
        "Most requests one connection may have running at once.", minimum=1, maximum=10_000),
    Key("limits", "event_buffer", int, 4096,
        "Events kept for replay to clients that reconnect.", minimum=16, maximum=1_000_000),
    Key("models", "default", str, "musicgen-small",
        "Model used when a request names none: a catalogue name (timbrectl models list), a "
        "Hugging Face repo id, or a local directory."),
    Key("models", "keep_alive_s", float, 600.0,
        "Seconds a model stays loaded after its last use; 0 unloads right after each job, "
        "-1 keeps it forever. A request's keep_alive overrides it.", minimum=-1, maximum=1e9),
    Key("models", "memory_budget_mb", int, 0,
        "Memory the loaded models may use together; idle models are evicted to make room. "
        "0: 75% of the GPU's memory when the models run on CUDA, else of physical memory; a "
        "budget beyond the GPU's memory is capped at it.", minimum=0, maximum=10_000_000),
    Key("models", "dtype", str, "auto",
        "Weights precision: auto (bfloat16 on CUDA cards that compute it natively, Ampere and "
        "later; float16 on older cards; float32 on CPU), float32, bfloat16, "
        "float16.", choices=("auto", "float32", "bfloat16", "float16")),
    Key("models", "precision", str, "default",
        "Decoder precision on top of dtype: default (dtype decides), int8 (CPU: the decoder's "
        "linear layers dynamically quantized; a 10 s clip about 6.4x faster end to end than a "
        "plain fp32 transformers script, at a measured logits error of about 4.5% on random "
        "weights; see bench/RESULTS.md), bf16, fp32, or auto (bf16 on CUDA, int8 on CPU).",
        choices=("default", "auto", "int8", "bf16", "fp32")),
    Key("models", "window_s", float, 30.0,
        "Longest clip generated in one pass; longer durations continue in windows.",
        minimum=1, maximum=120),
    Key("models", "stride_s", float, 18.0,
        "How far each continuation window advances (audiocraft's extend_stride); the rest "
        "of the window is kept as context so windows join without seams.",
        minimum=0.5, maximum=120),
    Key("data", "database", str, "",
        "The Timbre database (SQLite: jobs and history). Empty: timbre.sqlite3 in the "
        "platformdirs data directory."),
    Key("jobs", "max_queued", int, 1000,
        "Most unfinished jobs at once; submitting past it fails with queue_full.",
        minimum=1, maximum=1_000_000),
    Key("jobs", "max_batch_takes", int, 4,
        "Most takes decoded together: queued jobs for the same model with the same "
        "duration, guidance on/off, melody or none, and continued audio file or none share "
        "one batch, each sampling from its own seed. 1 decodes every job alone.",
        minimum=1, maximum=64),
    Key("jobs", "batch_window_s", float, 0.02,
        "How long a job about to start waits for others submitted with it to join its "
        "batch.", minimum=0, maximum=10),
    Key("preview", "chunk_s", float, 1.0,
        "Seconds of audio in each streaming-preview chunk of a job submitted with preview "
        "on (the first chunk comes after half of this).", minimum=0.1, maximum=30),
    Key("preview", "keep_s", float, 600.0,
        "Seconds a finished job's preview chunks are kept (in the private runtime "
        "directory) before they are removed.", minimum=0, maximum=86_400),
    Key("watch", "enabled", bool, True,
        "Watch folders for prompt files (drop a prompt file in, get a take out)."),
    Key("watch", "folders", list, [],
        "Folders to watch. Empty: inbox/ in output.dir (~/Music/Timbre/inbox). In the "
        "environment, separate paths with the path separator (:)."),
    Key("watch", "outputs", str, "outbox",
        "Where a prompt file's takes go: outbox/ in its folder, or beside the prompt file.",
        choices=("outbox", "beside")),
    Key("watch", "max_inflight_files", int, 16,
        "Prompt files taken but not finished at once; a burst waits its turn.",
        minimum=1, maximum=10_000),
    Key("watch", "stable_interval_s", float, 0.5,
        "A file is taken once its size and mtime stay the same over stable_checks checks "
        "this far apart (or at once when it was renamed into the folder).",
        minimum=0.05, maximum=60),
    Key("watch", "stable_checks", int, 3, "See stable_interval_s.", minimum=2, maximum=100),
    Key("watch", "max_file_bytes", int, 64 * 1024,
        "Larger prompt files are rejected unread.", minimum=1024, maximum=16 * MiB),
    Key("output", "dir", str, "",
        "Where takes are written, as YYYY/MM/DD/[<session>/]take-<n>.<ext>. Empty: Timbre/ in "
        "the platformdirs music directory."),
    Key("output", "format", str, "wav", "Default format of new takes.",
        choices=("wav", "flac", "mp3", "ogg")),
    Key("output", "wav_subtype", str, "PCM_24", "Sample format of WAV takes.",
        choices=("PCM_16", "PCM_24", "FLOAT")),
    Key("output", "mp3_bitrate_kbps", int, 320, "Bit rate of MP3 takes.",
        minimum=32, maximum=320),
    Key("output", "ogg_quality", float, 0.7, "Quality of Ogg Vorbis takes (0 to 1).",
        minimum=0, maximum=1),
    Key("output", "normalise", bool, True,
        "Normalise each take's integrated loudness to loudness_target_lufs."),
    Key("output", "loudness_target_lufs", float, -14.0, "Loudness target (EBU R128 / BS.1770).",
        minimum=-60, maximum=0),
    Key("output", "true_peak_ceiling_dbtp", float, -1.0,
        "No take's true peak exceeds this; a transparent limiter holds it when needed.",
        minimum=-20, maximum=0),
    Key("output", "master", str, "",
        "The mastering chain every take goes through (streaming, club, tape, none, or a "
        "chain of yours in <config dir>/mastering); empty: loudness normalisation only."),
    Key("output", "analyse", bool, True,
        "Measure each take's tempo, beats and key (written to its tags, sidecar and the "
        "history, where `timbrectl history bpm:118-122 key:Am` finds it)."),
    Key("providers", "max_concurrent", int, 4,
        "Hosted jobs (provider:model) running at once; they run beside local ones, which "
        "keep their own one-at-a-time worker.", minimum=1, maximum=64),
    Key("providers", "timeout_s", float, 60.0,
        "Seconds each HTTP call to a provider may take (connect, each read, each write).",
        minimum=1, maximum=3600),
    Key("providers", "retry_s", float, 120.0,
        "How long a call answered with 429 or a 5xx (or not answered) is retried, with "
        "exponential backoff and jitter, honouring Retry-After; then the job fails.",
        minimum=0, maximum=86_400),
    Key("providers", "offline", str, "fail",
        "When a provider cannot be reached at all: fail the job (after retry_s of quick "
        "retries), or wait (keep retrying for retry_s before failing).",
        choices=("fail", "wait")),
    Key("providers", "max_wait_s", float, 1800.0,
        "Longest a hosted take may take at the provider (queued and running) before its job "
        "fails and the prediction is cancelled.", minimum=10, maximum=86_400),
    *(key for p in PROVIDERS.values() for key in (
        Key(f"providers.{p.name}", "base_url", str, p.default_base_url,
            f"Base URL of the {p.title} API (a proxy or gateway in front of it works too). "
            "Its key is sent only to this origin."),
        Key(f"providers.{p.name}", "monthly_budget", float, 0.0,
            f"US dollars {p.title} may cost in a calendar month (local time); a job that "
            "would pass it (what was spent, what is queued, and its own estimate) is "
            "refused at submit. 0: no budget.", minimum=0, maximum=1e9),
    )),
)

SECTIONS: dict[str, dict[str, Key]] = {}
for _key in KEYS:
    SECTIONS.setdefault(_key.section, {})[_key.name] = _key


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. ``values`` maps ``section.name`` to the effective value."""

    values: Mapping[str, Any]
    config_path: Path | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __getitem__(self, dotted: str) -> Any:
        return self.values[dotted]

    @classmethod
    def defaults(cls, **overrides: Any) -> Settings:
        """Built-in defaults with ``section__name=value`` overrides (handy for tests)."""
        values = {k.dotted: k.default for k in KEYS}
        checked = {}
        for name, value in overrides.items():
            dotted = name.replace("__", ".")
            key = _lookup(dotted, "overrides")
            checked[dotted] = key.check(value, "overrides")
        values.update(checked)
        return cls(values=values, config_path=None, overrides=checked)


def _lookup(dotted: str, source: str) -> Key:
    section, _, name = dotted.rpartition(".")
    try:
        return SECTIONS[section][name]
    except KeyError:
        known = ", ".join(k.dotted for k in KEYS)
        raise ConfigError(source, dotted, f"a known key ({known})") from None


def default_config_path() -> Path:
    """``timbred.toml`` in the platformdirs config directory."""
    return Path(platformdirs.user_config_dir(APP)) / CONFIG_FILE_NAME


def _from_file(path: Path) -> dict[str, Any]:
    source = str(path)
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "(file)", f"valid TOML ({exc})") from exc
    except OSError as exc:
        raise ConfigError(source, "(file)", f"a readable file ({exc.strerror})") from exc
    values: dict[str, Any] = {}
    for section, table in doc.items():
        _read_table(section, table, source, values)
    return values


def _read_table(section: str, table: Any, source: str, values: dict[str, Any]) -> None:
    """One ``[section]`` of a config file into ``values``; a sub-table inside it is a
    section of its own (``[providers.replicate]`` inside ``[providers]``)."""
    if section not in SECTIONS and not any(s.startswith(section + ".") for s in SECTIONS):
        top = sorted({s.partition(".")[0] for s in SECTIONS} if "." not in section
                     else SECTIONS)
        raise ConfigError(source, section, f"a known section ({', '.join(top)})")
    if not isinstance(table, dict):
        raise ConfigError(source, section, "a table ([section])", table)
    for name, value in table.items():
        if isinstance(value, dict) and f"{section}.{name}" not in (
                f"{k.section}.{k.name}" for k in KEYS):
            _read_table(f"{section}.{name}", value, source, values)
            continue
        key = _lookup(f"{section}.{name}", source)
        values[key.dotted] = key.check(value, source)


def load(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve the settings from defaults, file, environment and ``overrides``.

    ``path`` None means ``$TIMBRE_CONFIG`` or the default path, which may be absent (defaults
    apply); an explicitly given path must exist.
    """
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get("TIMBRE_CONFIG"))
    if path is None:
        path = Path(env["TIMBRE_CONFIG"]) if env.get("TIMBRE_CONFIG") else default_config_path()
    path = path.expanduser()
    values = {k.dotted: k.default for k in KEYS}
    if path.exists() or explicit:
        values.update(_from_file(path))
        used: Path | None = path.resolve()
    else:
        used = None
    for key in KEYS:
        if key.env in env:
            values[key.dotted] = key.parse_env(env[key.env], f"environment ${key.env}")
    if env.get("TIMBRE_SOCKET") and not env.get(SECTIONS["daemon"]["socket"].env):
        values["daemon.socket"] = env["TIMBRE_SOCKET"]
    checked = {}
    for name, value in overrides.items():
        if value is None:
            continue
        dotted = name.replace("__", ".")
        checked[dotted] = _lookup(dotted, "command line").check(value, "command line")
    values.update(checked)
    return Settings(values=values, config_path=used, overrides=checked)


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _number(value: float | None) -> str | None:
    """A bound as people write it: ``67108864`` and ``1000000000``, never ``6.71089e+07``."""
    if value is None:
        return None
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def documented_defaults() -> str:
    """A complete TOML file with every key commented, at its default (``--print-config``)."""
    lines = [
        "# timbred configuration. Every key is optional; the values shown are the defaults.",
        "# Each key can also be set with an environment variable, named on its line.",
    ]
    for section, keys in SECTIONS.items():
        lines += ["", f"[{section}]"]
        for key in keys.values():
            lines.append(f"# {key.doc}")
            lines.append(f"# Expected: {key.expected()}. Environment: ${key.env}.")
            lines.append(f"{key.name} = {_toml_value(key.default)}")
    return "\n".join(lines) + "\n"


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (``schemas/config.schema.json`` is this)."""
    jtypes = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
    props: dict[str, Any] = {}
    for section, keys in SECTIONS.items():
        section_props: dict[str, Any] = {}
        for key in keys.values():
            schema: dict[str, Any] = {
                "type": jtypes[key.type],
                "default": key.default,
                "description": key.doc,
            }
            if key.type is list:
                schema["items"] = {"type": "string"}
            if key.choices:
                schema["enum"] = list(key.choices)
            if key.minimum is not None:
                schema["minimum"] = key.minimum
            if key.maximum is not None:
                schema["maximum"] = key.maximum
            section_props[key.name] = schema
        # A dotted section ([providers.replicate]) is a table inside its parent's.
        *parents, leaf = section.split(".")
        into = props
        for parent in parents:
            into = into.setdefault(parent, {"type": "object", "additionalProperties": False,
                                            "properties": {}})["properties"]
        into.setdefault(leaf, {"type": "object", "additionalProperties": False,
                               "properties": {}})["properties"].update(section_props)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://timbre.invalid/schemas/config.schema.json",
        "title": "timbred.toml",
        "description": "The daemon's TOML configuration file, as JSON.",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }
