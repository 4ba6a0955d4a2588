#!/usr/bin/env python3
"""The chat page of `llava serve` in a real browser: Debian's headless Chromium driven through
chromedriver (WebDriver over HTTP, standard library only). Types a question, attaches an image,
waits for the streamed answer, and keeps a screenshot.

    tests/browser/chat_page.py --llava target/release/llava -m LLM.gguf --mmproj MMPROJ.gguf \
        --image tests/fixtures/images/odd.png --screenshot /tmp/chat-page.png

Needs `apt-get install chromium chromium-driver`. Not run by CI (a browser is a large install);
exit status 0 when the answer appeared.
"""
import argparse, base64, json, re, subprocess, sys, threading, time, urllib.request

def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data, {"Content-Type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)["value"]

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llava", default="target/release/llava")
    ap.add_argument("-m", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--screenshot", default="chat-page.png")
    a = ap.parse_args()
    server = subprocess.Popen([a.llava, "serve", "-m", a.m, "--mmproj", a.mmproj, "--port", "0"],
                              stderr=subprocess.PIPE, text=True)
    port = None
    for line in server.stderr:
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            port = int(m.group(1)); break
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    driver = subprocess.Popen(["chromedriver", "--port=9515"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = "http://127.0.0.1:9515"
    for _ in range(50):
        try:
            call(base, "GET", "/status"); break
        except Exception:
            time.sleep(0.1)
    ok = False
    try:
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=420,800"]}}}}
        sid = call(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{sid}"
        call(base, "POST", s + "/url", {"url": f"http://127.0.0.1:{port}/"})
        find = lambda css: list(call(base, "POST", s + "/element", {"using": "css selector", "value": css}).values())[0]
        # The picker's input is hidden behind its label: make it reachable, then "choose" the file.
        call(base, "POST", s + "/execute/sync", {"script": "document.getElementById('file').hidden = false", "args": []})
        call(base, "POST", s + f"/element/{find('#file')}/value", {"text": a.image})
        time.sleep(0.5)
        call(base, "POST", s + f"/element/{find('#input')}/value", {"text": "What is in this picture?"})
        call(base, "POST", s + f"/element/{find('#send')}/click", {})
        deadline = time.time() + 60
        answer = ""
        while time.time() < deadline:
            answer = call(base, "POST", s + "/execute/sync", {"script":
                "const m = document.querySelectorAll('.assistant span'); const s = document.getElementById('send');"
                "return m.length && !s.hidden ? m[m.length - 1].textContent : '';", "args": []})
            if answer:
                break
            time.sleep(0.2)
        has_image = call(base, "POST", s + "/execute/sync", {"script": "return document.querySelectorAll('.user img').length", "args": []})
        speed = call(base, "POST", s + "/execute/sync", {"script": "const s = document.querySelectorAll('.msg .speed'); return s.length ? s[s.length - 1].textContent : ''", "args": []})
        png = call(base, "GET", s + "/screenshot")
        open(a.screenshot, "wb").write(base64.b64decode(png))
        print(f"answer: {answer!r}\nimages shown: {has_image}\nspeed line: {speed!r}\nscreenshot: {a.screenshot}")
        ok = bool(answer) and has_image == 1
        call(base, "DELETE", s)
    finally:
        driver.terminate(); server.terminate()
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
