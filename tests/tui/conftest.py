"""Fixtures for the studio's tests: the tiny MusicGen and ACE-Step checkpoints, built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from timbred.testing.tiny_ace_step import build_tiny_ace_step
from timbred.testing.tiny_musicgen import build_tiny_musicgen


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight MusicGen fixture (built once per session)."""
    return build_tiny_musicgen(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_ace_step(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight ACE-Step turbo pipeline (it sings noise), built once."""
    return build_tiny_ace_step(tmp_path_factory.mktemp("models") / "ace-step")
