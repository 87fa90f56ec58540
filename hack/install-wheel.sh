#!/usr/bin/env bash
# Builds the gateway-yeeter wheel and installs it with its pinned dependencies: the steps of
# the Containerfile, kept here so that tests/deploy/test_container_install.py runs the very
# same commands on a machine without a container engine.
#
# Usage:
#   hack/install-wheel.sh build SOURCE_DIR WHEEL_DIR
#       Build the wheel from SOURCE_DIR (pyproject.toml and src/) into WHEEL_DIR. setuptools
#       writes build/ and *.egg-info into SOURCE_DIR, so point it at a copy, not a checkout
#       others work in.
#   hack/install-wheel.sh install VENV_DIR WHEEL_DIR LOCK_FILE
#       Create the virtual environment VENV_DIR, install exactly the packages pinned in
#       LOCK_FILE, then the one wheel in WHEEL_DIR, and check that they fit together.
#   hack/install-wheel.sh lock SOURCE_DIR LOCK_FILE
#       Write LOCK_FILE anew: the versions pip picks today for the wheel built from SOURCE_DIR.
#
# PYTHON names the interpreter to build with and to base the environment on (default:
# python3). pip reads its usual variables (PIP_INDEX_URL, PIP_NO_CACHE_DIR, ...).
set -euo pipefail

python="${PYTHON:-python3}"

log() {
  printf 'install-wheel: %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

build() {
  local source_dir="$1" wheel_dir="$2"
  mkdir -p "${wheel_dir}"
  "${python}" -m pip wheel --no-deps --wheel-dir "${wheel_dir}" "${source_dir}"
}

# The single wheel in a folder, so that a stale second one cannot be installed by accident.
only_wheel() {
  local wheel_dir="$1" wheels
  shopt -s nullglob
  wheels=("${wheel_dir}"/gateway_yeeter-*.whl)
  shopt -u nullglob
  [[ ${#wheels[@]} -eq 1 ]] ||
    die "expected one gateway_yeeter wheel in ${wheel_dir}, found ${#wheels[@]}"
  printf '%s\n' "${wheels[0]}"
}

install() {
  local venv_dir="$1" wheel_dir="$2" lock_file="$3" wheel
  wheel="$(only_wheel "${wheel_dir}")"

  # Files readable by everyone: OpenShift runs the container under an arbitrary UID.
  umask 022
  "${python}" -m venv "${venv_dir}"
  local venv_python="${venv_dir}/bin/python"

  # The lock lists every runtime dependency, so nothing is resolved here: --no-deps installs
  # exactly those, and wheels only, so no compiler runs and no sdist's build can differ.
  "${venv_python}" -m pip install --no-deps --only-binary=:all: --requirement "${lock_file}"
  "${venv_python}" -m pip install --no-deps --no-index "${wheel}"
  # Fails when the lock no longer satisfies the wheel's own requirements.
  "${venv_python}" -m pip check

  # Nothing installs anything at run time; leave no installer in the image.
  "${venv_python}" -m pip uninstall --yes --quiet pip setuptools
}

lock() {
  local source_dir="$1" lock_file="$2"
  # Global, because the EXIT trap runs after this function's locals are gone.
  scratch="$(mktemp -d)"
  trap 'rm -rf "${scratch}"' EXIT

  cp -R "${source_dir}/pyproject.toml" "${source_dir}/src" "${scratch}/"
  build "${scratch}" "${scratch}/dist"
  "${python}" -m venv "${scratch}/venv"
  "${scratch}/venv/bin/python" -m pip install --only-binary=:all: \
    "$(only_wheel "${scratch}/dist")"

  {
    printf '# Runtime dependencies of gateway-yeeter, pinned for the container image.\n'
    printf '# Regenerate with: hack/install-wheel.sh lock . requirements.lock\n'
    "${scratch}/venv/bin/python" -m pip freeze --exclude gateway-yeeter
  } >"${lock_file}"
  log "wrote ${lock_file}"
}

main() {
  [[ $# -ge 1 ]] || die "usage: $0 build|install|lock ..."
  local command="$1"
  shift
  case "${command}" in
    build)
      [[ $# -eq 2 ]] || die "usage: $0 build SOURCE_DIR WHEEL_DIR"
      build "$@"
      ;;
    install)
      [[ $# -eq 3 ]] || die "usage: $0 install VENV_DIR WHEEL_DIR LOCK_FILE"
      install "$@"
      ;;
    lock)
      [[ $# -eq 2 ]] || die "usage: $0 lock SOURCE_DIR LOCK_FILE"
      lock "$@"
      ;;
    *)
      die "unknown command '${command}' (known: build, install, lock)"
      ;;
  esac
}

main "$@"
