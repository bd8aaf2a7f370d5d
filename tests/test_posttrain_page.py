"""Post-training from the browser: the Post-train page (AppTest) and the post-training jobs behind it.

The board's supervisor owns each job's lifecycle, so the slow tests wait on the board (an event: a state or a
step reached, with a generous ceiling for a busy machine) and open the page to act and to check what it shows.
The fast ones never start a child: the page, the A/B picker (torch-free decoding), uploads and the board's
checks of a request."""

import json
import shutil
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core import catalog
from core.config import POST_PRESETS
from core.jobs import JobBoard, JobError, PostTrainRequest, store_post_data
from core.limits import Limits
from core.preferences import PreferencePair, read_jsonl, write_jsonl
from playground import shared
from tests.conftest import close_board, run_without_torch

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "streamlit_app.py")
BASE = "shakespeare-char"
CEILING = 900           # seconds: a run of a few steps, on a machine that may be very busy
ME, OTHER = "m" * 43, "o" * 43      # visitor tokens (what the cookie would hold)
TINY = (("steps", 4), ("examples", 16), ("response_tokens", 8), ("batch_size", 4), ("eval_interval", 2))


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    """A server of our own: runs, exported models (the default one copied in) and the data folder in tmp."""
    shutil.copytree(catalog.EXPORTED_DIR / BASE, tmp_path / "exported" / BASE)
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    monkeypatch.setenv("LLM_PLAYGROUND_DATA", str(tmp_path / "data"))
    shared._board.cache_clear()
    yield tmp_path
    close_board()


def wait_until(what: str, predicate, ceiling: float = CEILING, job: str | None = None):
    """Poll a cheap predicate until it holds (the event), failing after `ceiling` seconds, or at once with its
    message when `job` failed."""
    deadline = time.time() + ceiling
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if job is not None and state_of(job) == "failed":
            raise AssertionError(f"{what}: {job} failed: {view(job).message}")
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {ceiling} s")


def view(name: str, token: str = ME):
    return shared._board().view(token, name)


def state_of(name: str, token: str = ME) -> str | None:
    v = view(name, token)
    return v.state if v else None


def page(token: str = ME, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["owner"] = token       # what visitor_token() reads back from the cookie after a reload
    for k, v in query.items():
        at.query_params[k] = v
    at.run()
    at.switch_page("playground/posttrain.py")
    return at.run()


def button(at: AppTest, key: str):
    return next(b for b in at.button if b.key == key)


def set_knobs(at: AppTest, **knobs) -> AppTest:
    stage = at.radio(key="post_stage").value
    for name, value in knobs.items():
        at.number_input(key=f"post_{stage}_{name}").set_value(value).run()
    return at


def table_with(at: AppTest, column: str):
    """The dataframe (as pandas) that has this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def header(at: AppTest) -> str | None:
    found = [h.value for h in at.subheader if h.value.startswith("Run `")]
    return found[0] if found else None


def pick_pairs(at: AppTest, n: int) -> AppTest:
    button(at, "post_ab_write").click().run()
    for i in range(n):
        ab = at.session_state["post_ab_state"]
        assert ab["a"] != ab["b"]
        button(at, "post_ab_a" if i % 2 == 0 else "post_ab_b").click().run()
    return at


# -- fast: the page, the picker, uploads, the board's checks ------------------------------------------------------

def test_the_page_renders_with_the_default_model_and_explains_itself(dirs):
    at = page()
    assert not at.exception, at.exception
    assert at.title[0].value == "Post-train"
    assert at.selectbox(key="post_base").value == f"model:{BASE}"
    assert at.radio(key="post_stage").value == "sft"
    text = " ".join(m.value for m in at.markdown)
    assert "masks the prompt" in text and "Beta is the leash" in text and "Reward hacking at beta 0" in text
    knobs = {n.key: n for n in at.number_input}
    assert {"post_sft_learning_rate", "post_sft_steps", "post_sft_batch_size", "post_sft_lora_rank"} <= set(knobs)
    assert all(n.help for n in knobs.values())                   # each with PostTrainConfig's one-line why
    assert "post_sft_beta" not in knobs                          # SFT has no reference to stay near
    assert knobs["post_sft_learning_rate"].value == POST_PRESETS["sft"]["learning_rate"]
    at.radio(key="post_stage").set_value("dpo").run()
    knobs = {n.key: n for n in at.number_input}
    assert "post_dpo_beta" in knobs
    # each stage opens on its own preset, not on the value another stage's knob was left at
    assert knobs["post_dpo_learning_rate"].value == POST_PRESETS["dpo"]["learning_rate"]
    at.number_input(key="post_dpo_lora_rank").set_value(4).run()
    assert "post_dpo_lora_alpha" in {n.key for n in at.number_input}
    at.radio(key="post_stage").set_value("ppo").run()
    assert any("needs a reward model" in i.value for i in at.info)
    assert button(at, "post_start").disabled                     # nothing to score the rollouts with yet
    judge = at.selectbox(key="post_judge")
    assert judge.value == "short-lines" and any("mean line length" in c.value for c in at.caption)


def test_hostile_link_values_are_replaced_with_a_note(dirs):
    at = page(model="../../etc/passwd", stage="<script>alert(1)</script>")
    assert not at.exception
    notes = " ".join(w.value for w in at.warning)
    assert "`model`" in notes and "`stage`" in notes
    assert at.selectbox(key="post_base").value == f"model:{BASE}" and at.radio(key="post_stage").value == "sft"


def test_a_malformed_jsonl_upload_shows_its_line_number_and_keeps_the_picks(dirs):
    at = page()
    pick_pairs(at, 1)
    at.radio(key="post_stage").set_value("dpo").run()
    at.radio(key="post_source_pairs").set_value("upload").run()
    bad = b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n\n{"prompt": "a", "chosen": "b"}\n'
    at.file_uploader(key="post_upload_pairs").set_value(("prefs.jsonl", bad, "application/jsonl")).run()
    assert not at.exception
    assert any("prefs.jsonl, line 3: the field 'rejected' is missing" in e.value for e in at.error)
    assert button(at, "post_start").disabled
    assert len(at.session_state["post_pairs"]) == 1              # nothing already made is lost
    assert not (dirs / "data" / "posttrain").exists()             # nothing stored
    good = write_jsonl([PreferencePair("a", "b", "c"), PreferencePair("d", "e", "f")]).encode()
    at.file_uploader(key="post_upload_pairs").set_value(("prefs.jsonl", good, "application/jsonl")).run()
    assert not at.error and any("2 examples (pairs)" in c.value for c in at.caption)
    assert not button(at, "post_start").disabled


def test_the_ab_picker_adds_pairs_shows_and_downloads_them(dirs):
    at = page()
    pick_pairs(at, 2)
    pairs = at.session_state["post_pairs"]
    assert len(pairs) == 2 and all(isinstance(p, PreferencePair) and p.chosen != p.rejected for p in pairs)
    assert pairs[0].prompt == "ROMEO:\n"
    first = at.session_state["post_ab_state"]
    button(at, "post_ab_skip").click().run()                      # a skip adds nothing, and writes the next two
    assert len(at.session_state["post_pairs"]) == 2 and at.session_state["post_ab_state"] != first
    assert any("2 pair(s) picked" in m.value for m in at.markdown)
    table = table_with(at, "chosen")
    assert len(table) == 2 and list(table.columns) == ["prompt", "chosen", "rejected"]
    download = [e for e in at.get("download_button")]
    assert download                                               # the JSONL download is offered
    assert read_jsonl(write_jsonl(pairs), "pairs") == pairs       # what it downloads reads back
    button(at, "post_ab_use").click().run()                       # use them: a pairs stage, the picks as data
    assert at.radio(key="post_stage").value == "dpo" and at.radio(key="post_source_pairs").value == "picks"
    assert not button(at, "post_start").disabled
    button(at, "post_ab_clear").click().run()
    assert at.session_state["post_pairs"] == [] and button(at, "post_start").disabled


def test_the_board_checks_a_post_training_request_before_anything_starts(dirs):
    board = JobBoard(dirs / "runs", exported_dir=dirs / "exported")
    try:
        ok = dict(name="p", stage="sft", base=f"model:{BASE}", knobs=TINY)
        cases = [
            (dict(name="../evil"), "run name"),
            (dict(base="model:../../etc"), "base model"),
            (dict(base="/tmp/x"), "choose a base model from the list"),
            (dict(base="model:nope"), "no exported model named 'nope'"),
            (dict(base="run:theirs"), "no job named 'theirs'"),
            (dict(stage="rlhf"), "stage must be one of"),
            (dict(stage="ppo"), "needs a reward model"),
            (dict(stage="ppo", reward_model="model:x"), "choose a reward model from the list"),
            (dict(data="stored:../../etc/passwd"), "choose the data"),
            (dict(data="/etc/passwd"), "choose the data"),
            (dict(data="judge:kindness"), "unknown judge"),
            (dict(data="stored:pairs-0123456789abcdef"), "holds pairs but a sft run learns from sft"),
            (dict(data="stored:sft-0123456789abcdef"), "no longer on the server"),
            (dict(knobs=(("steps", 10 ** 9),)), "steps must be an integer in"),
            (dict(knobs=(("learning_rate", float("nan")),)), "learning_rate must be a finite number"),
            (dict(knobs=(("temperature", 2.0),)), "not a knob offered here"),
            (dict(knobs=(("steps", 2.5),)), "steps must be an integer"),
        ]
        for change, message in cases:
            with pytest.raises(JobError, match=message):
                board.start_posttrain(ME, PostTrainRequest(**{**ok, **change}))
        assert not (dirs / "runs").exists() and not board.jobs
        stored = store_post_data(write_jsonl([PreferencePair("a", "b", "c")] * 2).encode(), "dpo", "x.jsonl")
        assert stored.examples == 2 and stored.kind == "pairs"
        assert (dirs / "data" / "posttrain" / f"{stored.id}.jsonl").is_file()
        again = store_post_data(write_jsonl([PreferencePair("a", "b", "c")] * 2).encode(), "reward", "y.jsonl")
        assert again == stored                                          # the same data is stored once
        plan = board.plan_posttrain(ME, PostTrainRequest(**{**ok, "stage": "dpo", "data": f"stored:{stored.id}"}))
        assert plan.config.data.endswith(f"{stored.id}.jsonl") and plan.config.steps == 4
        assert plan.config.checkpoint_interval == 2                    # a stop loses at most an evaluation's steps
    finally:
        board.close()
    hosted = JobBoard(dirs / "runs", Limits.hosted(), dirs / "exported")
    full = JobBoard(dirs / "runs", Limits(max_running=0), dirs / "exported")
    try:
        with pytest.raises(JobError, match="examples must be an integer in \\[4, 512\\]"):
            hosted.start_posttrain(ME, PostTrainRequest("p", "sft", f"model:{BASE}", knobs=(("examples", 4096),)))
        with pytest.raises(JobError, match="already running on this server"):    # one capacity for every kind
            full.start_posttrain(ME, PostTrainRequest("p", "sft", f"model:{BASE}", knobs=TINY))
        assert not (dirs / "runs").exists()
    finally:
        hosted.close()
        full.close()


def test_a_job_file_from_before_job_kinds_is_a_training_run(tmp_path):
    """job.json written before post-training jobs existed has no "kind": it is read back as a training job."""
    from core.config import ModelConfig, TrainConfig
    from core.jobs import Job, TrainingJob
    run = tmp_path / "runs" / "old"
    run.mkdir(parents=True)
    (run / "job.json").write_text(json.dumps({
        "name": "old", "owner": "h", "state": "stopped", "message": "", "started": 1.0, "pid": None,
        "export_pid": None, "export_target": None, "export_dir": None, "export_tried": False,
        "train_config": TrainConfig(max_steps=40).to_dict(), "model_config": ModelConfig().to_dict()}))
    job = Job.load(run, tmp_path / "exported")
    assert isinstance(job, TrainingJob) and job.max_steps == 40 and job.view("h").kind == "train"
    job.save()
    assert json.loads((run / "job.json").read_text())["kind"] == "train"


def test_the_page_says_post_training_needs_torch_without_importing_it():
    code = ("from streamlit.testing.v1 import AppTest\n"
            f"at = AppTest.from_file({APP!r}, default_timeout=60).run()\n"
            "at.switch_page('playground/posttrain.py')\nat.run()\n"
            "assert not at.exception, at.exception\n"
            "assert any('needs torch' in i.value for i in at.info), [i.value for i in at.info]\n"
            "assert 'torch' not in sys.modules\nprint('ok')")
    res = run_without_torch(code, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


# -- slow: real post-training jobs -------------------------------------------------------------------------------

@pytest.mark.slow
def test_start_watch_stop_resume_export_and_pick(dirs):
    at = page()
    at.radio(key="post_stage").set_value("sft").run()
    set_knobs(at, steps=2000, examples=16, response_tokens=8, batch_size=4, eval_interval=50)
    at.text_input(key="post_name_sft").set_value("mine").run()
    button(at, "post_start").click().run()
    assert not at.error, [e.value for e in at.error]
    wait_until("two steps", lambda: (view("mine").step or 0) >= 2, job="mine")
    at.run()
    assert header(at).startswith("Run `mine` (sft)") and len(at.get("plotly_chart")) >= 1
    stranger = page(OTHER)                                         # another visitor watches, cannot touch
    stranger.selectbox(key="post_job").set_value("mine").run()
    assert button(stranger, "post_stop").disabled and button(stranger, "post_export").disabled
    assert any("Another visitor started this run" in c.value for c in stranger.caption)
    button(at, "post_stop").click().run()
    wait_until("stopped", lambda: state_of("mine") == "stopped")
    stopped_at = view("mine").step
    assert stopped_at < 2000
    at.run()
    assert header(at).endswith("stopped") and any("checkpoint is kept" in i.value for i in at.info)
    button(at, "post_resume").click().run()
    wait_until("trains on from the checkpoint", lambda: view("mine").step > stopped_at + 2, job="mine")
    button(at, "post_stop").click().run()
    wait_until("stopped again", lambda: state_of("mine") == "stopped")
    steps = view("mine").steps
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > stopped_at    # resumed, nothing repeated
    at.run()
    button(at, "post_export").click().run()
    wait_until("exported", lambda: state_of("mine") in ("exported", "finished", "stopped") and
               state_of("mine"))
    assert state_of("mine") == "exported", view("mine").message
    assert (dirs / "exported" / "mine" / "card.json").is_file()
    card = json.loads((dirs / "exported" / "mine" / "card.json").read_text())
    assert card["posttraining"]["stage"] == "sft"
    at = page()                                                    # a new tab: the run, exported, and the model
    assert "mine" in at.selectbox(key="post_base").options        # offered as an exported model, once
    assert any("in the model picker of every page" in s.value for s in at.success)
    button(at, "post_cmp_go").click().run()                        # base vs post-trained, same prompts and seed
    table = table_with(at, "mine")
    assert list(table.columns)[:3] == ["prompt", f"base: {BASE}", "mine"] and len(table) >= 1
    picker = AppTest.from_file(APP, default_timeout=60).run()
    picker.switch_page("playground/generate.py")
    picker.run()
    assert "mine" in picker.selectbox(key="model").options
    picker.query_params["model"] = "mine"
    picker.switch_page("playground/models.py")
    picker.run()
    assert not picker.exception and any(h.value == "Post-trained" for h in picker.subheader)


@pytest.mark.slow
def test_ab_picks_start_a_dpo_run(dirs):
    at = page()
    at.slider(key="post_ab_tokens").set_value(16).run()
    pick_pairs(at, 4)
    picked = list(at.session_state["post_pairs"])
    button(at, "post_ab_use").click().run()
    set_knobs(at, steps=4, response_tokens=8, batch_size=2, eval_interval=2)
    at.text_input(key="post_name_dpo").set_value("picked").run()
    button(at, "post_start").click().run()
    assert not at.error, [e.value for e in at.error]
    wait_until("finished", lambda: state_of("picked") in ("finished", "failed"))
    v = view("picked")
    assert v.state == "finished", v.message
    kept = read_jsonl((dirs / "runs" / "picked" / catalog.POSTTRAIN_DATA_FILE).read_bytes(), "pairs")
    assert sorted(kept, key=repr) == sorted(picked, key=repr)       # the run learned from exactly the picks
    assert v.chosen_rewards and len(v.chosen_rewards) == len(v.rejected_rewards)
    at.run()
    assert header(at).startswith("Run `picked` (dpo): finished")
    assert len(at.get("plotly_chart")) >= 4                         # loss, accuracy, margin, rewards histogram


@pytest.mark.slow
def test_a_reward_run_scores_a_ppo_run_and_the_frontier_is_drawn(dirs):
    board = shared._board()
    board.start_posttrain(ME, PostTrainRequest("judge-rm", "reward", f"model:{BASE}", knobs=TINY))
    wait_until("reward finished", lambda: state_of("judge-rm") in ("finished", "failed"))
    assert state_of("judge-rm") == "finished", view("judge-rm").message
    assert not view("judge-rm").can_export                          # a reward model writes no text
    with pytest.raises(JobError, match="reward model"):
        board.export(ME, "judge-rm")
    with pytest.raises(JobError, match="reward model"):             # nor is it a base to start from
        board.start_posttrain(ME, PostTrainRequest("x", "sft", "run:judge-rm", knobs=TINY))
    with pytest.raises(JobError, match="another visitor"):          # and it is its owner's to use
        board.start_posttrain(OTHER, PostTrainRequest("y", "ppo", f"model:{BASE}", reward_model="run:judge-rm",
                                                      knobs=TINY))
    at = page()
    at.radio(key="post_stage").set_value("ppo").run()
    assert at.selectbox(key="post_reward").value == "judge-rm"
    set_knobs(at, steps=4, examples=16, response_tokens=8, batch_size=4, eval_interval=2, beta=0.0)
    at.text_input(key="post_name_ppo").set_value("hack").run()
    button(at, "post_start").click().run()
    assert not at.error, [e.value for e in at.error]
    wait_until("ppo finished", lambda: state_of("hack") in ("finished", "failed"))
    v = view("hack")
    assert v.state == "finished", v.message
    assert v.config["beta"] == 0.0 and v.labels["reward_model"] == "judge-rm"
    assert all("kl" in e and "reward" in e for e in v.evals) and any("judge_score" in m for m in v.metrics)
    at.run()
    assert header(at).startswith("Run `hack` (ppo)") and len(at.get("plotly_chart")) >= 3   # frontier, judge, distinct-2


@pytest.mark.slow
def test_a_restarted_server_stops_a_post_training_run_and_keeps_its_owner(dirs):
    board = shared._board()
    board.start_posttrain(ME, PostTrainRequest("orphan", "sft", f"model:{BASE}",
                                               knobs=(("steps", 3000), ("examples", 16), ("response_tokens", 8),
                                                      ("batch_size", 4), ("eval_interval", 50))))
    wait_until("running", lambda: state_of("orphan") == "running", job="orphan")
    pid = board.jobs["orphan"].process.pid
    board.close()                                                   # the server process goes away
    shared._board.cache_clear()
    again = shared._board()                                         # a new server finds the run on disk
    wait_until("stopped by the new server", lambda: state_of("orphan") == "stopped")
    board.jobs["orphan"].process.wait(timeout=60)                   # (the old server's child, reaped here)
    assert not Path(f"/proc/{pid}").exists()
    v = again.view(ME, "orphan")
    assert "server restarted" in v.message and v.stage == "sft" and v.kind == "posttrain" and v.steps
    with pytest.raises(JobError, match="another visitor"):
        again.resume(OTHER, "orphan")
    again.resume(ME, "orphan")                                      # the owner still owns it
    wait_until("running again", lambda: state_of("orphan") == "running", job="orphan")
    again.stop(ME, "orphan")
    wait_until("stopped", lambda: state_of("orphan") == "stopped")
