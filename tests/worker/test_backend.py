"""Tests for timbred.worker.backend: the torch-free types that cross the process boundary."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from timbred import errors
from timbred.worker.backend import (
    CancelToken,
    Capabilities,
    GenerationParams,
    validate_device,
    validate_dtype,
)


class TestGenerationParams:
    def test_round_trips_through_json(self) -> None:
        """to_dict() is plain JSON and from_dict() rebuilds an equal object."""
        params = GenerationParams(
            prompt="lo fi", duration_s=12.5, seed=7, temperature=0.9, top_k=100, top_p=0.5,
            guidance_scale=4.0, variations=3, melody_path="/m.wav", continuation_path="/c.wav",
        )
        data = json.loads(json.dumps(params.to_dict()))
        assert GenerationParams.from_dict(data) == params

    def test_defaults_and_float_normalisation(self) -> None:
        """Defaults follow audiocraft's, and integral floats are stored as floats."""
        data = GenerationParams(prompt="x", duration_s=2, seed=1).to_dict()
        assert data == {
            "prompt": "x", "duration_s": 2.0, "seed": 1, "temperature": 1.0, "top_k": 250,
            "top_p": 0.0, "guidance_scale": 3.0, "variations": 1, "melody_path": None,
            "continuation_path": None,
        }
        assert isinstance(data["duration_s"], float)

    @pytest.mark.parametrize(
        ("change", "param"),
        [
            ({"duration_s": 0}, "duration_s"),
            ({"duration_s": float("nan")}, "duration_s"),
            ({"duration_s": "10"}, "duration_s"),
            ({"seed": -1}, "seed"),
            ({"seed": 1.5}, "seed"),
            ({"seed": True}, "seed"),
            ({"temperature": -0.1}, "temperature"),
            ({"top_k": -1}, "top_k"),
            ({"top_p": 1.5}, "top_p"),
            ({"guidance_scale": -1}, "guidance_scale"),
            ({"variations": 0}, "variations"),
            ({"prompt": None}, "prompt"),
            ({"melody_path": ""}, "melody_path"),
            ({"continuation_path": 3}, "continuation_path"),
            ({"bogus": 1}, "bogus"),
        ],
    )
    def test_invalid_values_name_the_parameter(self, change: dict[str, Any], param: str) -> None:
        """Each invalid field raises InvalidParams whose data names that field."""
        data: dict[str, Any] = {"prompt": "x", "duration_s": 1.0, "seed": 0, **change}
        with pytest.raises(errors.InvalidParams) as info:
            GenerationParams.from_dict(data)
        assert info.value.data["param"] == param

    def test_missing_required_field(self) -> None:
        """from_dict() refuses an object without a required field, naming it."""
        with pytest.raises(errors.InvalidParams) as info:
            GenerationParams.from_dict({"prompt": "x", "seed": 1})
        assert info.value.data["param"] == "duration_s"


class TestCapabilities:
    def test_round_trips_through_json(self) -> None:
        """Capabilities survive to_dict -> JSON -> from_dict."""
        caps = Capabilities(melody=True, continuation=True, stereo=False,
                            max_native_duration_s=30.0, sample_rate=32000, frame_rate=50.0,
                            channels=1)
        assert Capabilities.from_dict(json.loads(json.dumps(caps.to_dict()))) == caps


class TestCancelToken:
    def test_cancel_from_another_thread(self) -> None:
        """A cancel from another thread is seen, and raise_if_cancelled raises Cancelled."""
        token = CancelToken()
        token.raise_if_cancelled()  # not cancelled yet: no error
        assert not token.cancelled
        thread = threading.Thread(target=token.cancel)
        thread.start()
        thread.join()
        assert token.cancelled
        with pytest.raises(errors.Cancelled):
            token.raise_if_cancelled()


class TestValidation:
    @pytest.mark.parametrize(("given", "expected"),
                             [("cpu", "cpu"), ("CUDA", "cuda"), ("cuda:01", "cuda:1")])
    def test_devices(self, given: str, expected: str) -> None:
        """cpu, cuda and cuda:N are accepted and normalised."""
        assert validate_device(given) == expected

    @pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "mps"])
    def test_bad_devices(self, bad: str) -> None:
        """Anything else is InvalidParams naming 'device'."""
        with pytest.raises(errors.InvalidParams) as info:
            validate_device(bad)
        assert info.value.data["param"] == "device"

    def test_dtypes(self) -> None:
        """The three supported dtypes pass; others are InvalidParams naming 'dtype'."""
        for name in ("float32", "bfloat16", "float16"):
            assert validate_dtype(name) == name
        with pytest.raises(errors.InvalidParams) as info:
            validate_dtype("int8")
        assert info.value.data["param"] == "dtype"
