"""App latency of the Generate stepper: the server's time for one "Sample one" click, on both default
models, after 10 and after 200 generated tokens; optionally against another checkout (before/after).

    python bench/app_latency.py                          this tree
    python bench/app_latency.py --before /tmp/before     this tree and another checkout, interleaved
    python bench/app_latency.py --models gpt2 --exported DIR   other models (e.g. an imported GPT-2 in DIR/gpt2)

Two measurements, each taken on every tree in turn, round after round (the same moments of a drifting
machine for both):
- AppTest: Streamlit runs the page script in a worker process exactly as the server would, but reruns
  the whole script on a click (the server reruns only the stepper's fragment): the click is timed from
  the click to the end of the rerun.
- Chromium (needs Debian's chromium): a real `streamlit run` per tree; the page reports its own server
  time for the click (the callback and the fragment's rerun), which is what a visitor waits for before
  the browser draws. Clicks are half a second apart so Chromium's drawing on the same cores is not
  counted.
"""

from __future__ import annotations

import argparse
import json
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
MODELS = ("shakespeare-char", "shakespeare-bpe")
LENGTHS = (10, 200)


def worker(tree: Path, model: str, tokens: int, clicks: int) -> list[float]:
    """In a fresh process inside `tree`: the Generate page with `tokens` generated, then `clicks` timed clicks."""
    sys.path.insert(0, str(tree))          # that tree's core and pages, not this script's
    from streamlit.testing.v1 import AppTest
    at = AppTest.from_file(str(tree / "streamlit_app.py"), default_timeout=300)
    at.query_params["model"] = model
    at.run()
    at.switch_page("playground/generate.py")
    at.run()
    at.number_input(key="run_n").set_value(min(100, tokens)).run()
    count = 0
    while count < tokens:
        next(b for b in at.button if b.label.startswith("Run")).click().run()
        count = len(at.session_state["trace"]["state"]["branches"][0]["tokens"])
    times = []
    for _ in range(clicks):
        button = next(b for b in at.button if b.label == "Sample one")
        t0 = time.perf_counter()
        button.click().run()
        times.append(1000 * (time.perf_counter() - t0))
        assert not at.exception, at.exception
    return times


def apptest_side(trees: list[Path], rounds: int, clicks: int, models: tuple[str, ...]) -> dict:
    out: dict = {}
    for r in range(rounds):
        for model in models:
            for tokens in LENGTHS:
                for tree in trees:
                    res = subprocess.run([sys.executable, __file__, "--worker", str(tree), model, str(tokens), str(clicks)],
                                         cwd=tree, capture_output=True, text=True,
                                         env={**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"})
                    if res.returncode != 0:
                        raise RuntimeError(f"worker failed in {tree}: {res.stderr[-2000:]}")
                    out.setdefault((str(tree), model, tokens), []).extend(json.loads(res.stdout.splitlines()[-1]))
    return out


def start_server(tree: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.headless", "true",
                             "--server.address", "127.0.0.1", "--server.port", str(port)],
                            cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"the server in {tree} did not start")


def browser_side(trees: list[Path], clicks: int, chromium: str, models: tuple[str, ...]) -> dict:
    from playwright.sync_api import sync_playwright
    servers = [start_server(t) for t in trees]
    out: dict = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"])
            for model in models:
                for tokens in LENGTHS:
                    pages = []
                    for tree, (_, url) in zip(trees, servers):
                        page = browser.new_page(viewport={"width": 1400, "height": 1000})
                        page.goto(f"{url}/generate?model={model}")
                        page.wait_for_selector(IDLE, timeout=300_000)
                        n = page.locator(".st-key-run_n input")
                        n.fill(str(min(100, tokens)))
                        n.press("Enter")
                        page.wait_for_selector(IDLE, timeout=300_000)
                        for done in range(min(100, tokens), tokens + 1, min(100, tokens)):
                            page.get_by_role("button", name=re.compile(r"^Run \d+")).click()
                            page.wait_for_function(f"document.body.innerText.includes('{done} tokens generated')",
                                                   timeout=300_000)
                            page.wait_for_selector(IDLE, timeout=300_000)
                        pages.append((tree, page))
                    for i in range(clicks):                       # interleaved: tree A's click, then tree B's
                        for tree, page in pages:
                            time.sleep(0.5)
                            page.get_by_role("button", name="Sample one").click()
                            page.wait_for_function(
                                f"document.body.innerText.includes('{tokens + i + 1} tokens generated')",
                                timeout=300_000)
                            page.wait_for_selector(IDLE, timeout=300_000)
                            found = re.search(r"server time for this step: ([0-9.]+) ms", page.inner_text("body"))
                            if found:
                                out.setdefault((str(tree), model, tokens), []).append(float(found.group(1)))
                    for _, page in pages:
                        page.close()
            browser.close()
    finally:
        for proc, _ in servers:
            proc.terminate()
            proc.wait(timeout=30)
    return out


def report(title: str, data: dict, trees: list[Path], models: tuple[str, ...]) -> None:
    print(title)
    for model in models:
        for tokens in LENGTHS:
            cells = []
            for tree in trees:
                ms = sorted(data.get((str(tree), model, tokens), []))
                cells.append(f"{tree.name}: median {statistics.median(ms):.1f} ms, p95 {ms[int(0.95 * len(ms)) - 1]:.1f} "
                             f"({len(ms)} clicks)" if ms else f"{tree.name}: no data")
            ratio = ""
            if len(trees) == 2 and all(data.get((str(t), model, tokens)) for t in trees):
                before, after = (statistics.median(data[(str(t), model, tokens)]) for t in trees)
                ratio = (f"  -> {trees[1].name} {before / after:.1f}x faster" if after < before
                         else f"  -> {trees[1].name} {after / before:.2f}x slower")
            print(f"  {model}, after {tokens} tokens: " + " | ".join(cells) + ratio)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        tree, model, tokens, clicks = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(worker(tree, model, tokens, clicks)))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, help="another checkout to measure beside this one (e.g. the last commit)")
    p.add_argument("--rounds", type=int, default=3, help="AppTest rounds (each tree, each model and length, per round)")
    p.add_argument("--clicks", type=int, default=10, help="timed clicks per measurement")
    p.add_argument("--models", nargs="+", default=list(MODELS), help="exported models to measure")
    p.add_argument("--exported", type=Path, help="the folder those models are in (default: the tree's exported/)")
    args = p.parse_args()
    if args.exported:
        from core.catalog import EXPORTED_ENV
        os.environ[EXPORTED_ENV] = str(args.exported.resolve())   # the workers and servers inherit it
    trees = [args.before.resolve(), ROOT] if args.before else [ROOT]
    models = tuple(args.models)
    report("AppTest, 'Sample one' click (whole-script rerun):", apptest_side(trees, args.rounds, args.clicks, models),
           trees, models)
    chromium = "/usr/bin/chromium"
    if not Path(chromium).exists():
        print("Chromium: skipped, Debian's chromium is not installed")
        return
    report("Real server in Chromium, the page's own server time for a click (callback + fragment rerun):",
           browser_side(trees, args.clicks, chromium, models), trees, models)


if __name__ == "__main__":
    main()
