"""The exception tree: every error in one family, and map_errors at the edges."""

from __future__ import annotations

import errno

import pytest

from timbred import errors
from timbred.errors import (
    FAMILIES,
    InvalidInput,
    NotFound,
    OutputError,
    Unavailable,
    error_from_wire,
    family_of,
    map_errors,
    os_reason,
    wire_errors,
)


def _concrete() -> list[type[errors.TimbreError]]:
    return [cls for cls in errors._all_subclasses(errors.TimbreError)
            if cls not in FAMILIES and cls is not errors.RemoteError]


class TestFamilies:
    @pytest.mark.parametrize("cls", _concrete(), ids=lambda c: c.__name__)
    def test_every_error_is_in_exactly_one_family(self, cls: type[errors.TimbreError]) -> None:
        assert sum(issubclass(cls, family) for family in FAMILIES) == 1

    def test_families_have_no_wire_code_of_their_own(self) -> None:
        assert not set(FAMILIES) & set(wire_errors().values())

    def test_a_client_gets_the_family_back_from_the_wire(self) -> None:
        err = error_from_wire(-32030, "no job 'j1'", {"kind": "job_not_found", "job_id": "j1"})
        assert isinstance(err, NotFound) and family_of(err) is NotFound
        unknown = error_from_wire(-32099, "from a newer daemon", {"kind": "new_thing"})
        assert family_of(unknown) is errors.Internal

    @pytest.mark.parametrize("code", sorted(wire_errors()), ids=str)
    def test_every_wire_error_comes_back_as_its_class(self, code: int) -> None:
        cls = wire_errors()[code]
        err = error_from_wire(code, "said the daemon", {"kind": cls.kind, "path": "/x"})
        assert type(err) is cls and str(err) == "said the daemon"
        assert err.data == {"kind": cls.kind, "path": "/x"}

    def test_the_families_keep_the_builtin_bases_callers_catch(self) -> None:
        assert issubclass(errors.TakeNotFound, LookupError)
        assert issubclass(errors.InvalidParams, ValueError)
        assert issubclass(OutputError, OSError) and issubclass(OutputError, Unavailable)


class TestMapErrors:
    def test_translates_and_chains(self) -> None:
        cause = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(OutputError) as info, \
                map_errors(OSError, lambda exc: OutputError("/x.wav", os_reason(exc))):
            raise cause
        assert info.value.__cause__ is cause
        assert str(info.value) == "cannot write /x.wav: the disk is full"

    def test_timbre_errors_pass_through_even_when_they_are_oserrors(self) -> None:
        own = OutputError("/y.wav", "permission denied")
        with pytest.raises(OutputError) as info, \
                map_errors(OSError, lambda exc: OutputError("/x.wav", "translated")):
            raise own
        assert info.value is own

    def test_other_exceptions_are_not_touched(self) -> None:
        with pytest.raises(KeyError), \
                map_errors((OSError, ValueError), lambda exc: InvalidInput(str(exc))):
            raise KeyError("k")

    def test_os_reason_falls_back_to_strerror(self) -> None:
        assert os_reason(OSError(errno.EROFS, "x")) == "the file system is read-only"
        assert os_reason(OSError(errno.EIO, "Input/output error")) == "Input/output error"
