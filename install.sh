#!/usr/bin/env bash
# Install Timbre for the current user from this clone, or uninstall it.
#
# Written for bash 3.2 as well (macOS /bin/bash): no associative arrays, no
# mapfile, and empty arrays are expanded as ${a[@]+"${a[@]}"}.
set -euo pipefail

usage() {
	cat <<'EOF'
Usage: ./install.sh [--editable] [--no-service] [--with ray]
       ./install.sh --uninstall
       ./install.sh --help

Installs Timbre for the current user: an isolated virtual environment with
the locked dependencies (requirements/app.txt, exactly the tested versions),
torch and Timbre, links to timbred, timbrectl and timbre, and a user service
that starts the daemon at login (systemd --user on Linux, a LaunchAgent on
macOS). Running it again upgrades in place.

Options:
  --editable     install Timbre in editable mode (for developers; keep the
                 clone where it is)
  --no-service   do not install or start the user service
  --with ray     also install Ray (the optional ray extra, pinned in
                 requirements/ray.txt), for [executor] kind = "ray" and
                 for Ray worker nodes
  --uninstall    stop and remove the service, the links and the virtual
                 environment; your music, history, config and model cache
                 are left alone
  -h, --help     show this help

Environment:
  TIMBRE_PYTHON           interpreter for the venv (default: the first
                          python3, python3.14 ... python3.11 that is >= 3.11)
  TIMBRE_HOME             where the venv goes, as $TIMBRE_HOME/venv
                          (default: ${XDG_DATA_HOME:-~/.local/share}/timbre)
  TIMBRE_BIN_DIR          where the links go (default: ~/.local/bin)
  TIMBRE_TORCH_SPEC       torch requirement (default: torch==2.13.0)
  TIMBRE_TORCH_INDEX_URL  package index for torch only, e.g.
                          https://download.pytorch.org/whl/cu128 for CUDA 12.8
  TIMBRE_INSTALLER        auto (uv if on PATH, else pip), uv or pip
  TIMBRE_PIP_ARGS         extra arguments for every pip install (split on
                          spaces), e.g. "--no-index --no-build-isolation"
  TIMBRE_VENV_SYSTEM_SITE_PACKAGES
                          1: the venv also sees the packages of TIMBRE_PYTHON,
                          including those of the venv it belongs to, if any
                          (for tests and CI that already have the dependencies)

Exit status: 0 done, 1 failed, 2 usage error.
EOF
}

# ---------------------------------------------------------------- output

step() { printf '\n==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
	printf 'error: %s\n' "$*" >&2
	exit 1
}
usage_error() {
	printf 'install.sh: %s\n' "$*" >&2
	printf "Try './install.sh --help'.\n" >&2
	exit 2
}

# ---------------------------------------------------------------- arguments

mode=install
editable=0
service=1
with_ray=0
while [[ $# -gt 0 ]]; do
	case $1 in
	--editable) editable=1 ;;
	--with)
		[[ $# -ge 2 ]] || usage_error "--with needs an extra's name (ray)"
		case $2 in
		ray) with_ray=1 ;;
		*) usage_error "--with $2: the one optional extra is ray" ;;
		esac
		shift
		;;
	--with=ray) with_ray=1 ;;
	--no-service) service=0 ;;
	--uninstall) mode=uninstall ;;
	-h | --help)
		usage
		exit 0
		;;
	*) usage_error "unknown argument: $1" ;;
	esac
	shift
done
if [[ $mode == uninstall && $editable == 1 ]]; then
	usage_error "--editable cannot be combined with --uninstall"
fi

# ---------------------------------------------------------------- paths

[[ -n ${HOME:-} ]] || die "HOME is not set"
repo_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
data_home=${XDG_DATA_HOME:-$HOME/.local/share}
config_home=${XDG_CONFIG_HOME:-$HOME/.config}
timbre_home=${TIMBRE_HOME:-$data_home/timbre}
venv=$timbre_home/venv
bin_dir=${TIMBRE_BIN_DIR:-$HOME/.local/bin}
unit_name=timbred.service
unit_path=$config_home/systemd/user/$unit_name
launchd_label=org.timbre.timbred
plist_path=$HOME/Library/LaunchAgents/$launchd_label.plist
launchd_logs=$HOME/Library/Logs/timbre
commands=(timbred timbrectl timbre)

case $timbre_home in
/*) ;;
*) die "TIMBRE_HOME (or XDG_DATA_HOME) must be an absolute path, not '$timbre_home'" ;;
esac
case $bin_dir in
/*) ;;
*) die "TIMBRE_BIN_DIR must be an absolute path, not '$bin_dir'" ;;
esac

# ---------------------------------------------------------------- service managers

# Prints systemd, launchd or none: the user service manager we can talk to.
service_manager() {
	if [[ $(uname -s) == Darwin ]]; then
		if command -v launchctl >/dev/null 2>&1; then
			echo launchd
			return
		fi
	elif command -v systemctl >/dev/null 2>&1 &&
		systemctl --user show-environment >/dev/null 2>&1; then
		echo systemd
		return
	fi
	echo none
}

launchd_domain() { echo "gui/$(id -u)"; }

launchd_loaded() { launchctl print "$(launchd_domain)/$launchd_label" >/dev/null 2>&1; }

# bootout returns before the job is gone; bootstrap fails (error 5) until it is.
launchd_unload() {
	local tries=0
	launchd_loaded || return 0
	launchctl bootout "$(launchd_domain)/$launchd_label" 2>/dev/null || true
	while launchd_loaded; do
		tries=$((tries + 1))
		[[ $tries -le 20 ]] || die "launchd did not unload $launchd_label within 10 s"
		sleep 0.5
	done
}

# ---------------------------------------------------------------- install steps

# Prints the path of a Python >= 3.11, or explains and exits.
find_python() {
	local candidate path version
	local check='import sys; print("%d.%d" % sys.version_info[:2]); sys.exit(sys.version_info < (3, 11))'
	if [[ -n ${TIMBRE_PYTHON:-} ]]; then
		path=$(command -v "$TIMBRE_PYTHON" 2>/dev/null) ||
			die "TIMBRE_PYTHON=$TIMBRE_PYTHON is not an executable"
		version=$("$path" -c "$check" 2>/dev/null) ||
			die "Timbre needs Python >= 3.11, but TIMBRE_PYTHON=$TIMBRE_PYTHON is Python ${version:-(unknown)}."
		echo "$path"
		return
	fi
	for candidate in python3 python3.14 python3.13 python3.12 python3.11; do
		path=$(command -v "$candidate" 2>/dev/null) || continue
		if "$path" -c "$check" >/dev/null 2>&1; then
			echo "$path"
			return
		fi
	done
	version=$(python3 -c "$check" 2>/dev/null || true)
	die "Timbre needs Python >= 3.11; python3 is ${version:-missing}.
       Install a newer one (your distribution's python3.12 package, 'brew install python@3.12'
       or 'uv python install 3.12') and run again with TIMBRE_PYTHON=/path/to/python3.12."
}

use_uv() {
	case ${TIMBRE_INSTALLER:-auto} in
	uv)
		command -v uv >/dev/null 2>&1 || die "TIMBRE_INSTALLER=uv but uv is not on PATH"
		return 0
		;;
	pip) return 1 ;;
	auto) command -v uv >/dev/null 2>&1 ;;
	*) die "TIMBRE_INSTALLER must be auto, uv or pip, not '$TIMBRE_INSTALLER'" ;;
	esac
}

# Prints "MAJOR.MINOR" of the venv's Python, or nothing if the venv is unusable.
venv_version() {
	"$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

remove_venv() {
	if [[ -d $venv && ! -f $venv/pyvenv.cfg ]]; then
		die "$venv exists but is not a virtual environment; not deleting it. Move it away and run again."
	fi
	rm -rf "$venv"
}

create_venv() {
	local python=$1 want_version have_version want_system cfg_system=false
	want_version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
	want_system=false
	[[ ${TIMBRE_VENV_SYSTEM_SITE_PACKAGES:-0} == 1 ]] && want_system=true

	if [[ -e $venv ]]; then
		have_version=$(venv_version)
		if grep -qi '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" 2>/dev/null; then
			cfg_system=true
		fi
		if [[ $have_version == "$want_version" && $cfg_system == "$want_system" ]]; then
			info "reusing $venv (Python $have_version)"
		else
			info "recreating $venv (was Python ${have_version:-broken}, system site packages $cfg_system)"
			remove_venv
		fi
	fi

	if [[ ! -e $venv ]]; then
		local flags=()
		[[ $want_system == true ]] && flags+=(--system-site-packages)
		if [[ ! -d $timbre_home ]]; then
			mkdir -p "$timbre_home"
			chmod 700 "$timbre_home" # it also holds the history database
		fi
		if use_uv; then
			uv venv --quiet ${flags[@]+"${flags[@]}"} --python "$python" "$venv" >&2
		else
			# A venv that sees its parent's packages takes pip and setuptools from there too:
			# the copies ensurepip bundles (setuptools 65 on Python 3.11) would shadow the
			# locked ones and make an offline install of the lock fail.
			[[ $want_system == true ]] && flags+=(--without-pip)
			"$python" -m venv ${flags[@]+"${flags[@]}"} "$venv" ||
				die "'$python -m venv' failed. On Debian and Ubuntu install the python3-venv package (or install uv) and run again."
		fi
		info "created $venv (Python $want_version)"
	fi

	# --system-site-packages reaches the base installation only. When the
	# interpreter runs inside a venv itself, add that venv's packages too.
	if [[ $want_system == true ]]; then
		local parent_site venv_site
		parent_site=$("$python" -c 'import sys, sysconfig
if sys.prefix != sys.base_prefix:
    p = sysconfig.get_paths()
    print("\n".join(dict.fromkeys([p["purelib"], p["platlib"]])))')
		if [[ -n $parent_site ]]; then
			venv_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
			printf '%s\n' "$parent_site" >"$venv_site/_timbre_parent_site.pth"
			info "the venv also sees the packages of $(dirname "$(dirname "$python")")"
		fi
	fi
}

# pip_install ARGS...: install into the venv with uv or pip, plus TIMBRE_PIP_ARGS.
pip_install() {
	local extra=()
	if [[ -n ${TIMBRE_PIP_ARGS:-} ]]; then
		read -r -a extra <<<"$TIMBRE_PIP_ARGS"
	fi
	if use_uv; then
		uv pip install --python "$venv/bin/python" ${extra[@]+"${extra[@]}"} "$@" >&2
	else
		"$venv/bin/python" -m pip install --disable-pip-version-check \
			${extra[@]+"${extra[@]}"} "$@" >&2
	fi
}

install_packages() {
	local torch_spec=${TIMBRE_TORCH_SPEC:-torch==2.13.0} index=() lock=$repo_dir/requirements/app.txt
	# The ray lock is the app lock plus Ray and its own requirements, resolved together.
	[[ $with_ray == 1 ]] && lock=$repo_dir/requirements/ray.txt
	# Exactly the tested versions, hash-checked, nothing resolved: a release upstream made
	# last night cannot reach this install (scripts/lock.sh moves the lock, on purpose).
	info "installing the locked dependencies ($lock)"
	pip_install --require-hashes --no-deps -r "$lock" ||
		die "installing the locked dependencies failed (see the output above)"

	# torch on its own: its wheel differs between CPU and CUDA builds. Its own requirements
	# are already installed from the lock.
	if [[ -n ${TIMBRE_TORCH_INDEX_URL:-} ]]; then
		index=(--index-url "$TIMBRE_TORCH_INDEX_URL")
		info "torch from $TIMBRE_TORCH_INDEX_URL"
	fi
	info "installing $torch_spec"
	pip_install ${index[@]+"${index[@]}"} "$torch_spec" ||
		die "installing $torch_spec failed (see the output above)"

	# Timbre itself adds nothing: built with the locked hatchling, its dependencies are there.
	local editable_flag=()
	[[ $editable == 1 ]] && editable_flag=(--editable)
	if [[ $editable == 1 ]]; then
		info "installing Timbre from $repo_dir (editable: keep the clone there)"
	else
		info "installing Timbre from $repo_dir"
	fi
	pip_install --no-deps --no-build-isolation ${editable_flag[@]+"${editable_flag[@]}"} "$repo_dir" ||
		die "installing Timbre failed (see the output above)"

	# The unit's Documentation= points here: docs that match the installed version.
	if [[ -f $repo_dir/README.md ]]; then
		mkdir -p "$venv/share/doc/timbre"
		cp "$repo_dir/README.md" "$venv/share/doc/timbre/README.md"
	fi
}

link_commands() {
	local name target link
	mkdir -p "$bin_dir"
	for name in "${commands[@]}"; do
		target=$venv/bin/$name
		link=$bin_dir/$name
		[[ -x $target ]] || die "$target is missing after the install"
		if [[ -e $link && ! -L $link ]]; then
			die "$link exists and is not a link; move it away (another install of Timbre?) and run again"
		fi
		ln -sfn "$target" "$link"
		info "$link -> $target"
	done
	case ":${PATH:-}:" in
	*":$bin_dir:"*) ;;
	*)
		local shown=$bin_dir
		[[ $bin_dir == "$HOME"/* ]] && shown="\$HOME${bin_dir#"$HOME"}"
		warn "$bin_dir is not on your PATH. Add this line to ~/.profile (or ~/.zshrc):"
		# shellcheck disable=SC2016 # $PATH is meant literally: the user pastes it.
		printf '    export PATH="%s:$PATH"\n' "$shown" >&2
		;;
	esac
}

# render KIND TEMPLATE DEST: write the unit or plist with this install's paths.
render() {
	"$venv/bin/python" - "$@" "$HOME" "$bin_dir" "$timbre_home" <<'PY'
import os
import pathlib
import plistlib
import sys
from xml.sax.saxutils import escape

kind, template, dest, home, bin_dir, timbre_home = sys.argv[1:]
text = pathlib.Path(template).read_text(encoding="utf-8")
timbred = os.path.join(bin_dir, "timbred")


def replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        sys.exit(f"error: {template} must contain {old!r} exactly once")
    return text.replace(old, new)


if kind == "unit":
    # systemd refuses to run an executable whose path holds quotes, backslashes
    # or control characters; spaces are fine once quoted, % must be doubled.
    if any(c in timbred for c in "\"'\\") or not timbred.isprintable():
        sys.exit(f"error: systemd cannot run {timbred!r}: pick a TIMBRE_BIN_DIR without quotes")
    exe = timbred.replace("%", "%%")
    if any(c.isspace() for c in exe):
        exe = f'"{exe}"'
    readme = pathlib.Path(timbre_home, "venv/share/doc/timbre/README.md").as_uri()
    text = replace_once(text, "ExecStart=%h/.local/bin/timbred", "ExecStart=" + exe)
    text = replace_once(
        text,
        "Documentation=file://%h/.local/share/timbre/venv/share/doc/timbre/README.md",
        "Documentation=" + readme.replace("%", "%%"),
    )
else:
    text = replace_once(text, "@HOME@/.local/bin/timbred", escape(timbred))
    text = text.replace("@HOME@", escape(home))
    plistlib.loads(text.encode("utf-8"))  # refuse to install a broken plist

tmp = pathlib.Path(dest + ".tmp")
tmp.write_text(text, encoding="utf-8")
tmp.chmod(0o644)
tmp.replace(dest)
PY
}

install_systemd() {
	mkdir -p "$(dirname "$unit_path")"
	render unit "$repo_dir/packaging/systemd/$unit_name" "$unit_path"
	info "wrote $unit_path"
	systemctl --user daemon-reload
	systemctl --user enable "$unit_name" >&2 || die "systemctl --user enable $unit_name failed"
	if systemctl --user is-active --quiet "$unit_name"; then
		info "restarting $unit_name so the new version runs"
	else
		info "starting $unit_name"
	fi
	if ! systemctl --user restart "$unit_name"; then
		warn "$unit_name did not start. Its log: journalctl --user -u timbred -e"
		warn "If you started timbred by hand, it is still running (exit status 3); stop it, then: systemctl --user restart timbred"
		die "the service did not start"
	fi
	info "running; status: systemctl --user status timbred"
}

install_launchd() {
	mkdir -p "$(dirname "$plist_path")" "$launchd_logs"
	render plist "$repo_dir/packaging/launchd/$launchd_label.plist" "$plist_path"
	info "wrote $plist_path"
	if launchd_loaded; then
		info "unloading the running agent so the new version runs"
		launchd_unload
	fi
	launchctl enable "$(launchd_domain)/$launchd_label"
	launchctl bootstrap "$(launchd_domain)" "$plist_path" ||
		die "launchctl bootstrap failed; see $launchd_logs/timbred.log"
	info "loaded; status: launchctl print $(launchd_domain)/$launchd_label"
}

# Sets service_manager_used to systemd, launchd or none.
install_service() {
	service_manager_used=$(service_manager)
	case $service_manager_used in
	systemd) install_systemd ;;
	launchd) install_launchd ;;
	none)
		info "No user service manager is available here ('systemctl --user' cannot reach a"
		info "user manager: a container, CI, or a session without systemd), so the daemon"
		info "will not start by itself. Start it by hand:"
		info "  timbrectl daemon start    (in the background)"
		info "  timbred                   (in the foreground, in a terminal)"
		;;
	esac
}

do_install() {
	local python
	[[ -f $repo_dir/pyproject.toml ]] || die "$repo_dir/pyproject.toml not found; run install.sh from a Timbre clone"

	step "Checking Python"
	python=$(find_python)
	info "using $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"

	step "Creating the virtual environment"
	create_venv "$python"

	step "Installing torch and Timbre"
	install_packages

	step "Linking commands into $bin_dir"
	link_commands

	step "Installing the user service"
	service_manager_used=skipped
	if [[ $service == 1 ]]; then
		install_service
	else
		info "skipped (--no-service)"
	fi

	step "Done. Next steps:"
	case $service_manager_used in
	systemd | launchd) info "the daemon is running as a user service and starts at login" ;;
	*) info "timbrectl daemon start     start the daemon in the background" ;;
	esac
	info "timbrectl status           check that it answers"
	info "timbre                     open the TUI"
}

# ---------------------------------------------------------------- uninstall

uninstall_service() {
	local manager removed=0
	manager=$(service_manager)
	if [[ $manager == systemd ]]; then
		if systemctl --user cat "$unit_name" >/dev/null 2>&1 || [[ -e $unit_path ]]; then
			info "stopping and disabling $unit_name"
			systemctl --user disable --now "$unit_name" >/dev/null 2>&1 || true
		fi
	elif [[ $manager == launchd ]] && launchd_loaded; then
		info "unloading $launchd_label"
		launchd_unload
		removed=1
	fi
	if [[ -e $unit_path ]]; then
		rm -f "$unit_path"
		info "removed $unit_path"
		removed=1
		if [[ $manager == systemd ]]; then
			systemctl --user daemon-reload
			systemctl --user reset-failed "$unit_name" >/dev/null 2>&1 || true
		fi
	fi
	if [[ -e $plist_path ]]; then
		rm -f "$plist_path"
		info "removed $plist_path"
		removed=1
	fi
	if [[ $removed == 0 ]]; then
		info "no service installed"
	fi
}

uninstall_links() {
	local name link removed=0
	for name in "${commands[@]}"; do
		link=$bin_dir/$name
		if [[ -L $link && $(readlink "$link") == "$venv/bin/$name" ]]; then
			rm -f "$link"
			info "removed $link"
			removed=1
		elif [[ -e $link || -L $link ]]; then
			warn "left $link alone: it is not a link into $venv"
		fi
	done
	if [[ $removed == 0 ]]; then
		info "no links to remove"
	fi
}

do_uninstall() {
	step "Removing the user service"
	uninstall_service

	step "Removing the links in $bin_dir"
	uninstall_links

	step "Removing the virtual environment"
	if [[ -e $venv ]]; then
		remove_venv
		info "removed $venv"
	else
		info "no venv at $venv"
	fi
	# Only if empty: TIMBRE_HOME also holds the history database.
	rmdir "$timbre_home" 2>/dev/null || true

	step "Done. Left alone (delete them yourself if you want them gone):"
	info "music:        $HOME/Music/Timbre"
	info "history/data: $timbre_home"
	info "config:       $config_home/timbre"
	info "model cache:  ${HF_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/huggingface}"
	[[ -d $launchd_logs ]] && info "logs:         $launchd_logs"
	if [[ -S ${XDG_RUNTIME_DIR:-/nonexistent}/timbre/timbred.sock ]]; then
		warn "a daemon may still be running (its socket exists: $XDG_RUNTIME_DIR/timbre/timbred.sock); stop it"
	fi
	return 0
}

if [[ $mode == uninstall ]]; then
	do_uninstall
else
	do_install
fi
