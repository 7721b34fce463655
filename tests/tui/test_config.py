"""tui.toml: keys and theme, and the clear start-up errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from timbre_tui.app import main
from timbre_tui.config import load_config
from timbre_tui.key_bindings import DEFAULT_KEYS, describe_keys, parse_key_sequence
from timbre_tui.style import THEMES, UnknownTheme, build_style
from timbred.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tui.toml"
    path.write_text(text)
    return path


class TestKeys:
    def test_friendly_and_prompt_toolkit_spellings(self) -> None:
        """"alt-enter", "escape enter" and "Alt-Enter" are one key; so are ctrl-p and c-p."""
        assert parse_key_sequence("alt-enter") == ("escape", "c-m")
        assert parse_key_sequence("escape enter") == ("escape", "c-m")
        assert parse_key_sequence("ctrl-p") == parse_key_sequence("c-p") == ("c-p",)
        assert parse_key_sequence("space") == ("space",)
        assert describe_keys("escape c-m") == "Alt-Enter"
        assert describe_keys("c-q") == "Ctrl-Q" and describe_keys("f5") == "F5"

    def test_overrides_lists_and_unbinding(self, tmp_path: Path) -> None:
        """A file's [keys] replace the defaults per action; a list binds several; "" unbinds."""
        config = load_config(write(tmp_path, '[keys]\nplay_pause = "ctrl-space"\n'
                                             'newline = ["alt-enter", "c-j"]\nstop = ""\n'
                                             '[theme]\nname = "high-contrast"\n'))
        assert config.keys["play_pause"] == ("c-@",)
        assert config.keys["newline"] == ("escape c-m", "c-j")
        assert config.keys["stop"] == ()
        assert config.keys["quit"] == DEFAULT_KEYS["quit"]
        assert config.theme == "high-contrast"
        assert config.preview  # on unless turned off
        assert not load_config(write(tmp_path, "[preview]\nenabled = false\n")).preview

    @pytest.mark.parametrize(("text", "needle"), [
        ('[keys]\nplay = "f5"\n', "keys.play: expected a known action"),
        ('[keys]\nquit = "c-qq"\n', "keys.quit: expected a key such as"),
        ('[keys]\nstop = "f5"\n', 'keys.stop: expected a key not already bound ("f5" is bound'),
        ('[keys]\nquit = 3\n', "keys.quit: expected a key string or a list"),
        ('[colours]\nx = 1\n', "colours: expected a known section"),
        ('[theme]\nname = "neon"\n', "theme.name: expected one of default, high-contrast"),
        ('[preview]\nenabled = "no"\n', "preview.enabled: expected true or false"),
        ('[preview]\nplay = true\n', "preview.play: expected a known key (enabled)"),
        ("[keys\n", "(file): expected valid TOML"),
    ])
    def test_errors_name_the_file_and_the_key(self, tmp_path: Path, text: str,
                                              needle: str) -> None:
        """Each mistake is refused with the file, the key and what was expected."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: ")
        assert needle in str(info.value)

    def test_missing_default_file_means_defaults(self, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
        """No tui.toml in the config directory is fine; a missing --config file is not."""
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "nowhere"))
        assert load_config().keys == DEFAULT_KEYS
        with pytest.raises(ConfigError, match="an existing file"):
            load_config(tmp_path / "absent.toml")


class TestThemes:
    def test_every_theme_builds_and_unknown_ones_are_refused(self) -> None:
        """Both shipped themes build a Style; another name raises UnknownTheme listing them."""
        for name in THEMES:
            build_style(name)
        with pytest.raises(UnknownTheme, match="themes: default, high-contrast"):
            build_style("neon")


class TestCommandLine:
    def test_bad_config_or_theme_exit_2_with_a_message(self, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
        """`timbre --config bad.toml` and `timbre --theme neon` exit 2 before taking the
        screen, saying what is wrong."""
        bad = write(tmp_path, '[keys]\nplay = "f5"\n')
        assert main(["--config", str(bad), "--socket", str(tmp_path / "s.sock")]) == 2
        assert f"timbre: {bad}: keys.play" in capsys.readouterr().err
        good = write(tmp_path, "")
        assert main(["--config", str(good), "--theme", "neon",
                     "--socket", str(tmp_path / "s.sock")]) == 2
        assert "unknown theme 'neon'" in capsys.readouterr().err
