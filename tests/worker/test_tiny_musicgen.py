"""Tests for timbred.testing.tiny_musicgen: the test checkpoint builder itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import AutoProcessor, MusicgenForConditionalGeneration

from timbred.testing.tiny_musicgen import BUILDER_VERSION, build_tiny_musicgen


class TestBuildTinyMusicgen:
    def test_loads_with_from_pretrained(self, tiny_model: Path) -> None:
        """The checkpoint and its processor load with plain from_pretrained, offline."""
        model = MusicgenForConditionalGeneration.from_pretrained(tiny_model,
                                                                 local_files_only=True)
        processor: Any = AutoProcessor.from_pretrained(  # type: ignore[no-untyped-call]
            tiny_model, local_files_only=True
        )
        config: Any = model.config
        assert config.audio_encoder.sampling_rate == 32_000
        assert config.decoder.num_codebooks == 4
        assert processor.feature_extractor.sampling_rate == 32_000
        assert processor(text=["lo fi"], return_tensors="pt")["input_ids"].shape[0] == 1

    def test_idempotent(self, tiny_model: Path) -> None:
        """Building again into a finished directory leaves it untouched."""
        weights = tiny_model / "model.safetensors"
        before = weights.stat().st_mtime_ns
        assert build_tiny_musicgen(tiny_model) == tiny_model
        assert weights.stat().st_mtime_ns == before

    def test_deterministic_and_stale_cache_rebuilt(self, tiny_model: Path,
                                                   tmp_path: Path) -> None:
        """A build is byte-identical to another; a stale stamp makes it rebuild in place."""
        dest = build_tiny_musicgen(tmp_path / "copy")
        reference = (tiny_model / "model.safetensors").read_bytes()
        assert (dest / "model.safetensors").read_bytes() == reference
        stamp = dest / "timbre-fixture.json"
        stale = json.loads(stamp.read_text())
        stale["version"] = BUILDER_VERSION - 1
        stamp.write_text(json.dumps(stale))
        (dest / "model.safetensors").write_bytes(b"garbage")
        build_tiny_musicgen(dest)
        assert json.loads(stamp.read_text())["version"] == BUILDER_VERSION
        assert (dest / "model.safetensors").read_bytes() == reference
        assert [p.name for p in tmp_path.iterdir()] == ["copy"]  # no temp dirs left behind

    def test_variants_are_stamped(self, tmp_path: Path) -> None:
        """Asking for another variant at the same path rebuilds it as that variant."""
        dest = build_tiny_musicgen(tmp_path / "m")
        build_tiny_musicgen(dest, melody=True)
        config = json.loads((dest / "config.json").read_text())
        assert config["model_type"] == "musicgen_melody"
