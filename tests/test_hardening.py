"""Hardening for shared demos: hostile input to every public function that takes user input (property
based, hypothesis), hostile links to every page, untrusted files and names, one visitor against
another, and faults (full disk, a broken exported model).

Each property ends in a correct result or a clear message (ValueError and its subclasses, which the
pages show as messages); anything else, a crash, fails the test.
"""

import ast
import math
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import catalog, scaling
from core.data import CorpusError, corpus_from_upload
from core.files import resolve_inside
from core.generate import GenerationConfig, check_prompt, complete
from core.limits import Limits
from core.runtime import Model, ModelError
from core.sampling import SamplerConfig, run_pipeline
from core.tokenizer import byte_tokenizer, load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "exported" / "shakespeare-char"
BPE = ROOT / "exported" / "shakespeare-bpe"

# deterministic (seeded by the test), no example database written into the checkout, no timing flakes
settings.register_profile("project", derandomize=True, database=None, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile("project")

NASTY_TEXT = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="utf-8")),
    st.sampled_from(["", "\x00", "\x00" * 100, "<|endoftext|>", "a<|endoftext|>b", "\ud800", "x\udfffy",
                     "\u200f\u202e RTL \u202c", "😀👍🏽👨‍👩‍👧", "\r\n\t", " " * 1000, "中文" * 50]),
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "😀", "\x00"]), st.integers(1, 3000)),
)
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**30, 10**30),
                    st.sampled_from([0, -1, 1e308, -0.0, float("nan"), float("inf"), "1", None, True, [], "nan"]))


@pytest.fixture(scope="module")
def model():
    return Model(DEFAULT)


@pytest.fixture(scope="module")
def bpe_model():
    return Model(BPE)


# ---------------------------------------------------------------------------------------------------
# Text

@pytest.mark.slow
@settings(max_examples=300)
@given(NASTY_TEXT)
def test_tokenizers_round_trip_any_text(text):
    for tok in (byte_tokenizer(), load_tokenizer(BPE / "tokenizer")):
        ids = tok.encode(text)
        expected = text.encode("utf-8", "replace").decode("utf-8") if not _has_surrogates(text) else None
        if expected is not None:
            assert tok.decode(ids) == expected
        spans = tok.spans(text)
        assert [s.id for s in spans] == ids
        assert b"".join(s.raw for s in spans) == tok.decode_bytes(ids)


def _has_surrogates(text):
    return any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@pytest.mark.slow
@settings(max_examples=60)
@given(NASTY_TEXT)
def test_prompts_are_checked_and_scored_or_refused(model, text):
    lim = Limits.hosted()
    try:
        check_prompt(text, lim)
    except ValueError as e:
        assert str(e)
        return
    try:
        s = model.score(text)
    except ModelError as e:
        assert "at least 2 tokens" in str(e)
        return
    assert math.isfinite(s.mean_nll) and s.mean_nll >= 0 and math.isfinite(s.bits_per_byte)


@settings(max_examples=40)
@given(NASTY_TEXT.filter(lambda t: len(t) < 200))
def test_generation_from_any_prompt_ends_in_text_or_a_message(model, text):
    try:
        c = complete(model, text, GenerationConfig(max_new_tokens=3, top_n=0), Limits.hosted())
    except ValueError as e:
        assert str(e)
        return
    assert len(c.token_ids) <= 3 and isinstance(c.text, str)


@settings(max_examples=60)
@given(NASTY_TEXT, st.integers(-2, 6), st.integers(-2, 6), st.integers(-5, 300))
def test_attention_walkthrough_any_text_and_indices(model, text, layer, head, position):
    from core.explain import attention_walkthrough
    try:
        w = attention_walkthrough(model, text, layer, head, position)
    except ModelError as e:
        assert str(e)
        return
    assert abs(w.probs.sum() - 1) < 1e-6 and np.all(w.probs[~w.allowed] == 0)
    assert np.abs(w.probs - w.graph_row).max() < 1e-5


# ---------------------------------------------------------------------------------------------------
# Knobs

SAMPLER_FIELDS = ["temperature", "top_k", "top_p", "min_p", "typical_p", "repetition_penalty",
                  "frequency_penalty", "presence_penalty"]


@settings(max_examples=400)
@given(st.dictionaries(st.sampled_from(SAMPLER_FIELDS), NUMBERS, max_size=4))
def test_sampler_knobs_are_valid_or_named_in_the_message(knobs):
    try:
        cfg = SamplerConfig(**knobs)
    except ValueError as e:
        assert any(name in str(e) for name in knobs), (knobs, str(e))
        return
    logits = np.random.default_rng(0).normal(size=257).astype(np.float32)
    probs = run_pipeline(logits, cfg, history=[1, 2, 3]).final.probs
    assert np.all(np.isfinite(probs)) and abs(probs.sum() - 1) < 1e-6


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["max_new_tokens", "seed", "top_n", "stop"]),
                       st.one_of(NUMBERS, st.lists(st.text(max_size=80), max_size=10), st.text(max_size=5)),
                       max_size=3))
def test_generation_config_is_valid_or_refused(kw):
    try:
        GenerationConfig(**kw).check(Limits.hosted())
    except (ValueError, TypeError) as e:
        assert str(e)


@settings(max_examples=200)
@given(NUMBERS)
def test_compute_budgets(compute):
    law = scaling.PUBLISHED["hoffmann2022"].law
    try:
        a = scaling.allocate(law, compute)
    except scaling.ScalingError as e:
        assert "compute budget" in str(e)
        return
    assert math.isfinite(a.n) and math.isfinite(a.d) and a.n > 0


@settings(max_examples=150)
@given(st.dictionaries(st.sampled_from(["batch_size", "max_steps", "learning_rate", "warmup_steps", "dtype",
                                        "val_fraction", "grad_clip", "beta2"]), NUMBERS, max_size=3))
def test_train_config_is_valid_or_names_the_field(kw):
    from core.train import TrainConfig
    try:
        TrainConfig(**kw)
    except (ValueError, TypeError) as e:
        assert any(name in str(e) for name in kw), (kw, str(e))


# ---------------------------------------------------------------------------------------------------
# Uploads and names

@settings(max_examples=200)
@given(st.binary(max_size=4000), st.sampled_from(["a.txt", "a.md", "a.exe", "a.pt", "", "../x.txt", "a.TXT",
                                                    "a.txt\x00.exe", "noext"]))
def test_uploads_become_a_corpus_or_a_message(data, filename):
    try:
        c = corpus_from_upload(data, filename, max_bytes=2000)
    except CorpusError as e:
        assert str(e)
        return
    assert c.text and len(data) <= 2000 and "\x00" not in c.text


def test_an_upload_over_the_limit_is_refused_before_decoding():
    with pytest.raises(CorpusError, match="limit|large|MB"):
        corpus_from_upload(b"a" * 3001, "big.txt", max_bytes=3000)


@settings(max_examples=300)
@given(st.one_of(st.text(), st.sampled_from(["..", "../x", "../../etc/passwd", "/etc/passwd", "a/../../b",
                                              "a/./b", "\x00", "~/x", "..\\x", "a" * 5000])))
def test_names_never_escape_their_folder(tmp_path_factory, name):
    base = tmp_path_factory.getbasetemp() / "base"
    base.mkdir(exist_ok=True)
    try:
        p = resolve_inside(base, name)
    except (ValueError, OSError):
        return
    assert p == base.resolve() or base.resolve() in p.parents


# ---------------------------------------------------------------------------------------------------
# Hostile links: every page, every query parameter it reads

HOSTILE_QUERIES = [
    {"model": "../../etc", "text": "\x00" * 50, "layer": "-5", "head": "99999999999999999999"},
    {"model": "shakespeare-char", "prompt": "\ufffd\ufffd", "t": "@@@", "seed": "nan", "temperature": "inf",
     "top_p": "-1", "top_k": "1e9"},
    {"section": "<script>alert(1)</script>", "sweep": "../../", "score": "<|endoftext|>" * 100,
     "strategies": ",,,beam -3,top-p nan"},
    {"text": "😀" * 400, "prompt": "a" * 30000, "t": "eJwrSS0uAQAEXQHB" * 40, "layer": "", "head": "1.5"},
]
PAGES = ["playground/home.py", "playground/learn.py", "playground/tokenizer.py", "playground/generate.py",
         "playground/compare.py", "playground/attention.py", "playground/models.py", "playground/scaling.py"]


@pytest.mark.parametrize("query", HOSTILE_QUERIES, ids=[f"q{i}" for i in range(len(HOSTILE_QUERIES))])
def test_hostile_links_never_crash_a_page(query, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from playground import shared
    monkeypatch.setattr(shared, "HOSTED", True)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    for page in PAGES:
        at.switch_page(page)
        at.run()
        assert not at.exception, (page, query, at.exception)


HOSTILE_VALUES = ["-1", "99999999999", "nan", "-inf", "", "1.5", "x" * 5000, "a,,b,greedy,beam 4" * 3, "../../"]


def _app(query: dict, hosted: bool, monkeypatch):
    from streamlit.testing.v1 import AppTest

    from playground import shared
    monkeypatch.setattr(shared, "HOSTED", hosted)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
    for k, v in query.items():
        at.query_params[k] = v
    return at


@pytest.mark.slow
@pytest.mark.parametrize("hosted", [False, True], ids=["local", "hosted"])
@pytest.mark.parametrize("page", PAGES)
def test_every_parameter_a_page_reads_survives_hostile_values(page, hosted, monkeypatch):
    """The parameters are the page's own: the ones it writes back into the address when opened."""
    at = _app({}, hosted, monkeypatch)
    at.run()
    at.switch_page(page)
    at.run()
    keys = set(at.query_params) | ({"t"} if page.endswith("generate.py") else set())
    assert keys or page.endswith("home.py")
    for value in HOSTILE_VALUES:
        at = _app({k: value for k in keys}, hosted, monkeypatch)
        at.run()
        at.switch_page(page)
        at.run()
        assert not at.exception, (page, value[:40], at.exception)
        assert at.title or page.endswith(("learn.py", "models.py")), page


# ---------------------------------------------------------------------------------------------------
# Untrusted files and visitors

def test_nothing_is_unpickled_anywhere():
    """No pickle, torch.load or numpy allow_pickle in the project's code: weights are safetensors,
    models ONNX (never loaded from bytes), cards and records JSON."""
    banned = {("pickle", "load"), ("pickle", "loads"), ("torch", "load"), ("dill", "load"), ("joblib", "load")}
    for path in list((ROOT / "core").glob("*.py")) + list((ROOT / "playground").glob("*.py")) + [ROOT / "streamlit_app.py"]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                assert (node.value.id, node.attr) not in banned, f"{path.name} calls {node.value.id}.{node.attr}"
            if isinstance(node, ast.keyword) and node.arg == "allow_pickle":
                assert not (isinstance(node.value, ast.Constant) and node.value.value), path.name
            if isinstance(node, ast.Import) or isinstance(node, ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert "pickle" not in names, f"{path.name} imports pickle"
        assert "InferenceSession(bytes" not in path.read_text()


def test_pages_never_offer_model_or_checkpoint_uploads_and_share_no_streamlit_cache():
    """Any visitor can make Streamlit clear every st.cache_* for everyone: pages keep shared state in
    process caches instead. And the only uploads are text: corpora, and post-training data as JSON lines."""
    for path in (ROOT / "playground").glob("*.py"):
        src = path.read_text()
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Attribute) and node.attr in ("cache_data", "cache_resource"):
                raise AssertionError(f"{path.name} uses st.{node.attr}")
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "file_uploader":
                types = next((k.value for k in node.keywords if k.arg == "type"), None)
                allowed = ast.literal_eval(types) if types is not None else None
                assert allowed and set(allowed) <= {"txt", "md", "text", "jsonl", "json"}, (path.name, allowed)


def test_a_model_directory_that_points_outside_itself_is_refused(tmp_path):
    outside = tmp_path / "outside"
    shutil.copytree(DEFAULT / "tokenizer", outside)
    evil = tmp_path / "evil"
    shutil.copytree(DEFAULT, evil, ignore=shutil.ignore_patterns("tokenizer"))
    (evil / "tokenizer").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelError, match="outside"):
        Model(evil)
    evil2 = tmp_path / "evil2"
    shutil.copytree(DEFAULT, evil2, ignore=shutil.ignore_patterns("model.onnx"))
    (evil2 / "model.onnx").symlink_to(DEFAULT / "model.onnx")
    with pytest.raises(ModelError, match="outside"):
        Model(evil2)


def test_the_hosted_config_limits_uploads_and_messages():
    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] <= 50 and cfg["server"]["maxMessageSize"] <= 50
    assert cfg["server"]["enableXsrfProtection"] is True and cfg["client"]["showErrorDetails"] == "none"
    docker = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "LLM_PLAYGROUND_HOSTED=1" in docker and "requirements-hosted.txt" in docker


def test_one_visitor_cannot_stop_or_resume_anothers_training(tmp_path, corpus_file):
    from core.jobs import JobBoard, JobError, TrainingRequest
    board = JobBoard(tmp_path / "runs", exported_dir=tmp_path / "exported")
    alice, mallory = "a" * 43, "m" * 43
    request = TrainingRequest(name="alices-run", corpus=str(corpus_file), preset="tiny", steps=2000, block_size=16)
    board.start(alice, request)
    job = board.jobs["alices-run"]
    try:
        with pytest.raises(JobError, match="another visitor"):
            board.stop(mallory, "alices-run")
        with pytest.raises(JobError, match="another visitor"):
            board.export(mallory, "alices-run")
        with pytest.raises(JobError, match="another visitor"):
            board.resume(mallory, "alices-run")
        assert job.process.poll() is None
        assert not board.view(mallory, "alices-run").can_stop and board.view(alice, "alices-run").can_stop
        for name in ("../alices-run", "/tmp/x", "a" * 41, "", "..", "a/b", "a\x00b"):
            with pytest.raises(JobError, match="not allowed"):
                board.start(mallory, TrainingRequest(name=name, corpus=str(corpus_file)))
        assert alice not in (tmp_path / "runs" / "alices-run" / "job.json").read_text()   # only its hash is kept
    finally:
        board.close()
        job.stop("test over")
        job.process.wait(60)


@pytest.mark.slow
def test_a_visitors_clear_cache_message_leaves_other_sessions_working():
    """Over the real websocket: one session sends clear_cache (any browser can); another keeps stepping
    its generation with its state intact, and nothing is reloaded (no st.cache_* is in use)."""
    import asyncio

    from tests.wsclient import Server, Session

    async def scenario(port):
        alice, mallory = Session(port), Session(port)
        await alice.connect()
        await mallory.connect()
        r = await alice.rerun("generate")
        button = r.buttons()["Sample one"]
        await alice.click("generate", button)
        await mallory.rerun("generate")
        await mallory.clear_caches()
        after = await alice.click("generate", button)
        await alice.close()
        await mallory.close()
        return after

    with Server() as server:
        after = asyncio.run(scenario(server.port))
    assert after.status == "FINISHED_FRAGMENT_RUN_SUCCESSFULLY" and not after.errors   # the stepper's fragment
    assert after.seconds < 5


# ---------------------------------------------------------------------------------------------------
# Faults

FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)           # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from core.train import main
sys.exit(main({args!r}))
"""


@pytest.mark.slow
def test_a_full_disk_while_saving_gives_a_message_and_keeps_the_previous_checkpoint(tmp_path, corpus_file, data_dir):
    from core import checkpoint as ckpt_io
    run = tmp_path / "run"
    args = ["--out-dir", str(run), "--corpus", str(corpus_file), "--data-dir", str(data_dir), "--n-layer", "2",
            "--n-embd", "64", "--n-head", "2", "--block-size", "32", "--batch-size", "4", "--max-steps", "10",
            "--checkpoint-interval", "10", "--eval-interval", "0", "--threads", "1"]
    first = subprocess.run([sys.executable, "-m", "core.train", *args], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert first.returncode == 0, first.stderr
    kept = ckpt_io.checkpoint_path(run, 10)
    before = kept.read_bytes()
    limit = len(before) // 2                                  # the next checkpoint cannot be written whole
    more = ["--out-dir", str(run), "--resume", "--max-steps", "20", "--data-dir", str(data_dir)]
    res = subprocess.run([sys.executable, "-c", FULL_DISK.format(root=str(ROOT), limit=limit, args=more)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr
    assert "error:" in res.stderr and "disk" in res.stderr and "Traceback" not in res.stderr
    assert kept.read_bytes() == before                        # the previous checkpoint is untouched
    assert ckpt_io.latest_checkpoint(run).step == 10
    assert not list((run / "checkpoints").glob("*.tmp")), "no half-written file is left behind"


def test_a_broken_exported_model_is_refused_and_the_picker_still_works(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    exported = tmp_path / "exported"
    shutil.copytree(DEFAULT, exported / "shakespeare-char")
    broken = exported / "aaa-truncated"
    shutil.copytree(DEFAULT, broken)
    (broken / "model.onnx").write_bytes((DEFAULT / "model.onnx").read_bytes()[:5000])
    missing = exported / "bbb-missing"
    shutil.copytree(DEFAULT, missing)
    (missing / "tokenizer" / "tokenizer.json").unlink()
    for bad, why in ((broken, "damaged or truncated"), (missing, "tokenizer")):
        with pytest.raises(ModelError, match=why):
            Model(bad)
    monkeypatch.setattr(catalog, "EXPORTED_DIR", exported)
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.query_params["model"] = "aaa-truncated"
    at.run()
    at.switch_page("playground/generate.py")
    at.run()
    assert not at.exception
    assert any("cannot be opened" in e.value for e in at.sidebar.error)
    at.sidebar.selectbox(key="model").set_value("shakespeare-char").run()
    assert not at.exception and not at.sidebar.error
    assert any(b.label == "Sample one" for b in at.button)
