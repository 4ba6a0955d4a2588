#!/usr/bin/env bash
# The GPU check on a machine with a real GPU (see prepare.sh, run first on the CPU machine):
# the GPU test suite on that GPU through Vulkan, `llava devices`, the memory bandwidth the
# roofline needs, and `llava bench --device gpu` on the 7B Q4_K_M synth files (pp512, tg128,
# image encode with an F16 and a Q8_0 mmproj; default features, f32 only, downlevel). Writes
# report.md and the logs to $OUT (the device tool brings them back).
#
#   device run: carry [".device-run/gpu"], command "bash benches/device/gpu.sh", timeout_s 590
#
# Each step has its own time limit and the report is written as the steps end, so a run cut
# short still says what it measured. Locally (Mesa's lavapipe, a smoke test of the script):
#   OUT=/tmp/gpu-out GPU=gpu:0 QUICK=1 bash benches/device/gpu.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=gpu report_name=report.md
GPU=${GPU:-gpu}        # the --device value: gpu (a hardware GPU) or gpu:N
. benches/device/common.sh

# The Vulkan loader (the image has the driver's ICD, not the loader).
if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in "$run"/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ] && ! ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json >/dev/null 2>&1; then
    export VK_DRIVER_FILES=$icd
fi

say "# GPU check, $(date -u +%FT%TZ)"
say ""
say "## Machine"
say '```'
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
  lscpu | grep -E '^Model name'
  "$llava" devices 2>&1; } | tee -a "$report"
say '```'

say ""
say "## GPU tests (LLAVA_REQUIRE_GPU=1: a test without an adapter fails)"
for t in "$bin"/tests/*; do
    name=$(basename "$t")
    LLAVA_REQUIRE_GPU=1 timeout 240 "$t" --test-threads 1 --nocapture >"$OUT/test-$name.log" 2>&1
    rc=$?
    say "- $name: exit $rc; $(grep -E '^test result' "$OUT/test-$name.log" | tail -1)"
done
grep -hE 'GPU|adapter|dispatches|image tokens' "$OUT"/test-*.log | grep -v XDG >"$OUT/parity.txt"

say ""
say "## Memory bandwidth (torch: a 2 GiB device-to-device copy, best of 10)"
timeout 60 python3 - <<'PY' 2>&1 | tee -a "$report"
import torch
n = 1 << 29
a = torch.empty(n, dtype=torch.float32, device="cuda")
b = torch.empty_like(a)
best = 1e9
for _ in range(10):
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); b.copy_(a); e.record(); torch.cuda.synchronize()
    best = min(best, s.elapsed_time(e) / 1e3)
print(f"{2 * 4 * n / best / 1e9:.0f} GB/s (read + write)")
PY

say ""
say "## llava bench --device $GPU"
models=/tmp/gpu-models
mkdir -p "$models"
if [ -n "$QUICK" ]; then
    preset=tiny; pp=32; tg=8; reps=1
else
    preset=llava-1.5-7b; pp=512; tg=128; reps=3
fi
timeout 300 "$llava" synth --preset "$preset" -q q4_k_m --vision-quant f16 --outdir "$models" --force \
    >"$OUT/synth.log" 2>&1 || say "synth failed: $(tail -1 "$OUT/synth.log")"
llm=$(ls "$models"/*q4_k_m.gguf | grep -v mmproj | head -1)
mmproj=$(ls "$models"/mmproj-*f16.gguf | head -1)
mmproj8=$models/mmproj-q8_0.gguf
timeout 120 "$llava" quantize "$mmproj" "$mmproj8" -q q8_0 >>"$OUT/synth.log" 2>&1
say "LLM: $(basename "$llm") ($(du -h "$llm" | cut -f1)); mmproj: F16 and Q8_0"
# One line per bench in the report; each whole JSON object, on one line, in bench.jsonl.
summary() { python3 benches/device/summary.py "$@"; }
for variant in "" --gpu-f32 --gpu-downlevel; do
    # The Q8_0 mmproj adds only its encode: no LLM tests then.
    for proj in "$mmproj" "$mmproj8"; do
        label="${variant:-default} $(basename "$proj")"
        sizes=(-p "$pp" -n "$tg")
        [ "$proj" = "$mmproj" ] || sizes=(-p 0 -n 0)
        timeout 150 "$llava" bench -m "$llm" --mmproj "$proj" --device "$GPU" $variant \
            "${sizes[@]}" -r "$reps" --json >"$OUT/bench.tmp" 2>"$OUT/bench.err"
        rc=$?
        summary "$label" "$rc" "$OUT/bench.tmp" "$OUT/bench.jsonl" | tee -a "$report"
        [ "$rc" = 0 ] || tail -3 "$OUT/bench.err" | tee -a "$report"
    done
done
rm -f "$OUT/bench.tmp"
say ""
say "done $(date -u +%FT%TZ)"
