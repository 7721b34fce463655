"""Fixtures for the studio's tests: the tiny MusicGen checkpoint, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from timbred.testing.tiny_musicgen import build_tiny_musicgen


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight MusicGen fixture (built once per session)."""
    return build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny")
