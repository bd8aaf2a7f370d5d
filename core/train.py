"""Training: one generator that the CLI, the pages and the tests all consume.

Holds the records a run yields (`Phase`, `RunStarted`, `ThreadsChosen`, `TrainStep`, `EvalResult`,
`Sample`, `CheckpointSaved`, `RunFinished`), and `train()`, which reads like the run itself: prepare the
data, build the model, evaluate, then one optimizer step after another, each yielding its record.
AdamW (fused where available, weight decay on matrices only) or Muon for the blocks' matrices beside it,
linear warmup + cosine decay (over steps, or over a time budget that stops the run), gradient clipping,
gradient accumulation, autocast (bf16 / fp16 + scaler), optional torch.compile, DDP under torchrun, a
divergence guard, torch threads chosen by measurement, and checkpoints that resume a run
bit-for-bit. Every record is also appended to the run's `log.jsonl`, so a process that only watches
(a page, a job board) sees the same run. `python -m core.train` is the CLI.

Deliberately not here: the settings (`core.config`: TrainConfig, ModelConfig), the model's definition
(`core.model`), checkpoint file format (`core.checkpoint`), corpora and batching (`core.data`), export
to ONNX (`core.export`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import torch
from torch.nn import functional as F

from core import checkpoint as ckpt_io
from core import cli
from core.catalog import LOG_FILE, RUN_FILE, TOKENIZER_DIR
from core.checks import ConfigError, PlaygroundError
from core.config import RESUMABLE_OVERRIDES, ModelConfig, TrainConfig
from core import measures
from core.data import Corpus, TokenDataset, load_corpus, prepare_dataset
from core.files import write_atomic
from core.model import GPT
from core.tasks import IGNORE, TaskDataset, make_task
from core.mlm import mask_tokens
from core.tokenizer import META_FILE, Tokenizer, byte_tokenizer, load_tokenizer, train_bpe, with_mask_token

# ---------------------------------------------------------------------------------------------------
# Records yielded by train()

@dataclass
class Phase:
    """What the run is doing before (and between) training steps, for a watcher: the first minute of a
    run is data and a first evaluation, not steps."""
    name: str                   # loading corpus | training tokenizer | tokenizing | building model |
                                # evaluating | training
    step: int                   # optimizer steps taken so far
    elapsed: float              # seconds since this process started the run


@dataclass
class RunStarted:
    run_dir: str
    device: str
    dtype: str
    world_size: int
    parameters: dict            # total / embedding / non_embedding
    flops_per_token: float      # training FLOPs per token at block_size
    tokens_per_step: int
    train_tokens: int
    val_tokens: int
    val_bytes_per_token: float
    resumed_from: int | None    # step of the checkpoint resumed from, None for a fresh run
    model_config: dict
    train_config: dict
    tokenizer: str
    threads: int                # torch intra-op threads at the start (0 in train_config: measured soon)


@dataclass
class ThreadsChosen:
    """The torch thread count the run settled on, and the step times (ms, median) that decided it."""
    step: int
    threads: int
    ms_per_step: dict[int, float] = field(default_factory=dict)


@dataclass
class TrainStep:
    step: int                   # optimizer steps taken, this one included
    loss: float                 # mean training loss of this step's batch (nats/token)
    lr: float
    tokens_seen: int
    tokens_per_s: float         # over the last step, all ranks together
    grad_norm: float            # global grad norm before clipping
    elapsed: float              # seconds of training since the run (or resume) started
    aux_loss: float | None = None   # a mixture of experts: the load-balancing loss (1 when balanced), of which
                                    # moe_aux_coef x was added to `loss` for the gradient (`loss` excludes it)


@dataclass
class EvalResult:
    step: int
    train_loss: float
    val_loss: float             # nats/token on the held-out split
    val_perplexity: float       # exp(val_loss)
    val_bits_per_byte: float    # val_loss / ln 2 / bytes-per-token: compares byte and BPE models
    elapsed: float
    seconds: float = 0.0        # what this evaluation itself took
    val_loss_estimate: float | None = None  # with an exact val_loss (exact_final_eval): the eval_iters-batch
                                            # estimate of the same model, comparable with the earlier evals


@dataclass
class Measures:
    """Progress measures of the model at an evaluation (`core.measures` defines each): what shows a
    capability forming, beside the loss."""
    step: int
    train_accuracy: float       # top-1 accuracy of the scored next tokens on the train eval batches
    val_accuracy: float         # and on the held-out ones
    icl_score: float            # loss at late positions minus early ones on the val batches (nats; negative:
                                # the context helps)
    weight_norm: float          # L2 norm of every parameter together (weight decay's pull shows here)
    head_scores: dict[str, list[list[float]]]   # previous_token | induction | duplicate: [layer][head]
    fourier: list[float] | None = None          # a modular task: the number embedding's norm per frequency
    seconds: float = 0.0        # what computing these took


@dataclass
class Sample:
    step: int
    text: str


@dataclass
class CheckpointSaved:
    step: int
    path: str


@dataclass
class RunFinished:
    step: int
    tokens_seen: int
    elapsed: float
    final: EvalResult | None
    checkpoint: str


TrainEvent = Union[Phase, RunStarted, ThreadsChosen, TrainStep, EvalResult, Measures, Sample, CheckpointSaved,
                   RunFinished]


class TrainingDiverged(PlaygroundError):
    """The loss became non-finite or exploded; the last good checkpoint is kept untouched."""


class RunExists(PlaygroundError):
    """out_dir already holds a run and resume was not asked for."""


# ---------------------------------------------------------------------------------------------------
def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PlaygroundError(f"device {name!r} asked for, but torch sees no CUDA GPU; use --device cpu")
    return dev


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 autocast on GPUs that have it and on CPUs with native bf16 (AVX512-BF16 / AMX),
    fp16 (with a grad scaler) on older GPUs, fp32 elsewhere.

    Measured on the reference machine (2 vCPU with AVX512-BF16, 2 threads): bf16 autocast trained a
    6L/384-wide model with a 4k vocab 1.65x faster than fp32 and a 4L/128-wide one 1.1x faster.
    """
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def lr_at(step: int, cfg: TrainConfig, elapsed: float | None = None) -> float:
    """Linear warmup to learning_rate, held there for lr_hold of the rest, then a cosine (or linear) decay to
    min_lr at lr_decay_steps, then min_lr.

    With a time budget (max_seconds) the warmup still counts steps, but the decay's progress is
    elapsed / max_seconds: the lr reaches min_lr on the deadline however fast the steps run."""
    decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if step < cfg.warmup_steps:
        return cfg.learning_rate * (step + 1) / (cfg.warmup_steps + 1)
    if cfg.max_seconds and elapsed is not None:
        ratio = min(1.0, max(0.0, elapsed / cfg.max_seconds))
    elif step >= decay_steps:
        return cfg.min_lr
    else:
        ratio = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    ratio = max(0.0, ratio - cfg.lr_hold) / (1.0 - cfg.lr_hold)
    coeff = 1.0 - ratio if cfg.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * ratio))
    return cfg.min_lr + coeff * (cfg.learning_rate - cfg.min_lr)


def make_optimizer(model: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices (embeddings included) and none on biases and norms; with
    optimizer = muon, the blocks' 2-D matrices go to Muon instead (embeddings, head, biases and norms
    stay with AdamW: Muon's orthogonalised update suits hidden matrices only)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon = [p for n, p in named if cfg.optimizer == "muon" and n.startswith("transformer.h.") and p.dim() == 2]
    taken = {id(p) for p in muon}
    decay = [p for n, p in named if p.dim() >= 2 and id(p) not in taken]
    no_decay = [p for n, p in named if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # fused AdamW: one kernel for all parameters, on CUDA and (torch >= 2.4) on CPU
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2), fused=True)
    if not muon:
        return adamw
    ns_dtype = torch.bfloat16 if device.type == "cuda" or cpu_has_native_bf16() else torch.float32
    return MuonAdamW(Muon(muon, lr=cfg.muon_lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                          ns_dtype=ns_dtype), adamw)


class Muon(torch.optim.Muon):
    """torch.optim.Muon (same hyper-parameters, same state, same update) with its Newton-Schulz iteration
    in `ns_dtype`: torch's runs it in bf16, which a CPU without native bf16 emulates; measured here (AVX2,
    no AVX512-BF16) that made a 4L/128 step 1 s instead of 40 ms. fp32 there, bf16 where it is native."""

    def __init__(self, params, ns_dtype: torch.dtype = torch.bfloat16, **kw):
        super().__init__(params, **kw)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            updates = []
            for g, buf in zip(grads, bufs):
                buf.lerp_(g, 1 - momentum)
                updates.append(g.lerp(buf, momentum) if group["nesterov"] else buf)
            # matrices of one shape orthogonalised together: one batched matmul per shape instead of one per
            # matrix, which at 4L/128 is 16 small matmuls x 15 per step
            by_shape: dict[torch.Size, list[int]] = {}
            for i, u in enumerate(updates):
                by_shape.setdefault(u.shape, []).append(i)
            for idx in by_shape.values():
                ortho = newton_schulz(torch.stack([updates[i] for i in idx]), group["ns_coefficients"],
                                      group["ns_steps"], group["eps"], self.ns_dtype)
                for i, o in zip(idx, ortho):
                    updates[i] = o
            for p, update in zip(params, updates):
                rows, cols = p.shape
                scale = (math.sqrt(max(1.0, rows / cols)) if group["adjust_lr_fn"] in (None, "original")
                         else 0.2 * math.sqrt(max(rows, cols)))
                p.mul_(1 - lr * wd)
                p.add_(update.to(p.dtype), alpha=-lr * scale)


def newton_schulz(g: torch.Tensor, coefficients, steps: int, eps: float, dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (Keller Jordan's, as in torch.optim.Muon): g's nearest
    semi-orthogonal matrix, roughly (singular values land in about 0.5-1.5). g: a stack of same-shaped
    matrices (n, rows, cols), each normalised and iterated on its own."""
    a, b, c = coefficients
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT                                                                 # (n, rows, rows)
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


# train loss of an eval without eval_train: the mean of at most this many of the latest steps' losses
RECENT_STEPS = 50


class MuonAdamW(torch.optim.Optimizer):
    """Muon and AdamW stepped as one optimizer: one param_groups list (Muon's groups first, each marked
    `muon`), one state_dict (parameter ids numbered across both), so clipping, the grad scaler and
    checkpoints treat it like any other optimizer."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.parts = (muon, adamw)
        for g in muon.param_groups:
            g["muon"] = True
        self.param_groups = muon.param_groups + adamw.param_groups
        self.defaults = {}
        self._step_supports_amp_scaling = False

    @property
    def state(self):
        return {**self.parts[0].state, **self.parts[1].state}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        for opt in self.parts:
            opt.step()

    def state_dict(self) -> dict:
        state, groups, offset = {}, [], 0
        for opt in self.parts:
            sd = opt.state_dict()
            n = sum(len(g["params"]) for g in sd["param_groups"])
            state.update({pid + offset: v for pid, v in sd["state"].items()})
            groups += [{**g, "params": [pid + offset for pid in g["params"]]} for g in sd["param_groups"]]
            offset += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        groups, offset = state_dict["param_groups"], 0
        if len(groups) != len(self.param_groups) or sum(bool(g.get("muon")) for g in groups) != \
                len(self.parts[0].param_groups):
            raise ValueError("the saved optimizer state is not a Muon + AdamW one of this model")
        for opt in self.parts:
            mine, groups = groups[:len(opt.param_groups)], groups[len(opt.param_groups):]
            n = sum(len(g["params"]) for g in mine)
            opt.load_state_dict({
                "state": {pid - offset: v for pid, v in state_dict["state"].items() if offset <= pid < offset + n},
                "param_groups": [{**g, "params": [pid - offset for pid in g["params"]]} for g in mine]})
            offset += n
        self.param_groups = self.parts[0].param_groups + self.parts[1].param_groups


def set_lr(optimizer: torch.optim.Optimizer, lr: float, cfg: TrainConfig) -> None:
    """The scheduled lr into every group; Muon's groups get it scaled by muon_lr / learning_rate."""
    for group in optimizer.param_groups:
        group["lr"] = lr * cfg.muon_lr / cfg.learning_rate if group.get("muon") else lr


def build_tokenizer(cfg: TrainConfig, train_text: str, corpus_sha256: str) -> Tokenizer:
    if cfg.tokenizer == "byte":
        return byte_tokenizer()
    if cfg.tokenizer == "bpe":
        return train_bpe([train_text], cfg.bpe_vocab_size, name=f"bpe{cfg.bpe_vocab_size}",
                         corpus_sha256=corpus_sha256)
    return load_tokenizer(cfg.tokenizer)


@dataclass
class _Dist:
    """Who we are under torchrun (or a single process)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False

    @property
    def master(self) -> bool:
        return self.rank == 0


def _init_distributed(cfg: TrainConfig) -> tuple[_Dist, torch.device]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist(), pick_device(cfg.device)
    import torch.distributed as dist
    d = _Dist(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)),
              int(os.environ["WORLD_SIZE"]), True)
    device = pick_device(cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return d, device


def _all_mean(value: float, d: _Dist) -> float:
    if not d.enabled:
        return value
    import torch.distributed as dist
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / d.world_size


def _gather(obj, d: _Dist) -> list:
    if not d.enabled:
        return [obj]
    import torch.distributed as dist
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def _barrier(d: _Dist) -> None:
    if d.enabled:
        import torch.distributed as dist
        dist.barrier()


def _read_run_config(run_dir: Path) -> tuple[TrainConfig, ModelConfig] | None:
    path = run_dir / RUN_FILE
    if not path.is_file():
        return None
    saved = json.loads(path.read_text())
    return TrainConfig(**saved["train_config"]), ModelConfig.from_dict(saved["model_config"])


def resolve_resume(cfg: TrainConfig, model_cfg: ModelConfig,
                   overrides: set[str] | None = None) -> tuple[TrainConfig, ModelConfig, ckpt_io.Checkpoint | None]:
    """Decide between a fresh run and a resume of out_dir, and the configs that run uses.

    A fresh run refuses a non-empty out_dir (nothing already trained is overwritten). A resume takes
    the saved configs; of the caller's train config it keeps only RESUMABLE_OVERRIDES (those named in
    `overrides`, or all of them when None).
    """
    run_dir = Path(cfg.out_dir)
    has_run = (run_dir / RUN_FILE).is_file() or bool(ckpt_io.list_checkpoints(run_dir))
    if not cfg.resume:
        if has_run:
            raise RunExists(f"{run_dir} already holds a run; pass --resume to continue it, or choose "
                            f"another --out-dir (nothing was changed)")
        return cfg, model_cfg, None
    saved = _read_run_config(run_dir)
    ckpt = ckpt_io.latest_checkpoint(run_dir)
    if saved is None and ckpt is None:
        raise FileNotFoundError(f"nothing to resume in {run_dir}: it has no {RUN_FILE} and no checkpoint")
    if ckpt is not None:
        saved_cfg = TrainConfig(**ckpt.meta["train_config"])
        saved_model = ckpt.model_config
    else:
        saved_cfg, saved_model = saved
    names = RESUMABLE_OVERRIDES if overrides is None else (overrides & RESUMABLE_OVERRIDES)
    merged = dataclasses.replace(saved_cfg, **{n: getattr(cfg, n) for n in names - {"resume"}}, resume=True)
    return merged, saved_model, ckpt


def train(cfg: TrainConfig, model_cfg: ModelConfig | None = None,
          overrides: set[str] | None = None, command: str | None = None) -> Iterator[TrainEvent]:
    """Run (or resume) training, yielding a record per phase, step, eval, sample and checkpoint.

    `command` (the CLI passes its own command line) is recorded in run.json, and so in exported cards.
    Stopping early is `gen.close()`: the run saves a checkpoint at the step it stopped on, so a later
    `resume` continues from there. Raises TrainingDiverged, RunExists, CorpusError, TokenizerError,
    ConfigError (all PlaygroundErrors) with messages that say what to change.
    """
    cfg, model_cfg, resume_ckpt = resolve_resume(cfg, model_cfg or ModelConfig(), overrides)
    _check_objective(cfg, model_cfg)
    d, device = _init_distributed(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out_dir)
    log = _RunLog.open(run_dir, resume_ckpt.step if resume_ckpt else None, d.master)
    clock = time.perf_counter()

    def phase(name: str, step: int = 0) -> Phase:
        return log.write(Phase(name, step, time.perf_counter() - clock))

    try:
        if cfg.task:
            yield phase("generating task")
            task = make_task(cfg.task)
            corpus = Corpus("", task.sha256(), f"task {task.spec()}")
            tokenizer = task.tokenizer()
            dataset = TaskDataset(task)
            if cfg.full_batch:
                task.full_batch()            # a task without a fixed training set says so before any work
        else:
            yield phase("loading corpus")
            corpus = load_corpus(cfg.corpus, cfg.data_dir)
            fresh_bpe = (resume_ckpt is None and cfg.tokenizer == "bpe"
                         and not (run_dir / TOKENIZER_DIR / META_FILE).is_file())
            if fresh_bpe:
                yield phase("training tokenizer")
            tokenizer = _run_tokenizer(cfg, run_dir, corpus, resume_ckpt)
            if model_cfg.objective == "mlm":
                tokenizer = with_mask_token(tokenizer)      # one more id: the blank the model learns to fill
            yield phase("tokenizing")
            dataset = _prepare_data(corpus, tokenizer, cfg, d)
        model_cfg = _fit_vocabulary(model_cfg, tokenizer, resume_ckpt)
        dataset.check_block_size(model_cfg.block_size)
        yield phase("building model")
        trainer = _Trainer(cfg, model_cfg, d, device, run_dir, dataset, tokenizer, corpus.sha256, log, resume_ckpt)
        if d.master:
            _write_run_file(run_dir, cfg, model_cfg, tokenizer, corpus, dataset, trainer.raw_model, command,
                            resumed=resume_ckpt is not None)
        yield trainer.started()
        yield from trainer.run(phase)
    finally:
        log.close()


def _check_objective(cfg: TrainConfig, model_cfg: ModelConfig) -> None:
    """What a masked LM's run cannot do: a synthetic task (its targets are its own) and left-to-right samples."""
    if model_cfg.objective != "mlm":
        return
    if cfg.task:
        raise ConfigError(f"a masked LM (objective mlm) trains on a corpus; the task {cfg.task!r} brings its own "
                          f"next-token targets: drop --task or train a next-token model")
    if cfg.sample_interval:
        raise ConfigError("a masked LM does not write left to right, so it has no samples to print: set "
                          "sample_interval 0 (the Learn page's encoder vs decoder section shows what it does instead)")


def _run_tokenizer(cfg: TrainConfig, run_dir: Path, corpus: Corpus, resume_ckpt) -> Tokenizer:
    """The run's tokenizer: the saved one when resuming, else built from the training split. Every rank
    builds the same (deterministic) BPE; only the master saves it."""
    if resume_ckpt is not None or (run_dir / TOKENIZER_DIR / META_FILE).is_file():
        return load_tokenizer(run_dir / TOKENIZER_DIR)
    n_train = int(len(corpus.text) * (1 - cfg.val_fraction))
    return build_tokenizer(cfg, corpus.text[:n_train], corpus.sha256)


def _prepare_data(corpus: Corpus, tokenizer: Tokenizer, cfg: TrainConfig, d: _Dist) -> TokenDataset:
    """Token files for both splits: the master writes the cache, the other ranks then read it."""
    if d.master:
        dataset = prepare_dataset(corpus, tokenizer, cfg.data_dir, cfg.val_fraction)
        _barrier(d)
    else:
        _barrier(d)
        dataset = prepare_dataset(corpus, tokenizer, cfg.data_dir, cfg.val_fraction)
    return dataset


def _fit_vocabulary(model_cfg: ModelConfig, tokenizer: Tokenizer, resume_ckpt) -> ModelConfig:
    """A fresh model takes its vocabulary size from the tokenizer; a resumed one must already match."""
    if model_cfg.vocab_size == tokenizer.n_vocab:
        return model_cfg
    if resume_ckpt is not None:
        raise PlaygroundError(f"the checkpoint's vocab_size {model_cfg.vocab_size} does not match its "
                              f"tokenizer ({tokenizer.n_vocab}); the run directory is inconsistent")
    return dataclasses.replace(model_cfg, vocab_size=tokenizer.n_vocab)


def _write_run_file(run_dir: Path, cfg: TrainConfig, model_cfg: ModelConfig, tokenizer: Tokenizer,
                    corpus: Corpus, dataset: TokenDataset, model: GPT, command: str | None, resumed: bool) -> None:
    """run.json: everything needed to understand (and resume) the run without loading a checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resumed:
        tokenizer.save(run_dir / TOKENIZER_DIR)
    write_atomic(run_dir / RUN_FILE, json.dumps({
        "train_config": cfg.to_dict(), "model_config": model_cfg.to_dict(),
        "tokenizer": tokenizer.name, "corpus": corpus.source, "corpus_sha256": corpus.sha256,
        "parameters": model.count_parameters(),
        "val_bytes_per_token": dataset.val_bytes_per_token,
        "command": previous_command(run_dir, command) if resumed else command,
    }, indent=2).encode())


class _Trainer:
    """The state of a run in progress (model, optimizer, data, RNGs, counters) and its moves:
    one optimizer step, an evaluation, a sample, a checkpoint."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, d: _Dist, device: torch.device, run_dir: Path,
                 dataset: TokenDataset | TaskDataset, tokenizer: Tokenizer, corpus_sha256: str, log: "_RunLog",
                 resume_ckpt):
        self.cfg, self.model_cfg, self.d, self.device = cfg, model_cfg, d, device
        self.corpus_sha256 = corpus_sha256
        self.run_dir, self.dataset, self.tokenizer, self.log = run_dir, dataset, tokenizer, log
        self.resumed_from = resume_ckpt.step if resume_ckpt is not None else None
        torch.manual_seed(cfg.seed)
        self.raw_model = GPT(model_cfg)
        self.step, self.tokens_seen, self.elapsed_before = 0, 0, 0.0
        self.batch_rng = np.random.default_rng([cfg.seed, d.rank])
        if resume_ckpt is not None:
            ckpt_io.restore_model(self.raw_model, resume_ckpt)
        self.raw_model.to(device)
        self.optimizer = make_optimizer(self.raw_model, cfg, device)
        self.grokfast = Grokfast(self.raw_model, cfg.grokfast_alpha, cfg.grokfast_lambda) if cfg.grokfast_alpha else None
        self.recent_losses: list[float] = []    # train losses since the last eval (eval_train = False)
        self.eval_details: dict = {}            # the last evaluation's accuracies and per-position losses
        self.full_batch = dataset.task.full_batch() if cfg.full_batch else None
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        self.dtype = pick_dtype(cfg.dtype, device)
        self.autocast = (torch.autocast(device.type, dtype=self.dtype) if self.dtype != torch.float32
                         else contextlib.nullcontext())
        self.scaler = torch.amp.GradScaler(device.type, enabled=(self.dtype == torch.float16))
        self.model = self.raw_model
        if cfg.compile:
            self.model = torch.compile(self.model)
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            # an expert that gets no token on one process in a step has no gradient there: DDP must expect that
            self.model = DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None,
                             find_unused_parameters=bool(model_cfg.n_experts))
        rows = len(self.full_batch[0]) if self.full_batch is not None else cfg.batch_size
        seq = dataset.task.seq_len if isinstance(dataset, TaskDataset) else model_cfg.block_size
        self.tokens_per_step = rows * seq * cfg.grad_accum_steps * d.world_size
        self.max_loss = cfg.divergence_factor * math.log(model_cfg.vocab_size)
        self.mlm = model_cfg.objective == "mlm"
        self.ordinary = _ordinary_ids(tokenizer) if self.mlm else None
        self.threads = ThreadChooser(cfg, device, d)
        self.t_start = time.perf_counter()

    def _restore(self, ckpt) -> None:
        ckpt_io.restore_optimizer(self.optimizer, ckpt)
        if self.grokfast is not None:
            self.grokfast.load(ckpt.tensors)
        state = ckpt.meta["state"]
        self.step, self.tokens_seen, self.elapsed_before = state["step"], state["tokens_seen"], state["elapsed"]
        rng_states = ckpt.meta.get("rng_numpy", [])
        if len(rng_states) == self.d.world_size:
            self.batch_rng.bit_generator.state = rng_states[self.d.rank]
            torch.set_rng_state(ckpt.tensors[f"rng.torch.{self.d.rank}"])
            if self.device.type == "cuda" and f"rng.cuda.{self.d.rank}" in ckpt.tensors:
                torch.cuda.set_rng_state(ckpt.tensors[f"rng.cuda.{self.d.rank}"], self.device)
        else:  # a different number of processes: continue, but not bit-identically
            self.batch_rng = np.random.default_rng([self.cfg.seed, self.d.rank, self.step])

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def started(self) -> RunStarted:
        return RunStarted(str(self.run_dir), str(self.device), str(self.dtype).replace("torch.", ""),
                          self.d.world_size, self.raw_model.count_parameters(), self.raw_model.flops_per_token(),
                          self.tokens_per_step, len(self.dataset.train), len(self.dataset.val),
                          self.dataset.val_bytes_per_token, self.resumed_from, self.model_cfg.to_dict(),
                          self.cfg.to_dict(), self.tokenizer.name, torch.get_num_threads())

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, phase) -> Iterator[TrainEvent]:
        cfg = self.cfg
        self.t_start = time.perf_counter()
        last_saved = self.step if self.resumed_from is not None else -1
        last_eval = None
        if self.step == 0 and cfg.eval_interval and cfg.eval_at_start:
            yield phase("evaluating", self.step)
            last_eval = yield from self._logged(self.evaluate())
            yield from self._logged(self.measure())
        yield phase("training", self.step)
        self.model.train()
        try:
            while self.step < cfg.max_steps and not self.out_of_time():
                with self.threads.timing(self.step):
                    rec = self.train_step()
                yield self.log.write(rec)
                chosen = self.threads.decided()
                if chosen is not None:
                    yield self.log.write(chosen)
                at_end = self.step == cfg.max_steps or self.out_of_time()
                if (cfg.eval_interval and self.step % cfg.eval_interval == 0) or \
                        (at_end and (cfg.eval_interval or cfg.exact_final_eval)):
                    yield phase("evaluating", self.step)
                    last_eval = yield from self._logged(self.evaluate(exact=at_end and cfg.exact_final_eval))
                    yield from self._logged(self.measure())
                    yield phase("training", self.step)
                if cfg.sample_interval and self.step % cfg.sample_interval == 0 and self.d.master:
                    yield from self._logged(Sample(self.step, self.sample()))
                if at_end or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    path = self.save(last_eval if last_eval and last_eval.step == self.step else None)
                    last_saved = self.step
                    yield CheckpointSaved(self.step, str(path))
        except GeneratorExit:
            # The consumer stopped the run (Stop button, Ctrl-C in the CLI): keep what was trained.
            # Under DDP every rank must take part in a save, and a close reaches one rank only.
            if self.step != last_saved and not self.d.enabled:
                self.save()
            raise
        yield RunFinished(self.step, self.tokens_seen, self.elapsed(),
                          last_eval if last_eval and last_eval.step == self.step else None,
                          str(ckpt_io.checkpoint_path(self.run_dir, self.step)))

    def _logged(self, rec):
        yield self.log.write(rec)
        return rec

    def out_of_time(self) -> bool:
        """The time budget (max_seconds) is spent: the step in hand is the last."""
        return bool(self.cfg.max_seconds) and self.elapsed() >= self.cfg.max_seconds

    def train_step(self) -> TrainStep:
        """One optimizer step (its micro-batches, clipping, the divergence guard); fp16 overflow steps are
        skipped by the scaler and taken again."""
        cfg, d = self.cfg, self.d
        while True:
            t0 = time.perf_counter()
            lr = lr_at(self.step, cfg, self.elapsed())
            set_lr(self.optimizer, lr, cfg)
            loss_sum, aux_sum = 0.0, 0.0
            for micro in range(cfg.grad_accum_steps):
                x, y = self.full_batch if self.full_batch is not None else \
                    self.dataset.get_batch("train", cfg.batch_size, self.model_cfg.block_size, self.batch_rng)
                x, y = self.objective(x, y, self.batch_rng)
                if d.enabled:  # all-reduce gradients only on the last micro-batch
                    self.model.require_backward_grad_sync = micro == cfg.grad_accum_steps - 1
                with self.autocast:
                    out = self.model(self._to_device(x), self._to_device(y))
                    loss = out.loss / cfg.grad_accum_steps
                    # a mixture of experts' balance loss joins the gradient, not the reported loss
                    aux = out.aux_loss / cfg.grad_accum_steps if out.aux_loss is not None else None
                self.scaler.scale(loss if aux is None else loss + self.model_cfg.moe_aux_coef * aux).backward()
                loss_sum += loss.item()
                aux_sum += aux.item() if aux is not None else 0.0
            self.scaler.unscale_(self.optimizer)
            if self.grokfast is not None:
                self.grokfast.amplify()
            # The grad norm is the same on every rank (gradients are all-reduced), so every rank
            # takes the same decision below; a NaN loss on any rank makes it NaN everywhere.
            grad_norm = float(torch.nn.utils.clip_grad_norm_(
                self.raw_model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")))
            loss_mean = _all_mean(loss_sum, d) if d.enabled else loss_sum
            if not math.isfinite(grad_norm) or not math.isfinite(loss_mean) or loss_mean > self.max_loss:
                if self.scaler.is_enabled() and not math.isfinite(grad_norm):
                    # fp16 overflow: the scaler skips this step and lowers its scale; not divergence
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    continue
                self._diverged(loss_mean, grad_norm, lr)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            self.tokens_seen += self.tokens_per_step
            self.recent_losses = self.recent_losses[-(RECENT_STEPS - 1):] + [loss_mean]
            dt = time.perf_counter() - t0
            aux_mean = (_all_mean(aux_sum, d) if d.enabled else aux_sum) if self.model_cfg.n_experts else None
            return TrainStep(self.step, loss_mean, lr, self.tokens_seen, self.tokens_per_step / dt, grad_norm,
                             self.elapsed(), aux_mean)

    def _diverged(self, loss: float, grad_norm: float, lr: float) -> None:
        good = ckpt_io.latest_checkpoint(self.run_dir)
        where = (f"the last good checkpoint (step {good.step}) is kept at {good.path}; resume "
                 f"from it with a lower learning rate" if good else
                 "no checkpoint had been saved yet; start again with a lower learning rate")
        raise TrainingDiverged(
            f"training diverged at step {self.step + 1}: loss {loss:.4g} (limit {self.max_loss:.3g}, "
            f"{self.cfg.divergence_factor} x ln vocab), grad norm {grad_norm:.4g}, learning rate "
            f"{lr:.3g}. {where}.")

    def _to_device(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    @torch.no_grad()
    def evaluate(self, exact: bool = False) -> EvalResult:
        """Mean loss over the same fixed batches of both splits (see _eval_batches); without eval_train,
        the train loss is the mean of the last (at most RECENT_STEPS) steps' own losses since the last eval. `exact`: val_loss over
        the whole val split, with the batch estimate kept beside it."""
        t0 = time.perf_counter()
        self.raw_model.eval()
        losses = {}
        # several of the fixed batches in one forward (equal sizes: the mean of their means is the mean),
        # as many as keep the logits under about 64 MB: fewer, larger matmuls
        rows = self.cfg.eval_batch_size or self.cfg.batch_size
        per_call = max(1, min(self.cfg.eval_iters, (1 << 24) // (rows * self.model_cfg.block_size
                                                                  * self.model_cfg.vocab_size)))
        tally = {}
        for split in ("train", "val") if self.cfg.eval_train else ("val",):
            total, rows_seen, xs, ys, tally[split] = 0.0, 0, [], [], _Tally()
            mask_rng = _eval_mask_rng(self.cfg, split)
            for x, y in _eval_batches(self.dataset, self.cfg, self.model_cfg.block_size, self.d.rank, split):
                x, y = self.objective(x, y, mask_rng)
                xs.append(x)
                ys.append(y)
                if len(xs) == per_call:
                    n = sum(len(a) for a in xs)
                    total, rows_seen = total + self._batch_loss(xs, ys, tally[split]) * n, rows_seen + n
                    xs, ys = [], []
            if xs:
                n = sum(len(a) for a in xs)
                total, rows_seen = total + self._batch_loss(xs, ys, tally[split]) * n, rows_seen + n
            losses[split] = _all_mean(total / max(rows_seen, 1), self.d)
        self.eval_details = tally
        if not self.cfg.eval_train:
            recent = self.recent_losses or [float("nan")]
            losses["train"] = sum(recent) / len(recent)
        self.recent_losses = []
        estimate = None
        if exact:
            estimate, losses["val"] = losses["val"], self.exact_val_loss()
        self.raw_model.train()
        val = losses["val"]
        return EvalResult(self.step, losses["train"], val, math.exp(min(val, 700)),
                          val / math.log(2) / self.dataset.val_bytes_per_token, self.elapsed(),
                          time.perf_counter() - t0, estimate)

    def _batch_loss(self, xs: list[np.ndarray], ys: list[np.ndarray], tally: "_Tally | None" = None) -> float:
        x, y = (a[0] if len(a) == 1 else np.concatenate(a) for a in (xs, ys))
        with self.autocast:
            out = self.raw_model(self._to_device(x), self._to_device(y))
        if tally is not None:
            tally.add(out.logits, self._to_device(y))
        return out.loss.item()

    @torch.no_grad()
    def measure(self) -> Measures:
        """The progress measures (`core.measures`) of the model now, after an evaluation: accuracies and
        ICL from that evaluation's batches, head scores on repeated random tokens, the weight norm, and for
        modular arithmetic the embedding's Fourier spectrum."""
        t0 = time.perf_counter()
        tally = self.eval_details
        train_acc = tally["train"].accuracy() if "train" in tally else float("nan")
        val = tally.get("val") or _Tally()
        model, mc = self.raw_model, self.model_cfg
        model.eval()
        length = max(2, min(mc.block_size // 2, 32))
        probe = measures.repeated_tokens(self.tokenizer.n_vocab, length, PROBE_SEQUENCES,
                                         np.random.default_rng([self.cfg.seed, 0x5C0E]),
                                         allowed=_ordinary_ids(self.tokenizer))
        with self.autocast:
            out = model(self._to_device(probe), return_attention=True)
        probs = torch.stack(out.attentions, dim=1).float().cpu().numpy()      # (B, L, nh, T, T)
        scores = measures.head_scores(probs, probe)
        model.train()
        weight_norm = math.sqrt(sum(float(p.detach().float().pow(2).sum()) for p in model.parameters()))
        fourier = None
        task = getattr(self.dataset, "task", None)
        if task is not None and task.name == "modular-addition":
            embedding = model.transformer.wte.weight[:task.p].detach().float().cpu().numpy()
            fourier = [round(float(v), 6) for v in measures.fourier_norms(embedding)]
        return Measures(self.step, train_acc, val.accuracy(), measures.icl_score(val.loss_by_position()),
                        weight_norm, {k: np.round(v, 6).tolist() for k, v in scores.items()}, fourier,
                        time.perf_counter() - t0)

    def exact_val_loss(self, windows_per_batch: int = 64) -> float:
        """Mean loss over every non-overlapping block_size window of the val split (a task's whole held-out
        set), with no sampling noise; under DDP the ranks share the windows."""
        x_all, y_all = self.dataset.windows("val") if isinstance(self.dataset, TaskDataset) else \
            _windows(self.dataset.val, self.model_cfg.block_size)
        x_all, y_all = self.objective(x_all, y_all, _eval_mask_rng(self.cfg, "val-exact"))
        n = len(x_all)
        total, count = 0.0, 0
        for i in range(self.d.rank * windows_per_batch, n, windows_per_batch * self.d.world_size):
            x, y = x_all[i:i + windows_per_batch], y_all[i:i + windows_per_batch]
            with self.autocast:
                total += self.raw_model(self._to_device(np.ascontiguousarray(x)),
                                        self._to_device(np.ascontiguousarray(y))).loss.item() * len(x)
            count += len(x)
        return _all_mean(total, self.d) / max(_all_mean(count, self.d), 1e-9)

    def objective(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The (inputs, targets) the loss sees: next-token windows as they are, or for a masked LM the windows
        masked BERT's way (core.mlm), targets only at the masked positions."""
        if not self.mlm:
            return x, y
        return mask_tokens(x, rng, self.tokenizer.mask_id, self.ordinary, self.cfg.mask_rate)

    def sample(self) -> str:
        return _sample_text(self.raw_model, self.tokenizer, self.cfg.sample_tokens, self.device)

    def save(self, final_eval: EvalResult | None = None) -> Path:
        """A checkpoint with everything a bit-for-bit resume needs (every rank's RNG states included)."""
        d = self.d
        rng_numpy = _gather(self.batch_rng.bit_generator.state, d)
        rng_torch = _gather(torch.get_rng_state(), d)
        rng_cuda = _gather(torch.cuda.get_rng_state(self.device), d) if self.device.type == "cuda" else []
        path = ckpt_io.checkpoint_path(self.run_dir, self.step)
        if d.master:
            meta = {"train_config": self.cfg.to_dict(),
                    "state": {"step": self.step, "tokens_seen": self.tokens_seen, "elapsed": self.elapsed()},
                    "rng_numpy": rng_numpy,
                    "tokenizer": self.tokenizer.name,
                    "corpus_sha256": self.corpus_sha256}
            if final_eval is not None:
                meta["eval"] = dataclasses.asdict(final_eval)
            extra = {f"rng.torch.{r}": s for r, s in enumerate(rng_torch)}
            if self.grokfast is not None:
                extra.update(self.grokfast.tensors())
            extra.update({f"rng.cuda.{r}": s for r, s in enumerate(rng_cuda)})
            ckpt_io.save_checkpoint(path, self.raw_model, self.optimizer, meta, extra)
            ckpt_io.prune_checkpoints(self.run_dir, self.cfg.keep_checkpoints, milestone_steps(self.cfg))
        _barrier(d)
        return path


PROBE_SEQUENCES = 8     # repeated random sequences the head scores average over at each evaluation


class _Tally:
    """Correct next tokens and the loss at each position, summed over an evaluation's batches (targets of
    IGNORE skipped): the accuracy and ICL score of `Measures`."""

    def __init__(self):
        self.correct = self.count = 0
        self.loss_sum: torch.Tensor | None = None
        self.loss_count: torch.Tensor | None = None

    def add(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        logits = logits.float()
        scored = y != IGNORE
        self.correct += int(((logits.argmax(-1) == y) & scored).sum())
        self.count += int(scored.sum())
        loss = F.cross_entropy(logits.transpose(1, 2), y.clamp(min=0), reduction="none") * scored   # (B, T)
        s, c = loss.sum(0).cpu(), scored.sum(0).cpu()
        self.loss_sum = s if self.loss_sum is None else self.loss_sum + s
        self.loss_count = c if self.loss_count is None else self.loss_count + c

    def accuracy(self) -> float:
        return self.correct / self.count if self.count else float("nan")

    def loss_by_position(self) -> np.ndarray:
        if self.loss_sum is None:
            return np.full(1, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (self.loss_sum / self.loss_count).numpy().astype(float)


class Grokfast:
    """Grokfast-EMA (Lee et al. 2024): each gradient gets `lam` times an exponential moving average (decay
    `alpha`) of the past gradients added, amplifying their slow component, the one that generalises;
    on modular arithmetic the held-out accuracy then rises several times sooner. The EMA is part of the
    run's state: checkpoints keep it, so a resume continues it."""

    PREFIX = "grokfast."

    def __init__(self, model: GPT, alpha: float, lam: float):
        self.alpha, self.lam = alpha, lam
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.ema: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def amplify(self) -> None:
        for name, p in self.params.items():
            if p.grad is None:
                continue
            ema = self.ema.get(name)
            if ema is None:
                ema = self.ema[name] = p.grad.detach().clone()
            else:
                ema.mul_(self.alpha).add_(p.grad, alpha=1 - self.alpha)
            p.grad.add_(ema, alpha=self.lam)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {self.PREFIX + n: t for n, t in self.ema.items()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, p in self.params.items():
            if self.PREFIX + name in tensors:
                self.ema[name] = tensors[self.PREFIX + name].to(p.device, p.dtype)


def _ordinary_ids(tokenizer: Tokenizer) -> np.ndarray:
    """The ids a probe may draw: every id but the special ones."""
    return np.array([i for i in range(tokenizer.n_vocab) if i not in tokenizer.special_ids])


def _windows(tokens: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every non-overlapping block_size window of a token array: inputs and next-token targets."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = (len(tokens) - 1) // block_size
    return (tokens[: n * block_size].reshape(n, block_size),
            tokens[1: n * block_size + 1].reshape(n, block_size))


class ThreadChooser:
    """torch's thread count, measured on the run's own first steps when the config leaves it open
    (threads = 0): each candidate count takes a few real training steps in turn (interleaved, so a
    neighbour's load hits them alike) and the faster median wins. On a busy 2-core machine 1 thread ran
    5-14x faster than 2; on an idle one 2 can win; only a measurement on the machine tells."""

    PROBE_STEPS = 3             # timed steps per candidate (after one untimed warm-up step each)

    def __init__(self, cfg: TrainConfig, device: torch.device, d: _Dist):
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.candidates: list[int] = []
        if cfg.threads == 0 and device.type == "cpu":
            if d.enabled:
                torch.set_num_threads(max(1, cpus // d.world_size))
            else:
                self.candidates = sorted({1, max(1, cpus // 2), cpus})
        if len(self.candidates) < 2:
            self.candidates = []
        rounds = 1 + self.PROBE_STEPS
        self.schedule = [c for _ in range(rounds) for c in self.candidates]
        self.times: dict[int, list[float]] = {c: [] for c in self.candidates}
        self.chosen: ThreadsChosen | None = None
        self._start_step: int | None = None

    @contextlib.contextmanager
    def timing(self, step: int):
        if self._start_step is None:
            self._start_step = step
        i = step - self._start_step
        if self.chosen is not None or i >= len(self.schedule):
            yield
            return
        n = self.schedule[i]
        torch.set_num_threads(n)
        t0 = time.perf_counter()
        yield
        if i >= len(self.candidates):          # the first round warms each count up
            self.times[n].append(time.perf_counter() - t0)

    def decided(self) -> ThreadsChosen | None:
        """The choice, once, right after the last probing step; None before and after."""
        if self.chosen is not None or not self.candidates or \
                any(len(v) < self.PROBE_STEPS for v in self.times.values()):
            return None
        medians = {n: 1000 * statistics.median(v) for n, v in self.times.items()}
        best = min(medians, key=medians.get)
        torch.set_num_threads(best)
        self.chosen = ThreadsChosen(self._start_step + len(self.schedule), best, medians)
        return self.chosen


def milestone_steps(cfg: TrainConfig) -> set[int]:

    """The checkpoint steps kept for the scrubber: about `milestones` of them, evenly spread."""
    if not cfg.milestones or not cfg.checkpoint_interval:
        return set()
    every = max(1, round(cfg.max_steps / cfg.milestones / cfg.checkpoint_interval)) * cfg.checkpoint_interval
    return set(range(every, cfg.max_steps + 1, every))


def previous_command(run_dir: Path, command: str | None) -> str | None:
    """A resumed run keeps the command that started it, with the resume appended."""
    try:
        first = json.loads((run_dir / RUN_FILE).read_text()).get("command")
    except (OSError, ValueError):
        first = None
    return " && ".join(c for c in (first, command) if c) or None


def _eval_batches(dataset: TokenDataset, cfg: TrainConfig, block_size: int, rank: int, split: str
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The same eval batches at every eval (a fixed seed, drawn afresh rather than kept in memory):
    changes in the estimate then reflect the model, not the draw. A task's are its whole fixed evaluation
    set (every held-out pair of a modular task), in batches of eval_batch_size (or batch_size) rows."""
    if isinstance(dataset, TaskDataset):
        x, y = dataset.windows(split)
        rows = cfg.eval_batch_size or cfg.batch_size
        for i in range(0, len(x), rows):        # every rank the whole set: the ranks' means then agree
            yield x[i:i + rows], y[i:i + rows]
        return
    rng = np.random.default_rng([cfg.seed, rank, 0xE7A1, split == "val"])
    for _ in range(cfg.eval_iters):
        yield dataset.get_batch(split, cfg.eval_batch_size or cfg.batch_size, block_size, rng)


def _eval_mask_rng(cfg: TrainConfig, split: str) -> np.random.Generator:
    """A masked LM's evaluation masks: drawn afresh from the same seed at every evaluation, so the same tokens
    are hidden each time and the val loss moves only with the model."""
    return np.random.default_rng([cfg.seed, 0x3A5C, sum(split.encode())])


def _sample_text(model: GPT, tokenizer: Tokenizer, n_tokens: int, device: torch.device) -> str:
    g = torch.Generator(device=device).manual_seed(0)
    first = tokenizer.encode("\n") or [0]         # a task's symbols have no line break: start at its first
    start = torch.tensor([[first[0]]], device=device)
    ids = model.generate(start, n_tokens, temperature=1.0, generator=g)[0, 1:].tolist()
    return tokenizer.decode(ids)


class _RunLog:
    """Append-only JSON lines of every record (the master's), for watchers and for curves drawn after the
    fact. Opening it for a fresh run empties it; for a resume it drops the lines past the checkpoint:
    those steps are trained again. A fresh run whose folder does not exist yet (the CLI's) keeps its
    first records in memory until the folder is made, so a run that fails while reading its data
    leaves nothing behind; a job's folder exists from the start, so its watcher sees every phase."""

    def __init__(self, path: Path | None, fresh: bool):
        self.path, self.fresh, self.f, self.pending = path, fresh, None, []
        if path is not None and path.parent.is_dir():
            self._open()

    @classmethod
    def open(cls, run_dir: Path, resume_step: int | None, master: bool) -> "_RunLog":
        if not master:
            return cls(None, False)
        if resume_step is not None:
            _truncate_log(run_dir / LOG_FILE, resume_step)
        return cls(run_dir / LOG_FILE, fresh=resume_step is None)

    def _open(self) -> None:
        self.f = open(self.path, "w" if self.fresh else "a", encoding="utf-8")
        for line in self.pending:
            self.f.write(line)
        self.f.flush()
        self.pending = []

    def write(self, rec):
        if self.path is None:
            return rec
        line = json.dumps({"type": type(rec).__name__, **dataclasses.asdict(rec)}) + "\n"
        if self.f is None and self.path.parent.is_dir():
            self._open()
        if self.f is None:
            self.pending.append(line)
        else:
            self.f.write(line)
            self.f.flush()
        return rec

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past `step` (a resume trains those steps again), and lines cut by a kill."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if rec.get("step", 0) <= step:
            keep.append(line)
    write_atomic(path, ("\n".join(keep) + "\n" if keep else "").encode())


# ---------------------------------------------------------------------------------------------------
# CLI

def parse_args(argv: list[str] | None = None) -> tuple[TrainConfig, ModelConfig, set[str]]:
    p = argparse.ArgumentParser(
        prog="python -m core.train",
        description="Train a small GPT. Every TrainConfig and ModelConfig field is a flag; "
                    "run under torchrun for several processes (DDP).")
    cli.add_dataclass_args(p, TrainConfig, "training")
    cli.add_dataclass_args(p, ModelConfig, "model")
    ns = p.parse_args(argv)
    train_kw = cli.dataclass_kwargs(ns, TrainConfig)
    return TrainConfig(**train_kw), ModelConfig(**cli.dataclass_kwargs(ns, ModelConfig)), set(train_kw)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    try:
        cfg, model_cfg, given = parse_args(argv)
    except PlaygroundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = cli.StopFlag()
    master = int(os.environ.get("RANK", "0")) == 0
    bar = None
    command = "python -m core.train " + shlex.join(sys.argv[1:] if argv is None else argv)
    gen = train(cfg, model_cfg, overrides=given, command=command)

    def write(text: str) -> None:
        if master:
            (bar.write if bar is not None else print)(text)

    try:
        for rec in gen:
            if isinstance(rec, Phase) and rec.name not in ("training", "evaluating"):
                write(f"{rec.name}…")
            elif isinstance(rec, RunStarted):
                if master:
                    resumed = f", resumed from step {rec.resumed_from}" if rec.resumed_from is not None else ""
                    active = rec.parameters.get("active", rec.parameters["total"])
                    active = f", {active:,} active per token" if active != rec.parameters["total"] else ""
                    print(f"run {rec.run_dir}: {rec.parameters['total']:,} parameters "
                          f"({rec.parameters['non_embedding']:,} non-embedding{active}), tokenizer {rec.tokenizer}, "
                          f"{rec.device} {rec.dtype}, {rec.world_size} process(es){resumed}", flush=True)
                    timed = rec.train_config.get("max_seconds")
                    if timed:
                        print(f"time budget {timed:g} s: the lr decays over it and the run stops on it "
                              f"(a resume continues its clock, not bit-for-bit)", flush=True)
                    bar = tqdm(total=None if timed else rec.train_config["max_steps"], initial=rec.resumed_from or 0,
                               unit="step", dynamic_ncols=True, disable=None)
            elif isinstance(rec, ThreadsChosen):
                write(f"torch threads: {rec.threads} (ms per step by thread count: "
                      + ", ".join(f"{n}: {ms:.1f}" for n, ms in rec.ms_per_step.items()) + ")")
            elif isinstance(rec, TrainStep):
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec.loss:.4f}", lr=f"{rec.lr:.2e}", tok_s=f"{rec.tokens_per_s:,.0f}")
            elif isinstance(rec, EvalResult):
                exact = (f" exact over the whole val split; estimate {rec.val_loss_estimate:.4f}"
                         if rec.val_loss_estimate is not None else "")
                write(f"step {rec.step}: train {rec.train_loss:.4f}, val {rec.val_loss:.4f}{exact} "
                      f"(ppl {rec.val_perplexity:.2f}, {rec.val_bits_per_byte:.4f} bits/byte)")
            elif isinstance(rec, Measures):
                best = {k: max((v for row in m for v in row), default=float("nan")) for k, m in rec.head_scores.items()}
                write(f"step {rec.step}: accuracy train {rec.train_accuracy:.3f} val {rec.val_accuracy:.3f}, "
                      f"ICL {rec.icl_score:+.3f} nats, |w| {rec.weight_norm:.1f}, best head: previous-token "
                      f"{best['previous_token']:.2f} induction {best['induction']:.2f}")
            elif isinstance(rec, Sample):
                write(f"--- sample at step {rec.step} ---\n{rec.text}\n---")
            elif isinstance(rec, RunFinished) and master:
                if bar is not None:
                    bar.close()
                print(f"done: {rec.step} steps, {rec.tokens_seen:,} tokens, {rec.elapsed:.1f} s; "
                      f"checkpoint {rec.checkpoint}")
            if stop.asked:
                gen.close()
                if master:
                    print("\nstopped: checkpoint saved; continue with --resume", file=sys.stderr)
                return 130
    except (PlaygroundError, OSError) as e:
        if bar is not None:
            bar.close()
        return cli.report_error(e, "continue with --resume: the checkpoints already written are intact")
    finally:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
