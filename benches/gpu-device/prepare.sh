#!/usr/bin/env bash
# Prepares the GPU check for a machine lent with a real GPU (the `device` tool): builds here
# what that machine cannot (it has no Rust toolchain and no network) and puts it in .gpu-run/
# at the repository's root, which `.git/info/exclude` keeps out of git and the device call
# carries (`carry: [".gpu-run"]`). Then, on the device: `bash benches/gpu-device/run.sh`.
#
#   .gpu-run/bin.tar.xz            the release CLI (`llava`) and the GPU test binaries
#                                  (`tests/NAME`, dev profile), stripped and compressed
#   .gpu-run/debs/*.deb            the Vulkan loader (the device image has the NVIDIA driver's
#                                  ICD but no libvulkan)
#   .gpu-run/root                  this checkout's path, which the tests were built with
#
# Everything that travels must stay under 64 MiB with the tracked tree (~37 MiB): stripped,
# the binaries are ~68 MB, compressed ~20 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
out=$root/.gpu-run
grep -qx '/.gpu-run/' .git/info/exclude 2>/dev/null || echo '/.gpu-run/' >>.git/info/exclude
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
rm -rf "$out"
mkdir -p "$out/debs" "$stage/tests"

# The tests find their fixtures and the CLI at the paths they were built with: run.sh links
# this root there.
echo "$root" >"$out/root"

cargo build --release --locked --bin llava
cp target/release/llava "$stage/llava"
strip "$stage/llava"

# The test binaries that open a GPU, and the dev-profile CLI the CLI tests run.
tests=(-p llava-runtime --test gpu_backend)
root_tests=(--test llama_parity --test llava_parity --test llava_next_parity --test cli_gpu)
list_executables() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])'
}
{
    cargo test --locked --no-run --message-format=json "${tests[@]}"
    cargo test --locked --no-run --message-format=json "${root_tests[@]}"
} | list_executables | while read -r name exe; do
    cp "$exe" "$stage/tests/$name"
    strip "$stage/tests/$name"
done
tar -C "$stage" -cJf "$out/bin.tar.xz" .

# The Vulkan loader, as the device README says: amd64 packages from this machine's mirror.
lists=/tmp/gpu-run-apt
mkdir -p "$lists/partial"
o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists="$lists")
apt-get "${o[@]}" update -qq
(cd "$out/debs" && apt-get "${o[@]}" download libvulkan1)

du -sh "$out"
tar -tvJf "$out/bin.tar.xz"
echo "next: the device tool's run with carry [\".gpu-run\"] and command 'bash benches/gpu-device/run.sh'"
