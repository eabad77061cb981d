#!/usr/bin/env bash
# Installs what the project needs and is missing: Open MPI (headers, pkg-config file, mpirun, mpicc) and
# zlib's headers (the journal's CRC-32; Open MPI's headers usually bring them).
# Safe to run again; does nothing when everything is there. Swift itself must already be installed.
set -euo pipefail

missing=()
pkg-config --exists ompi-c 2>/dev/null || missing+=(libopenmpi-dev)
command -v mpirun >/dev/null 2>&1 || missing+=(openmpi-bin)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists zlib 2>/dev/null || missing+=(zlib1g-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  echo "Installing ${missing[*]} ..." >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openmpi-bin libopenmpi-dev pkg-config zlib1g-dev >/dev/null
fi
command -v swift >/dev/null 2>&1 || { echo "swift is not on PATH; install Swift 6 first" >&2; exit 1; }
