#!/usr/bin/env bash
# Installs what building and testing llava-edge needs on a Debian/Ubuntu machine, and checks
# the Rust toolchain. Safe to run again: it installs only what is missing. README's commands
# and .ci/run call it.
#
#   libclang-dev, cmake, build-essential: the ggml oracle of the tests (ggml-sys-bleedingedge,
#   a dev-dependency) is built from C sources with cmake and bindgen.
#   Rust 1.89 or later: the AVX-512 intrinsics and target features are stable from 1.89.
set -euo pipefail

packages=(libclang-dev cmake build-essential)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
    if [[ $(id -u) -eq 0 ]]; then
        sudo=()
    elif command -v sudo >/dev/null; then
        sudo=(sudo)
    else
        echo "setup: need ${missing[*]} (apt-get install them as root)" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
    echo "setup: Rust is not installed: see https://rustup.rs (1.89 or later)" >&2
    exit 1
fi
version=$(rustc --version | awk '{print $2}')
if [[ $(printf '%s\n' 1.89.0 "$version" | sort -V | head -n1) != 1.89.0 ]]; then
    if command -v rustup >/dev/null; then
        echo "setup: Rust $version is older than 1.89: updating the stable toolchain" >&2
        rustup update stable >/dev/null
    else
        echo "setup: Rust $version is older than 1.89, which llava-edge needs" >&2
        exit 1
    fi
fi
