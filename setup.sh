#!/usr/bin/env bash
# Brings a fresh Debian 12 machine to a working prefopt build. Idempotent: installs
# only the Debian packages that are missing. The CUDA toolkit is optional: when
# /usr/local/cuda/bin/nvcc exists, the CUDA targets are compiled too.
set -euo pipefail

packages=(
  bazel-bootstrap g++ libabsl-dev libprotobuf-dev protobuf-compiler
  libgtest-dev libgmock-dev libopenmpi-dev openmpi-bin libopenblas-dev
  nlohmann-json3-dev libpcre2-dev libicu-dev python3
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "setup.sh: installing ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
