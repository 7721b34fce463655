#!/usr/bin/env bash
# The test command (README.md and .ci/run call it): builds .venv from nothing when needed,
# then runs ruff, mypy --strict and pytest. Extra arguments go to pytest.
#
# The environment is rebuilt when pyproject.toml changes (a hash stamp in .venv). torch is
# pinned here (TIMBRE_TORCH_SPEC overrides it): an unpinned torch pulls gigabytes of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${TIMBRE_PYTHON:-python3}
venv=.venv
stamp="$venv/.timbre-deps"
want="$(sha256sum pyproject.toml | cut -c1-16) ${TIMBRE_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$venv/bin/python" ]; then
	echo "==> creating $venv with $($python --version 2>&1)" >&2
	"$python" -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
	echo "==> installing ${TIMBRE_TORCH_SPEC:-torch==2.13.0} and timbre[dev] into $venv" >&2
	"$venv/bin/pip" install --quiet --disable-pip-version-check "${TIMBRE_TORCH_SPEC:-torch==2.13.0}"
	"$venv/bin/pip" install --quiet --disable-pip-version-check -e ".[dev]"
	echo "$want" >"$stamp"
fi

echo "==> ruff" >&2
"$venv/bin/ruff" check .
echo "==> mypy --strict" >&2
"$venv/bin/mypy"
echo "==> pytest" >&2
exec "$venv/bin/pytest" "$@"
