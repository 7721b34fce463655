#!/usr/bin/env bash
# The test command (README.md and .ci/run call it): builds .venv from the committed lock when
# it is missing or the lock has changed, then runs ruff, mypy --strict and pytest. Extra
# arguments go to pytest.
#
# .venv holds exactly requirements/dev.txt (hash-checked, no resolution: what CI tested is what
# installs), then torch (TIMBRE_TORCH_SPEC, default torch==2.13.0: an unpinned torch pulls
# gigabytes of CUDA; its own requirements are already in the lock), then Timbre itself
# (editable, built with the locked hatchling). A changed lock rebuilds .venv from nothing, so
# nothing an older lock installed is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${TIMBRE_PYTHON:-python3}
torch_spec=${TIMBRE_TORCH_SPEC:-torch==2.13.0}
venv=.venv
lock=requirements/dev.txt
stamp="$venv/.timbre-lock"
want="$(cat "$lock" pyproject.toml | sha256sum | cut -c1-16) $torch_spec"

if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	if [ -e "$venv" ]; then
		echo "==> $lock or pyproject.toml changed: rebuilding $venv from nothing" >&2
		rm -rf "$venv"
	fi
	echo "==> creating $venv with $($python --version 2>&1)" >&2
	"$python" -m venv "$venv"
	pip=("$venv/bin/python" -m pip --disable-pip-version-check)
	echo "==> installing the locked packages ($lock)" >&2
	"${pip[@]}" install --quiet --require-hashes --no-deps -r "$lock"
	echo "==> installing $torch_spec" >&2
	"${pip[@]}" install --quiet "$torch_spec"
	echo "==> installing timbre (editable)" >&2
	"${pip[@]}" install --quiet --no-deps --no-build-isolation -e .
	"${pip[@]}" check >&2
	echo "$want" >"$stamp"
fi

echo "==> ruff" >&2
"$venv/bin/ruff" check .
echo "==> mypy --strict" >&2
"$venv/bin/mypy"
echo "==> pytest" >&2
exec "$venv/bin/pytest" "$@"
