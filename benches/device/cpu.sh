#!/usr/bin/env bash
# The CPU check on the device machine's Xeon (see prepare.sh cpu, run first on the CPU machine):
# the kernel paths a development machine without AVX-512 or VNNI cannot run. Every runtime
# kernel and backend test (each runs every path the CPU has: avx2, avx-vnni, avx512,
# avx512-vnni), the kernel benches of each path side by side (`interleaved/`, `gemm/q4_0`,
# `gemm/q8_0`, `gemm/clip/q8_0`), and `llava bench` end to end with LLAVA_CPU set to each
# path in turn (TinyLlama-1.1B Q4_0 pp256, LLaVA-1.5 Q8_0 mmproj encode). Writes
# cpu-report.md and the logs to $OUT.
#
#   device run: carry [".device-run/cpu"], command "bash benches/device/cpu.sh", timeout_s 590
#
# Locally (where the CPU lacks a path, its rows say so): OUT=/tmp/cpu-out QUICK=1 bash benches/device/cpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=cpu report_name=cpu-report.md
. benches/device/common.sh
threads=${THREADS:-2}  # the figures in benches/README.md are at 2 threads

say "# CPU check, $(date -u +%FT%TZ)"
say ""
say "## Machine"
say '```'
lscpu | grep -E '^(Model name|CPU\(s\)|Thread|Core)' | tee -a "$report"
say '```'
# The paths this CPU can run (what `LLAVA_CPU` accepts; the bench lines below name the path
# each run took), from the flags the runtime detects.
flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
has() { for f in "$@"; do [[ $flags == *" $f "* ]] || return 1; done; }
paths=()
has avx2 fma f16c && paths+=(avx2)
has avx2 fma f16c avx_vnni && paths+=(avx-vnni)
has avx2 fma f16c avx512f avx512bw avx512vl && paths+=(avx512)
has avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni && paths+=(avx512-vnni)
say "- paths: ${paths[*]}; other flags: $(for f in avx512_bf16 avx512_fp16 amx_tile; do has $f && printf '%s ' $f; done)"

say ""
say "## Kernel and backend tests (each runs every path above)"
for t in "$bin"/tests/*; do
    name=$(basename "$t")
    timeout 240 "$t" --test-threads "$(nproc)" >"$OUT/test-$name.log" 2>&1
    rc=$?
    say "- $name: exit $rc; $(grep -E '^test result' "$OUT/test-$name.log" | tail -1)"
    grep -hiE 'skip|not available' "$OUT/test-$name.log" | sort -u | head -5 | sed 's/^/  - /' | tee -a "$report"
done

say ""
say "## Kernel benches ($threads threads; criterion medians; \`interleaved/\` is one thread)"
filter='interleaved/|gemm/q4_0/|gemm/q8_0/|gemm/clip/q8_0/'
[ -z "$QUICK" ] || filter='interleaved/q4_0/'
LLAVA_BENCH_THREADS=$threads timeout 300 "$bin/kernels" --bench "$filter" --noplot \
    >"$OUT/kernels.log" 2>&1
say "exit $?"
say '```'
# criterion prints the id on one line and "time: [low median high]" on the next (or the same).
awk '/^(interleaved|gemm)\// { id = $1 } /time:/ { sub(/.*time: *\[/, ""); split($0, t, " ");
     printf "%-44s %s %s\n", id, t[3], t[4] }' "$OUT/kernels.log" | tee -a "$report"
say '```'

say ""
say "## llava bench, LLAVA_CPU per path ($threads threads; each path twice, in the order A B … B A)"
models=/tmp/cpu-models
mkdir -p "$models"
if [ -n "$QUICK" ]; then
    llm_preset=tiny; vision_preset=tiny; pp=32; reps=1
else
    llm_preset=tinyllama-1.1b; vision_preset=llava-1.5-7b; pp=256; reps=2
fi
timeout 120 "$llava" synth --preset "$llm_preset" -q q4_0 --outdir "$models/text" --force \
    >"$OUT/synth.log" 2>&1 || say "synth failed: $(tail -1 "$OUT/synth.log")"
timeout 240 "$llava" synth --preset "$vision_preset" -q q4_0 --vision-quant q8_0 \
    --outdir "$models/vision" --force >>"$OUT/synth.log" 2>&1 ||
    say "synth failed: $(tail -1 "$OUT/synth.log")"
text=$(ls "$models"/text/*q4_0.gguf | grep -v mmproj | head -1)
vllm=$(ls "$models"/vision/*q4_0.gguf | grep -v mmproj | head -1)
mmproj=$(ls "$models"/vision/mmproj-*.gguf | head -1)
order=("${paths[@]}")
for ((i = ${#paths[@]} - 1; i >= 0; i--)); do order+=("${paths[i]}"); done
summary() { python3 benches/device/summary.py "$@"; }
for p in "${order[@]}"; do
    LLAVA_CPU=$p timeout 120 "$llava" bench -m "$text" -t "$threads" -p "$pp" -n 16 -r "$reps" \
        --json >"$OUT/bench.tmp" 2>"$OUT/bench.err"
    rc=$?
    summary "$p $(basename "$text")" "$rc" "$OUT/bench.tmp" "$OUT/bench.jsonl" | tee -a "$report"
    LLAVA_CPU=$p timeout 120 "$llava" bench -m "$vllm" --mmproj "$mmproj" -t "$threads" -p 0 -n 0 \
        -r "$reps" --json >"$OUT/bench.tmp" 2>>"$OUT/bench.err"
    rc=$?
    summary "$p $(basename "$mmproj")" "$rc" "$OUT/bench.tmp" "$OUT/bench.jsonl" | tee -a "$report"
done
rm -f "$OUT/bench.tmp"
say ""
say "done $(date -u +%FT%TZ)"
