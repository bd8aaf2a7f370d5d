"""Click to idle in Chromium: how long a visitor waits, from a click to the page having settled and drawn.

    python bench/click_to_idle.py                          this tree
    python bench/click_to_idle.py --before /tmp/before     this tree and another checkout, interleaved

Two clicks, on the default model (shakespeare-char), each timed from the click until (1) its result is on the
page (Generate: the token count went up; Attention: the text grew), (2) Streamlit's script state is
"notRunning" and (3) the browser has painted twice more (two animation frames), so charts drawn after the
script ended are counted. Each tree runs its own `streamlit run`; rounds alternate between trees so both
see the same moments of a drifting machine. Needs Debian's chromium and playwright.

Goals (issue 19): a Generate step settles in <= 300 ms, Attention's "Add the next token" in <= 600 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common import ROOT

IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"
GOALS_MS = {"generate": 300, "attention": 600}


@contextlib.contextmanager
def server(tree: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port),
                             "--browser.gatherUsageStats", "false"], cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.2)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def settle(page, done: str) -> None:
    page.wait_for_function(done, timeout=120_000)
    page.wait_for_selector(IDLE, timeout=120_000)
    page.evaluate(PAINTED)


def generate_clicks(page, url: str, clicks: int) -> list[float]:
    page.goto(f"{url}/generate?prompt=ROMEO%3A")
    page.wait_for_selector(IDLE, timeout=120_000)
    page.wait_for_function("document.body.innerText.includes('0 tokens generated')", timeout=120_000)
    out = []
    for n in range(1, clicks + 1):
        time.sleep(0.5)
        button = page.get_by_role("button", name="Sample one")
        t = time.perf_counter()
        button.click()
        settle(page, f"document.body.innerText.includes('{n} token{'' if n == 1 else 's'} generated')")
        out.append(1000 * (time.perf_counter() - t))
    return out


def attention_clicks(page, url: str, clicks: int) -> list[float]:
    page.goto(f"{url}/attention?text=KING%3A%0AWhat%20news%20from%20the")
    page.wait_for_selector(IDLE, timeout=120_000)
    area = page.get_by_label("Text")
    out = []
    for _ in range(clicks):
        time.sleep(0.5)
        before = area.input_value()
        button = page.get_by_role("button", name="Add the next token (greedy)")
        t = time.perf_counter()
        button.click()
        settle(page, f"document.querySelector('textarea').value.length > {len(before)}")
        out.append(1000 * (time.perf_counter() - t))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, help="another checkout to measure in the same run (e.g. a git worktree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clicks", type=int, default=5, help="clicks per page per round")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    trees = {"this tree": ROOT} | ({"before": args.before.resolve()} if args.before else {})
    times = {(name, kind): [] for name in trees for kind in GOALS_MS}
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(server(tree)) for name, tree in trees.items()}
        pw = stack.enter_context(sync_playwright())
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                     args=["--no-sandbox", "--disable-gpu"])
        for r in range(args.rounds):
            for name, url in urls.items():
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                times[name, "generate"] += generate_clicks(page, url, args.clicks)
                times[name, "attention"] += attention_clicks(page, url, args.clicks)
                page.close()
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        browser.close()
    for kind, goal in GOALS_MS.items():
        for name in trees:
            v = times[name, kind]
            print(f"{kind:10s} {name:10s} click to idle: median {statistics.median(v):6.0f} ms  "
                  f"(min {min(v):.0f}, max {max(v):.0f}, n {len(v)})  goal <= {goal} ms")


if __name__ == "__main__":
    main()
