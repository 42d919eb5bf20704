#!/usr/bin/env bash
# Sourced by scripts/run.sh and scripts/test.sh:
#   source scripts/deps.sh
#   attend_ensure_deps [extra-debian-package ...]
# Installs the Debian packages attend needs to build and test when they are missing (apt-get, as root
# or through sudo). Exits with a message naming the missing packages when it cannot install them.

ATTEND_DEBIAN_PACKAGES=(cmake make g++ libeigen3-dev libgtest-dev libbenchmark-dev)
# What scripts/test.sh needs on top: MPI for the ring-attention tests (mpiexec -n 2, 3, 4) and clang-format
# for scripts/check_format.sh.
ATTEND_TEST_DEBIAN_PACKAGES=(libopenmpi-dev openmpi-bin clang-format)

attend_package_installed() {
  dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'
}

attend_ensure_deps() {
  local wanted=("${ATTEND_DEBIAN_PACKAGES[@]}" "$@")

  if ! command -v dpkg >/dev/null 2>&1; then
    echo "attend: this is not a Debian-based system (no dpkg); not installing anything." >&2
    echo "attend: make sure these (or their equivalents) are installed: ${wanted[*]}" >&2
    return 0
  fi

  local missing=() p
  for p in "${wanted[@]}"; do
    attend_package_installed "$p" || missing+=("$p")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    return 0
  fi

  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo=(sudo)
    else
      echo "attend: missing Debian packages: ${missing[*]}" >&2
      echo "attend: cannot install them (not root and no sudo). As root run:" >&2
      echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "attend: missing Debian packages: ${missing[*]}" >&2
    echo "attend: cannot install them: apt-get is not available. Install them and run this again." >&2
    exit 1
  fi

  echo "attend: installing missing Debian packages: ${missing[*]}"
  if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update \
     || ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"; then
    echo "attend: failed to install: ${missing[*]}" >&2
    echo "attend: install them yourself (apt-get install ${missing[*]}) and run this again." >&2
    exit 1
  fi
  for p in "${missing[@]}"; do
    if ! attend_package_installed "$p"; then
      echo "attend: package $p is still not installed after apt-get install." >&2
      exit 1
    fi
  done
  echo "attend: installed ${missing[*]}"
}
