#!/usr/bin/env python3
"""A bounded load test of `llava serve` on loopback: M clients, each sending chat completions
one after another for T seconds; prints requests, errors, p50/p99 latency and the server's
resident memory before and after.

    benches/serve-load.py --llava target/release/llava -m LLM.gguf --mmproj MMPROJ.gguf \
        [--clients 4] [--seconds 30] [--max-tokens 16] [--image tests/fixtures/images/odd.png]

Only the standard library; the server is started on a free loopback port and stopped at the
end (SIGTERM, so its drain is exercised too).
"""
import argparse, base64, json, re, signal, statistics, subprocess, threading, time, urllib.request, urllib.error


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llava", default="target/release/llava")
    ap.add_argument("-m", required=True)
    ap.add_argument("--mmproj")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--image")
    ap.add_argument("--parallel", type=int, default=2)
    a = ap.parse_args()

    cmd = [a.llava, "serve", "-m", a.m, "--port", "0", "--parallel", str(a.parallel), "--queue", "64"]
    if a.mmproj:
        cmd += ["--mmproj", a.mmproj]
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    port = None
    for line in server.stderr:
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    content = "What is in this picture?"
    if a.image:
        data = base64.b64encode(open(a.image, "rb").read()).decode()
        content = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}},
                   {"type": "text", "text": content}]
    body = json.dumps({"messages": [{"role": "user", "content": content}],
                       "max_tokens": a.max_tokens, "temperature": 0}).encode()
    latencies, errors, lock = [], [], threading.Lock()
    rss_start = rss_mb(server.pid)
    end = time.monotonic() + a.seconds

    def client():
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as r:
                    json.load(r)["choices"][0]["message"]["content"]
                with lock:
                    latencies.append(time.monotonic() - t0)
            except (urllib.error.URLError, KeyError, ValueError) as e:
                with lock:
                    errors.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rss_end = rss_mb(server.pid)
    server.send_signal(signal.SIGTERM)
    code = server.wait(timeout=60)
    lat = sorted(latencies)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")
    print(f"| clients | seconds | requests | errors | req/s | p50 ms | p99 ms | RSS start MB | RSS end MB | exit |")
    print(f"|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {a.clients} | {a.seconds:g} | {len(lat)} | {len(errors)} | {len(lat) / a.seconds:.1f} | "
          f"{p(0.5):.1f} | {p(0.99):.1f} | {rss_start:.0f} | {rss_end:.0f} | {code} |")
    if errors:
        print("errors:", errors[:3])
    return 1 if errors or code != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
