"""Tests for timbred.worker.backend: the torch-free types that cross the process boundary."""

from __future__ import annotations

import json
import threading

import pytest

from timbred import errors
from timbred.worker.backend import CancelToken, Capabilities, validate_device, validate_dtype


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
