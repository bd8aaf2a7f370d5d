"""Click to idle in Chromium: how long a visitor waits, from a click to the page having settled and drawn.

    python bench/click_to_idle.py                          this tree
    python bench/click_to_idle.py --before /tmp/before     this tree and another checkout, interleaved

Two clicks, on the default model (shakespeare-char), each timed in the page from the click event until (1) its result is on the
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
PAINTED_AT = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"
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


# the click's own moment, taken in the page (Playwright's actionability checks before it are not the app's time)
CLICK_CLOCK = "() => document.addEventListener('click', () => { window._clicked = performance.now(); }, true)"


def time_clicks(page, button: str, done, clicks: int) -> list[float]:
    """Click `button` `clicks` times, half a second apart; each time from the click event until `done(n)` (a JS
    condition for the n-th result) holds, the script is idle and two frames have been painted."""
    page.evaluate(CLICK_CLOCK)
    out = []
    for n in range(1, clicks + 1):
        time.sleep(0.5)
        condition = done(n)
        page.get_by_role("button", name=button).click()
        page.wait_for_function(condition, timeout=120_000)
        page.wait_for_selector(IDLE, timeout=120_000)
        painted = page.evaluate(PAINTED_AT)
        out.append(painted - page.evaluate("window._clicked"))
    return out


def generate_clicks(page, url: str, clicks: int) -> list[float]:
    page.goto(f"{url}/generate?prompt=ROMEO%3A")
    page.wait_for_selector(IDLE, timeout=120_000)
    page.wait_for_function("document.body.innerText.includes('0 tokens generated')", timeout=120_000)
    return time_clicks(page, "Sample one",
                       lambda n: f"document.body.innerText.includes('{n} token{'' if n == 1 else 's'} generated')",
                       clicks)


def attention_clicks(page, url: str, clicks: int) -> list[float]:
    page.goto(f"{url}/attention?text=KING%3A%0AWhat%20news%20from%20the")
    page.wait_for_selector(IDLE, timeout=120_000)
    start = len(page.get_by_label("Text").input_value())
    return time_clicks(page, "Add the next token (greedy)",
                       lambda n: f"document.querySelector('textarea').value.length >= {start + n}", clicks)


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
