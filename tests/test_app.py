"""AppTest of every page (so far: Home)."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

from core import catalog
from core.train import TrainConfig, train
from tests.test_train import TINY

APP = str(Path(__file__).resolve().parent.parent / "streamlit_app.py")


def test_home_with_nothing_on_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(catalog, "RUNS_DIR", tmp_path / "runs")
    monkeypatch.setattr(catalog, "EXPORTED_DIR", tmp_path / "exported")
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    assert [i.value for i in at.info][0].startswith("No exported model yet")
    assert "python -m core.train" in at.code[0].value


def test_home_lists_a_real_run(tmp_path, monkeypatch, corpus_file, data_dir):
    runs = tmp_path / "runs"
    list(train(TrainConfig(out_dir=str(runs / "tiny"), corpus=str(corpus_file), data_dir=str(data_dir),
                           batch_size=4, max_steps=10, eval_interval=5, eval_iters=2, threads=1), TINY))
    monkeypatch.setattr(catalog, "RUNS_DIR", runs)
    at = AppTest.from_file(APP, default_timeout=30).run()
    assert not at.exception
    models, run_table = at.dataframe[0].value, at.dataframe[1].value
    assert {"shakespeare-char", "shakespeare-bpe"} <= set(models["model"])   # the committed defaults
    assert list(run_table["run"]) == ["tiny"] and list(run_table["steps"]) == [10]


def test_the_run_list_follows_a_log_that_grows(tmp_path):
    """list_runs keeps each run's last eval until its log changes: a resumed run's new eval shows."""
    import json
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / catalog.RUN_FILE).write_text("{}")
    log = run / catalog.LOG_FILE
    log.write_text(json.dumps({"type": "EvalResult", "step": 5, "val_loss": 2.5, "val_bits_per_byte": 3.6}) + "\n")
    assert catalog.list_runs(tmp_path / "runs")[0].val_loss == 2.5
    with log.open("a") as f:
        f.write(json.dumps({"type": "EvalResult", "step": 10, "val_loss": 2.0, "val_bits_per_byte": 2.9}) + "\n")
    assert catalog.list_runs(tmp_path / "runs")[0].val_loss == 2.0
