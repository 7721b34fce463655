"""Configuration: defaults, TOML, environment overrides, clear errors, the documented file."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest

from timbred import config
from timbred.errors import ConfigError
from timbred.protocol.schema import load as load_schema


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "timbred.toml"
    path.write_text(text)
    return path


class TestLoading:
    def test_defaults_without_a_file(self, tmp_path: Path) -> None:
        """A missing default file is fine: defaults apply and config_path is None."""
        s = config.load(environ={"XDG_CONFIG_HOME": str(tmp_path)})
        assert s.config_path is None
        assert s["limits.max_batch"] == 64 and s["limits.max_message_bytes"] == 1024 * 1024

    def test_file_then_env_then_overrides(self, tmp_path: Path) -> None:
        """The environment beats the file and explicit overrides beat both."""
        path = write(tmp_path, "[limits]\nmax_batch = 10\nmax_connections = 7\n")
        s = config.load(path, environ={"TIMBRE_LIMITS_MAX_BATCH": "20"},
                        daemon__log_level="debug")
        assert s.config_path == path.resolve()
        assert s["limits.max_batch"] == 20
        assert s["limits.max_connections"] == 7
        assert s["daemon.log_level"] == "debug"

    def test_timbre_socket_alias(self, tmp_path: Path) -> None:
        """$TIMBRE_SOCKET sets daemon.socket (for daemon and clients alike)."""
        s = config.load(environ={"TIMBRE_SOCKET": "/x/y.sock",
                                 "XDG_CONFIG_HOME": str(tmp_path)})
        assert s["daemon.socket"] == "/x/y.sock"

    def test_integer_accepted_for_a_float_key(self, tmp_path: Path) -> None:
        """TOML `10` is fine where a number of seconds is expected."""
        s = config.load(write(tmp_path, "[limits]\nmessage_deadline_s = 3\n"), environ={})
        assert s["limits.message_deadline_s"] == 3.0


class TestErrors:
    @pytest.mark.parametrize(("text", "key", "expected"), [
        ("[limits]\nmax_batch = 0\n", "limits.max_batch", "an integer from 1 to 10000"),
        ("[limits]\nmax_batch = \"many\"\n", "limits.max_batch", "an integer"),
        ("[limits]\nmax_batch = true\n", "limits.max_batch", "an integer"),
        ("[daemon]\nlog_level = \"loud\"\n", "daemon.log_level", "one of 'debug'"),
        ("[limits]\nmax_bach = 3\n", "limits.max_bach", "a known key"),
        ("[limitz]\nx = 1\n", "limitz", "a known section"),
        ("limits = 3\n", "limits", "a table"),
    ])
    def test_bad_value_names_file_key_and_expectation(self, tmp_path: Path, text: str,
                                                      key: str, expected: str) -> None:
        """Each bad file is refused with the file, the key and what was expected."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            config.load(path, environ={})
        msg = str(info.value)
        assert msg.startswith(str(path)) and f": {key}: expected {expected}" in msg

    def test_invalid_toml(self, tmp_path: Path) -> None:
        """Broken TOML names the file and the parser's complaint."""
        path = write(tmp_path, "[limits\n")
        with pytest.raises(ConfigError, match="valid TOML"):
            config.load(path, environ={})

    def test_explicit_file_must_exist(self, tmp_path: Path) -> None:
        """--config with a missing file is an error, not silently the defaults."""
        with pytest.raises(ConfigError, match="readable file"):
            config.load(tmp_path / "nope.toml", environ={})

    def test_bad_environment_value_names_the_variable(self) -> None:
        """A bad override names the environment variable it came from."""
        with pytest.raises(ConfigError, match=r"environment \$TIMBRE_LIMITS_MAX_BATCH: "
                                              r"limits.max_batch: expected an integer"):
            config.load(environ={"TIMBRE_LIMITS_MAX_BATCH": "lots", "TIMBRE_CONFIG": ""})


class TestDocumentation:
    def test_print_config_is_valid_toml_with_every_default(self) -> None:
        """`timbred --print-config` output parses and holds every key at its default."""
        out = subprocess.run([sys.executable, "-m", "timbred", "--print-config"],
                             capture_output=True, text=True, check=True).stdout
        doc = tomllib.loads(out)
        for key in config.KEYS:
            table = doc
            for part in key.section.split("."):  # [providers.replicate] nests in [providers]
                table = table[part]
            assert table[key.name] == key.default
            assert key.doc.split(".")[0] in out and key.env in out

    def test_committed_schema_matches_the_key_table(self) -> None:
        """schemas/config.schema.json is exactly what the key table generates."""
        assert load_schema("config.schema.json") == json.loads(json.dumps(config.json_schema()))

    def test_schema_accepts_defaults_and_rejects_out_of_range(self) -> None:
        """The schema agrees with the loader on a good and a bad file."""
        schema = config.json_schema()
        good = tomllib.loads(config.documented_defaults())
        jsonschema.validate(good, schema)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({"limits": {"max_batch": 0}}, schema)

    def test_check_config_prints_effective_values(self, tmp_path: Path) -> None:
        """`timbred --check-config` shows the file used and every effective value."""
        path = write(tmp_path, "[limits]\nmax_batch = 5\n")
        out = subprocess.run([sys.executable, "-m", "timbred", "--config", str(path),
                              "--check-config"], capture_output=True, text=True,
                             check=True).stdout
        assert str(path.resolve()) in out and "limits.max_batch = 5" in out


def test_print_config_writes_limits_as_people_do() -> None:
    """`--print-config` writes integer bounds whole (67108864, not 6.71089e+07), and its int8
    figures are the README's (6.4x, 4.5%)."""
    text = config.documented_defaults()
    assert "e+0" not in text
    assert "an integer from 1024 to 67108864." in text
    assert "6.4x" in text and "4.5%" in text and "7x" not in text
