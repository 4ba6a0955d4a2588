# Sourced by gpu.sh and cpu.sh, from the repository's root, with `kit` set (gpu or cpu): checks
# $OUT, starts $OUT/$report_name, defines `say`, unpacks .device-run/$kit into $bin, links this checkout to the
# path the tests were built with, and puts the release CLI where the tests look for it
# (`llava` is its path).
run=.device-run/$kit
OUT=${OUT:?set OUT to the folder the results go to}
QUICK=${QUICK:-}       # set: a small model and short runs (for trying the script)
mkdir -p "$OUT"
report=$OUT/${report_name:?}
say() { echo "$*" | tee -a "$report"; }
: >"$report"
[ -f "$run/bin.tar.xz" ] || { say "no $run/bin.tar.xz: run benches/device/prepare.sh $kit first"; exit 2; }
# Unpacked outside the checkout, so the kit stays the size it travels at.
bin=${TMPDIR:-/tmp}/device-run-$kit
rm -rf "$bin" && mkdir -p "$bin"
tar -C "$bin" -xJf "$run/bin.tar.xz" ||
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$run/bin.tar.xz" "$bin"

# The test binaries read fixtures and run the CLI at the paths they were built with.
# A path that exists and is not this checkout is left alone (the tests that read fixtures
# then fail, saying so).
built=$(cat "$run/root")
if [ ! -e "$built" ]; then
    mkdir -p "$(dirname "$built")"
    ln -s "$PWD" "$built"
elif [ "$(readlink -f "$built")" != "$(readlink -f "$PWD")" ]; then
    say "$built exists and is not this checkout: the tests' fixture paths will not resolve"
fi
mkdir -p target/debug target/release
for t in target/debug/llava target/release/llava; do
    [ -e "$t" ] || cp "$bin/llava" "$t"
done
llava=$PWD/target/release/llava
