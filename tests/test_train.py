import dataclasses
import hashlib
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core import checkpoint as ckpt_io
from core.data import CorpusError
from core.config import ConfigError, ModelConfig
from core.model import GPT
from core.catalog import read_log
from core.train import (CheckpointSaved, EvalResult, Phase, RunExists, RunFinished, RunStarted, TrainConfig,
                        TrainingDiverged, TrainStep, lr_at, train)

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)


def tiny_cfg(out_dir, corpus_file, data_dir, **kw) -> TrainConfig:
    base = dict(out_dir=str(out_dir), corpus=str(corpus_file), data_dir=str(data_dir), batch_size=4,
                max_steps=30, warmup_steps=5, learning_rate=3e-3, eval_interval=10, eval_iters=2,
                checkpoint_interval=10, threads=1)
    return TrainConfig(**{**base, **kw})


def cli(*args, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "core.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, **kw)


def cli_args(out_dir, corpus_file, data_dir, *extra) -> list[str]:
    return ["--out-dir", str(out_dir), "--corpus", str(corpus_file), "--data-dir", str(data_dir),
            "--batch-size", "4", "--block-size", "16", "--n-layer", "2", "--n-head", "2",
            "--n-embd", "32", "--threads", "1", "--eval-iters", "2", *extra]


def weights(path) -> dict[str, torch.Tensor]:
    return ckpt_io.load_checkpoint(path).model_state()


def file_digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_run_yields_its_records_and_learns(tmp_path, corpus_file, data_dir):
    recs = list(train(tiny_cfg(tmp_path / "run", corpus_file, data_dir, max_steps=60, keep_checkpoints=2), TINY))
    first = next(i for i, r in enumerate(recs) if not isinstance(r, Phase))
    assert [r.name for r in recs[:first]] == ["loading corpus", "tokenizing", "building model"]
    started = recs[first]
    assert isinstance(started, RunStarted) and started.resumed_from is None
    assert started.parameters["total"] == sum(p.numel() for p in GPT(dataclasses.replace(TINY, vocab_size=257)).parameters())
    steps = [r for r in recs if isinstance(r, TrainStep)]
    evals = [r for r in recs if isinstance(r, EvalResult)]
    assert [s.step for s in steps] == list(range(1, 61))
    assert [e.step for e in evals] == [0, 10, 20, 30, 40, 50, 60]
    assert evals[-1].val_loss < evals[0].val_loss - 1.5
    # byte tokenizer on ASCII: one byte per token, so bits/byte is nats/token over ln 2
    assert evals[-1].val_bits_per_byte == pytest.approx(evals[-1].val_loss / math.log(2))
    assert evals[-1].val_perplexity == pytest.approx(math.exp(evals[-1].val_loss))
    assert steps[-1].tokens_seen == 60 * 4 * 16 and all(s.grad_norm > 0 for s in steps)
    assert isinstance(recs[-1], RunFinished) and recs[-1].final.step == 60
    assert [s for s, _ in ckpt_io.list_checkpoints(tmp_path / "run")] == [50, 60]   # keep_checkpoints=2
    log = read_log(tmp_path / "run")
    assert sum(r["type"] == "TrainStep" for r in log) == 60


def test_learning_rate_schedule():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-3 / 11)
    assert lr_at(10, cfg) == pytest.approx(1e-3)
    assert lr_at(55, cfg) == pytest.approx(5.5e-4)
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)


def test_warmup_stable_decay_holds_the_peak_then_decays_linearly():
    cfg = TrainConfig(max_steps=110, warmup_steps=10, learning_rate=1e-3, min_lr=0.0, lr_schedule="linear",
                      lr_hold=0.4)
    assert lr_at(10, cfg) == pytest.approx(1e-3) and lr_at(50, cfg) == pytest.approx(1e-3)   # held for 40 %
    assert lr_at(80, cfg) == pytest.approx(5e-4)                                             # halfway down
    assert lr_at(110, cfg) == pytest.approx(0.0)
    timed = dataclasses.replace(cfg, max_seconds=100.0, max_steps=10 ** 6)
    assert lr_at(50, timed, 40.0) == pytest.approx(1e-3) and lr_at(51, timed, 85.0) == pytest.approx(2.5e-4)
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_hold"):
        TrainConfig(lr_hold=1.0)


def test_stop_then_resume_continues_identically(tmp_path, corpus_file, data_dir):
    # dropout on: the torch RNG state must survive the resume too
    straight = [r for r in train(tiny_cfg(tmp_path / "a", corpus_file, data_dir), dataclasses.replace(TINY, dropout=0.1))
                if isinstance(r, TrainStep)]
    gen = train(tiny_cfg(tmp_path / "b", corpus_file, data_dir), dataclasses.replace(TINY, dropout=0.1))
    for rec in gen:
        if isinstance(rec, TrainStep) and rec.step == 13:
            gen.close()     # a Stop button: saves step 13 on the way out
    assert [s for s, _ in ckpt_io.list_checkpoints(tmp_path / "b")] == [10, 13]
    resumed = [r for r in train(tiny_cfg(tmp_path / "b", corpus_file, data_dir, resume=True))
               if isinstance(r, TrainStep)]
    assert [r.step for r in resumed] == list(range(14, 31))
    assert [r.loss for r in resumed] == [r.loss for r in straight[13:]]    # bit-identical
    a, b = weights(ckpt_io.checkpoint_path(tmp_path / "a", 30)), weights(ckpt_io.checkpoint_path(tmp_path / "b", 30))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path, corpus_file, data_dir):
    extra = ["--max-steps", "600", "--checkpoint-interval", "25", "--eval-interval", "0", "--dropout", "0.1"]
    ref = cli(*cli_args(tmp_path / "ref", corpus_file, data_dir, *extra), timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "core.train", *cli_args(run, corpus_file, data_dir, *extra)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(s >= 75 for s, _ in ckpt_io.list_checkpoints(run)):
        time.sleep(0.01)
    time.sleep(random.Random(0).uniform(0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(s for s, _ in ckpt_io.list_checkpoints(run))
    assert killed_at < 600, "the run finished before it could be killed; make it longer"
    res = cli("--out-dir", str(run), "--resume", timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"resumed from step {killed_at}" in res.stdout
    a = weights(ckpt_io.checkpoint_path(tmp_path / "ref", 600))
    b = weights(ckpt_io.checkpoint_path(run, 600))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log_steps = [r["step"] for r in read_log(run) if r["type"] == "TrainStep"]
    assert log_steps == list(range(1, 601))      # steps redone after the kill are logged once


WRITER = """
import sys, torch
sys.path.insert(0, {root!r})
from core import checkpoint as ckpt_io
from core.config import ModelConfig
from core.model import GPT
model = GPT(ModelConfig())   # 0.83M parameters: 10 MB a file with the optimizer's moments
opt = torch.optim.AdamW(model.parameters())
model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long)).loss.backward(); opt.step()
step = 0
while True:
    step += 1
    with torch.no_grad():
        model.lm_head.weight.fill_(step)
    ckpt_io.save_checkpoint(ckpt_io.checkpoint_path({run!r}, 1 + step % 2), model, opt,
                            {{"train_config": {{}}, "state": {{"step": step, "tokens_seen": 0, "elapsed": 0}}}})
    if step == 1:
        print("ready", flush=True)   # one checkpoint exists; from here on every kill lands mid-loop
"""


@pytest.mark.slow
def test_a_write_killed_midway_leaves_the_last_good_checkpoint_loadable(tmp_path):
    run = tmp_path / "run"
    rng = random.Random(1)
    for kill in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), run=str(run))],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        found = ckpt_io.list_checkpoints(run)
        assert found, "no checkpoint was completed before the kill"
        for _, path in found:
            c = ckpt_io.load_checkpoint(path)     # every visible checkpoint loads, none torn
            w = c.model_state()["transformer.wte.weight"]
            assert torch.all(w == w.flatten()[0])  # and is internally consistent
        assert ckpt_io.latest_checkpoint(run) is not None
    # leftovers of killed writes are temp files that nothing mistakes for checkpoints
    assert all(p.suffix in (".safetensors", ".tmp") for p in (run / "checkpoints").iterdir())


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path, corpus_file, data_dir):
    list(train(tiny_cfg(tmp_path / "run", corpus_file, data_dir, max_steps=20), TINY))
    newest = ckpt_io.checkpoint_path(tmp_path / "run", 20)
    newest.write_bytes(newest.read_bytes()[:1000])
    with pytest.raises(ckpt_io.CheckpointError, match="truncated or damaged"):
        ckpt_io.load_checkpoint(newest)
    assert ckpt_io.latest_checkpoint(tmp_path / "run").step == 10
    resumed = [r for r in train(tiny_cfg(tmp_path / "run", corpus_file, data_dir, resume=True)) if isinstance(r, RunStarted)]
    assert resumed[0].resumed_from == 10


@pytest.mark.slow
def test_divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file, data_dir):
    # the learning rate ramps from 2e-3 to 20 over 10,000 steps: fine at first, then it blows up
    cfg = tiny_cfg(tmp_path / "run", corpus_file, data_dir, max_steps=10_000, warmup_steps=10_000,
                   learning_rate=20.0, checkpoint_interval=5, eval_interval=0, grad_clip=1.0)
    assert_diverges_keeping_the_last_good_checkpoint(cfg, tmp_path / "run")


def assert_diverges_keeping_the_last_good_checkpoint(cfg, run_dir):
    seen = []
    with pytest.raises(TrainingDiverged, match=r"diverged at step \d+: loss .*the last good checkpoint "
                                               r"\(step \d+\) is kept at .*lower learning rate"):
        for rec in train(cfg, TINY):
            if isinstance(rec, CheckpointSaved):
                seen.append((rec.step, file_digest(rec.path)))
    assert seen, "the run should have checkpointed before diverging"
    good = ckpt_io.latest_checkpoint(run_dir)
    assert (good.step, file_digest(good.path)) == seen[-1]        # untouched by the divergence
    assert all(torch.isfinite(t).all() for t in good.model_state().values())


def test_an_existing_run_is_never_overwritten(tmp_path, corpus_file, data_dir):
    list(train(tiny_cfg(tmp_path / "run", corpus_file, data_dir, max_steps=10), TINY))
    before = {p.name: file_digest(p) for p in (tmp_path / "run" / "checkpoints").iterdir()}
    with pytest.raises(RunExists, match="already holds a run; pass --resume"):
        list(train(tiny_cfg(tmp_path / "run", corpus_file, data_dir, max_steps=10), TINY))
    assert {p.name: file_digest(p) for p in (tmp_path / "run" / "checkpoints").iterdir()} == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        list(train(tiny_cfg(tmp_path / "empty", corpus_file, data_dir, resume=True)))


def test_a_corpus_too_short_for_the_context_writes_nothing(tmp_path, data_dir):
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be\n" * 3)   # the val split is 6 characters
    with pytest.raises(CorpusError, match="too short for a context of 16"):
        list(train(tiny_cfg(tmp_path / "run", short, data_dir), TINY))
    assert not (tmp_path / "run").exists()


def test_bpe_run_and_gradient_accumulation(tmp_path, corpus_file, data_dir):
    cfg = tiny_cfg(tmp_path / "run", corpus_file, data_dir, tokenizer="bpe", bpe_vocab_size=300,
                   grad_accum_steps=2, max_steps=10)
    recs = list(train(cfg, TINY))
    assert [r.name for r in recs[:4]] == ["loading corpus", "training tokenizer", "tokenizing", "building model"]
    started = recs[4]
    assert started.model_config["vocab_size"] == 301 and started.tokenizer == "bpe300"
    assert started.tokens_per_step == 4 * 16 * 2
    final = [r for r in recs if isinstance(r, EvalResult)][-1]
    assert final.val_bits_per_byte == pytest.approx(final.val_loss / math.log(2) / started.val_bytes_per_token)
    assert started.val_bytes_per_token > 1.5
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.tiktoken").is_file()


@pytest.mark.slow
def test_cli_rejects_bad_values_with_the_field_name(tmp_path):
    res = cli("--batch-size", "0", "--out-dir", str(tmp_path / "x"))
    assert res.returncode == 2 and "batch_size must be a positive integer, got 0" in res.stderr
    res = cli("--n-embd", "30", "--n-head", "4", "--out-dir", str(tmp_path / "x"))
    assert res.returncode == 2 and "divisible by n_head" in res.stderr
    res = cli("--corpus", str(tmp_path / "missing.txt"), "--out-dir", str(tmp_path / "x"))
    assert res.returncode == 1 and "no such file" in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path, corpus_file, data_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def run():
        shutil.rmtree(tmp_path / "ddp", ignore_errors=True)
        return subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "-m", "core.train", *cli_args(tmp_path / "ddp", corpus_file, data_dir,
                                           "--max-steps", "12", "--eval-interval", "6",
                                           "--checkpoint-interval", "6", "--grad-accum-steps", "2")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    res = run()
    # torchrun picks its rendezvous port by binding and releasing it: under load another process can
    # take it in between. Only that kind of failure earns one more try.
    if res.returncode != 0 and re.search(r"EADDRINUSE|address already in use|rendezvous|Connection (refused|reset)",
                                         res.stderr, re.IGNORECASE):
        res = run()
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-6000:]
    assert "2 process(es)" in res.stdout
    c = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path / "ddp", 12))
    assert c.meta["state"]["tokens_seen"] == 12 * 4 * 16 * 2 * 2
    assert len(c.meta["rng_numpy"]) == 2 and "rng.torch.1" in c.tensors
    evals = [r for r in read_log(tmp_path / "ddp") if r["type"] == "EvalResult"]
    assert [e["step"] for e in evals] == [0, 6, 12] and evals[-1]["val_loss"] < evals[0]["val_loss"]


# -- Muon, a time budget, cheaper evaluation ---------------------------------------------------------

def test_muon_steps_like_torchs_muon_with_same_shaped_matrices_batched():
    """Our Muon orthogonalises same-shaped updates (tall ones transposed) in one batched iteration; torch's
    does one matrix at a time in bf16. Same hyper-parameters, same steps: the parameters must move alike,
    within bf16's precision, and a mixed-up stack (a matrix normalised or oriented with another) would not."""
    from core.train import Muon
    torch.manual_seed(0)
    shapes = [(48, 16), (16, 16), (16, 48), (48, 16), (16, 48), (24, 16), (16, 16)]
    init = [torch.randn(*s) * 0.1 for s in shapes]
    ours = [torch.nn.Parameter(w.clone()) for w in init]
    theirs = [torch.nn.Parameter(w.clone()) for w in init]
    kw = dict(lr=0.05, weight_decay=0.01, momentum=0.95, nesterov=True)
    opt_ours, opt_theirs = Muon(ours, ns_dtype=torch.float32, **kw), torch.optim.Muon(theirs, **kw)
    for step in range(3):
        grads = [torch.randn(*s) * (1 + i) for i, s in enumerate(shapes)]    # unequal norms per matrix
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    for w, p, q in zip(init, ours, theirs):
        moved = (q.detach() - w).abs().max().item()
        assert moved > 0.02
        assert (p.detach() - q.detach()).abs().max().item() < 0.03 * moved


def test_muon_run_learns_and_resumes_identically(tmp_path, corpus_file, data_dir):
    from core.train import MuonAdamW
    muon = dict(optimizer="muon", muon_lr=0.02)
    straight = [r for r in train(tiny_cfg(tmp_path / "a", corpus_file, data_dir, **muon), TINY)]
    steps = [r for r in straight if isinstance(r, TrainStep)]
    evals = [r for r in straight if isinstance(r, EvalResult)]
    assert evals[-1].val_loss < evals[0].val_loss - 1.5
    ckpt = ckpt_io.load_checkpoint(ckpt_io.checkpoint_path(tmp_path / "a", 30))
    groups = ckpt.meta["optimizer_param_groups"]
    assert [bool(g.get("muon")) for g in groups] == [True, False, False]   # Muon's matrices, then AdamW's two
    assert groups[0]["lr"] == pytest.approx(steps[-1].lr * 0.02 / 3e-3)     # one schedule, scaled
    # stopped at step 13 and resumed: the same losses and weights as the straight run
    gen = train(tiny_cfg(tmp_path / "b", corpus_file, data_dir, **muon), TINY)
    for rec in gen:
        if isinstance(rec, TrainStep) and rec.step == 13:
            gen.close()
    resumed = [r for r in train(tiny_cfg(tmp_path / "b", corpus_file, data_dir, resume=True))
               if isinstance(r, TrainStep)]
    assert [r.loss for r in resumed] == [r.loss for r in steps[13:]]
    a, b = weights(ckpt_io.checkpoint_path(tmp_path / "a", 30)), weights(ckpt_io.checkpoint_path(tmp_path / "b", 30))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the optimizer state is one state dict over both parts
    model = GPT(ckpt.model_config)
    from core.train import make_optimizer
    opt = make_optimizer(model, TrainConfig(**ckpt.meta["train_config"]), torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    ckpt_io.restore_optimizer(opt, ckpt)
    assert len(opt.state) == len([p for p in model.parameters()])


def test_a_muon_checkpoint_exports(tmp_path, corpus_file, data_dir):
    from core.export import ExportConfig, export_model
    list(train(tiny_cfg(tmp_path / "run", corpus_file, data_dir, optimizer="muon", max_steps=10), TINY))
    card = export_model(tmp_path / "run", tmp_path / "out", ExportConfig(parity_steps=5))
    assert card["parity"]["max_abs_logit_diff"] < 1e-4


def test_a_time_budget_stops_near_the_deadline_with_the_lr_at_its_floor(tmp_path, corpus_file, data_dir):
    cfg = tiny_cfg(tmp_path / "run", corpus_file, data_dir, max_steps=10 ** 6, max_seconds=2.0, eval_interval=0,
                   exact_final_eval=True, eval_train=False, checkpoint_interval=0, min_lr=1e-4)
    t0 = time.perf_counter()
    recs = list(train(cfg, TINY))
    steps = [r for r in recs if isinstance(r, TrainStep)]
    evals = [r for r in recs if isinstance(r, EvalResult)]
    assert 2.0 <= steps[-1].elapsed < 2.0 + 1.0 and time.perf_counter() - t0 < 30
    assert len(steps) > 20 and steps[-1].lr == pytest.approx(1e-4, rel=0.05)   # decay ended on the deadline
    assert max(s.lr for s in steps) > 2e-3
    assert [e.step for e in evals] == [steps[-1].step]                          # one eval, at the end
    final = evals[0]
    assert final.val_loss_estimate is not None and abs(final.val_loss - final.val_loss_estimate) < 0.5
    assert final.train_loss == pytest.approx(sum(s.loss for s in steps[-50:]) / 50)
    assert isinstance(recs[-1], RunFinished) and recs[-1].final is final
    assert [s for s, _ in ckpt_io.list_checkpoints(tmp_path / "run")] == [steps[-1].step]


def test_time_schedule_and_bad_values():
    from core.checks import ConfigError
    cfg = TrainConfig(max_steps=10 ** 6, warmup_steps=10, learning_rate=1e-3, min_lr=1e-4, max_seconds=100)
    assert lr_at(5, cfg, 0.5) == pytest.approx(1e-3 * 6 / 11)          # warmup counts steps
    assert lr_at(50, cfg, 50.0) == pytest.approx(5.5e-4)               # half the time: half the cosine
    assert lr_at(50, cfg, 100.0) == pytest.approx(1e-4) and lr_at(51, cfg, 250.0) == pytest.approx(1e-4)
    for kw, message in [(dict(max_seconds=-1), "max_seconds must be a finite number >= 0, got -1"),
                        (dict(max_seconds=float("inf")), "max_seconds must be a finite number"),
                        (dict(optimizer="sgd"), "optimizer must be one of adamw, muon; got 'sgd'"),
                        (dict(muon_lr=0), "muon_lr must be a finite number > 0"),
                        (dict(muon_momentum=1.0), "muon_momentum must be"),
                        (dict(max_seconds=60, lr_decay_steps=100), "drop one of them")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            TrainConfig(**kw)


def test_a_diverging_muon_recipe_stops_and_keeps_the_last_good_checkpoint(tmp_path, corpus_file, data_dir):
    # both learning rates ramp over the warmup to absurd values: fine at first, then it blows up
    cfg = tiny_cfg(tmp_path / "run", corpus_file, data_dir, optimizer="muon", max_steps=2000, warmup_steps=2000,
                   learning_rate=50.0, muon_lr=500.0, checkpoint_interval=5, eval_interval=0, grad_clip=1.0)
    assert_diverges_keeping_the_last_good_checkpoint(cfg, tmp_path / "run")
