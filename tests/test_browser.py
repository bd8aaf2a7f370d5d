"""End to end in a real browser: Playwright driving Debian's Chromium against `streamlit run`.

.ci/run installs the `chromium` package; elsewhere these tests are skipped with the reason. Screenshots
land in artifacts/ (kept by the run)."""

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from core import catalog

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (apt-get install chromium)")]
IDLE = "[data-testid='stApp'][data-test-script-state='notRunning']"
CEILING_MS = 300_000        # a generous ceiling for what a busy 2-core machine may take; the waits are events


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_app(base: Path | None = None):
    """A Streamlit server of its own (runs and exports under `base` when given); yields its URL once healthy
    and stops it afterwards."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if base is not None:
        env.update({catalog.RUNS_ENV: str(base / "runs"), catalog.EXPORTED_ENV: str(base / "exported")})
    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
                             "--server.headless", "true", "--server.address", "127.0.0.1",
                             "--server.port", str(port), "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + CEILING_MS / 1000
    while time.time() < deadline and proc.poll() is None:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).read() == b"ok":
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        log.seek(0)
        pytest.fail(f"streamlit did not start: {log.read().decode(errors='replace')[-2000:]}")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server():
    with running_app() as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        yield b
        b.close()


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=60_000)
    page.wait_for_selector(IDLE, timeout=60_000)
    return page


def choose(page, select: str, option: str) -> None:
    """Pick `option` in the selectbox at `select`. A page with a live fragment reruns every second, and a
    rerun that lands between opening the list and the click closes it: open it again until the click
    lands (each try waits on the option itself, an event)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    deadline = time.time() + CEILING_MS / 1000
    while True:
        page.locator(select).click()
        try:
            page.get_by_role("option", name=option).click(timeout=10_000)
            return
        except PlaywrightTimeout:
            if time.time() > deadline:
                raise
            page.keyboard.press("Escape")


def click_until(page, button: str, text: str) -> None:
    """Click `button` until `text` shows: a click that lands on a button a rerun is replacing is lost, so each
    try waits on the text (an event) and clicks again only if it has not come."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    deadline = time.time() + CEILING_MS / 1000
    while True:
        page.wait_for_selector(IDLE, timeout=CEILING_MS)
        page.get_by_role("button", name=button).click()
        try:
            page.wait_for_function(f"document.body.innerText.includes({text!r})", timeout=30_000)
            return
        except PlaywrightTimeout:
            if time.time() > deadline:
                raise


def shot(page, name):
    """The whole page: Streamlit scrolls inside its main block, so the viewport is stretched to it first."""
    ARTIFACTS.mkdir(exist_ok=True)
    size = page.viewport_size
    height = page.evaluate("Math.max(...[...document.querySelectorAll('[data-testid=stMain], "
                           "[data-testid=stSidebarContent]')].map(e => e.scrollHeight), 0)")
    page.set_viewport_size({"width": size["width"], "height": max(size["height"], min(int(height) + 40, 12000))})
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    page.set_viewport_size(size)


def generated_count(page) -> int:
    m = re.search(r"(\d+) tokens? generated", page.inner_text("body"))
    return int(m.group(1)) if m else -1


def wait_count(page, n: int):
    page.wait_for_function(f"/\\b{n} tokens? generated/.test(document.body.innerText)", timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=30_000)


def test_step_force_back_compare_attention_and_reload_a_shared_link(server, browser):
    page = open_page(browser, f"{server}/generate")
    prompt = page.get_by_label("Prompt")
    prompt.fill("JULIET:\n")
    prompt.press("Control+Enter")
    # the token view shows the new prompt (newline drawn as ↵) once the rerun has finished
    page.wait_for_function("document.querySelector(\"[data-testid='stMain']\").innerText.includes('JULIET:↵')",
                           timeout=30_000)
    wait_count(page, 0)
    for n in (1, 2, 3):
        page.get_by_role("button", name="Sample one").click()
        wait_count(page, n)
    shot(page, "generate-3-steps")
    page.locator(".st-key-cand_2 button:visible").first.click()   # force the third candidate
    wait_count(page, 4)
    page.get_by_role("button", name="Back").click()
    wait_count(page, 3)
    shot(page, "generate-forced-then-back")
    shared_url = page.url
    assert "t=" in shared_url and "model=shakespeare-char" in shared_url
    text_before = page.locator("[data-testid='stMarkdownContainer'] div").first.inner_text()

    page.get_by_role("link", name="Compare").click()
    page.wait_for_function("document.body.innerText.includes('The search tree of beam 4')", timeout=60_000)
    page.wait_for_selector(IDLE, timeout=30_000)
    page.wait_for_selector("[data-testid='stDataFrame']", timeout=30_000)   # the metrics table
    shot(page, "compare")

    page.get_by_role("link", name="Attention").click()
    page.wait_for_function("document.body.innerText.includes('newest token')", timeout=60_000)
    page.wait_for_selector(IDLE, timeout=30_000)
    shot(page, "attention")

    other = browser.new_page(viewport={"width": 1400, "height": 1000})
    other.goto(shared_url)
    other.wait_for_selector(IDLE, timeout=60_000)
    other.wait_for_function("document.body.innerText.includes('3 tokens generated')", timeout=30_000)
    assert other.locator("[data-testid='stMarkdownContainer'] div").first.inner_text() == text_before
    shot(other, "shared-link-reloaded")
    page.close()
    other.close()


@pytest.fixture(scope="module")
def train_server(tmp_path_factory):
    """A server of its own: runs and exports go to temporary folders, with the default model copied in."""
    base = tmp_path_factory.mktemp("train-server")
    shutil.copytree(ROOT / "exported" / "shakespeare-char", base / "exported" / "shakespeare-char")
    with running_app(base) as url:
        yield url, base


def test_train_stop_resume_export_and_pick_in_the_browser(train_server, browser, corpus_file):
    url, base = train_server
    page = open_page(browser, f"{url}/train")
    page.get_by_text("a local file").click()
    page.wait_for_selector(IDLE)
    path = page.get_by_label("Path to a UTF-8 text file")
    path.fill(str(corpus_file))
    path.press("Enter")
    page.wait_for_function("document.body.innerText.includes('sha256')", timeout=30_000)
    page.wait_for_selector(IDLE)
    steps = page.get_by_label("Steps")
    steps.fill("200")
    steps.press("Enter")
    page.wait_for_function("document.body.innerText.includes('153,600 training tokens')", timeout=30_000)
    name = page.get_by_label("Run name (also the exported model's name)")
    name.fill("browser-run")
    name.press("Enter")
    page.wait_for_selector(IDLE)
    t0 = time.perf_counter()
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function("document.body.innerText.match(/step \\d+ \\/ /)", timeout=60_000)
    first_point = time.perf_counter() - t0
    (ARTIFACTS).mkdir(exist_ok=True)
    (ARTIFACTS / "start-to-first-curve-point.txt").write_text(f"{first_point:.2f} s\n")
    shot(page, "train-running")
    page.locator(".st-key-train_stop button:visible").first.click()
    page.wait_for_function("document.body.innerText.includes('browser-run: stopped')", timeout=60_000)
    page.locator(".st-key-train_resume button:visible").first.click()
    page.wait_for_function("document.body.innerText.includes('in the model picker of every page now')",
                           timeout=240_000)
    shot(page, "train-exported")
    assert (base / "exported" / "browser-run" / "card.json").is_file()
    page.get_by_role("link", name="Models").click()
    page.wait_for_selector(IDLE, timeout=30_000)
    page.locator("[data-testid='stSidebar'] [data-testid='stSelectbox']").click()
    assert page.get_by_role("option", name="browser-run").count() == 1
    page.close()


def test_bad_uploads_are_refused_with_a_message(train_server, browser, tmp_path):
    url, _ = train_server
    page = open_page(browser, f"{url}/train")
    page.get_by_text("upload a .txt file").click()
    page.wait_for_selector(IDLE)
    cases = [("empty.txt", b"", "is empty"), ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00binary", "binary file"),
             ("latin1.txt", "café".encode("latin-1"), "not UTF-8 text")]
    for name, data, message in cases:
        path = tmp_path / name
        path.write_bytes(data)
        page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(path))
        page.wait_for_function(f"document.body.innerText.includes({message!r})", timeout=30_000)
        page.wait_for_selector(IDLE)
        assert page.get_by_role("button", name="Start training").is_disabled()
    shot(page, "train-bad-upload")
    page.close()


def test_a_reload_finds_the_run_again_and_another_visitor_only_watches(train_server, browser, corpus_file):
    """The owner's token lives in a cookie: a reload (a new Streamlit session) still owns the run; another
    browser context (another visitor, no cookie) sees it listed but cannot stop it."""
    url, _ = train_server
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.goto(f"{url}/train")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_text("a local file").click()
    page.wait_for_selector(IDLE)
    path = page.get_by_label("Path to a UTF-8 text file")
    path.fill(str(corpus_file))
    path.press("Enter")
    page.wait_for_function("document.body.innerText.includes('sha256')", timeout=CEILING_MS)
    steps = page.get_by_label("Steps")
    steps.fill("5000")
    steps.press("Enter")
    name = page.get_by_label("Run name (also the exported model's name)")
    name.fill("reloaded-run")
    name.press("Enter")
    page.wait_for_selector(IDLE)
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function("document.body.innerText.match(/step \\d+ \\/ /)", timeout=CEILING_MS)
    page.reload()
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.includes('reloaded-run: running')", timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.match(/step \\d+ \\/ /)", timeout=CEILING_MS)
    assert page.locator(".st-key-train_stop button").first.is_enabled()
    shot(page, "train-after-reload")
    stranger = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    stranger.goto(f"{url}/train")
    stranger.wait_for_selector(IDLE, timeout=CEILING_MS)
    stranger.wait_for_selector(".st-key-train_job", timeout=CEILING_MS)   # the server's runs are listed to them
    assert stranger.locator(".st-key-train_stop").count() == 0       # nothing of theirs is watched by default
    choose(stranger, ".st-key-train_job input", "reloaded-run")
    stranger.wait_for_function("document.body.innerText.includes('Another visitor started this run')",
                               timeout=CEILING_MS)
    assert stranger.locator(".st-key-train_stop button").first.is_disabled()
    shot(stranger, "train-watched-by-another-visitor")
    page.locator(".st-key-train_stop button:visible").first.click()
    page.wait_for_function("document.body.innerText.includes('reloaded-run: stopped')", timeout=CEILING_MS)
    shot(page, "train-reloaded-then-stopped")
    context.close()
    stranger.context.close()


@pytest.mark.parametrize("scheme", ["dark"])
def test_an_emergence_preset_jumps_and_its_heads_are_scrubbed_across_the_jump(train_server, browser, scheme):
    """One click starts the fixed-offset induction preset and its control; the page marks the jump; the
    exported model's milestone checkpoints then show the Attention page before and after it."""
    url, base = train_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
    page.goto(f"{url}/emergence")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_text("Induction heads, fixed offset").click()
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    name = page.get_by_label("Run name", exact=True).and_(page.locator("input"))
    name.fill("heads")
    name.press("Enter")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.locator(".st-key-emergence_start button").click()
    page.wait_for_function("document.body.innerText.includes('Jump: ICL score fell')", timeout=CEILING_MS)
    # the run and its control are exported with their milestone checkpoints, each with its inspection graphs
    page.wait_for_function("document.body.innerText.includes('is exported with its milestone checkpoints')",
                           timeout=3 * CEILING_MS)
    shot(page, f"emergence-jump-{scheme}")
    assert (base / "exported" / "heads" / "card.json").is_file()
    page.goto(f"{url}/attention?model=heads")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.includes('Layers (rows) and heads (columns)')", timeout=CEILING_MS)
    assert page.locator("[data-testid='stException']").count() == 0
    shot(page, f"emergence-attention-final-{scheme}")
    thumb = page.locator("[data-testid='stSidebar']").get_by_role("slider").first
    thumb.focus()
    thumb.press("Home")                       # the earliest milestone: before the jump
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.includes('Layers (rows) and heads (columns)')", timeout=CEILING_MS)
    assert page.locator("[data-testid='stException']").count() == 0
    shot(page, f"emergence-attention-first-checkpoint-{scheme}")
    page.close()


PAGES = {"": "LLM Playground", "learn": "Learn", "tokenizer": "Tokenizer", "generate": "Generate",
         "compare": "Compare", "attention": "Attention", "models": "Model", "train": "Train", "scaling": "Scaling",
         "emergence": "Emergence", "inside": "Inside", "posttrain": "Post-train", "glance": "The whole model at a glance"}


@pytest.mark.parametrize("scheme", ["dark"])
def test_ab_picks_train_a_dpo_model_that_every_page_offers(train_server, browser, scheme):
    """Post-train: three A/B picks in the browser, DPO on them, export, and the base beside the result."""
    url, base = train_server
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
    page.goto(f"{url}/posttrain")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_text("DPO: prefer chosen over rejected, directly").click()
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_text("A/B: pick the better of two continuations").click()
    page.get_by_role("button", name="Write two").click()
    page.get_by_role("button", name="A is better").wait_for(timeout=CEILING_MS)
    for n, which in enumerate(["A is better", "B is better", "A is better"], 1):
        click_until(page, which, f"{n} pair(s) picked")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    shot(page, f"posttrain-picks-{scheme}")
    page.get_by_role("button", name="Use them as the data").click()
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    for label, value in (("Steps", "6"), ("Evaluate every", "2")):
        box = page.get_by_role("spinbutton", name=label)
        box.fill(value)
        box.press("Enter")
        page.wait_for_selector(IDLE, timeout=CEILING_MS)
    name = page.get_by_label("Run name (also the exported model's name)")
    name.fill("browser-dpo")
    name.press("Enter")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_role("button", name="Start", exact=True).click()
    page.wait_for_function("document.body.innerText.includes('(dpo): finished')", timeout=CEILING_MS)
    page.locator(".st-key-post_export button:visible").first.click()
    page.wait_for_function("document.body.innerText.includes('browser-dpo is in the model picker of every page now')",
                           timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    tables = page.locator("[data-testid='stDataFrame']").count()
    page.get_by_role("button", name="Sample both").click()
    # the side-by-side table (a canvas: its text is not in innerText)
    page.wait_for_function(f"document.querySelectorAll(\"[data-testid='stDataFrame']\").length > {tables}",
                           timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    assert page.locator("[data-testid='stException']").count() == 0
    shot(page, f"posttrain-dpo-exported-{scheme}")
    card = (base / "exported" / "browser-dpo" / "card.json").read_text()
    assert '"stage": "dpo"' in card and str(base) not in card
    page.close()


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_page_renders_in_light_and_dark(server, browser, scheme):
    """Screenshots of every page in both colour schemes (artifacts/), and no page shows an exception."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
    for path, title in PAGES.items():
        page.goto(f"{server}/{path}")
        page.wait_for_selector("[data-testid='stAppViewContainer']", timeout=CEILING_MS)
        page.wait_for_selector(IDLE, timeout=CEILING_MS)
        page.wait_for_function(f"document.body.innerText.includes({title!r})", timeout=CEILING_MS)
        assert page.locator("[data-testid='stException']").count() == 0, path
        low = page.evaluate(CHIP_CONTRAST_JS)
        assert not low, f"{path or 'home'} in {scheme}: token chips below WCAG AA contrast 4.5: {low[:5]}"
        shot(page, f"page-{path or 'home'}-{scheme}")
    page.close()


# Every token chip (an inline-styled span with a background) as the browser draws it: the contrast of its
# computed text colour on its computed background, by WCAG's formula; returns the chips below 4.5
CHIP_CONTRAST_JS = """() => {
  const lum = c => { const v = c.match(/[\\d.]+/g).slice(0, 3).map(x => x / 255)
                       .map(x => x <= 0.04045 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4);
                     return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
  const low = [];
  for (const e of document.querySelectorAll('span[style*="background"]')) {
    const s = getComputedStyle(e), a = lum(s.color), b = lum(s.backgroundColor);
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push([e.textContent, s.color, s.backgroundColor, ratio.toFixed(2)]);
  }
  return low;
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_tour_walks_the_real_pages_with_the_visitors_prompt_and_outlines_each_control(server, browser, scheme):
    from playground.tour import STEPS
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
    page.goto(server)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_label("Your prompt").fill("JULIET:\nO Romeo")
    page.keyboard.press("Tab")                                      # the text area commits on blur
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_role("button", name="Start the tour").click()
    for i, step in enumerate(STEPS):
        page.wait_for_function(f"document.body.innerText.includes({step.title!r})", timeout=CEILING_MS)
        page.wait_for_selector(IDLE, timeout=CEILING_MS)
        assert page.locator("[data-testid='stException']").count() == 0, step.page
        if step.prompt_param:
            assert "Romeo" in page.url, (step.page, page.url)
        # the outline is a style the tour adds beside the page: wait for it as drawn (an event), not a clock
        page.wait_for_function(f"[...document.querySelectorAll('.st-key-{step.widget}')]"
                               f".some(e => getComputedStyle(e).outlineStyle === 'solid')", timeout=60_000)
        if i in (1, 3):
            shot(page, f"tour-step-{i + 1}-{scheme}")
        page.get_by_role("button", name="Next" if i + 1 < len(STEPS) else "Finish", exact=True).click()
    page.wait_for_function("!document.body.innerText.includes('Tour ·')", timeout=CEILING_MS)
    page.close()


@pytest.mark.parametrize("scheme", ["dark"])
def test_the_loom_forks_at_an_earlier_token_saves_and_loads_back(server, browser, scheme, tmp_path):
    """Generate's loom in a browser: ten tokens, another token taken at the fourth (a new branch beside main),
    saved as a file, the trace reset, the file loaded back; a file from elsewhere is refused with a message
    and the trace in view stays."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme, accept_downloads=True)
    page.goto(f"{server}/generate?prompt=ROMEO%3A%0A&temperature=0.7&seed=5")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.get_by_role("button", name="Run 10").click()
    wait_count(page, 10)
    page.get_by_text("Click a token: its alternatives").click()
    slider = page.get_by_role("slider", name="Token")
    slider.wait_for(timeout=CEILING_MS)
    slider.focus()
    for _ in range(6):
        page.keyboard.press("ArrowLeft")                             # token 10 -> token 4
    page.wait_for_function("document.body.innerText.includes('Token 4 is')", timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    other = page.locator("[class*='st-key-loom_alt_'] button").filter(has_not_text="✓").first
    other.click()
    page.wait_for_function("document.body.innerText.includes('from main at token 4')", timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    shot(page, f"generate-loom-{scheme}")
    with page.expect_download() as download:
        page.get_by_role("button", name="Save the loom (JSON)").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "loom.json" and '"parent": "main"' in saved.read_text()
    page.goto(f"{server}/generate?prompt=JULIET%3A")               # a fresh session: another prompt, default knobs
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    wait_count(page, 0)
    bad = tmp_path / "other.json"
    bad.write_text('{"model": "gpt2", "trace": {}}')
    uploader = page.locator(".st-key-loom_upload [data-testid='stFileUploaderDropzoneInput']")
    uploader.set_input_files(str(bad))
    page.wait_for_function("document.body.innerText.includes('this loom was made with')", timeout=CEILING_MS)
    assert generated_count(page) == 0
    uploader.set_input_files(str(saved))
    page.wait_for_function("document.body.innerText.includes('4 tokens generated')", timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.includes('from main at token 4')", timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    assert page.get_by_label("Prompt").input_value() == "ROMEO:\n"    # the loom's prompt, knobs and seed came back
    assert "temperature=0.7" in page.url and "seed=5" in page.url
    assert page.locator("[data-testid='stException']").count() == 0
    page.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_the_int8_weights_are_chosen_with_their_agreement_in_view(server, browser, scheme):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
    page.goto(f"{server}/generate?weights=int8&prompt=ROMEO%3A")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.includes('same next token as fp32')", timeout=CEILING_MS)
    for n in (1, 2):
        page.get_by_role("button", name="Sample one").click()
        wait_count(page, n)
    assert page.locator("[data-testid='stException']").count() == 0
    assert page.get_by_role("radio", name=re.compile(r"^int8 ")).is_checked()
    shot(page, f"int8-weights-{scheme}")
    page.close()


@pytest.fixture(scope="module")
def pretrained_server(tmp_path_factory):
    """A server whose picker holds an imported model: a GPT-2 checkpoint made here by transformers (12 heads, so
    Attention pages its grid), imported by core.pretrained as a visitor's import would be."""
    from core.pretrained import import_pretrained
    from tests.test_pretrained import make_checkpoint
    base = tmp_path_factory.mktemp("pretrained-server")
    directory, _ = make_checkpoint(base / "checkpoint", "gpt2", True, kw=dict(n_layer=3, n_head=12, n_embd=48))
    import_pretrained(directory, base / "exported" / "tiny-gpt2")
    with running_app(base) as url:
        yield url


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_an_imported_model_steps_on_generate_and_shows_attention_and_learn(pretrained_server, browser, scheme):
    page = browser.new_page(viewport={"width": 1400, "height": 1000}, color_scheme=scheme)
    page.goto(f"{pretrained_server}/generate?model=tiny-gpt2&prompt=The%20cat%20sat")
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    wait_count(page, 0)
    for n in (1, 2, 3):
        page.get_by_role("button", name="Sample one").click()
        wait_count(page, n)
    assert page.locator("[data-testid='stException']").count() == 0
    shot(page, f"imported-generate-{scheme}")
    page.goto(f"{pretrained_server}/attention?model=tiny-gpt2")
    page.wait_for_function("document.body.innerText.includes('newest token')", timeout=CEILING_MS)
    page.wait_for_function("document.body.innerText.includes('Heads in the grid (of 12)')", timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    shot(page, f"imported-attention-{scheme}")
    page.goto(f"{pretrained_server}/learn?model=tiny-gpt2&section=attention")
    page.wait_for_function("document.body.innerText.includes('The query')", timeout=CEILING_MS)
    page.wait_for_selector(IDLE, timeout=CEILING_MS)
    assert page.locator("[data-testid='stException']").count() == 0
    shot(page, f"imported-learn-{scheme}")
    page.close()
