#!/usr/bin/env bash
# Runs each fuzz target for MINUTES minutes (default 10) under a memory limit and a per-input
# time limit, then prints executions and findings per target. Usage:
#
#   fuzz/run.sh [MINUTES] [TARGET...]        (all targets when none are named)
#   FUZZ_PARALLEL=2 fuzz/run.sh 10           (two targets at a time)
#
# Needs nightly Rust and cargo-fuzz (`cargo install cargo-fuzz`). Every build and run is
# niced. Fork mode keeps a target running after a crash, OOM or timeout, so one known bug does
# not hide the next: each finding is saved under artifacts/TARGET/ and fuzzing goes on. The
# corpus grows in corpus/TARGET/ (seeds/TARGET/ and regressions/TARGET/ are read, never
# written); logs/TARGET.log has libFuzzer's output. See README.md for what to do with a finding.
set -euo pipefail
cd "$(dirname "$0")"

minutes=${1:-10}
shift || true
seconds=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 }')
parallel=${FUZZ_PARALLEL:-1}
if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^llava-fuzz$')
fi

# Longest input per target: enough for the seeds (a converter input holds a whole tiny
# checkpoint) without letting libFuzzer spend its time on megabytes of noise.
max_len() {
    case $1 in
        gguf_reader | llm_load | mmproj_load | convert_inputs) echo 65536 ;;
        image_preprocess) echo 32768 ;;
        spm_model) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

nice -n 19 cargo +nightly fuzz build

# The converter target writes each input as a checkpoint directory: keep that in memory.
if [[ -d /dev/shm && -w /dev/shm ]]; then
    export TMPDIR=/dev/shm
fi

run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t" logs
    local inputs=("corpus/$t" "seeds/$t")
    [[ -d "regressions/$t" ]] && inputs+=("regressions/$t")
    local dict=()
    case $t in
        gguf_reader | llm_load | mmproj_load) dict=(-dict=dicts/gguf.dict) ;;
        convert_inputs) dict=(-dict=dicts/convert_inputs.dict) ;;
    esac
    nice -n 19 cargo +nightly fuzz run "$t" "${inputs[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
        -max_len="$(max_len "$t")" "${dict[@]}" \
        -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
        >"logs/$t.log" 2>&1 || true
    # CPU time of the fuzzer processes (this subshell's children, the second line of
    # `times`: "XmY.YYYs XmY.YYYs", user and system), less than the wall time on a busy machine.
    # (No pipe: a pipeline's `times` would run in a process of its own, without children.)
    times >"logs/$t.cpu"
}

summary() {
    local t=$1 line execs
    # Fork mode's status lines: "#EXECS: cov: ... oom/timeout/crash: O/T/C time: Ns ...".
    line=$(grep -E '^#[0-9]+: cov' "logs/$t.log" | tail -n 1 || true)
    execs=$(sed -n 's/^#\([0-9]*\):.*/\1/p' <<<"$line")
    local findings cpu
    findings=$(sed -n 's/.*oom\/timeout\/crash: \([0-9/]*\).*/\1/p' <<<"$line")
    cpu=$(awk 'NR == 2 { for (i = 1; i <= 2; i++) { split($i, p, "m"); s += p[1] * 60 + p[2] } }
               END { printf "%.1f", s / 60 }' "logs/$t.cpu" 2>/dev/null || true)
    printf '%-18s %8s %12s %20s   %s\n' "$t" "${cpu:-?}" "${execs:-?}" "${findings:-?}" \
        "$(find "artifacts/$t" -type f | wc -l) file(s) in artifacts/$t"
}

running=0
for t in "${targets[@]}"; do
    if ((running >= parallel)); then
        wait -n
        running=$((running - 1))
    fi
    echo "fuzzing $t for $minutes min (log: fuzz/logs/$t.log)"
    run_one "$t" &
    running=$((running + 1))
done
wait

printf '\n%-18s %8s %12s %20s\n' target CPU-min executions oom/timeout/crash
for t in "${targets[@]}"; do
    summary "$t"
done
