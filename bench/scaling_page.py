"""The Scaling page on a fresh server, in Chromium: how long its first visitor waits, and whether a
second visitor waits behind the first one's fits.

    python bench/scaling_page.py                       this tree
    python bench/scaling_page.py --before /tmp/before  this tree and another checkout, one after the other

For each tree: start `streamlit run`, open /scaling the moment the server answers its health check and
time until the page is idle with its fitted laws drawn; then visitor A switches "Count N as" to
non-embedding (Kaplan) while visitor B opens /scaling, and both are timed.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import ROOT

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
DRAWN = "document.body.innerText.includes('exponent')"     # the fitted laws' captions


def start(tree: Path) -> tuple[subprocess.Popen, str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port)],
                            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    while time.perf_counter() - t0 < 300:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url, t0
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the server in {tree} did not start within 300 s")


def measure(tree: Path, browser) -> dict:
    proc, url, t0 = start(tree)
    out = {"server start": time.perf_counter() - t0}
    try:
        a = browser.new_page(viewport={"width": 1400, "height": 1000})
        t1 = time.perf_counter()
        a.goto(f"{url}/scaling")
        a.wait_for_function(DRAWN, timeout=1_800_000)
        a.wait_for_selector(IDLE, timeout=1_800_000)
        out["first visitor: open to fits drawn"] = time.perf_counter() - t1
        b = browser.new_page(viewport={"width": 1400, "height": 1000})
        t2 = time.perf_counter()
        a.get_by_text("non-embedding (Kaplan)").click()       # returns once clicked: A's rerun goes on
        t3 = time.perf_counter()
        b.goto(f"{url}/scaling")
        b.wait_for_function(DRAWN, timeout=1_800_000)
        b.wait_for_selector(IDLE, timeout=1_800_000)
        out["second visitor, meanwhile: open to fits drawn"] = time.perf_counter() - t3
        a.wait_for_function("document.body.innerText.includes('N (non-embedding)')", timeout=1_800_000)
        a.wait_for_selector(IDLE, timeout=1_800_000)
        out["first visitor: switch to non-embedding N, to drawn"] = time.perf_counter() - t2
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="another checkout to measure too (e.g. the last commit)")
    args = p.parse_args()
    trees = ([args.before.resolve()] if args.before else []) + [ROOT]
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
        for tree in trees:
            for what, seconds in measure(tree, browser).items():
                print(f"{tree.name}: {what}: {seconds:.2f} s")
        browser.close()


if __name__ == "__main__":
    main()
