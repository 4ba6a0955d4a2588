#!/usr/bin/env bash
# Prepares the checks for a machine the `device` tool lends (an NVIDIA GPU and an AVX-512 Xeon):
# builds here what that machine cannot (it has no Rust toolchain and no network) and puts it in
# .device-run/ at the repository's root, which `.git/info/exclude` keeps out of git. Two kits,
# one per device call, each carried alone (with the tracked tree, ~37 MiB, it must stay under
# the tool's 64 MiB):
#
#   benches/device/prepare.sh gpu   .device-run/gpu/  for gpu.sh: the GPU tests and benches
#   benches/device/prepare.sh cpu   .device-run/cpu/  for cpu.sh: the CPU kernel paths that
#                                                     this machine lacks (AVX-512, VNNI)
#   benches/device/prepare.sh       both
#
# A kit holds:
#   bin.tar.xz      the release CLI (`llava`) and the kit's test binaries (`tests/NAME`),
#                   stripped and compressed; the CPU kit adds the `kernels` criterion bench
#   root            this checkout's path, which the tests were built with
#   debs/*.deb      (GPU kit) the Vulkan loader: the device image has the NVIDIA driver's ICD
#                   but no libvulkan
#
# Then, on the device: carry [".device-run/gpu"], command "bash benches/device/gpu.sh"; or
# carry [".device-run/cpu"], command "bash benches/device/cpu.sh".
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
kits=("$@")
[ ${#kits[@]} -gt 0 ] || kits=(gpu cpu)
for kit in "${kits[@]}"; do
    case $kit in gpu | cpu) ;; *) echo "prepare.sh: unknown kit '$kit' (gpu or cpu)" >&2; exit 2 ;; esac
done
grep -qx '/.device-run/' .git/info/exclude 2>/dev/null || echo '/.device-run/' >>.git/info/exclude

# Prints "name path" for each test (or bench) executable in cargo's JSON messages on stdin.
list_executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])'
}

cargo build --release --locked --bin llava
stage=
trap 'rm -rf "$stage"' EXIT  # a kit's staging folder, also when a build fails

for kit in "${kits[@]}"; do
    out=$root/.device-run/$kit
    stage=$(mktemp -d)
    rm -rf "$out"
    mkdir -p "$out" "$stage/tests"
    # The tests find their fixtures and the CLI at the paths they were built with: the device
    # script links this root there.
    echo "$root" >"$out/root"
    cp target/release/llava "$stage/llava"
    if [ "$kit" = gpu ]; then
        # The test binaries that open a GPU (dev profile, as CI runs them), and the dev-profile
        # CLI the CLI tests run (the device script copies the release one there).
        {
            cargo test --locked --no-run --message-format=json -p llava-runtime --test gpu_backend
            cargo test --locked --no-run --message-format=json --test llama_parity \
                --test llava_parity --test llava_next_parity --test cli_gpu
        } | list_executables | while read -r name exe; do cp "$exe" "$stage/tests/$name"; done
        # The Vulkan loader, as the device README says: amd64 packages from this machine's mirror.
        lists=/tmp/device-run-apt
        mkdir -p "$lists/partial" "$out/debs"
        o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
        apt-get "${o[@]}" update -qq
        (cd "$out/debs" && apt-get "${o[@]}" download libvulkan1)
    else
        # The runtime's kernel and backend tests, each of which runs every CPU path the CPU
        # has (release: smaller once stripped, and the same code the product runs), and the
        # kernel benches, which time every path side by side.
        cargo test --release --locked --no-run --message-format=json -p llava-runtime --lib \
            --test simd_kernels --test row_kernels --test tile_kernels --test cpu_backend \
            --test quant_ggml_parity | list_executables |
            while read -r name exe; do cp "$exe" "$stage/tests/$name"; done
        cargo bench --locked --no-run --message-format=json --bench kernels | list_executables |
            while read -r name exe; do [ "$name" = kernels ] && cp "$exe" "$stage/kernels"; done
        [ -f "$stage/kernels" ] || { echo "prepare.sh: no kernels bench executable" >&2; exit 1; }
    fi
    find "$stage" -type f -exec strip {} +
    tar -C "$stage" -cJf "$out/bin.tar.xz" .
    rm -rf "$stage"
    stage=
    du -sh "$out"
    tar -tvJf "$out/bin.tar.xz"
    echo "next: the device tool's run with carry [\".device-run/$kit\"] and command 'bash benches/device/$kit.sh'"
done
