"""Faults: kill -9 the trainer at random moments, diverge it, kill a sweep, fill the disk, damage an export.

    python bench/faults.py                 (about 5 minutes on 2 cores)
    python bench/faults.py --kills 20 --seed 0

Each row of the table is one fault, injected for real on a tiny model and a generated corpus:
- CLI runs: `python -m core.train` is SIGKILLed at a random moment `--kills` times, each time resumed
  from whatever it left; after every kill every visible checkpoint must load, and the final weights
  must equal an uninterrupted run's bit for bit.
- Browser-started runs: the same through `core.jobs.JobBoard` (what the Train page calls), killing the
  child trainer and resuming with the board.
- Divergence: learning rate x1000: the run must stop with its message and leave the last checkpoint
  byte-identical.
- Sweep: `python -m core.sweep` SIGKILLed at random moments; finished runs are never lost and the
  final records equal an uninterrupted sweep's.
- Full disk: the file-size limit (RLIMIT_FSIZE) makes the next checkpoint write fail as ENOSPC would;
  the message must name the disk and the previous checkpoint stay intact.
- Damaged exports: truncated or missing files in an exported model directory must be refused with a
  message.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT))
from core import checkpoint as ckpt_io  # noqa: E402
from tests.conftest import make_text  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
MODEL = ["--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--block-size", "32", "--batch-size", "4",
         "--eval-interval", "0", "--threads", "1", "--dropout", "0.1"]


def train_args(run: Path, corpus: Path, data: Path, steps: int) -> list[str]:
    return ["--out-dir", str(run), "--corpus", str(corpus), "--data-dir", str(data), "--max-steps", str(steps),
            "--checkpoint-interval", "20", *MODEL]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def all_checkpoints_load(run: Path) -> tuple[int, int]:
    found = ckpt_io.list_checkpoints(run)
    bad = 0
    for _, path in found:
        try:
            ckpt_io.load_checkpoint(path)
        except ckpt_io.CheckpointError:
            bad += 1
    return len(found), bad


def same_weights(a: Path, b: Path) -> bool:
    import torch
    wa, wb = ckpt_io.load_checkpoint(a).model_state(), ckpt_io.load_checkpoint(b).model_state()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def cli_kills(tmp: Path, corpus: Path, data: Path, kills: int, rng: random.Random, steps: int) -> dict:
    ref = tmp / "ref"
    subprocess.run([sys.executable, "-m", "core.train", *train_args(ref, corpus, data, steps)], cwd=ROOT, env=ENV,
                   check=True, capture_output=True)
    run = tmp / "cli"
    checked = corrupt = 0
    at = []
    for _ in range(kills):
        resume = ["--resume"] if ckpt_io.list_checkpoints(run) else []
        args = ["--out-dir", str(run), *resume] if resume else train_args(run, corpus, data, steps)
        if (run / "run.json").exists() and not resume:
            shutil.rmtree(run)        # killed before its first checkpoint: a fresh start, as a user would
        proc = subprocess.Popen([sys.executable, "-m", "core.train", *args], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        n, bad = all_checkpoints_load(run)
        checked, corrupt = checked + n, corrupt + bad
        at.append(max((s for s, _ in ckpt_io.list_checkpoints(run)), default=0))
    killed_at = at[-1]
    res = subprocess.run([sys.executable, "-m", "core.train", "--out-dir", str(run), "--resume"], cwd=ROOT, env=ENV,
                         capture_output=True, text=True)
    ok = res.returncode == 0 and same_weights(ckpt_io.checkpoint_path(ref, steps), ckpt_io.checkpoint_path(run, steps))
    return {"fault": f"kill -9, CLI run ({steps} steps)", "injected": kills, "checkpoints checked": checked,
            "corrupt": corrupt, "outcome": f"kills landed between steps {min(at)} and {killed_at} (last checkpoint "
                                          f"each time); resumed from {killed_at} to the end; weights "
                                          f"{'bit-identical to' if ok else 'DIFFERENT from'} an uninterrupted run",
            "ok": ok and corrupt == 0}


def board_kills(tmp: Path, corpus: Path, data: Path, kills: int, rng: random.Random, steps: int) -> dict:
    from core.jobs import JobBoard
    board = JobBoard(tmp / "board-runs")
    args = train_args(tmp / "unused", corpus, data, steps)[2:]          # the board adds --out-dir itself
    job = board.start("visitor", "browser-run", args, 10_000, steps)
    checked = corrupt = 0
    for i in range(kills):
        time.sleep(rng.uniform(0.5, 4.0))
        if job.process.poll() is None:
            job.process.send_signal(signal.SIGKILL)
            job.process.wait()
        n, bad = all_checkpoints_load(job.run_dir)
        checked, corrupt = checked + n, corrupt + bad
        if not ckpt_io.list_checkpoints(job.run_dir):
            shutil.rmtree(job.run_dir, ignore_errors=True)
            board.jobs.pop("browser-run")
            job = board.start("visitor", "browser-run", args, 10_000, steps)
        elif board.get("browser-run").poll(board.limits) in ("stopped", "failed"):
            job = board.resume("visitor", "browser-run")
    if job.process.poll() is None:
        job.process.wait()
    job.poll(board.limits)
    if job.state != "finished":
        job = board.resume("visitor", "browser-run")
        job.process.wait()
    ok = same_weights(ckpt_io.checkpoint_path(tmp / "ref", steps), ckpt_io.checkpoint_path(job.run_dir, steps))
    return {"fault": "kill -9, browser-started run (JobBoard)", "injected": kills, "checkpoints checked": checked,
            "corrupt": corrupt, "outcome": f"resumed by the board each time; final weights "
                                          f"{'bit-identical' if ok else 'DIFFERENT'}", "ok": ok and corrupt == 0}


def divergence(tmp: Path, corpus: Path, data: Path) -> dict:
    run = tmp / "diverge"
    args = train_args(run, corpus, data, 2000) + ["--learning-rate", "2.0", "--warmup-steps", "200",
                                                   "--checkpoint-interval", "2", "--keep-checkpoints", "0"]
    res = subprocess.run([sys.executable, "-m", "core.train", *args], cwd=ROOT, env=ENV, capture_output=True, text=True)
    good = ckpt_io.latest_checkpoint(run)
    ok = res.returncode == 1 and "diverged" in res.stderr and good is not None and "Traceback" not in res.stderr
    msg = next((line for line in res.stderr.splitlines() if line.startswith("error:")), res.stderr[-200:])
    return {"fault": "divergence (learning rate 2e-3 x 1000)", "injected": 1, "checkpoints checked": 1,
            "corrupt": 0 if good else 1, "outcome": msg[:160] + "…", "ok": ok}


def sweep_kills(tmp: Path, corpus: Path, data: Path, kills: int, rng: random.Random) -> dict:
    from core import scaling
    args = ["--corpus", str(corpus), "--data-dir", str(data), "--shapes", "1x16", "2x16", "2x32", "--budgets", "2e9",
            "4e9", "--tokens", "4e4", "--block-size", "32", "--batch-size", "4", "--eval-iters", "4", "--min-steps",
            "10", "--checkpoint-interval", "20", "--threads", "1"]
    subprocess.run([sys.executable, "-m", "core.sweep", "--out-dir", str(tmp / "sweep-ref"), *args], cwd=ROOT,
                   env=ENV, check=True, capture_output=True)
    expected = {r.name: r.val_loss for r in scaling.load_records(tmp / "sweep-ref")}
    out = tmp / "sweep"
    lost = 0
    for _ in range(kills):
        before = {p.name for p in (out / "records").glob("*.json")} if (out / "records").is_dir() else set()
        proc = subprocess.Popen([sys.executable, "-m", "core.sweep", "--out-dir", str(out), *args], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.0, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        after = {p.name for p in (out / "records").glob("*.json")} if (out / "records").is_dir() else set()
        lost += len(before - after)
    subprocess.run([sys.executable, "-m", "core.sweep", "--out-dir", str(out), *args], cwd=ROOT, env=ENV, check=True,
                   capture_output=True)
    got = {r.name: r.val_loss for r in scaling.load_records(out)}
    ok = got == expected and lost == 0
    return {"fault": "kill -9, scaling sweep", "injected": kills, "checkpoints checked": len(got),
            "corrupt": lost, "outcome": f"{len(got)}/{len(expected)} records, "
                                        f"{'equal to' if got == expected else 'DIFFERENT from'} an uninterrupted sweep",
            "ok": ok}


FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
from core.train import main
sys.exit(main({args!r}))
"""


def full_disk(tmp: Path) -> dict:
    run = tmp / "cli"                                     # the finished CLI run from the kills
    last = ckpt_io.latest_checkpoint(run)
    before = digest(last.path)
    args = ["--out-dir", str(run), "--resume", "--max-steps", str(last.step + 40)]
    res = subprocess.run([sys.executable, "-c", FULL_DISK.format(root=str(ROOT), limit=last.path.stat().st_size // 2,
                                                                args=args)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True)
    intact = digest(last.path) == before and ckpt_io.latest_checkpoint(run).step == last.step
    leftovers = list((run / "checkpoints").glob("*.tmp"))
    msg = next((line for line in res.stderr.splitlines() if line.startswith("error:")), res.stderr[-200:])
    ok = res.returncode == 1 and "disk" in msg and intact and not leftovers
    return {"fault": "full disk while saving a checkpoint", "injected": 1, "checkpoints checked": 1,
            "corrupt": 0 if intact else 1, "outcome": msg[:160] + "…", "ok": ok}


def damaged_exports(tmp: Path) -> dict:
    from core.runtime import Model, ModelError
    src = ROOT / "exported" / "shakespeare-bpe"         # it has every kind of file (a BPE rank file too)
    damage = {
        "model.onnx truncated": lambda d: (d / "model.onnx").write_bytes((src / "model.onnx").read_bytes()[:4096]),
        "model.onnx missing": lambda d: (d / "model.onnx").unlink(),
        "card.json truncated": lambda d: (d / "card.json").write_text((src / "card.json").read_text()[:100]),
        "card.json missing": lambda d: (d / "card.json").unlink(),
        "tokenizer rank file truncated": lambda d: (d / "tokenizer" / "tokenizer.tiktoken").write_bytes(b"xx"),
        "tokenizer.json missing": lambda d: (d / "tokenizer" / "tokenizer.json").unlink(),
        "attention.onnx truncated": lambda d: (d / "attention.onnx").write_bytes(b"\x08\x01"),
    }
    refused = 0
    notes = []
    for name, hurt in damage.items():
        d = tmp / "damaged" / name.replace(" ", "_")
        shutil.copytree(src, d)
        hurt(d)
        try:
            m = Model(d)
            m.attention([1, 2, 3])        # the attention graph opens lazily, on the Attention page
            notes.append(f"{name}: accepted")
        except ModelError:
            refused += 1
    return {"fault": "damaged exported model directory", "injected": len(damage), "checkpoints checked": len(damage),
            "corrupt": len(damage) - refused, "outcome": f"{refused}/{len(damage)} refused with a message"
                                                         + (f" ({'; '.join(notes)})" if notes else ""),
            "ok": refused == len(damage)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--sweep-kills", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8000, help="steps of the killed CLI and board runs (long enough "
                                                             "that every kill lands mid-run)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="faults-") as t:
        tmp = Path(t)
        corpus = tmp / "corpus.txt"
        corpus.write_text(make_text(), encoding="utf-8")
        data = tmp / "data"
        rows = []
        t0 = time.time()
        rows.append(cli_kills(tmp, corpus, data, args.kills, rng, args.steps))
        rows.append(board_kills(tmp, corpus, data, args.kills, rng, args.steps))
        rows.append(divergence(tmp, corpus, data))
        rows.append(sweep_kills(tmp, corpus, data, args.sweep_kills, rng))
        rows.append(full_disk(tmp))
        rows.append(damaged_exports(tmp))
    print(f"\nfaults injected in {time.time() - t0:.0f} s")
    print("| fault | injected | checked | corrupt / lost | outcome |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['fault']} | {r['injected']} | {r['checkpoints checked']} | {r['corrupt']} | "
              f"{'✓' if r['ok'] else '✗'} {r['outcome']} |")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
