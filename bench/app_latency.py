"""App latency on the default model: the server-side time of a step click on the Generate page, and
the time from starting the server to the first page fully rendered in Chromium.
Clicks in the browser are half a second apart, so Chromium's drawing (on the same 2 cores) is not
counted as server time.

    python bench/app_latency.py          (needs Debian's chromium for the browser half)

Server side: Streamlit's AppTest runs the page script in this process exactly as the server would;
each "Sample one" click is timed from the click to the end of the rerun (the fragment's script run,
the model step, the trace's records and every figure), over a text growing to 60 tokens. Browser
side: `streamlit run` is started, then Chromium (Playwright) opens /generate; the clock stops when the
app reports it is idle with the token view drawn. Also the click-to-idle time in the browser.
"""

from __future__ import annotations

import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import ROOT

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def server_side(clicks: int = 60) -> list[float]:
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60).run()
    at.switch_page("playground/generate.py")
    at.run()
    times = []
    for _ in range(clicks):
        button = next(b for b in at.button if b.label == "Sample one")
        t0 = time.perf_counter()
        button.click().run()
        times.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    return times


def browser_side(chromium: str) -> tuple[float, list[float]]:
    from playwright.sync_api import sync_playwright
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless",
                                 "true", "--server.address", "127.0.0.1", "--server.port", str(port)],
                                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                        break
                except OSError:
                    time.sleep(0.05)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/generate")
            page.wait_for_function("document.body.innerText.includes('0 tokens generated')", timeout=60_000)
            page.wait_for_selector(IDLE, timeout=60_000)
            first_render = time.perf_counter() - t0
            clicks, server = [], []
            for n in range(1, 61):
                # Chromium shares this machine's 2 cores and goes on drawing charts after the app is
                # idle; a pause keeps its drawing out of the next click's server time (a visitor's
                # browser runs on the visitor's machine)
                time.sleep(0.5)
                t1 = time.perf_counter()
                page.get_by_role("button", name="Sample one").click()
                page.wait_for_function(f"document.body.innerText.includes('{n} tokens generated')", timeout=30_000)
                page.wait_for_selector(IDLE, timeout=30_000)
                clicks.append(time.perf_counter() - t1)
                found = re.search(r"server time for this step: ([0-9.]+) ms", page.inner_text("body"))
                if found:
                    server.append(float(found.group(1)))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            browser.close()
    return first_render, clicks, server


def main() -> None:
    times = server_side()
    ms = sorted(1000 * t for t in times)
    print(f"AppTest, 'Sample one' click (AppTest reruns the whole script, sidebar included, where the server "
          f"reruns only the fragment; {len(ms)} clicks, text growing to {len(ms)} tokens): median "
          f"{statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * len(ms)) - 1]:.1f} ms")
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        print("browser side: skipped, Debian's chromium is not installed")
        return
    first, clicks, server = browser_side(chromium)
    srv = sorted(server)
    print(f"real server, 'Sample one' click (the callback and the fragment's rerun, as the page reports it, "
          f"{len(srv)} clicks): median {statistics.median(srv):.1f} ms, p95 {srv[int(0.95 * len(srv)) - 1]:.1f} ms "
          f"(target <= 50 ms)")
    print(f"browser side: server start to the Generate page fully rendered in Chromium: {first:.2f} s")
    print(f"browser side: click to idle with the new token drawn: median {1000 * statistics.median(clicks):.0f} ms "
          f"over {len(clicks)} clicks")


if __name__ == "__main__":
    main()
