#!/usr/bin/env bash
# Refresh the committed lock, requirements/app.txt, ray.txt and dev.txt, from the ranges
# in pyproject.toml, and print what moved. Needs uv (`python3 -m pip install uv`).
#
#   ./scripts/lock.sh          every package to its newest release inside the ranges
#   ./scripts/lock.sh --keep   only what pyproject.toml's changes need; other pins stay
#
# A lock refresh is a change of its own: run ./scripts/test.sh (it rebuilds .venv from the new
# lock) and ./scripts/check-deps.sh, then commit the lock with what they printed.
#
# The lock is universal (Python 3.11 and newer, Linux and macOS; markers where they differ)
# and hash-pinned. torch stays out of it (requirements/overrides.txt says why); its own
# requirements, read from the metadata of TIMBRE_TORCH_SPEC's wheel, are locked instead
# (requirements/torch.in).
set -euo pipefail
cd "$(dirname "$0")/.."

upgrade=(--upgrade)
case ${1:-} in
--keep) upgrade=() ;;
"") ;;
-h | --help)
	sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "lock.sh: unknown option '$1' (try --help)" >&2
	exit 2
	;;
esac
command -v uv >/dev/null 2>&1 || {
	echo "lock.sh: needs uv; install it with 'python3 -m pip install uv' and run again" >&2
	exit 1
}
torch_spec=${TIMBRE_TORCH_SPEC:-torch==2.13.0}
python=${TIMBRE_PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "==> reading the requirements of $torch_spec" >&2
"$python" -m pip install --quiet --disable-pip-version-check --dry-run --no-deps \
	--ignore-installed --report "$tmp/torch.json" "$torch_spec"
"$python" - "$tmp/torch.json" "$torch_spec" >requirements/torch.in <<'PY'
import json
import sys

report = json.load(open(sys.argv[1], encoding="utf-8"))
meta = report["install"][0]["metadata"]
print(f"# The requirements of {meta['name']} {meta['version']} ({sys.argv[2]}), every build's "
      "alike;\n# written by scripts/lock.sh from the wheel's metadata. Extras are left out.")
for req in meta.get("requires_dist", []):
    if "extra ==" not in req:
        print(req)
PY

for name in app ray dev; do
	[[ -f requirements/$name.txt ]] && cp "requirements/$name.txt" "$tmp/$name.before"
done
compile() {
	local out=$1
	shift
	uv pip compile --quiet --universal --python-version 3.11 --generate-hashes \
		${upgrade[@]+"${upgrade[@]}"} --no-emit-package torch \
		--override requirements/overrides.txt \
		--custom-compile-command "./scripts/lock.sh" \
		--output-file "$out" pyproject.toml requirements/torch.in requirements/build.in "$@"
}
echo "==> resolving requirements/app.txt (the application), ray.txt (+ the ray extra) and dev.txt (+ tests, which run a real Ray cluster)" >&2
compile requirements/app.txt
# A new ray.txt starts from app.txt's pins, so the two differ only by the ray extra.
[[ -f requirements/ray.txt ]] || cp requirements/app.txt requirements/ray.txt
compile requirements/ray.txt --extra ray
compile requirements/dev.txt --extra dev --extra ray
# What the lock was resolved from, so a test notices a pyproject.toml changed without a re-lock.
inputs=$("$python" scripts/lock_inputs.py)
for name in app ray dev; do
	sed -i.bak "2a # inputs: $inputs (scripts/lock_inputs.py)" "requirements/$name.txt"
	rm -f "requirements/$name.txt.bak"
done

# What moved: one line per package whose pins changed, in either file.
pins() { grep -hoE '^[A-Za-z0-9._-]+==[^ ;\\]+( ;[^\\]*)?' "$@" 2>/dev/null | sed 's/ *$//' | sort -u; }
moved=$(diff <(pins "$tmp"/*.before) <(pins requirements/app.txt requirements/ray.txt requirements/dev.txt) |
	sed -n 's/^</  -/p; s/^>/  +/p' || true)
if [[ -z $moved ]]; then
	echo "==> nothing moved" >&2
else
	echo "==> what moved (- before, + now):" >&2
	echo "$moved" >&2
fi
