"""Post-training: supervised fine-tuning, a reward model, DPO, and PPO with a KL penalty, on a model trained
or imported here, each optionally through LoRA adapters.

Like `core.train.train`, `post_train(cfg)` is a generator of typed records (`PostStarted`, `PostStep`,
`PostEval`, `PostSamples`, `CheckpointSaved`, `PostFinished`), consumed by the CLI
(`python -m core.posttrain sft|reward|dpo|ppo|grpo ...`), the Post-train page's job and the tests. Its run
directory has a training run's layout (run.json, tokenizer/, log.jsonl, checkpoints/), so `core.export`
exports an SFT, DPO or PPO result like any run, and a killed run resumes from its newest checkpoint.

The stages and their losses (the formulas live in the functions named here, and nowhere else):
- SFT (`sft_loss`): cross-entropy on the response tokens only. The prompt is given, not generated: a
  loss on it would teach the model to write prompts.
- Reward model (`bradley_terry_loss`): the policy's trunk with a scalar head read at the last token;
  P(chosen > rejected) = sigmoid(r(chosen) - r(rejected)).
- DPO (`dpo_loss`, Rafailov et al. 2023): -log sigmoid(beta * ((log pi - log ref)(chosen) - (log pi -
  log ref)(rejected))) on log-probabilities summed over the response; beta * (log pi - log ref) is a
  response's implicit reward.
- PPO (`gae`, `ppo_losses`): rollouts from the policy; per token the reward is -beta * (log pi - log ref),
  and the reward model's score is added at the last token; advantages by GAE over a value head on the
  policy's trunk; the clipped surrogate (TRL's defaults: clip 0.2, gamma 1, lambda 0.95).
- GRPO (`group_advantages`, `grpo_loss`, Shao et al. 2024): no value head; several rollouts per prompt, each
  one's advantage its reward against its group's; the KL to the reference is a term of the loss.

A LoRA run (`lora_rank` > 0, adapters by PEFT) trains only the adapters (and a head); every checkpoint
holds the merged weights under `model.*`, so loading and export see an ordinary model, plus the adapters
and the adapted layers' original weights, so a resume continues the adapters themselves.

Deliberately not here: the data formats and the judges (`core.preferences`, torch-free), pretraining
(`core.train`), the job that runs this in a child process (`core.jobs`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core import cli
from core.catalog import (CARD_FILE, POSTTRAIN_DATA_FILE as DATA_FILE, REWARD_HEAD_KEY, RUN_FILE, TOKENIZER_DIR,
                          VALUE_HEAD_KEY, checkpoint_file, checkpoint_steps)
from core.config import MLM_NOT_A_BASE, POST_STAGES, RL_STAGES, PostTrainConfig, post_data_kind
from core.checkpoint import (latest_checkpoint, load_model, prune_checkpoints, restore_model,
                             restore_optimizer, save_checkpoint)
from core.checks import PlaygroundError
from core.files import write_atomic
from core.model import GPT
from core.preferences import (DataError, Demonstration, PreferencePair, data_sha256, distinct_n, make_judge,
                              read_jsonl, write_jsonl)
from core.tokenizer import Tokenizer, load_tokenizer
from core.train import CheckpointSaved, Phase, RunExists, TrainingDiverged, _RunLog, pick_device

class PostTrainError(PlaygroundError):
    """A post-training run that cannot start or go on as asked; the message says what to change."""


# -- records ----------------------------------------------------------------------------------------

@dataclass
class PostStarted:
    run_dir: str
    stage: str
    base: str
    parameters: int                  # the policy's parameters (a LoRA run's base included)
    trainable: int                   # those the optimizer moves (adapters and head in a LoRA run)
    examples: int
    held_out: int
    data_sha256: str
    device: str
    resumed_from: int | None
    config: dict


@dataclass
class PostStep:
    step: int
    loss: float
    lr: float
    metrics: dict[str, float]        # the stage's own: accuracy, margin, reward, kl, entropy, clip_fraction, ...
    seconds: float


@dataclass
class PostEval:
    step: int
    metrics: dict[str, float]        # held-out: loss, accuracy, margin, judge score, kl, distinct-2, reward ...
    chosen_rewards: list[float] = field(default_factory=list)     # reward/dpo: each held-out pair's, for histograms
    rejected_rewards: list[float] = field(default_factory=list)


@dataclass
class PostSamples:
    step: int
    prompts: list[str]
    texts: list[str]                 # the policy's responses to them (same seed at every evaluation)


@dataclass
class PostFinished:
    step: int
    elapsed: float
    checkpoint: str


PostEvent = Phase | PostStarted | PostStep | PostEval | PostSamples | CheckpointSaved | PostFinished


# -- losses (the one home of each formula) ------------------------------------------------------------

def token_logprobs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(ids[t+1] | ids[:t+1]) for every position: (B, T-1). RL stages pass the temperature they sampled at,
    so ratios and KL are those of the distribution the rollouts came from (as TRL's PPO and GRPO do)."""
    return step_logprobs(logits, temperature).gather(-1, ids[:, 1:, None]).squeeze(-1)


def step_logprobs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The whole next-token distribution at each position but the last, as log-probabilities: (B, T-1, V)."""
    return F.log_softmax(logits[:, :-1].float() / temperature, dim=-1)


def sequence_logprob(logits: torch.Tensor, ids: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Each row's log-probability of its response tokens, summed: (B,). `response` (B, T) marks them."""
    return (token_logprobs(logits, ids) * response[:, 1:]).sum(-1)


def sft_loss(logits: torch.Tensor, ids: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the response tokens only (the prompt is masked out)."""
    mask = response[:, 1:].float()
    return -(token_logprobs(logits, ids) * mask).sum() / mask.sum().clamp(min=1)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r(chosen) - r(rejected)), averaged over pairs."""
    return -F.logsigmoid(chosen - rejected).mean()


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO's sigmoid loss on summed response log-probs, and each pair's implicit rewards (chosen, rejected)."""
    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected).mean(), chosen.detach(), rejected.detach()


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over (B, R) response steps (the value after the last is 0):
    advantages and the returns (advantages + values) the value head is fitted to."""
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    R = rewards.size(1)
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv, adv + values


def ppo_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, values: torch.Tensor,
               old_values: torch.Tensor, returns: torch.Tensor, clip: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The clipped surrogate and the clipped value loss (TRL's PPO), and the share of clipped ratios."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip)).mean()
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    vf = 0.5 * torch.max((values - returns) ** 2, (clipped_values - returns) ** 2).mean()
    clip_fraction = float(((ratio - 1).abs() > clip).float().mean())
    return pg, vf, clip_fraction


def group_advantages(scores: torch.Tensor, group: int) -> torch.Tensor:
    """GRPO's advantage of each rollout (B,): its reward minus its group's mean, over the group's standard
    deviation (+ 1e-4, TRL's epsilon); rollouts [i * group, (i + 1) * group) share a prompt."""
    g = scores.view(-1, group)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
              advantages: torch.Tensor, beta: float, clip: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """GRPO's loss over (B, R) response tokens (Shao et al. 2024): the clipped surrogate with each sequence's
    advantage, plus beta times the k3 estimate of KL(pi || ref) per token, exp(ref - pi) - (ref - pi) - 1,
    weighted by the ratio pi / pi_old (TRL's default `use_bias_correction_kl`: the tokens were sampled from
    pi_old, so the weight makes the KL's gradient the unbiased one of KL(pi || ref)); returns the loss, the
    mean per-token KL estimate and the share of clipped ratios."""
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    d = ref_logprobs - logprobs
    kl = (torch.exp(d) - d - 1) * ratio
    clip_fraction = float(((ratio - 1).abs() > clip).float().mean())
    return (-(surrogate - beta * kl)).mean(), kl.mean().detach(), clip_fraction


# -- models ---------------------------------------------------------------------------------------------

@dataclass
class Base:
    model: GPT
    tokenizer: Tokenizer
    source: dict                     # what the card says about where it came from


def load_base(source: str, say=lambda _: None) -> Base:
    """The model to post-train: a run directory or checkpoint, an exported model directory (weights read back
    from its model.onnx), or a Hugging Face checkpoint."""
    p = Path(source)
    if not source:
        raise PostTrainError("no base model: name a run directory, a checkpoint, an exported model or a Hugging Face "
                             "checkpoint with --base")
    if p.is_file() or (p.is_dir() and (p / RUN_FILE).is_file()):
        model, ckpt = load_model(p)
        if model.config.objective == "mlm":
            raise PostTrainError(MLM_NOT_A_BASE.format(source=source))
        run_dir = ckpt.path.parent.parent
        meta = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
        if meta.get("posttrain", {}).get("stage") == "reward":
            raise PostTrainError(f"{source} is a reward model: it scores texts and writes none. Start from the policy "
                                 f"it was trained beside, and pass it to PPO as --reward-model")
        return Base(model, load_tokenizer(run_dir / TOKENIZER_DIR),
                    {"kind": "run", "path": str(p), "step": ckpt.step, "stage": meta.get("posttrain", {}).get("stage")})
    if p.is_dir() and (p / CARD_FILE).is_file():
        if json.loads((p / CARD_FILE).read_text(encoding="utf-8")).get("model_config", {}).get("objective") == "mlm":
            raise PostTrainError(MLM_NOT_A_BASE.format(source=source))
        from core.export import load_exported
        model, tokenizer, card, _ = load_exported(p, say=say)
        return Base(model, tokenizer, {"kind": "exported", "path": str(p), "name": p.name,
                                       "val_loss": card.get("val_loss")})
    from core.pretrained import load_pretrained
    model, tokenizer, info = load_pretrained(source, say=say)
    return Base(model, tokenizer, info["source"])


def load_reward_model(source: str) -> tuple[GPT, nn.Linear, Tokenizer, dict]:
    """A reward run's trunk, its scalar head standardised (scores on held-out pairs have mean 0 and standard
    deviation 1, so one beta means the same against any reward model), its tokenizer and run.json."""
    p = Path(source)
    model, ckpt = load_model(p)
    run_dir = ckpt.path.parent.parent
    meta = json.loads((run_dir / RUN_FILE).read_text()) if (run_dir / RUN_FILE).is_file() else {}
    if meta.get("posttrain", {}).get("stage") != "reward" or REWARD_HEAD_KEY not in ckpt.tensors:
        raise PostTrainError(f"{source} is not a reward model (train one with `python -m core.posttrain reward`)")
    ev = ckpt.meta.get("eval") or {}
    mean, std = ev.get("reward_mean", 0.0), max(ev.get("reward_std", 1.0), 1e-6)
    head = nn.Linear(model.config.n_embd, 1, bias=True)
    head.weight.data.copy_(ckpt.tensors[REWARD_HEAD_KEY] / std)
    head.bias.data.fill_(-mean / std)
    return model, head, load_tokenizer(run_dir / TOKENIZER_DIR), meta


def _head(model: GPT) -> nn.Linear:
    """A scalar head on the trunk's last hidden state, started at 0 (every text scores 0 at first)."""
    head = nn.Linear(model.config.n_embd, 1, bias=False)
    nn.init.zeros_(head.weight)
    return head


def lora_targets(model: GPT, cfg: PostTrainConfig) -> list[str]:
    """The Linear layers LoRA adapts, checked: each named target exists and the rank fits every one."""
    wanted = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()]
    layers = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"}
    if not wanted:
        raise PostTrainError("lora_targets is empty: name the Linear layers to adapt (e.g. c_attn,c_proj,c_fc)")
    names = sorted({n.rsplit(".", 1)[-1] for n in layers})
    for t in wanted:
        hits = [m for n, m in layers.items() if n.rsplit(".", 1)[-1] == t]
        if not hits:
            raise PostTrainError(f"this model has no layer {t!r} to adapt; its Linear layers are {', '.join(names)}")
        small = min(min(m.in_features, m.out_features) for m in hits)
        if cfg.lora_rank > small:
            raise PostTrainError(f"LoRA rank {cfg.lora_rank} is larger than the layer {t!r} ({small} wide at its "
                                 f"narrowest): a rank above it adds nothing. Choose a rank of at most {small}")
    return wanted


def add_lora(model: GPT, cfg: PostTrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    targets = lora_targets(model, cfg)
    return get_peft_model(model, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=targets,
                                            lora_dropout=0.0, bias="none"))


def merged_model(policy: nn.Module) -> GPT:
    """The policy as an ordinary GPT: a LoRA policy's adapters merged into a copy of its weights."""
    if isinstance(policy, GPT):
        return policy
    return copy.deepcopy(policy).merge_and_unload()


def _lora_tensors(policy: nn.Module) -> dict[str, torch.Tensor]:
    """A LoRA policy's adapters (`lora.*`) and the adapted layers' original weights (`base.*`)."""
    if isinstance(policy, GPT):
        return {}
    from peft import get_peft_model_state_dict
    out = {f"lora.{k}": v for k, v in get_peft_model_state_dict(policy).items()}
    for name, module in policy.named_modules():
        if hasattr(module, "base_layer") and isinstance(module.base_layer, nn.Linear):
            out[f"base.{name.removeprefix('base_model.model.')}.weight"] = module.base_layer.weight
    return out


def _restore_lora(model: GPT, ckpt, cfg: PostTrainConfig) -> nn.Module:
    from peft import set_peft_model_state_dict
    state = model.state_dict()
    for k, v in ckpt.tensors.items():
        if k.startswith("base."):
            state[k[len("base."):]].copy_(v)
    policy = add_lora(model, cfg)
    set_peft_model_state_dict(policy, {k[len("lora."):]: v for k, v in ckpt.tensors.items() if k.startswith("lora.")})
    return policy


# -- batches ---------------------------------------------------------------------------------------------

def _readable(encode, text: str, tokenizer: Tokenizer, where: str) -> list[int]:
    try:
        return encode(text)
    except PlaygroundError as e:          # a task model's symbols cannot spell English, for one
        raise DataError(f"{where}: the base model's tokenizer ({tokenizer.name}) cannot read it: {e}. The data "
                        f"and the model must share a tokenizer: pick a base that reads this text") from e


def encode_pair_side(tokenizer: Tokenizer, prompt: str, response: str, block_size: int, where: str) -> tuple[list[int], int]:
    """(ids, prompt length) of prompt + response, refused when longer than the model's context."""
    p = _readable(tokenizer.encode_prompt, prompt, tokenizer, where)
    r = _readable(tokenizer.encode, response, tokenizer, where)
    if not r:
        raise DataError(f"{where}: the response encodes to no tokens")
    if len(p) + len(r) > block_size:
        raise DataError(f"{where}: prompt and response are {len(p) + len(r)} tokens but the model's context is "
                        f"{block_size}: shorten them (or start from a model with a longer context)")
    return p + r, len(p)


def pad_batch(rows: list[tuple[list[int], int]], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T), the response mask (B, T) and each row's last token index (B,). Right
    padding needs no attention mask: causal attention never looks ahead to the padding."""
    T = max(len(ids) for ids, _ in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    last = torch.zeros(len(rows), dtype=torch.long)
    for i, (row, n_prompt) in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, n_prompt:len(row)] = 1
        last[i] = len(row) - 1
    return ids.to(device), mask.to(device), last.to(device)


def score(model: nn.Module, head: nn.Linear, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """The scalar head read at each row's last token: (B,)."""
    hidden = model(ids, last_only=True).hidden                          # (B, T, C)
    return head(hidden[torch.arange(ids.size(0), device=ids.device), last]).squeeze(-1)


@torch.no_grad()
def sample_responses(model: nn.Module, prompts: torch.Tensor, n_tokens: int, temperature: float,
                     generator: torch.Generator) -> torch.Tensor:
    """(B, n_tokens) sampled continuations of equal-length prompts (B, P), with a KV cache."""
    out = model(prompts, use_cache=True, last_only=True)
    tokens = []
    for _ in range(n_tokens):
        probs = F.softmax(out.logits[:, -1].float() / temperature, dim=-1)
        nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(prompts.device)
        tokens.append(nxt)
        if len(tokens) < n_tokens:
            out = model(nxt, past=out.present, use_cache=True, last_only=True)
    return torch.cat(tokens, dim=1)


def respond(model: nn.Module, tokenizer: Tokenizer, prompts: list[str], n_tokens: int, temperature: float,
            generator: torch.Generator, device) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) for each prompt; prompts of equal length are sampled together."""
    encoded = [tokenizer.encode_prompt(p) for p in prompts]
    out: list = [None] * len(prompts)
    by_length: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        by_length.setdefault(len(ids), []).append(i)
    for _, rows in sorted(by_length.items()):
        batch = torch.tensor([encoded[i] for i in rows], device=device)
        was = model.training
        model.eval()
        got = sample_responses(model, batch, n_tokens, temperature, generator).tolist()
        model.train(was)
        for i, resp in zip(rows, got):
            out[i] = (encoded[i], resp)
    return out


# -- judge-made data ---------------------------------------------------------------------------------------

def _start_ids(tokenizer: Tokenizer) -> list[int]:
    for text in ("\n", " "):
        try:
            ids = tokenizer.encode(text)
        except PlaygroundError:
            continue
        if ids:
            return ids
    return [0]


def make_judged_data(base: Base, cfg: PostTrainConfig, device) -> list:
    """The base model writes prompts and responses; the judge labels them: pairs (reward, dpo: the higher
    score chosen, ties resampled and then dropped), demonstrations (sft: the best of `best_of`), or prompts
    (ppo, grpo)."""
    judge = make_judge(cfg.judge)
    g = torch.Generator().manual_seed(cfg.seed)
    model, tok = base.model.to(device), base.tokenizer
    start = torch.tensor([_start_ids(tok)] * cfg.examples, device=device)
    if start.size(1) + cfg.prompt_tokens + cfg.response_tokens > model.config.block_size:
        raise PostTrainError(f"prompt_tokens + response_tokens = {cfg.prompt_tokens + cfg.response_tokens} do not fit "
                             f"the model's context of {model.config.block_size}: lower them")
    prompts = [tok.decode(ids) for ids in sample_responses(model, start, cfg.prompt_tokens, cfg.temperature, g).tolist()]
    if cfg.stage in RL_STAGES:
        return [Demonstration(p, "") for p in prompts]
    n = cfg.best_of if cfg.stage == "sft" else 2
    out = []
    for _ in range(3):                  # ties are resampled twice, then dropped
        todo = [p for p in prompts if p not in {e.prompt for e in out}]
        if not todo or len(out) >= cfg.examples:
            break
        tiled = [p for p in todo for _ in range(n)]
        answers = [tok.decode(r) for _, r in respond(model, tok, tiled, cfg.response_tokens, cfg.temperature, g, device)]
        for i, p in enumerate(todo):
            group = answers[i * n:(i + 1) * n]
            scores = [judge.score(a) for a in group]
            best = int(np.argmax(scores))
            if cfg.stage == "sft":
                out.append(Demonstration(p, group[best]))
            elif scores[0] != scores[1]:
                out.append(PreferencePair(p, group[best], group[1 - best]))
    if len(out) < 4:
        raise PostTrainError(f"the judge {judge.spec!r} told apart only {len(out)} of {cfg.examples} pairs of this "
                             f"model's texts: longer responses or another judge give it something to prefer")
    return out


def read_data(path: str, stage: str) -> list:
    p = Path(path)
    if not p.is_file():
        raise PostTrainError(f"no data file at {path}: give a JSONL file or judge:<spec> (e.g. judge:short-lines)")
    return read_jsonl(p.read_bytes(), post_data_kind(stage), p.name)


def _load_saved_data(run_dir: Path, stage: str) -> list:
    return read_data(str(run_dir / DATA_FILE), stage)


# -- the run ------------------------------------------------------------------------------------------------

def post_train(cfg: PostTrainConfig, command: str | None = None) -> Iterator[PostEvent]:
    """Run (or resume) one post-training stage, yielding a record per phase, step, evaluation, samples and
    checkpoint. Closing the generator saves a checkpoint first (a stopped run resumes where it stopped)."""
    run_dir = Path(cfg.out_dir)
    resume_ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and resume_ckpt is None:
        raise PostTrainError(f"nothing to resume in {run_dir}: it has no checkpoint (it stopped before it began); "
                             f"start it again without --resume")
    if not cfg.resume and checkpoint_steps(run_dir):
        raise RunExists(f"{run_dir} already holds a run; choose another --out-dir, or --resume it")
    if resume_ckpt is not None:
        saved = json.loads((run_dir / RUN_FILE).read_text())["posttrain_config"]
        if saved["stage"] != cfg.stage:
            raise PostTrainError(f"{run_dir} is a {saved['stage']} run; it cannot be resumed as {cfg.stage}")
    t0 = time.perf_counter()
    # the log from the start, so a watcher sees the phases before the first step (a job's folder exists already;
    # the CLI's is made with the run's files, and the phases logged so far are written then)
    log = _RunLog.open(run_dir, resume_ckpt.step if resume_ckpt else None, True)
    try:
        yield log.write(Phase("loading the base model", 0, 0.0))
        device = pick_device(cfg.device)
        torch.manual_seed(cfg.seed)
        base = load_base(cfg.base)
        if resume_ckpt is not None:
            data = _load_saved_data(run_dir, cfg.stage)
        elif cfg.judge is not None:
            yield log.write(Phase("writing examples with the base model; the judge labels them", 0,
                                  time.perf_counter() - t0))
            data = make_judged_data(base, cfg, device)
        else:
            data = read_data(cfg.data, cfg.stage)
        stage = _Stage.make(cfg, base, data, device, run_dir, resume_ckpt, command, log)
    except BaseException:
        log.close()
        raise
    yield stage.started(resume_ckpt)
    yield from stage.run()


class _Stage:
    """A post-training run in progress: policy (and head), reference, optimizer, data, RNGs, counters."""

    @staticmethod
    def make(cfg, base, data, device, run_dir, resume_ckpt, command, log) -> "_Stage":
        return {"sft": _SFT, "reward": _Reward, "dpo": _DPO, "ppo": _PPO, "grpo": _GRPO}[cfg.stage](
            cfg, base, data, device, run_dir, resume_ckpt, command, log)

    def __init__(self, cfg: PostTrainConfig, base: Base, data: list, device, run_dir: Path, resume_ckpt, command,
                 log: _RunLog):
        self.cfg, self.base, self.device, self.run_dir = cfg, base, device, run_dir
        self.tokenizer = base.tokenizer
        n_held = max(1, int(round(len(data) * cfg.held_out)))
        if len(data) - n_held < 1:
            raise PostTrainError(f"{len(data)} example(s) leave none to train on after holding out {n_held}: "
                                 f"give more examples or a smaller held_out")
        if resume_ckpt is None:
            order = np.random.default_rng(cfg.seed).permutation(len(data))
            data = [data[i] for i in order]
        self.data, self.train_data, self.held = data, data[:-n_held], data[-n_held:]
        self.block = base.model.config.block_size
        self._check_examples()                   # before anything is written: a refused run leaves nothing
        self.judge = make_judge(cfg.judge) if cfg.judge else self._reward_judge()
        self.ref = None
        if cfg.stage in ("dpo", *RL_STAGES):
            self.ref = copy.deepcopy(base.model).to(device).eval().requires_grad_(False)
        model = base.model.to(device)
        self.head = _head(model).to(device) if cfg.stage in ("reward", "ppo") else None     # GRPO has no value head
        self.head_key = REWARD_HEAD_KEY if cfg.stage == "reward" else VALUE_HEAD_KEY
        self.step, self.resumed = 0, resume_ckpt is not None
        if resume_ckpt is not None:
            restore_model(model, resume_ckpt)
            self.step = resume_ckpt.step
            if self.head is not None:
                self.head.weight.data.copy_(resume_ckpt.tensors[self.head_key])
        self.policy = model if cfg.lora_rank == 0 else (
            _restore_lora(model, resume_ckpt, cfg) if resume_ckpt is not None else add_lora(model, cfg))
        self.policy.train()
        if cfg.lora_rank == 0:
            self.policy.requires_grad_(True)
        params = [p for p in self.policy.parameters() if p.requires_grad]
        if self.head is not None:
            params += list(self.head.parameters())
        self.trainable = sum(p.numel() for p in {id(p): p for p in params}.values())
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                           betas=(0.9, 0.999))
        self.rng = np.random.default_rng(cfg.seed + 1)
        self.g = torch.Generator().manual_seed(cfg.seed + 2)
        if resume_ckpt is not None:
            restore_optimizer(self.optimizer, resume_ckpt)
            self.rng.bit_generator.state = resume_ckpt.meta["state"]["numpy_rng"]
            self.g.set_state(resume_ckpt.tensors["rng.sample"])
        self.data_sha256 = data_sha256(self.data)
        self.t0 = time.perf_counter()
        self.elapsed_before = resume_ckpt.meta["state"].get("elapsed", 0.0) if resume_ckpt else 0.0
        self._write_run_files(resume_ckpt is not None, command)
        self.log = log

    def _reward_judge(self):
        """A PPO run scores its samples with the judge its reward model learned from, when there is one."""
        if self.cfg.stage not in RL_STAGES:
            return None
        meta = json.loads((_run_of(self.cfg.reward_model) / RUN_FILE).read_text())
        spec = meta.get("posttrain", {}).get("judge")
        return make_judge(spec) if spec else None

    def _check_examples(self) -> None:
        for i, e in enumerate(self.data, 1):
            sides = ([e.response] if isinstance(e, Demonstration) and e.response else
                     [e.chosen, e.rejected] if isinstance(e, PreferencePair) else [])
            for side in sides:
                encode_pair_side(self.tokenizer, e.prompt, side, self.block, f"example {i}")
            prompt = _readable(self.tokenizer.encode_prompt, e.prompt, self.tokenizer, f"example {i}")
            if not sides and len(prompt) + self.cfg.response_tokens > self.block:
                raise DataError(f"example {i}: the prompt and {self.cfg.response_tokens} response tokens do not fit "
                                f"the model's context of {self.block}")

    def _write_run_files(self, resumed: bool, command: str | None) -> None:
        d = self.run_dir
        d.mkdir(parents=True, exist_ok=True)
        if resumed:
            return
        self.tokenizer.save(d / TOKENIZER_DIR)
        write_atomic(d / DATA_FILE, write_jsonl(self.data).encode())
        cfg = self.cfg
        write_atomic(d / RUN_FILE, json.dumps({
            "posttrain_config": cfg.to_dict(), "model_config": self.base.model.config.to_dict(),
            "tokenizer": self.tokenizer.name,
            "posttrain": {"stage": cfg.stage, "base": self.base.source, "data": cfg.data,
                          "judge": self.judge.spec if self.judge else None, "data_sha256": self.data_sha256,
                          "examples": len(self.train_data), "held_out": len(self.held), "beta": cfg.beta,
                          "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets}
                          if cfg.lora_rank else None, "reward_model": cfg.reward_model or None},
            "parameters": self.base.model.count_parameters(), "command": command,
        }, indent=2).encode())

    def started(self, resume_ckpt) -> PostStarted:
        total = sum(p.numel() for p in merged_model(self.policy).parameters())
        total += self.head.weight.numel() if self.head is not None else 0
        return self.log.write(PostStarted(str(self.run_dir), self.cfg.stage, str(self.cfg.base), total,
                                          self.trainable, len(self.train_data), len(self.held), self.data_sha256,
                                          str(self.device), resume_ckpt.step if resume_ckpt else None,
                                          self.cfg.to_dict()))

    def lr(self) -> float:
        return self.cfg.learning_rate * min(1.0, (self.step + 1) / max(1, self.cfg.warmup_steps))

    def run(self) -> Iterator[PostEvent]:
        cfg = self.cfg
        saved_at = None
        try:
            if not self.resumed:
                yield Phase("evaluating", 0, self.elapsed())
                yield from self._evaluate()
            yield Phase("training", self.step, self.elapsed())
            while self.step < cfg.steps:
                t = time.perf_counter()
                for g in self.optimizer.param_groups:
                    g["lr"] = self.lr()
                loss, metrics = self.train_step()
                self.step += 1
                yield self.log.write(PostStep(self.step, loss, self.lr(), metrics, time.perf_counter() - t))
                last = self.step == cfg.steps
                if last or (cfg.eval_interval and self.step % cfg.eval_interval == 0):
                    yield Phase("evaluating", self.step, self.elapsed())
                    yield from self._evaluate()
                    yield Phase("training", self.step, self.elapsed())
                if last or (cfg.checkpoint_interval and self.step % cfg.checkpoint_interval == 0):
                    saved_at = self.step
                    yield CheckpointSaved(self.step, str(self.save()))
        except GeneratorExit:
            if saved_at != self.step:
                self.save()          # a stop keeps the work done (at step 0 too: a resume then starts there)
            raise
        finally:
            self.log.close()
        yield PostFinished(self.step, self.elapsed(), str(checkpoint_file(self.run_dir, self.step)))

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t0

    def _evaluate(self) -> Iterator[PostEvent]:
        with torch.no_grad():
            ev = self.evaluate()
            prompts = [e.prompt for e in self.held[:self.cfg.eval_samples]]
            texts, more = self.sample_metrics(prompts)
        ev.metrics.update(more)
        yield self.log.write(ev)
        yield self.log.write(PostSamples(self.step, prompts, texts))

    def batch(self, pool: list) -> list:
        idx = self.rng.choice(len(pool), size=min(self.cfg.batch_size, len(pool)), replace=False)
        return [pool[i] for i in idx]

    def backward_step(self, loss: torch.Tensor) -> float:
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"the {self.cfg.stage} loss became {float(loss)} at step {self.step + 1}: lower the "
                                   f"learning rate (or raise beta); the last checkpoint is kept")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else 1e12))
        if not math.isfinite(norm):
            raise TrainingDiverged(f"the gradient became {norm} at step {self.step + 1}: lower the learning rate; "
                                   f"the last checkpoint is kept")
        self.optimizer.step()
        return norm

    def sample_metrics(self, prompts: list[str]) -> tuple[list[str], dict[str, float]]:
        """The policy's answers to held-out prompts (the same seed each time) and what they score: the judge,
        the KL to the reference, distinct-2."""
        g = torch.Generator().manual_seed(self.cfg.seed + 3)
        pairs = respond(self.policy, self.tokenizer, prompts, self.cfg.response_tokens, self.cfg.temperature, g, self.device)
        self.sampled = pairs
        texts = [self.tokenizer.decode(r) for _, r in pairs]
        out = {"distinct_2": distinct_n(texts, 2)}
        if self.judge is not None:
            out["judge_score"] = float(np.mean([self.judge.score(t) for t in texts]))
        if self.ref is not None:
            ids, mask, _ = pad_batch([(p + r, len(p)) for p, r in pairs], self.device)
            t = self.cfg.temperature
            pol = token_logprobs(self.policy(ids).logits, ids, t)
            ref = token_logprobs(self.ref(ids).logits, ids, t)
            out["kl"] = float(((pol - ref) * mask[:, 1:]).sum(-1).mean())
        return texts, out

    def save(self) -> Path:
        cfg = self.cfg
        extra = {"rng.sample": self.g.get_state(), **_lora_tensors(self.policy)}
        if self.head is not None:
            extra[self.head_key] = self.head.weight
        path = save_checkpoint(checkpoint_file(self.run_dir, self.step), merged_model(self.policy), self.optimizer,
                               {"posttrain_config": cfg.to_dict(), "train_config": None,
                                "state": {"step": self.step, "numpy_rng": self.rng.bit_generator.state,
                                          "elapsed": self.elapsed()},
                                "eval": self.last_eval}, extra)
        prune_checkpoints(self.run_dir, cfg.keep_checkpoints)
        return path

    last_eval: dict = {}

    def rows(self, examples: list, side: str) -> list[tuple[list[int], int]]:
        return [encode_pair_side(self.tokenizer, e.prompt, getattr(e, side), self.block, "example") for e in examples]


class _SFT(_Stage):
    def train_step(self) -> tuple[float, dict]:
        ids, mask, _ = pad_batch(self.rows(self.batch(self.train_data), "response"), self.device)
        loss = sft_loss(self.policy(ids).logits, ids, mask)
        norm = self.backward_step(loss)
        return loss.item(), {"grad_norm": norm}

    def evaluate(self) -> PostEval:
        ids, mask, _ = pad_batch(self.rows(self.held, "response"), self.device)
        loss = float(sft_loss(self.policy(ids).logits, ids, mask))
        self.last_eval = {"val_loss": loss}
        return PostEval(self.step, {"loss": loss})


class _Reward(_Stage):
    def scores(self, examples: list) -> tuple[torch.Tensor, torch.Tensor]:
        ids, _, last = pad_batch(self.rows(examples, "chosen") + self.rows(examples, "rejected"), self.device)
        r = score(self.policy, self.head, ids, last)
        return r[:len(examples)], r[len(examples):]

    def train_step(self) -> tuple[float, dict]:
        chosen, rejected = self.scores(self.batch(self.train_data))
        loss = bradley_terry_loss(chosen, rejected)
        norm = self.backward_step(loss)
        chosen, rejected = chosen.detach(), rejected.detach()
        return loss.item(), {"accuracy": float((chosen > rejected).float().mean()),
                             "margin": float((chosen - rejected).mean()), "grad_norm": norm}

    def evaluate(self) -> PostEval:
        chosen, rejected = self.scores(self.held)
        m = {"loss": float(bradley_terry_loss(chosen, rejected)),
             "accuracy": float((chosen > rejected).float().mean()), "margin": float((chosen - rejected).mean())}
        both = torch.cat([chosen, rejected])
        # PPO standardises this model's scores with these, so beta means the same for every reward model
        self.last_eval = {"val_loss": m["loss"], "accuracy": m["accuracy"], "reward_mean": float(both.mean()),
                          "reward_std": float(both.std()) if len(both) > 1 else 1.0}
        return PostEval(self.step, m, chosen.tolist(), rejected.tolist())

    def sample_metrics(self, prompts):
        return [], {}         # a reward model writes nothing


class _DPO(_Stage):
    def logps(self, model, examples: list) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, _ = pad_batch(self.rows(examples, "chosen") + self.rows(examples, "rejected"), self.device)
        lp = sequence_logprob(model(ids).logits, ids, mask)
        return lp[:len(examples)], lp[len(examples):]

    def losses(self, examples: list):
        pc, pr = self.logps(self.policy, examples)
        with torch.no_grad():
            rc, rr = self.logps(self.ref, examples)
        return dpo_loss(pc, pr, rc, rr, self.cfg.beta)

    def train_step(self) -> tuple[float, dict]:
        loss, chosen, rejected = self.losses(self.batch(self.train_data))
        norm = self.backward_step(loss)
        return loss.item(), {"reward_chosen": float(chosen.mean()), "reward_rejected": float(rejected.mean()),
                             "margin": float((chosen - rejected).mean()),
                             "accuracy": float((chosen > rejected).float().mean()), "grad_norm": norm}

    def evaluate(self) -> PostEval:
        loss, chosen, rejected = self.losses(self.held)
        m = {"loss": float(loss), "accuracy": float((chosen > rejected).float().mean()),
             "margin": float((chosen - rejected).mean()), "reward_chosen": float(chosen.mean()),
             "reward_rejected": float(rejected.mean())}
        self.last_eval = {"val_loss": m["loss"], "accuracy": m["accuracy"]}
        return PostEval(self.step, m, chosen.tolist(), rejected.tolist())


class _PPO(_Stage):
    def __init__(self, cfg, base, data, device, *rest):
        rm, head, tok, _ = load_reward_model(cfg.reward_model)       # checked before the run writes anything
        if tok.name != base.tokenizer.name or tok.n_vocab != base.tokenizer.n_vocab:
            raise PostTrainError(f"the reward model reads tokenizer {tok.name!r} ({tok.n_vocab} ids) but the policy "
                                 f"{base.tokenizer.name!r} ({base.tokenizer.n_vocab}): train the reward model from "
                                 f"this policy's family")
        self.reward_model = rm.to(device).eval().requires_grad_(False)
        self.reward_head = head.to(device).requires_grad_(False)
        super().__init__(cfg, base, data, device, *rest)

    def rollout(self, prompts: list[str]) -> dict:
        """Sample, then everything PPO needs in response coordinates (B, R)."""
        cfg = self.cfg
        pairs = respond(self.policy, self.tokenizer, prompts, cfg.response_tokens, cfg.temperature, self.g, self.device)
        ids, mask, last = pad_batch([(p + r, len(p)) for p, r in pairs], self.device)
        starts = torch.tensor([len(p) - 1 for p, _ in pairs], device=self.device)
        where = starts[:, None] + torch.arange(cfg.response_tokens, device=self.device)      # (B, R) action positions
        with torch.no_grad():
            out = self.policy(ids)
            old_lp = token_logprobs(out.logits, ids, cfg.temperature).gather(1, where)
            old_values = self.head(out.hidden).squeeze(-1).gather(1, where)
            ref_lp = token_logprobs(self.ref(ids).logits, ids, cfg.temperature).gather(1, where)
            rm = score(self.reward_model, self.reward_head, ids, last)
            kl = old_lp - ref_lp
            rewards = -cfg.beta * kl
            rewards[:, -1] += rm
            adv, returns = gae(rewards, old_values, cfg.gamma, cfg.lam)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        return dict(ids=ids, where=where, old_lp=old_lp, old_values=old_values, returns=returns, adv=adv,
                    score=rm, kl=kl.sum(-1), texts=[self.tokenizer.decode(r) for _, r in pairs])

    def train_step(self) -> tuple[float, dict]:
        b = self.rollout([e.prompt for e in self.batch(self.train_data)])
        for _ in range(self.cfg.ppo_epochs):
            out = self.policy(b["ids"])
            logp_all = step_logprobs(out.logits, self.cfg.temperature)
            lp = logp_all.gather(-1, b["ids"][:, 1:, None]).squeeze(-1).gather(1, b["where"])
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1).gather(1, b["where"]).mean()
            values = self.head(out.hidden).squeeze(-1).gather(1, b["where"])
            pg, vf, clipped = ppo_losses(lp, b["old_lp"], b["adv"], values, b["old_values"], b["returns"], self.cfg.clip)
            loss = pg + self.cfg.value_coef * vf
            norm = self.backward_step(loss)
        kl = float(b["kl"].mean())
        if not math.isfinite(kl):
            raise TrainingDiverged(f"the KL to the reference became {kl} at step {self.step + 1}: raise beta or lower "
                                   f"the learning rate; the last checkpoint is kept")
        m = {"reward": float(b["score"].mean()), "kl": kl, "objective": float(b["score"].mean()) - self.cfg.beta * kl,
             "entropy": float(entropy), "clip_fraction": clipped, "value_loss": vf.item(), "policy_loss": pg.item(),
             "grad_norm": norm, "distinct_2": distinct_n(b["texts"], 2)}
        if self.judge is not None:
            m["judge_score"] = float(np.mean([self.judge.score(t) for t in b["texts"]]))
        return loss.item(), m

    def evaluate(self) -> PostEval:
        self.last_eval = {}
        return PostEval(self.step, {})

    def sample_metrics(self, prompts):
        texts, m = super().sample_metrics(prompts)
        ids, _, last = pad_batch([(p + r, len(p)) for p, r in self.sampled], self.device)
        m["reward"] = float(score(self.reward_model, self.reward_head, ids, last).mean())
        self.last_eval = {k: m[k] for k in ("reward", "kl", "judge_score") if k in m}
        return texts, m


def _run_of(source: str) -> Path:
    p = Path(source)
    return p if p.is_dir() else p.parent.parent


# -- CLI -------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> PostTrainConfig:
    p = argparse.ArgumentParser(prog="python -m core.posttrain",
                                description="Post-train a model: sft, reward, dpo, ppo or grpo (see core/posttrain.py).")
    p.add_argument("stage", choices=POST_STAGES)
    cli.add_dataclass_args(p, PostTrainConfig, skip=("stage",))
    args = p.parse_args(argv)
    return PostTrainConfig(stage=args.stage, **cli.dataclass_kwargs(args, PostTrainConfig))


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm
    try:
        cfg = parse_args(argv)
    except PlaygroundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = cli.StopFlag()
    command = "python -m core.posttrain " + shlex.join(sys.argv[1:] if argv is None else argv)
    gen = post_train(cfg, command)
    bar = None
    write = lambda text: (bar.write if bar is not None else print)(text)   # noqa: E731
    try:
        for rec in gen:
            if isinstance(rec, Phase) and rec.name not in ("training", "evaluating"):
                write(f"{rec.name}…")
            elif isinstance(rec, PostStarted):
                resumed = f", resumed from step {rec.resumed_from}" if rec.resumed_from is not None else ""
                print(f"{rec.stage} run {rec.run_dir}: {rec.trainable:,} of {rec.parameters:,} parameters trained "
                      f"({100 * rec.trainable / rec.parameters:.2f} %), {rec.examples} examples + {rec.held_out} "
                      f"held out (data sha256 {rec.data_sha256[:12]}), {rec.device}{resumed}", flush=True)
                bar = tqdm(total=cfg.steps, initial=rec.resumed_from or 0, unit="step", dynamic_ncols=True, disable=None)
            elif isinstance(rec, PostStep):
                bar.update(1)
                bar.set_postfix(loss=f"{rec.loss:.4f}", **{k: f"{v:.3g}" for k, v in rec.metrics.items()
                                                          if k in ("accuracy", "reward", "kl", "margin")})
            elif isinstance(rec, PostEval):
                write(f"step {rec.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in rec.metrics.items()))
            elif isinstance(rec, PostSamples) and rec.texts:
                write(f"--- sample at step {rec.step} ---\n{rec.prompts[0]}|{rec.texts[0]}\n---")
            elif isinstance(rec, PostFinished):
                if bar is not None:
                    bar.close()
                print(f"done: {rec.step} steps, {rec.elapsed:.1f} s; checkpoint {rec.checkpoint}")
            if stop.asked:
                gen.close()
                print("\nstopped: checkpoint saved; continue with --resume", file=sys.stderr)
                return 130
    except (PlaygroundError, OSError) as e:
        if bar is not None:
            bar.close()
        return cli.report_error(e, "the checkpoints already written are intact (--resume continues from them)")
    return 0



class _GRPO(_PPO):
    """PPO's cheaper cousin: no value head; groups of rollouts per prompt, each judged against its group."""

    def rollout(self, prompts: list[str]) -> dict:
        cfg = self.cfg
        pairs = respond(self.policy, self.tokenizer, prompts, cfg.response_tokens, cfg.temperature, self.g, self.device)
        ids, _, last = pad_batch([(p + r, len(p)) for p, r in pairs], self.device)
        starts = torch.tensor([len(p) - 1 for p, _ in pairs], device=self.device)
        where = starts[:, None] + torch.arange(cfg.response_tokens, device=self.device)      # (B, R)
        with torch.no_grad():
            old_lp = token_logprobs(self.policy(ids).logits, ids, cfg.temperature).gather(1, where)
            ref_lp = token_logprobs(self.ref(ids).logits, ids, cfg.temperature).gather(1, where)
            rm = score(self.reward_model, self.reward_head, ids, last)
        return dict(ids=ids, where=where, old_lp=old_lp, ref_lp=ref_lp, adv=group_advantages(rm, cfg.group_size),
                    score=rm, kl=(old_lp - ref_lp).sum(-1), texts=[self.tokenizer.decode(r) for _, r in pairs])

    def train_step(self) -> tuple[float, dict]:
        cfg = self.cfg
        n = cfg.batch_size // cfg.group_size
        b = self.rollout([e.prompt for e in self.batch(self.train_data)[:n] for _ in range(cfg.group_size)])
        for _ in range(cfg.ppo_epochs):
            out = self.policy(b["ids"])
            logp_all = step_logprobs(out.logits, self.cfg.temperature)
            lp = logp_all.gather(-1, b["ids"][:, 1:, None]).squeeze(-1).gather(1, b["where"])
            with torch.no_grad():
                entropy = -(logp_all.exp() * logp_all).sum(-1).gather(1, b["where"]).mean()
            loss, kl_k3, clipped = grpo_loss(lp, b["old_lp"], b["ref_lp"], b["adv"], cfg.beta, cfg.clip)
            norm = self.backward_step(loss)
        kl = float(b["kl"].mean())
        if not math.isfinite(kl):
            raise TrainingDiverged(f"the KL to the reference became {kl} at step {self.step + 1}: raise beta or lower "
                                   f"the learning rate; the last checkpoint is kept")
        m = {"reward": float(b["score"].mean()), "kl": kl, "objective": float(b["score"].mean()) - cfg.beta * kl,
             "kl_k3_per_token": float(kl_k3), "entropy": float(entropy), "clip_fraction": clipped, "grad_norm": norm,
             "distinct_2": distinct_n(b["texts"], 2)}
        if self.judge is not None:
            m["judge_score"] = float(np.mean([self.judge.score(t) for t in b["texts"]]))
        return loss.item(), m


if __name__ == "__main__":
    sys.exit(main())
