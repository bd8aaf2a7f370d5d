"""Training from the browser: the Train page (AppTest) and the job board behind it.

The board's supervisor owns each job's lifecycle, so these tests wait on the board (an event: a state
reached, with a generous ceiling for a busy machine), and open the page only to check what it shows."""

import json
import os
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import catalog
from core.jobs import JobBoard, JobError, TrainingRequest
from core.limits import Limits
from playground import shared
from tests.conftest import close_board

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
pytestmark = pytest.mark.slow     # real training jobs: end to end
CEILING = 900           # seconds: a run of a few dozen steps, on a machine that may be very busy
ME, OTHER = "m" * 43, "o" * 43      # visitor tokens (what the cookie would hold)


def tiny(name: str, corpus, steps: int = 40, **kw) -> TrainingRequest:
    return TrainingRequest(**{**dict(name=name, corpus=str(corpus), preset="tiny", steps=steps, eval_every=20,
                                     sample_every=0, batch_size=4, block_size=32), **kw})


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    shared._board.cache_clear()
    yield tmp_path
    close_board()


def wait_until(what: str, predicate, ceiling: float = CEILING):
    """Poll a cheap predicate until it holds (the event), failing after `ceiling` seconds."""
    deadline = time.time() + ceiling
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {ceiling} s")


def state_of(name: str, token: str = ME) -> str | None:
    v = shared._board().view(token, name)
    return v.state if v else None


def page(token: str = ME) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["owner"] = token       # what visitor_token() reads back from the cookie after a reload
    at.run()
    at.switch_page("playground/train.py")
    return at.run()


def header(at: AppTest) -> str | None:
    found = [h.value for h in at.subheader if h.value.startswith("Run `")]
    return found[0] if found else None


def button(at: AppTest, key: str):
    return next(b for b in at.button if b.key == key)


def train_page(corpus: Path, steps: int, name: str = "mine", token: str = ME) -> AppTest:
    at = page(token)
    at.radio(key="train_source").set_value("a local file").run()
    at.text_input(key="train_path").set_value(str(corpus)).run()
    at.selectbox(key="train_preset").set_value("tiny").run()
    at.number_input(key="train_steps").set_value(steps).run()
    at.number_input(key="train_eval").set_value(20).run()
    at.text_input(key="train_name").set_value(name).run()
    return at


def test_start_watch_stop_resume_export_and_pick(dirs, corpus_file):
    at = train_page(corpus_file, 3000)
    button(at, "train_start").click().run()
    assert not at.error, [e.value for e in at.error]
    wait_until("two distinct steps", lambda: (shared._board().view(ME, "mine").step or 0) >= 2)
    at.run()
    assert header(at).endswith(("starting", "running")) and len(at.get("progress")) == 1
    assert len(at.get("plotly_chart")) >= 1
    button(at, "train_stop").click().run()
    wait_until("stopped", lambda: state_of("mine") == "stopped")
    stopped_at = shared._board().view(ME, "mine").step
    assert stopped_at < 3000
    at.run()
    assert header(at).endswith("stopped") and any("checkpoint is kept" in i.value for i in at.info)
    button(at, "train_resume").click().run()
    wait_until("trains on from the checkpoint", lambda: shared._board().view(ME, "mine").step > stopped_at + 5)
    button(at, "train_stop").click().run()
    wait_until("stopped again", lambda: state_of("mine") == "stopped")
    steps = shared._board().view(ME, "mine").steps
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at    # resumed, nothing repeated
    at.run()
    button(at, "train_export").click().run()
    wait_until("exported", lambda: state_of("mine") == "exported")
    assert "mine" in shared.model_names()
    picker = AppTest.from_file(APP, default_timeout=60).run()
    picker.switch_page("playground/models.py")
    picker.run()
    assert "mine" in picker.selectbox(key="model").options


def test_a_run_finishes_and_is_exported_with_no_page_open(dirs, corpus_file):
    """The job owns its lifecycle: once started, nobody looks at the page again; it still finishes, is
    exported, and its process is reaped (no defunct trainer stays a child of the server)."""
    at = train_page(corpus_file, 40, name="quick")
    button(at, "train_start").click().run()
    del at                                                            # the tab is gone
    wait_until("exported", lambda: state_of("quick") == "exported")
    assert (dirs / "exported" / "quick" / "card.json").is_file()
    job = shared._board().jobs["quick"]
    assert job.process.returncode == 0 and not Path(f"/proc/{job.process.pid}").exists()
    assert catalog.list_runs()[0].step == 40                         # Home lists the steps taken
    card = (dirs / "exported" / "quick" / "card.json").read_text()
    assert str(dirs) not in card and str(ROOT) not in card            # no server path in a shared card
    at = page()                                                       # a new tab shows it, exported
    assert header(at).endswith("exported") and any("in the model picker" in s.value for s in at.success)


def test_a_reload_reclaims_the_run_and_others_can_only_watch(dirs, corpus_file):
    at = train_page(corpus_file, 3000, name="mine")
    button(at, "train_start").click().run()
    wait_until("running", lambda: state_of("mine") == "running")
    reloaded = page(ME)                                                # a new session, the same visitor
    assert header(reloaded) and header(reloaded).startswith("Run `mine`")
    assert not button(reloaded, "train_stop").disabled
    assert len(reloaded.get("plotly_chart")) >= 1
    stranger = page(OTHER)
    assert stranger.selectbox(key="train_job").value is None          # not shown their run by default
    stranger.selectbox(key="train_job").set_value("mine").run()
    assert button(stranger, "train_stop").disabled and button(stranger, "train_resume").disabled
    assert any("Another visitor started this run" in c.value for c in stranger.caption)
    with pytest.raises(JobError, match="another visitor"):
        shared._board().stop(OTHER, "mine")
    button(reloaded, "train_stop").click().run()
    wait_until("stopped", lambda: state_of("mine") == "stopped")


def test_a_restarted_server_stops_orphans_and_keeps_owners(dirs, corpus_file):
    board = shared._board()
    board.start(ME, tiny("orphan", corpus_file, steps=3000))
    wait_until("running", lambda: state_of("orphan") == "running")
    pid = board.jobs["orphan"].process.pid
    board.close()                                                      # the server process goes away
    shared._board.cache_clear()
    again = shared._board()                                            # a new server finds the run on disk
    wait_until("stopped by the new server", lambda: state_of("orphan") == "stopped")
    board.jobs["orphan"].process.wait(timeout=60)                      # (the old server's child, reaped here)
    assert not Path(f"/proc/{pid}").exists()
    assert "server restarted" in again.view(ME, "orphan").message
    with pytest.raises(JobError, match="another visitor"):
        again.resume(OTHER, "orphan")
    again.resume(ME, "orphan")                                         # the owner still owns it
    wait_until("running again", lambda: state_of("orphan") == "running")
    again.stop(ME, "orphan")
    wait_until("stopped", lambda: state_of("orphan") == "stopped")


def test_phases_and_an_estimate_are_shown_before_the_first_step(dirs, corpus_file):
    at = train_page(corpus_file, 40)
    assert any("minutes here" in c.value and "GFLOP/s" in c.value for c in at.caption)
    button(at, "train_start").click().run()
    assert header(at) is not None
    phases = set()
    wait_until("the run reports its phases", lambda: phases.add(shared._board().view(ME, "mine").phase)
               or state_of("mine") in ("exported", "finished"))
    log = catalog.read_log(dirs / "runs" / "mine")
    names = [r["name"] for r in log if r["type"] == "Phase"]
    assert names[:4] == ["loading corpus", "tokenizing", "building model", "evaluating"]
    chosen = [r for r in log if r["type"] == "ThreadsChosen"]
    assert len(chosen) == 1 and str(chosen[0]["threads"]) in chosen[0]["ms_per_step"]
    measured = shared._board().plan(tiny("next", corpus_file)).estimate
    assert "earlier run" in measured.basis                             # the next estimate uses this run


def test_bad_corpora_and_failures_get_their_message(dirs, tmp_path):
    binary = tmp_path / "x.txt"
    binary.write_bytes(b"\x00\x01binary")
    at = train_page(binary, 40)
    assert any("binary" in e.value for e in at.error)
    assert button(at, "train_start").disabled
    at.text_input(key="train_path").set_value(str(tmp_path / "missing.txt")).run()
    assert any("no such file" in e.value for e in at.error)
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 4)
    at = train_page(short, 40, name="short")
    button(at, "train_start").click().run()
    wait_until("failed", lambda: state_of("short") == "failed")
    at.run()
    assert any("too short for a context" in e.value for e in at.error)
    assert not any(str(tmp_path) in e.value for e in at.error)         # no server path in a message


def test_hosted_mode_runs_one_job_at_a_time(dirs, corpus_file, monkeypatch):
    monkeypatch.setattr(shared, "HOSTED", True)
    board = shared.job_board()
    board.start(OTHER, tiny("theirs", corpus_file, steps=2000))
    at = page(ME)
    at.number_input(key="train_steps").set_value(100).run()
    at.radio(key="train_source").set_value("tiny shakespeare (downloaded once, checksum-verified)").run()
    button(at, "train_start").click().run()
    assert any("already running on this server" in e.value for e in at.error)
    assert "a local file" not in at.radio(key="train_source").options        # no server paths when hosted
    assert board.jobs["theirs"].train.threads == 1                          # the server keeps a core


def test_job_board_rules(tmp_path, corpus_file):
    board = JobBoard(tmp_path / "runs", Limits(max_running=1, max_parameters=150_000, max_steps=500,
                                               heartbeat_seconds=0.5), tmp_path / "exported")
    try:
        for bad in ("../escape", "", "a b", "x" * 41):
            with pytest.raises(JobError, match="is not allowed"):
                board.start(ME, tiny(bad, corpus_file))
        with pytest.raises(JobError, match="at most 150,000"):
            board.start(ME, tiny("big", corpus_file, preset="small"))
        with pytest.raises(JobError, match="at most 500 per run"):
            board.start(ME, tiny("long", corpus_file, steps=501))
        with pytest.raises(JobError, match="steps must be an integer"):
            board.start(ME, tiny("odd", corpus_file, steps=2.5))
        board.start(ME, tiny("mine", corpus_file, steps=400))
        with pytest.raises(JobError, match="already running"):
            board.start(ME, tiny("second", corpus_file, steps=400))
        with pytest.raises(JobError, match="started by another visitor"):
            board.stop(OTHER, "mine")
        # nobody watches: the heartbeat stops it
        wait_until("stopped", lambda: board.view(ME, "mine").state in ("stopped", "finished"), 120)
        if board.view(ME, "mine").state == "stopped":
            assert "page was closed" in board.view(ME, "mine").message
        with pytest.raises(JobError, match="exists already"):
            board.start(ME, tiny("mine", corpus_file, steps=400))
    finally:
        board.close()
        for job in board.jobs.values():
            if job.process is not None and job.process.poll() is None:
                job.process.kill()


def test_milestones_are_kept_and_the_scrubber_switches_checkpoints(dirs, corpus_file, data_dir, monkeypatch):
    import subprocess
    import sys

    from core.checkpoint import list_checkpoints
    from core.train import TrainConfig, milestone_steps
    assert milestone_steps(TrainConfig(max_steps=1000, checkpoint_interval=50, milestones=4)) == {250, 500, 750, 1000}
    run = dirs / "runs" / "learning"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "core.train", "--out-dir", str(run), "--corpus", str(corpus_file),
                          "--data-dir", str(data_dir), "--n-layer", "1", "--n-head", "2", "--n-embd", "32",
                          "--block-size", "32", "--batch-size", "4", "--eval-iters", "2", "--threads", "1",
                          "--max-steps", "80", "--checkpoint-interval", "10",
                          "--eval-interval", "40", "--milestones", "4", "--keep-checkpoints", "1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=CEILING, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [s for s, _ in list_checkpoints(run)] == [20, 40, 60, 80]        # milestones survive pruning
    res = subprocess.run([sys.executable, "-m", "core.export", str(run), str(dirs / "exported" / "learning"),
                          "--checkpoints"], cwd=ROOT, capture_output=True, text=True, timeout=CEILING, env=env)
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


@pytest.mark.parametrize("architecture", ["mlm", "moe"])
def test_the_other_architectures_train_and_export_from_the_page(dirs, corpus_file, architecture):
    """The Train page's architecture choice reaches the model: a masked LM (bidirectional, [MASK] added, no samples)
    lands where its own view is and not in the writing pages' pickers; a mixture of experts routes its tokens."""
    at = train_page(corpus_file, 30, name=architecture)
    at.radio(key="train_arch").set_value(architecture).run()
    assert not at.error, [e.value for e in at.error]
    assert (architecture == "moe") == any("active per token" in c.value for c in at.caption)
    button(at, "train_start").click().run()
    wait_until("exported", lambda: state_of(architecture) == "exported")
    card = json.loads((dirs / "exported" / architecture / "card.json").read_text())
    mc = card["model_config"]
    if architecture == "mlm":
        assert (mc["attention"], mc["objective"]) == ("bidirectional", "mlm")
        assert architecture in shared.model_names("mlm") and architecture not in shared.model_names()
        at.run()
        assert any("masked LM" in s.value for s in at.success)
    else:
        assert (mc["n_experts"], mc["moe_top_k"]) == (8, 2)
        assert architecture in shared.model_names()
        assert card["parameters"]["active"] < card["parameters"]["total"]


def test_an_unknown_architecture_is_refused_with_the_choices():
    with pytest.raises(JobError, match="architecture"):
        TrainingRequest(name="x", corpus="tinyshakespeare", architecture="t5").check()
