#!/usr/bin/env bash
# Are pyproject.toml's ranges honest? Builds a throwaway environment with the newest releases
# of everything, and one with the lowest versions pyproject.toml names for each direct
# dependency, runs the test suite in each, and reports which versions differ from the lock and
# what failed. Needs uv (`python3 -m pip install uv`) and the network; takes two suite runs.
#
#   ./scripts/check-deps.sh [newest|minimum|both] [pytest arguments...]   (default: both)
#
# The test tools (pytest, mypy, ruff, hypothesis, ...), torch's own requirements and the build
# backend stay at their locked versions in both modes: the question is the application's direct
# dependencies. torch is
# TIMBRE_TORCH_SPEC in both (pinned on its own, see requirements/overrides.txt).
# Exit status: 0 when every mode passed, 1 when one failed, 2 on a usage error.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-both}
case $mode in
newest | minimum) modes=("$mode") ;;
both) modes=(minimum newest) ;;
-h | --help)
	sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "check-deps.sh: unknown mode '$mode' (newest, minimum or both)" >&2
	exit 2
	;;
esac
[[ $# -gt 0 ]] && shift
command -v uv >/dev/null 2>&1 || {
	echo "check-deps.sh: needs uv; install it with 'python3 -m pip install uv' and run again" >&2
	exit 1
}
python=${TIMBRE_PYTHON:-python3}
torch_spec=${TIMBRE_TORCH_SPEC:-torch==2.13.0}
work=${TIMBRE_CHECK_DIR:-$(mktemp -d -t timbre-check-deps.XXXXXX)}
mkdir -p "$work"

# The locked pins of the test tools, torch's own requirements and the build backend, as
# constraints for both modes: only the application's direct dependencies move.
"$python" - >"$work/tools.txt" <<'PY'
import re
import tomllib

wanted = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["dev"]
for name in ("requirements/torch.in", "requirements/build.in"):
    wanted += [line for line in open(name, encoding="utf-8") if line.strip()[:1].isalnum()]
names = {re.match(r"[A-Za-z0-9._-]+", d).group(0).lower().replace("_", "-") for d in wanted}
for line in open("requirements/dev.txt", encoding="utf-8"):
    m = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)( ;[^\\]*)?", line)
    if m and m.group(1).lower().replace("_", "-") in names:
        print(f"{m.group(1)}=={m.group(2)}{(m.group(3) or '').rstrip()}")
PY

status=0
summary=()
for m in "${modes[@]}"; do
	resolution=highest
	[[ $m == minimum ]] && resolution=lowest-direct
	echo "==> $m: resolving ($resolution) into $work/$m.txt" >&2
	uv pip compile --quiet --resolution "$resolution" --python "$python" --no-emit-package torch \
		--override requirements/overrides.txt --constraint "$work/tools.txt" \
		--output-file "$work/$m.txt" pyproject.toml requirements/torch.in requirements/build.in \
		--extra dev
	echo "==> $m: versions that differ from the lock (lock -> tested)" >&2
	"$python" - "$work/$m.txt" <<'PY' | tee "$work/$m.diff" >&2
import re
import sys

try:
    from packaging.markers import Marker
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.markers import Marker


def pins(path):
    # The lock is universal: a package may be pinned twice, under exclusive markers
    # (numpy for Python < 3.12 and >= 3.12); compare the pin for this interpreter.
    out = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"([A-Za-z0-9._-]+)==([^\s;\\]+)(?: ;([^\\]*))?", line)
        if m and (not m.group(3) or Marker(m.group(3).strip()).evaluate()):
            out[m.group(1).lower()] = m.group(2)
    return out

lock, got = pins("requirements/dev.txt"), pins(sys.argv[1])
rows = [(n, lock.get(n, "-"), v) for n, v in sorted(got.items()) if lock.get(n) != v]
for name, was, now in rows:
    print(f"    {name:28} {was:>14} -> {now}")
if not rows:
    print("    (none: the lock is this mode's resolution)")
PY
	venv=$work/$m-venv
	rm -rf "$venv"
	"$python" -m venv "$venv"
	pip=("$venv/bin/python" -m pip --disable-pip-version-check --quiet)
	"${pip[@]}" install --no-deps -r "$work/$m.txt"
	"${pip[@]}" install "$torch_spec"
	"${pip[@]}" install --no-deps --no-build-isolation -e .
	echo "==> $m: pytest" >&2
	set +e
	# The offline install test installs the lock from the test environment's own packages,
	# so it can pass only in an environment built from the lock (scripts/test.sh's).
	"$venv/bin/python" -m pytest -q -p no:cacheprovider \
		--deselect tests/test_packaging.py::TestInstallScript::test_install_reinstall_uninstall \
		"$@" 2>&1 | tee "$work/$m.log" |
		grep -E '^(FAILED|ERROR)|passed|failed|error' >&2
	rc=${PIPESTATUS[0]}
	set -e
	line=$(grep -E '(passed|failed|error).* in [0-9.]+s' "$work/$m.log" | tail -1)
	summary+=("$m: ${line:-no summary (see $work/$m.log)}")
	[[ $rc -ne 0 ]] && status=1
done

echo "==> summary (logs and resolutions in $work)" >&2
printf '    %s\n' "${summary[@]}" >&2
exit "$status"
