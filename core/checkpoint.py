"""Checkpoints: a training run's state on disk, safe against kills and never unpickled.

One checkpoint is one safetensors file: the model's weights (`model.*`), the optimizer's moments
(`optim.*`), the torch RNG state (`rng.*`), and JSON in the safetensors header (model config, train
config, step counters, numpy RNG states, optimizer hyper-parameters). It is written to a temporary file,
fsynced and renamed over its final name, so a process killed at any moment leaves either the old file
or the new one, never a torn one. A run directory keeps its checkpoints under `checkpoints/`; the
newest one that loads is the one to resume from.

Deliberately not here: when to checkpoint (`core.train`), ONNX export (`core.export`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from core.catalog import CHECKPOINT_DIR, checkpoint_file, checkpoint_steps
from core.checks import PlaygroundError
from core.files import is_disk_full, write_atomic
from core.config import ModelConfig
from core.model import GPT

FORMAT = "llm-playground-checkpoint/1"


class CheckpointError(PlaygroundError):
    """A checkpoint is missing, damaged or not ours; the message says which and what to do."""


@dataclass
class Checkpoint:
    path: Path
    meta: dict                        # model_config, train_config, state, ... (from the header)
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.meta["state"]["step"])

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.meta["model_config"])

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}


def checkpoint_path(run_dir: str | os.PathLike, step: int) -> Path:
    return checkpoint_file(run_dir, step)


def model_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """State dict without the tied head's duplicate (safetensors refuses shared storage)."""
    sd = model.state_dict()
    if model.config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    sd = optimizer.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{pid}.{key}"] = t.detach().to("cpu").contiguous()
    return tensors, sd["param_groups"]


def save_checkpoint(path: str | os.PathLike, model: GPT, optimizer: torch.optim.Optimizer | None,
                    meta: dict, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write one checkpoint atomically (temp file, fsync, rename) and return its path."""
    path = Path(path)
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    header = {"format": FORMAT, "model_config": model.config.to_dict(), **meta}
    if optimizer is not None:
        opt_tensors, groups = optimizer_tensors(optimizer)
        tensors.update(opt_tensors)
        header["optimizer_param_groups"] = groups
    for k, v in (extra_tensors or {}).items():
        tensors[k] = v.detach().to("cpu").contiguous()
    data = save_safetensors_bytes(tensors, metadata={"json": json.dumps(header)})
    try:
        write_atomic(path, data)
    except OSError as e:
        if is_disk_full(e):
            raise CheckpointError(
                f"no room to write {path.name} ({len(data) / 1e6:.1f} MB): {e.strerror}. The disk is full (or "
                f"over its quota): free some space, then resume; the previous checkpoint is intact") from e
        raise
    return path


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint; a missing, truncated or foreign file raises CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    data = path.read_bytes()
    try:
        tensors = load_safetensors_bytes(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        meta = json.loads(header["__metadata__"]["json"])
    except (SafetensorError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); it is "
                              f"truncated or damaged: resume from an earlier one") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an LLM Playground checkpoint (format {meta.get('format')!r})")
    return Checkpoint(path, meta, tensors)


# (step, path) of every checkpoint file in a run, oldest first; temp files are ignored
list_checkpoints = checkpoint_steps


def latest_checkpoint(run_dir: str | os.PathLike) -> Checkpoint | None:
    """The newest checkpoint of a run that loads; damaged newer files are skipped, not deleted."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path)
        except CheckpointError:
            continue
    return None


def prune_checkpoints(run_dir: str | os.PathLike, keep: int, protect: set[int] = frozenset()) -> None:
    """Delete all but the newest `keep` checkpoints and those at the `protect`ed steps (keep <= 0
    keeps all)."""
    if keep <= 0:
        return
    for step, path in list_checkpoints(run_dir)[:-keep]:
        if step not in protect:
            path.unlink(missing_ok=True)


def load_model(source: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[GPT, Checkpoint]:
    """A model from a checkpoint file, or from a run directory's newest good checkpoint."""
    source = Path(source)
    if source.is_dir():
        ckpt = latest_checkpoint(source)
        if ckpt is None:
            raise CheckpointError(f"{source} has no loadable checkpoint under {CHECKPOINT_DIR}/")
    else:
        ckpt = load_checkpoint(source)
    model = GPT(ckpt.model_config)
    restore_model(model, ckpt)
    return model.to(device).eval(), ckpt


def restore_model(model: GPT, ckpt: Checkpoint) -> None:
    missing, unexpected = model.load_state_dict(ckpt.model_state(), strict=False)
    allowed_missing = {"lm_head.weight"} if model.config.tie_embeddings else set()
    if set(missing) - allowed_missing or unexpected:
        raise CheckpointError(f"{ckpt.path} does not fit this model: missing {sorted(missing)}, "
                              f"unexpected {sorted(unexpected)}")


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    groups = ckpt.meta.get("optimizer_param_groups")
    if groups is None:
        raise CheckpointError(f"{ckpt.path} holds no optimizer state: it cannot resume training")
    state: dict[int, dict] = {}
    for key, value in ckpt.tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for g in groups:
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
