#!/usr/bin/env bash
# llava-edge against llama.cpp on the same files with the same flags, one run of each, one after
# the other: `llava bench`, then benches/peer-llamacpp's `llamacpp-bench`, then their ratios.
#
#   benches/compare.sh -m LLM.gguf [--mmproj MMPROJ.gguf [--image IMG] [--ttft]] [-t N] [-p 512] [-n 128] [-d 0] [-r 3] [--kv-type f16|f32]
#
# Build both first (see benches/README.md). Without -t, llava's default (one thread per physical
# core) is used and passed on, so both always run with the same count. The two JSON reports are
# kept in $BENCH_OUT (default: a new temporary directory). Needs jq.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
llava=${LLAVA:-$root/target/release/llava}
peer=${PEER:-$here/peer-llamacpp/target/release/llamacpp-bench}

for bin in "$llava" "$peer"; do
  if [[ ! -x $bin ]]; then
    echo "compare.sh: $bin is not built (cargo build --release; and in benches/peer-llamacpp: cargo build --release)" >&2
    exit 1
  fi
done
command -v jq >/dev/null || { echo "compare.sh: needs jq" >&2; exit 1; }

args=("$@")
has_threads=0
for a in "${args[@]}"; do
  case $a in -t | --threads | -t* | --threads=*) has_threads=1 ;; esac
done

out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
echo "compare.sh: llava bench ${args[*]}" >&2
"$llava" bench --json "${args[@]}" >"$out/llava-edge.json"
if [[ $has_threads == 0 ]]; then
  args+=(-t "$(jq -r .threads "$out/llava-edge.json")")
fi
echo "compare.sh: llamacpp-bench ${args[*]}" >&2
"$peer" --json "${args[@]}" >"$out/llama.cpp.json"
echo "compare.sh: reports in $out" >&2

jq -rn --slurpfile a "$out/llava-edge.json" --slurpfile b "$out/llama.cpp.json" '
  $a[0] as $a | $b[0] as $b
  | def f: if . == null then "n/a" else (. * 100 | round / 100 | tostring) end;
    def ratio(x; y): if x == null or y == null or y == 0 then "n/a"
      else x / y | (if . < 0.1 then (. * 10000 | round / 10000) else (. * 100 | round / 100) end) | tostring end;
    def u(unit): if . == null then "n/a" else "\(f) \(unit)" end;
    def d: if ($a.depth // 0) > 0 then " @ d\($a.depth)" else "" end;
    def row(name; x; y; unit): "| \(name) | \(x | u(unit)) | \(y | u(unit)) | \(ratio(x; y)) |";
  "\($a.model.path) (\($a.model.bytes / 1e6 | round) MB), \($a.threads) threads, \($a.kv_type) KV cache; llava-edge \($a.kernels) kernels, llama.cpp \($b.kernels)",
  "",
  "| test | llava-edge | llama.cpp | llava-edge ÷ llama.cpp |",
  "|---|---:|---:|---:|",
  (if $a.pp then row("pp\($a.pp.tokens)\(d)"; $a.pp.tokens_per_second.median; $b.pp.tokens_per_second.median; "tokens/s") else empty end),
  (if $a.tg then row("tg\($a.tg.tokens)\(d)"; $a.tg.tokens_per_second.median; $b.tg.tokens_per_second.median; "tokens/s") else empty end),
  (if $a.encode then
     row("image encode \($a.encode.width)x\($a.encode.height) (\($a.encode.image_tokens) / \($b.encode.image_tokens) tokens)";
         $a.encode.ms.median; $b.encode.ms.median; "ms")
   else empty end),
  (if $a.ttft then
     row("image question to first token (\($a.ttft.positions) / \($b.ttft.positions) positions)";
         $a.ttft.ms.median; $b.ttft.ms.median; "ms")
   else empty end),
  row("load"; $a.load_ms; $b.load_ms; "ms"),
  (if $a.encode then row("mmproj load"; $a.encode.mmproj_load_ms; $b.encode.mmproj_load_ms; "ms") else empty end),
  row("peak RSS"; ($a.peak_rss_bytes // null | if . then . / 1e6 else null end);
                  ($b.peak_rss_bytes // null | if . then . / 1e6 else null end); "MB"),
  "",
  "Medians of \($a.repetitions) runs. tokens/s: below 1 means llava-edge is slower; ms and MB: above 1 means it is slower / larger."
'
