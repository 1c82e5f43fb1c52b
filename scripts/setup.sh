#!/usr/bin/env bash
# Installs every Debian package deepshard needs to build and test.
# Usage: scripts/setup.sh [extra package ...]
# Safe to run twice: packages already present are skipped, and apt-get is only
# called when something is missing. Run as root (or with sudo available).
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libopenmpi-dev openmpi-bin
  libboost1.81-dev libboost-json1.81-dev
  libabsl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libdnnl-dev ocl-icd-opencl-dev opencl-c-headers
  libpcre2-dev
  libhwloc-dev    # CPU backend: cores and NUMA nodes for thread placement (--numa)
  libicu-dev      # tokenizer: Unicode normalization (NFC/NFKC) and character properties
  python3 python3-venv curl bc procps hostname   # python3-venv, curl: the serve e2e test (openai package, curl)
  slurmctld slurmd slurm-client munge   # tests/cluster: a one-machine Slurm (cluster/local_slurm.sh)
)
# Extra packages a caller needs (scripts/fuzz.sh: clang and its libFuzzer runtime).
PACKAGES+=("$@")

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "[setup] all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

echo "[setup] installing: ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
echo "[setup] done"
