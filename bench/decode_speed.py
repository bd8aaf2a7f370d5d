"""Decoding strategies on an exported model through the onnxruntime engine: tokens/s of greedy,
sampling, sampling with every stage's distribution recorded (what the Generate page shows), and beam
search with 4 beams, against the bare engine loop (next_logits + argmax) as the floor.

    python bench/decode_speed.py [--model exported/shakespeare-char]

20-token prompt, 100 new tokens (so beams fit in a 128-token context), batch 1, the runtime's own
thread setting; medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from common import ROOT, set_threads

PROMPT = "KING:\nWhat news from"     # 20 characters: 20 byte tokens for a byte model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(ROOT / "exported" / "shakespeare-char"))
    p.add_argument("--new-tokens", type=int, default=100)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    set_threads(1)
    from core.generate import GenerationConfig, beam_search, decode
    from core.runtime import Model
    from core.sampling import SamplerConfig

    model = Model(Path(args.model))
    n = args.new_tokens
    prompt_ids = model.tokenizer.encode(PROMPT)

    def engine_floor():
        logits, cache = model.next_logits(prompt_ids)
        for _ in range(n):
            t = int(np.argmax(logits))
            logits, cache = model.next_logits([t], cache)

    def run(cfg):
        def f():
            for _ in decode(model, prompt_ids, cfg):
                pass
        return f

    sampler = SamplerConfig(temperature=0.8, top_k=40, top_p=0.95)
    variants = {
        "engine loop (next_logits + argmax)": engine_floor,
        "greedy": run(GenerationConfig(max_new_tokens=n, sampler=SamplerConfig(temperature=0), stop_at_eos=False)),
        "sampling (T 0.8, top-k 40, top-p 0.95)": run(GenerationConfig(max_new_tokens=n, sampler=sampler,
                                                                      stop_at_eos=False)),
        "sampling, every stage recorded": run(GenerationConfig(max_new_tokens=n, sampler=sampler, stop_at_eos=False,
                                                              keep_stages=True)),
        "beam search, 4 beams": lambda: list(beam_search(model, prompt_ids, width=4, max_new_tokens=n,
                                                         stop_at_eos=False)),
    }
    times = {k: [] for k in variants}
    for _ in range(args.repeats):
        for k, f in variants.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1000 * statistics.median(v) / n for k, v in times.items()}
    print(f"model {model.name}: {model.card['parameters']['total']:,} parameters, vocab {model.vocab_size}, "
          f"{model.threads} thread(s), {model.provider}; {len(prompt_ids)}-token prompt, {n} new tokens\n")
    print(f"{'strategy':42s} {'ms/token':>9s} {'tokens/s':>9s}")
    for k in variants:
        print(f"{k:42s} {ms[k]:9.3f} {1000 / ms[k]:9.0f}")
    plain, staged = ms["sampling (T 0.8, top-k 40, top-p 0.95)"], ms["sampling, every stage recorded"]
    print(f"\nstaged view vs plain sampling: {staged / plain:.2f}x the time per token "
          f"(+{1000 * (staged - plain):.0f} us/token)")
    print(f"decode() bookkeeping over the bare engine loop, greedy: +{1000 * (ms['greedy'] - ms['engine loop (next_logits + argmax)']):.0f} us/token")


if __name__ == "__main__":
    main()
