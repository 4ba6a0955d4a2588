"""One `llava bench --json` result: appended, on one line, to a JSONL file with its label and
exit status, and summed up in one line for run.sh's report.

usage: summary.py LABEL EXIT_STATUS BENCH_JSON JSONL
"""
import json
import sys

label, rc, path, jsonl = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
try:
    with open(path) as f:
        r = json.load(f)
except (OSError, ValueError):
    r = None
with open(jsonl, "a") as f:
    f.write(json.dumps({"variant": label, "rc": rc, "result": r}) + "\n")
parts = [f"- {label}: exit {rc}"]
if r and r.get("kernels"):
    parts.append(f"kernels {r['kernels']}")
for test in ("pp", "tg"):
    t = (r or {}).get(test)
    if t:
        rate = t["tokens_per_second"]["median"]
        parts.append(f"{test}{t['tokens']} {rate:.1f} t/s")
e = (r or {}).get("encode")
if e:
    parts.append(f"encode {e['ms']['median']:.1f} ms ({e['views']} view(s))")
print(", ".join(parts))
