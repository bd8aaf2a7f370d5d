"""Training from the browser: the Train page (AppTest) and the job board behind it."""

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import catalog
from core.jobs import JobBoard, JobError, JobLimits
from playground import shared

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
TINY_ARGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
             "--eval-iters", "2", "--threads", "1"]


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    shared._board.cache_clear()
    yield tmp_path
    for job in shared._board().jobs.values():
        if job.process and job.process.poll() is None:
            job.process.kill()
    shared._board.cache_clear()


def wait_for(at: AppTest, states: tuple[str, ...], timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        at.run()
        header = [h.value for h in at.subheader if h.value.startswith("Run `")]
        if header and any(header[0].endswith(s) for s in states):
            return header[0]
        time.sleep(0.3)
    raise AssertionError(f"the run never reached {states}; last: {header}")


def train_page(corpus: Path, steps: int, name: str = "mine") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("playground/train.py")
    at.run()
    at.radio(key="train_source").set_value("a local file").run()
    at.text_input(key="train_path").set_value(str(corpus)).run()
    at.selectbox(key="train_preset").set_value("tiny: 2 layers, 64 wide").run()
    at.number_input(key="train_steps").set_value(steps).run()
    at.number_input(key="train_eval").set_value(20).run()
    at.text_input(key="train_name").set_value(name).run()
    return at


def test_start_watch_stop_resume_export_and_pick(dirs, corpus_file):
    at = train_page(corpus_file, 3000)
    next(b for b in at.button if b.key == "train_start").click().run()
    assert not at.error, [e.value for e in at.error]
    wait_for(at, ("running",))
    deadline, steps_seen = time.time() + 120, []
    while time.time() < deadline and len(steps_seen) < 2:       # the curve updates while it trains
        at.run()
        progress = [p for p in at.get("progress")]
        if progress:
            steps_seen = sorted(set(steps_seen + [progress[0].proto.text.split(" /")[0]]))
        time.sleep(0.3)
    assert len(steps_seen) >= 2 and len(at.get("plotly_chart")) >= 1
    next(b for b in at.button if b.key == "train_stop").click().run()
    wait_for(at, ("stopped",))
    stopped_at = max(r["step"] for r in shared._board().get("mine").records() if r["type"] == "TrainStep")
    assert stopped_at < 3000
    assert any("checkpoint is kept" in i.value for i in at.info)
    next(b for b in at.button if b.key == "train_resume").click().run()
    wait_for(at, ("running",))
    deadline = time.time() + 120
    while time.time() < deadline and max(r["step"] for r in shared._board().get("mine").records()
                                         if r["type"] == "TrainStep") <= stopped_at + 5:
        time.sleep(0.2)                                   # the resumed process trains on from the checkpoint
    next(b for b in at.button if b.key == "train_stop").click().run()
    wait_for(at, ("stopped",))
    job = shared._board().get("mine")
    steps = [r["step"] for r in job.records() if r["type"] == "TrainStep"]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at    # resumed, nothing repeated
    next(b for b in at.button if b.key == "train_export").click().run()
    wait_for(at, ("exported",))
    assert "mine" in shared.model_names()
    picker = AppTest.from_file(APP, default_timeout=60).run()
    picker.switch_page("playground/models.py")
    picker.run()
    assert "mine" in picker.selectbox(key="model").options


def test_a_run_that_finishes_is_exported_by_itself(dirs, corpus_file):
    at = train_page(corpus_file, 40, name="quick")
    next(b for b in at.button if b.key == "train_start").click().run()
    wait_for(at, ("exported",))
    assert (dirs / "exported" / "quick" / "card.json").is_file()
    assert any("in the model picker" in s.value for s in at.success)


def test_bad_corpora_and_failures_get_their_message(dirs, tmp_path):
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\x00\x01binary")
    at = train_page(binary, 40)
    assert any("binary" in e.value for e in at.error)
    assert next(b for b in at.button if b.key == "train_start").disabled
    at.text_input(key="train_path").set_value(str(tmp_path / "missing.txt")).run()
    assert any("no such file" in e.value for e in at.error)
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 4)
    at = train_page(short, 40, name="short")
    next(b for b in at.button if b.key == "train_start").click().run()
    wait_for(at, ("failed",))
    assert any("too short for a context" in e.value for e in at.error)


def test_hosted_mode_runs_one_job_at_a_time(dirs, corpus_file, monkeypatch):
    monkeypatch.setattr(shared, "HOSTED", True)
    board = shared.job_board()
    board.start("someone-else", "theirs", ["--corpus", str(corpus_file), "--max-steps", "2000", *TINY_ARGS],
                10_000, 2000)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.switch_page("playground/train.py")
    at.run()
    at.number_input(key="train_steps").set_value(100).run()
    at.radio(key="train_source").set_value("tiny shakespeare (downloaded once, checksum-verified)").run()
    next(b for b in at.button if b.key == "train_start").click().run()
    assert any("already running on this server" in e.value for e in at.error)
    assert "a local file" not in at.radio(key="train_source").options        # no server paths when hosted


def test_job_board_rules(tmp_path, corpus_file):
    board = JobBoard(tmp_path / "runs", JobLimits(max_running=1, max_parameters=50_000, max_steps=500,
                                                  heartbeat_seconds=0.5))
    args = ["--corpus", str(corpus_file), "--max-steps", "400", *TINY_ARGS]
    for bad in ("../escape", "", "a b", "x" * 41):
        with pytest.raises(JobError, match="is not allowed"):
            board.start("me", bad, args, 1000, 100)
    with pytest.raises(JobError, match="at most 50,000"):
        board.start("me", "big", args, 60_000, 100)
    with pytest.raises(JobError, match="at most 500 per run"):
        board.start("me", "long", args, 1000, 501)
    job = board.start("me", "mine", args, 20_000, 400)
    try:
        with pytest.raises(JobError, match="already running"):
            board.start("me", "second", args, 20_000, 400)
        with pytest.raises(JobError, match="started by another visitor"):
            board.stop("intruder", "mine")
        deadline = time.time() + 60                      # nobody watches: the heartbeat stops it
        while time.time() < deadline and job.poll(board.limits) not in ("stopped", "finished"):
            time.sleep(0.2)
        assert job.state in ("stopped", "finished")
        if job.state == "stopped":
            assert "page was closed" in job.message
        with pytest.raises(JobError, match="exists already"):
            board.start("me", "mine", args, 20_000, 400)
    finally:
        if job.process.poll() is None:
            job.process.kill()


def test_milestones_are_kept_and_the_scrubber_switches_checkpoints(dirs, corpus_file, data_dir, monkeypatch):
    import subprocess
    import sys

    from core.checkpoint import list_checkpoints
    from core.train import TrainConfig, milestone_steps
    assert milestone_steps(TrainConfig(max_steps=1000, checkpoint_interval=50, milestones=4)) == {250, 500, 750, 1000}
    run = dirs / "runs" / "learning"
    res = subprocess.run([sys.executable, "-m", "core.train", "--out-dir", str(run), "--corpus", str(corpus_file),
                          "--data-dir", str(data_dir), *TINY_ARGS, "--max-steps", "80", "--checkpoint-interval", "10",
                          "--eval-interval", "40", "--milestones", "4", "--keep-checkpoints", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(run)] == [20, 40, 60, 80]        # milestones survive pruning
    res = subprocess.run([sys.executable, "-m", "core.export", str(run), str(dirs / "exported" / "learning"),
                          "--checkpoints"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [s for s, _ in catalog.model_checkpoints(dirs / "exported" / "learning")] == [20, 40, 60]
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["model"] = "learning"
    at.run()
    at.switch_page("playground/generate.py")
    at.run()
    scrubber = at.select_slider(key="checkpoint_learning")
    assert list(scrubber.options) == ["20", "40", "60", "80"] and scrubber.value == 80
    late = [c.value for c in at.sidebar.caption][0]
    scrubber.set_value(20).run()
    assert not at.exception
    early = [c.value for c in at.sidebar.caption][0]
    assert early != late                                        # the step-20 model, with its own val loss
    button = next(b for b in at.button if b.label == "Sample one")
    button.click().run()
    assert "checkpoints/step_00000020" in at.session_state["trace"]["model"]
