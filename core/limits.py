"""Limits: what one request or one visitor may ask of this server, in one object.

Holds `Limits`, the ceilings every page, decoding call and training job checks against (tokens, beams,
samples, stop strings, prompt length, top-n alternatives and strategies per comparison; the size of a
model and a prompt the interpretability scans take, and the memory of one of their calls; training
jobs at once, their size, steps, wall time and heartbeat; the examples a judge labels for a
post-training run), with the defaults of a local playground
and `Limits.hosted()` for a shared demo on a small machine (`LLM_PLAYGROUND_HOSTED=1`). Each check
that uses a ceiling says which one in its message.

Deliberately not here: the checks themselves (`core.generate`, `core.jobs` apply them where the
request is understood), Streamlit's own limits (`.streamlit/config.toml`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HOSTED_ENV = "LLM_PLAYGROUND_HOSTED"
MODELS_ENV = "LLM_PLAYGROUND_MODELS"    # comma-separated exported model names a server offers (unset: all)


def hosted() -> bool:
    """True when this process serves a shared demo (the environment says so)."""
    return os.environ.get(HOSTED_ENV, "") == "1"


def allowed_models() -> frozenset[str] | None:
    """The exported models this server offers, when its deployment lists them (a hosted demo shows a fixed
    list, e.g. the default models and the pretrained ones imported when its image was built); None: all."""
    names = {n.strip() for n in os.environ.get(MODELS_ENV, "").split(",") if n.strip()}
    return frozenset(names) or None


@dataclass(frozen=True)
class Limits:
    # -- one decoding request
    max_new_tokens: int = 1024
    max_beam_width: int = 16
    max_samples: int = 16
    max_stop_strings: int = 8
    max_stop_chars: int = 64
    max_prompt_chars: int = 20_000
    max_top_n: int = 50
    max_strategies: int = 8             # strategies in one comparison
    max_attention_tokens: int = 256     # tokens whose attention maps a page draws at once (every layer's
                                        # T x T maps: at 12 x 12 heads, 256 tokens are 38 MB)
    max_branches: int = 64              # branches one stepper trace (or a link to one) may hold
    # -- interpretability scans (core.interpret): each is up to (n_layer + 1) x tokens full forward passes
    max_inspect_parameters: int = 0     # models larger than this are not inspected here; 0: no limit
    max_inspect_tokens: int = 256       # tokens of a prompt that ablation, patching and the lens run on
    inspect_batch_mb: int = 256         # memory one batched call of the inspection graph may return
    # -- training jobs started from the browser
    max_running: int = 2                # jobs training at once on this server
    max_parameters: int = 20_000_000
    max_steps: int = 20_000
    max_wall_seconds: float = 0.0       # 0: no limit
    heartbeat_seconds: float = 0.0      # stop a job nobody watched for this long; 0: never
    train_threads: int = 0              # torch threads per job; 0 measures them on the run's first steps
    allow_imports: bool = True          # may visitors import pretrained checkpoints (a hosted demo offers a list)
    max_post_examples: int = 4096       # examples a judge labels for one post-training run (each is sampled first)

    @classmethod
    def hosted(cls) -> "Limits":
        """For a shared demo on 2 cores: every visitor's request stays short; one training job at a time,
        small and short, on one thread (the server keeps the other core), stopped a minute after its tab
        closes."""
        return cls(max_new_tokens=256, max_beam_width=8, max_samples=4, max_stop_strings=4,
                   max_prompt_chars=2_000, max_top_n=20, max_strategies=6, max_attention_tokens=128, max_branches=16,
                   max_inspect_parameters=30_000_000, max_inspect_tokens=64, inspect_batch_mb=64,
                   max_running=1, max_parameters=2_000_000, max_steps=2_000, max_wall_seconds=600.0,
                   heartbeat_seconds=60.0, train_threads=1, allow_imports=False, max_post_examples=512)
