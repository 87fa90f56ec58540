#!/usr/bin/env bash
# Builds the binaries the end-to-end tests run: kube-apiserver, etcd and kustomize.
#
# Usage: hack/kube-binaries.sh [kube-apiserver] [etcd] [kustomize]
#
# With no argument all three are built. Each one is built from source with the
# local Go toolchain, from the pinned module under tools/<module>/, into
#   ${GATEWAY_YEETER_TOOLS_CACHE:-$HOME/.cache/gateway-yeeter}/<name>-<version>/<name>
# and a binary already there for that version is not built again. The Go module
# and build caches are the usual ones, so a second checkout reuses the downloads.
#
# An admin who already has a binary can point at it instead, and then nothing is
# built for it: GATEWAY_YEETER_KUBE_APISERVER, GATEWAY_YEETER_ETCD,
# GATEWAY_YEETER_KUSTOMIZE.
#
# Prints one `<name>=<absolute path>` line per binary on stdout; progress goes to
# stderr. A cold build of all three takes several minutes on two cores.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_root="${GATEWAY_YEETER_TOOLS_CACHE:-${HOME}/.cache/gateway-yeeter}"

log() {
  printf 'kube-binaries: %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

# The version a tools module pins for a dependency, read from its go.mod so that
# go.mod stays the only place a version is written down.
pinned_version() {
  local module_dir="$1" dependency="$2" version
  version="$(awk -v dep="${dependency}" \
    '{ sub(/^require[ \t]+/, "") } $1 == dep && $2 ~ /^v/ { print $2; exit }' \
    "${repo_root}/tools/${module_dir}/go.mod")"
  [[ -n "${version}" ]] || die "tools/${module_dir}/go.mod does not require ${dependency}"
  printf '%s\n' "${version}"
}

# The version stamp that the upstream release build links into Kubernetes
# binaries; without it kube-apiserver reports v0.0.0 on /version.
kubernetes_ldflags() {
  local version="$1" major minor
  major="$(cut -d. -f1 <<<"${version#v}")"
  minor="$(cut -d. -f2 <<<"${version#v}")"
  local flags="-s -w" package
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${package}.gitVersion=${version}"
    flags+=" -X ${package}.gitMajor=${major}"
    flags+=" -X ${package}.gitMinor=${minor}"
    flags+=" -X ${package}.gitTreeState=clean"
  done
  printf '%s\n' "${flags}"
}

# Builds one binary unless it is overridden or cached, then prints where it is.
provide() {
  local name="$1" override_variable="$2" module_dir="$3" dependency="$4" package="$5"
  local ldflags="${6:-}"

  local override="${!override_variable:-}"
  if [[ -n "${override}" ]]; then
    [[ -x "${override}" ]] || die "${override_variable}=${override} is not an executable file"
    printf '%s=%s\n' "${name}" "$(cd "$(dirname "${override}")" && pwd)/$(basename "${override}")"
    return
  fi

  local version target
  version="$(pinned_version "${module_dir}" "${dependency}")"
  target="${cache_root}/${name}-${version}/${name}"
  if [[ -x "${target}" ]]; then
    printf '%s=%s\n' "${name}" "${target}"
    return
  fi

  command -v go >/dev/null || die "no 'go' on PATH to build ${name} ${version};" \
    "install Go or set ${override_variable} to an existing binary"
  mkdir -p "$(dirname "${target}")"

  # Build next to the target and rename, so an interrupted build never leaves a
  # partial file that a later run would take for a finished one.
  local partial started
  partial="$(mktemp "${target}.partial.XXXXXX")"
  # shellcheck disable=SC2064 # the path is fixed now; the trap may run after it is out of scope
  trap "rm -f '${partial}'" EXIT
  started="${SECONDS}"
  log "building ${name} ${version} (from tools/${module_dir})"
  if ! (cd "${repo_root}/tools/${module_dir}" &&
    CGO_ENABLED=0 go build -trimpath -ldflags "${ldflags}" -o "${partial}" "${package}"); then
    die "building ${name} ${version} failed"
  fi
  mv -f "${partial}" "${target}"
  log "built ${name} ${version} in $((SECONDS - started))s"
  printf '%s=%s\n' "${name}" "${target}"
}

main() {
  local wanted=("$@")
  if [[ ${#wanted[@]} -eq 0 ]]; then
    wanted=(kube-apiserver etcd kustomize)
  fi

  local name kubernetes_version
  for name in "${wanted[@]}"; do
    case "${name}" in
      kube-apiserver)
        kubernetes_version="$(pinned_version kube k8s.io/kubernetes)"
        provide kube-apiserver GATEWAY_YEETER_KUBE_APISERVER kube k8s.io/kubernetes \
          k8s.io/kubernetes/cmd/kube-apiserver "$(kubernetes_ldflags "${kubernetes_version}")"
        ;;
      etcd)
        provide etcd GATEWAY_YEETER_ETCD etcd go.etcd.io/etcd/server/v3 \
          go.etcd.io/etcd/server/v3 "-s -w"
        ;;
      kustomize)
        provide kustomize GATEWAY_YEETER_KUSTOMIZE kustomize sigs.k8s.io/kustomize/kustomize/v5 \
          sigs.k8s.io/kustomize/kustomize/v5 "-s -w"
        ;;
      *)
        die "unknown binary '${name}' (known: kube-apiserver, etcd, kustomize)"
        ;;
    esac
  done
}

main "$@"
