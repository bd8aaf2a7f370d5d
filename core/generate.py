"""Generation: decoding loops over any next-token-logits source, and a terminal CLI.

Holds `stream()`, a generator of `Step` records (token id, text, probability and logprob) from an
exported model through `core.runtime`, with the sampler stages of `core.sampling`, a seed, and the
context policy: when the cache fills the model's context, the most recent half-context is prefilled
again (the window slides) and the step says so. `python -m core.generate exported/NAME --prompt ...`
streams text to the terminal.

Deliberately not here: torch, the model itself (`core.runtime`), the sampler stages' math
(`core.sampling`).
"""

from __future__ import annotations

import argparse
import codecs
import math
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from core import sampling
from core.runtime import Model, ModelError


@dataclass
class Step:
    index: int          # 0 for the first generated token
    token_id: int
    text: str           # the token's text on its own (partial UTF-8 shows as U+FFFD)
    prob: float         # probability of the chosen token under the raw (unprocessed) distribution
    logprob: float
    window_slid: bool   # the context was full and the window slid before this step


def stream(model: Model, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
           top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> Iterator[Step]:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    ids = model.tokenizer.encode(prompt or "\n")
    rng = np.random.default_rng(seed)
    keep = max(1, model.block_size // 2)
    slid = len(ids) > model.block_size
    logits, cache = model.next_logits(ids[-model.block_size:])
    for i in range(max_new_tokens):
        processed = sampling.top_p(sampling.top_k(sampling.temperature(logits, temperature), top_k), top_p)
        token = sampling.choose(processed, rng)
        logprob = float(sampling.log_softmax(logits)[token])
        yield Step(i, token, model.tokenizer.decode([token]), math.exp(logprob), logprob, slid)
        ids.append(token)
        slid = cache.length >= model.block_size
        if slid:
            logits, cache = model.next_logits(ids[-keep:])
        else:
            logits, cache = model.next_logits([token], cache)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.generate",
                                description="Stream text from an exported model (onnxruntime, no torch).")
    p.add_argument("model", help="an exported model directory, e.g. exported/shakespeare-byte")
    p.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens; 0 = off")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep; 1 = off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="fp32", help="fp32, or int8 / fp16 if exported")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: by model width)")
    args = p.parse_args(argv)
    try:
        model = Model(args.model, variant=args.variant, threads=args.threads)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")   # bytes split across tokens
        t0, n, slides = time.perf_counter(), 0, 0
        for step in stream(model, args.prompt, args.max_new_tokens, args.temperature, args.top_k,
                           args.top_p, args.seed):
            if n == 0:
                sys.stdout.write(args.prompt)   # only once the knobs have been accepted
            sys.stdout.write(decoder.decode(model.tokenizer.token_bytes(step.token_id)))
            sys.stdout.flush()
            n += 1
            slides += step.window_slid
        sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    except (ModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    note = f"; the context ({model.block_size}) was full {slides} time(s) and the window slid" if slides else ""
    print(f"[{n} tokens in {dt:.2f} s, {n / dt:.0f} tokens/s, {model.provider}{note}]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
